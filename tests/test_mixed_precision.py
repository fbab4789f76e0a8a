"""The mixed-precision policy, and the GPU's arithmetic run where CI runs.

On a GPU every compute path runs under bf16 autocast; CI has no GPU, so the tests elsewhere
see fp32 only. ``ENTPRUNER_AUTOCAST=bf16`` puts the CPU under the same bf16 autocast, so these
tests meet what the GPU meets: bf16 activations where fp32 ones were, fp32 weights beside
them, and what each report says of it. ``ENTPRUNER_AUTOCAST=fp16`` does the same for the
arithmetic of GPUs without bf16 (V100, T4), with its loss scaling.
"""

from __future__ import annotations

import json
import platform
import re
import threading
import warnings

import pytest
import torch

from entpruner_sdk.cli import main
from entpruner_sdk.compress import compress
from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CED, BlockInfluence, CalibrationSet
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.sampling import sample
from entpruner_sdk.schedule import LatencyModel
from entpruner_sdk.teachers import load_teacher
from entpruner_sdk.training import TrainConfig, optimizer_step, train
from entpruner_sdk.utils.checkpoint import load_checkpoint
from entpruner_sdk.utils.device import (
    AUTOCAST_ENV,
    arithmetic,
    autocast,
    autocast_dtype,
    computed_on,
    enable_tf32,
    exact_fp32,
    gradient_scaler,
    mixed_precision,
    resolve_device,
)
from tests.conftest import cache_a_quick_classifier, latent_model, randomized, tiny_config, tiny_vae
from tests.test_compress import FAST, crash_at


@pytest.fixture(autouse=True)
def _default_policy(monkeypatch):
    """Each test starts from the default policy, whatever the shell running the suite set
    (``ENTPRUNER_AUTOCAST=bf16 pytest`` runs every other test in bf16)."""
    monkeypatch.delenv(AUTOCAST_ENV, raising=False)


@pytest.fixture
def bf16(monkeypatch):
    """The GPU's arithmetic, on the CPU."""
    monkeypatch.setenv(AUTOCAST_ENV, "bf16")


@pytest.fixture
def fp16(monkeypatch):
    """The arithmetic of a GPU without bf16 (V100, T4), on the CPU."""
    monkeypatch.setenv(AUTOCAST_ENV, "fp16")


def tiny(family: str = "dit", depth: int = 4) -> DiffusionTransformer:
    return randomized(DiffusionTransformer(tiny_config(family, depth=depth))).eval()


def dtypes_of_matmuls(model: DiffusionTransformer) -> set[torch.dtype]:
    """The dtypes the first block's first linear layer computes in from now on (a forward
    hook records them; the residual stream itself stays fp32 under autocast)."""
    seen: set[torch.dtype] = set()
    linear = next(m for m in model.blocks[0].modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    return seen


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean absolute difference over the reference's mean magnitude."""
    return float((out - reference).abs().mean() / reference.abs().mean())


def linear_output_dtype() -> torch.dtype:
    with autocast("cpu"):
        return torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype


def test_the_policy_comes_from_the_environment_and_a_block_may_set_its_own(monkeypatch):
    assert arithmetic("cpu") == "fp32" and linear_output_dtype() == torch.float32  # auto
    monkeypatch.setenv(AUTOCAST_ENV, " BF16 ")  # as a shell may leave it
    assert arithmetic("cpu") == "bf16 autocast" and linear_output_dtype() == torch.bfloat16
    with mixed_precision("off"):
        assert arithmetic("cpu") == "fp32" and linear_output_dtype() == torch.float32
        with mixed_precision("bf16"):
            assert autocast_dtype("cpu") == torch.bfloat16
        assert autocast_dtype("cpu") is None
    assert arithmetic("cpu") == "bf16 autocast"  # the environment's again
    monkeypatch.setenv(AUTOCAST_ENV, "fp8")
    with pytest.raises(ValueError, match=r"ENTPRUNER_AUTOCAST='fp8' names no mixed-precision "
                                         r"mode: use auto .*, bf16 .*, fp16 .* or off"):
        arithmetic("cpu")
    with pytest.raises(ValueError, match=r"mixed_precision\('half'\) names no"), \
            mixed_precision("half"):
        pass


def test_bf16_on_a_gpu_without_bf16_is_refused_with_the_way_out(monkeypatch):
    # a T4 or V100 (no bf16); only torch's capability query is stood in for: no GPU here
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    assert arithmetic("cuda") == "fp32"  # auto: fp32 where the GPU has no bf16
    monkeypatch.setenv(AUTOCAST_ENV, "bf16")
    with pytest.raises(RuntimeError, match=r"ENTPRUNER_AUTOCAST=bf16, but this GPU \(Tesla T4\) "
                                           r"has no bf16: set it to fp16 .*, unset it .* or "
                                           r"set it to off"):
        autocast("cuda")
    monkeypatch.setenv(AUTOCAST_ENV, "fp16")  # what its tensor cores take
    assert (autocast_dtype("cuda"), arithmetic("cuda")) == (torch.float16, "fp16 autocast")


def test_auto_on_a_gpu_without_bf16_says_once_that_fp16_would_use_its_tensor_cores(
        monkeypatch):
    from entpruner_sdk.utils import device as device_module

    # a V100 seen by a process without one: torch's queries are stood in for, nothing else
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(device_module, "enable_tf32", lambda: None)  # a global flag
    device_module._suggest_fp16.cache_clear()
    with pytest.warns(UserWarning, match=r"Tesla V100-SXM2-16GB has no bf16, so PyTorch models "
                                         r"run in fp32 on it; ENTPRUNER_AUTOCAST=fp16 runs "
                                         r"them in fp16 autocast"):
        assert resolve_device("cuda").type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_device("cuda")  # said once
        device_module._suggest_fp16.cache_clear()
        for mode in ("fp16", "off"):  # a policy chosen: nothing to suggest
            with mixed_precision(mode):
                resolve_device("cuda")


@pytest.fixture
def tf32():
    """TF32's two process-wide switches, read; as they were after the test."""
    def switches() -> tuple[bool, bool]:
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    saved = switches()
    yield switches
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_off_runs_true_fp32_on_cuda_where_another_policy_turned_tf32_on(tf32):
    # no GPU needed: TF32 is a switch of torch's, set the same way in a CPU build
    enable_tf32()  # what resolve_device("cuda") does under auto
    with mixed_precision("off"), autocast("cuda"):
        assert tf32() == (False, False)
    assert tf32() == (True, True)  # back as it was
    with exact_fp32("cpu"):
        assert tf32() == (True, True)  # nothing to do off CUDA
    # a block in another thread that outlasts this one keeps TF32 off until it ends
    entered, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with exact_fp32("cuda"):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    entered.wait(10)
    with mixed_precision("off"), autocast("cuda"):
        pass
    assert tf32() == (False, False)
    release.set()
    thread.join()
    assert tf32() == (True, True)


def test_a_mistyped_policy_stops_a_command_before_any_work(monkeypatch, capsys):
    monkeypatch.setenv(AUTOCAST_ENV, "half")
    assert main(["sample", "--model", "dit-digits", "--out", "never.png"]) == 2
    assert "entpruner sample: error: ENTPRUNER_AUTOCAST='half' names no mixed-precision mode" in (
        capsys.readouterr().err)


# Trained teachers, not random nets: a chaotic net turns bf16 rounding into wild pixels (see
# tests/test_gpu.py), a trained denoiser keeps the images close.
@pytest.mark.parametrize(("family", "samplers"), [("dit", ("ddim", "ddpm")),
                                                  ("sit", ("euler", "heun", "dopri5",
                                                           "euler-maruyama"))])
def test_every_sampler_runs_in_bf16_and_returns_fp32_images_near_fp32s(family, samplers):
    net = load_teacher(f"{family}-digits", "cpu")
    for sampler in samplers:
        # dopri5's steps are a ceiling: bf16's rounding costs it more (98 calls, not 74)
        run = dict(sampler=sampler, steps=200 if sampler == "dopri5" else 6, cfg_scale=2.0,
                   seed=1, progress=False, device="cpu")  # on a GPU machine too
        exact = sample(net, [0, 1, 2, 3], **run)
        with mixed_precision("bf16"):
            rounded = sample(net, [0, 1, 2, 3], **run)
        assert rounded.dtype == torch.float32 and torch.isfinite(rounded).all(), sampler
        assert 0 < relative_error(rounded, exact) < 0.1, sampler  # bf16 ran, and stayed close


def test_ced_and_block_influence_rank_in_bf16_as_in_fp32():
    net = tiny(depth=6)
    objective = objective_for(net)
    calibration = CalibrationSet.build(load_data("digits"), objective, 2, 2, seed=0)
    for criterion in (CED(), BlockInfluence()):
        exact = criterion.score(net, objective, calibration, "cpu")
        with mixed_precision("bf16"):
            rounded = criterion.score(net, objective, calibration, "cpu")
        assert rounded.scores != exact.scores  # bf16 ran
        assert all(s >= 0 for s in rounded.scores)
        # bf16 moves the scores a little; the ranking of clearly different blocks holds
        assert torch.corrcoef(torch.tensor([exact.scores, rounded.scores]))[0, 1] > 0.9


def test_the_latency_model_times_the_arithmetic_models_sample_in():
    net = tiny()
    batch = objective_for(net).noise_batch(torch.randn(8, 1, 8, 8), torch.arange(8) % 10,
                                           torch.Generator().manual_seed(0))
    seen = dtypes_of_matmuls(net)
    assert LatencyModel.measure(net, batch, repeats=1).arithmetic == "fp32"
    assert seen == {torch.float32}
    seen.clear()
    with mixed_precision("bf16"):
        latency = LatencyModel.measure(net, batch, repeats=1)
    # on a GPU the budget is read from bf16 timings, as sampling there runs (it timed fp32)
    assert latency.arithmetic == "bf16 autocast" and seen == {torch.bfloat16}


def test_compress_in_bf16_keeps_fp32_weights_and_says_how_it_ran(bf16, tmp_path):
    result = compress(tiny(depth=6), "digits", 3, steps=12, batch_size=8, interval=4,
                      calibration_per_class=2, calibration_times=2, proxy_samples=4,
                      report_samples=0, progress=False, device="cpu", out_dir=tmp_path)
    assert result.model.depth == 3
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    summary = result.report["summary"]
    assert summary["arithmetic"] == summary["sampling_latency"]["arithmetic"] == "bf16 autocast"
    assert summary["latency_model"]["arithmetic"] == "bf16 autocast"
    markdown = (tmp_path / "report.md").read_text()
    assert "12 fine-tuning steps on cpu in bf16 autocast" in markdown
    assert "| sampling latency (cpu, bf16 autocast, batch 8, 10 steps)" in markdown
    assert all(torch.isfinite(torch.tensor(result.report["losses"])))


def test_training_in_bf16_keeps_fp32_weights_and_records_how_it_trained(bf16, tmp_path):
    import entpruner_sdk as ep

    result = train(tiny(), "digits", TrainConfig(steps=4, batch_size=8, log_every=2),
                   out_dir=tmp_path, progress=False, device="cpu")
    assert {p.dtype for p in result.ema.parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(result.losses)))
    training = ep.load(tmp_path / "model").metadata["training"]
    assert (training["device"], training["arithmetic"]) == ("cpu", "bf16 autocast")


def test_an_evaluation_states_its_arithmetic_and_keeps_its_batches_apart(tmp_path):
    from entpruner_sdk.evaluation import evaluate

    data = load_data("digits").per_class(4, torch.Generator().manual_seed(0))
    cache_a_quick_classifier(data)
    settings = dict(samples=10, steps=2, batch_size=10, features=("domain",), progress=False,
                    checkpoint_dir=tmp_path / "batches", keep_batches=True, device="cpu")
    exact = evaluate("dit-digits", data, **settings)
    with mixed_precision("bf16"):
        rounded = evaluate("dit-digits", data, **settings)
    assert (exact.settings["arithmetic"], rounded.settings["arithmetic"]) == (
        "fp32", "bf16 autocast")
    assert "device cpu in bf16 autocast" in rounded.to_markdown()
    # the bf16 run made its own samples: fp32 batches are not taken for bf16 ones
    assert exact.kept_batches != rounded.kept_batches
    assert "batches_resumed" not in rounded.settings
    assert not torch.equal(exact.images, rounded.images)


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.export import export

    net = tiny(depth=2).to(torch.bfloat16).train()  # as a fine-tuning script holds it
    result = export(net, tmp_path / "onnx", "onnx", exporter="torchscript")
    assert all(check.passed for check in result.parity)
    # it was exported from, and checked against, an fp32 copy (before: cast and put in eval
    # mode in place; a model on a GPU was moved to the CPU, or failed to trace)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16} and net.training


def test_a_vae_decoder_is_checked_in_fp32_whatever_the_policy(bf16, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.export import export

    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path / "cache"))
    vae = tiny_vae(tmp_path / "vae")
    # before, the PyTorch side decoded under the policy's bf16 (a GPU's, by default): the
    # check failed at 1e-2 against 1e-4 and no latent model could be exported with its VAE
    result = export(latent_model(), tmp_path / "onnx", "onnx", vae=vae, exporter="torchscript")
    decoder = [c for c in result.parity if c.graph == "decoder"]
    assert decoder and all(c.relative_error < 1e-4 for c in decoder)


def test_a_served_model_keeps_the_arithmetic_it_was_loaded_with():
    from entpruner_sdk.serve.models import load_served_model

    with mixed_precision("bf16"):
        served = load_served_model("m", "dit-digits", device="cpu")
    exact = load_served_model("m", "dit-digits", device="cpu")
    assert (served.info()["arithmetic"], exact.info()["arithmetic"]) == ("bf16 autocast", "fp32")
    request = dict(labels=[1, 2], seeds=[0], counts=[2], sampler="ddim", steps=3, cfg_scale=1.0)
    # requests run on the server's threads, outside the block that loaded it
    images = {}
    thread = threading.Thread(target=lambda: images.update(out=served.generate(**request)))
    thread.start()
    thread.join()
    assert images["out"].dtype == torch.float32 and torch.isfinite(images["out"]).all()
    assert not torch.equal(images["out"], exact.generate(**request))  # in bf16 nonetheless


def test_fp16_autocasts_every_device_and_only_it_scales_the_loss(monkeypatch):
    monkeypatch.setenv(AUTOCAST_ENV, "fp16")
    assert arithmetic("cpu") == "fp16 autocast" and linear_output_dtype() == torch.float16
    assert gradient_scaler("cpu").is_enabled()
    for mode in ("auto", "bf16", "off"):  # bf16 has fp32's exponent range: nothing to scale
        with mixed_precision(mode):
            assert not gradient_scaler("cpu").is_enabled(), mode


def test_an_fp16_step_whose_gradients_overflowed_is_skipped_and_the_scale_lowered(fp16):
    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = gradient_scaler("cpu")
    before = layer.weight.detach().clone()
    # 1e36 times the initial scale of 2^16 is past fp32's range: the gradients are inf
    scaler.scale(layer(torch.ones(2, 4)).sum() * 1e36).backward()
    assert not optimizer_step(optimizer, grad_clip=1.0, scaler=scaler)
    assert torch.equal(layer.weight, before) and scaler.get_scale() == 2.0 ** 15
    optimizer.zero_grad()
    scaler.scale(layer(torch.ones(2, 4)).sum()).backward()
    assert optimizer_step(optimizer, grad_clip=1.0, scaler=scaler)
    assert not torch.equal(layer.weight, before)
    # unscaled before clipping: the step is lr times a gradient of norm at most grad_clip
    assert (layer.weight - before).norm() <= 0.1 * 1.0 + 1e-6


@pytest.mark.parametrize(("family", "sampler"), [("dit", "ddim"), ("sit", "heun")])
def test_sampling_in_fp16_lands_closer_to_fp32_than_bf16_does(family, sampler):
    net = load_teacher(f"{family}-digits", "cpu")
    run = dict(sampler=sampler, steps=6, cfg_scale=2.0, seed=1, progress=False, device="cpu")
    exact = sample(net, [0, 1, 2, 3], **run)
    errors = {}
    for mode in ("bf16", "fp16"):
        with mixed_precision(mode):
            rounded = sample(net, [0, 1, 2, 3], **run)
        assert rounded.dtype == torch.float32 and torch.isfinite(rounded).all(), mode
        errors[mode] = relative_error(rounded, exact)
    # fp16 keeps 10 mantissa bits to bf16's 7: where nothing overflows it rounds less
    assert 0 < errors["fp16"] < errors["bf16"] / 2, errors


def test_training_in_fp16_resumes_with_the_loss_scale_it_had(fp16, tmp_path):
    import entpruner_sdk as ep

    config = TrainConfig(steps=8, batch_size=8, checkpoint_every=4, log_every=2)
    full = train(tiny(), "digits", config, out_dir=tmp_path / "a", progress=False, device="cpu")
    # a random net's first gradients overflow the initial scale of 2^16: steps are skipped
    # and the scale halves until they fit
    assert 0 < full.skipped_steps < 8
    _, meta = load_checkpoint(tmp_path / "a" / "checkpoint")
    assert meta["grad_scaler"]["scale"] == 2.0 ** (16 - full.skipped_steps)
    train(tiny(), "digits", TrainConfig(**{**config.__dict__, "steps": 4}),
          out_dir=tmp_path / "b", progress=False, device="cpu")
    resumed = train(tiny(), "digits", config, out_dir=tmp_path / "b", resume=True,
                    progress=False, device="cpu")
    # restarted at 2^16, the resumed run would skip steps the uninterrupted one took
    assert resumed.losses == full.losses and resumed.skipped_steps == full.skipped_steps
    a, b = full.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {p.dtype for p in resumed.ema.parameters()} == {torch.float32}
    training = ep.load(tmp_path / "b" / "model").metadata["training"]
    assert (training["arithmetic"], training["skipped_steps"]) == (
        "fp16 autocast", full.skipped_steps)


def test_a_commands_mixed_precision_overrides_the_environment_for_its_run(
        bf16, tmp_path, capsys):
    import os

    import entpruner_sdk as ep
    from entpruner_sdk.models.io import save

    save(tiny(), tmp_path / "random")
    train_command = ["train", "--model", str(tmp_path / "random"), "--steps", "6",
                     "--batch-size", "8", "--quiet", "--device", "cpu"]
    assert main([*train_command, "--out", str(tmp_path / "fp16"),
                 "--mixed-precision", "fp16"]) == 0
    # the command says what fp16's loss scaler skipped: the random net's first steps
    assert re.search(r"trained 6 steps \([1-5] skipped: their fp16 gradients overflowed\); "
                     r"loss over", capsys.readouterr().out)
    assert os.environ[AUTOCAST_ENV] == "bf16"  # the caller's setting, back after the command
    assert main([*train_command, "--out", str(tmp_path / "off"), "--mixed-precision",
                 "off"]) == 0
    assert main([*train_command, "--out", str(tmp_path / "env")]) == 0  # the environment's
    made = {run: ep.load(tmp_path / run / "model").metadata["training"]["arithmetic"]
            for run in ("fp16", "off", "env")}
    assert made == {"fp16": "fp16 autocast", "off": "fp32", "env": "bf16 autocast"}
    with pytest.raises(SystemExit):  # argparse names the choices
        main([*train_command, "--out", str(tmp_path / "x"), "--mixed-precision", "fp8"])
    assert re.search(r"--mixed-precision: invalid choice: 'fp8' \(choose from '?auto'?, "
                     r"'?bf16'?, '?fp16'?, '?off'?\)", capsys.readouterr().err)


def test_compress_in_fp16_reports_its_skipped_steps_and_resumes_exactly(fp16, tmp_path,
                                                                       monkeypatch):
    options = dict(FAST, steps=16, checkpoint_every=4)
    full = compress(tiny(depth=6), "digits", 3, out_dir=tmp_path / "a", **options)
    summary = full.report["summary"]
    assert summary["arithmetic"] == "fp16 autocast" and 0 < summary["skipped_steps"] < 16
    assert (f"16 fine-tuning steps on cpu in fp16 autocast ({summary['skipped_steps']} "
            "skipped: their fp16 gradients overflowed)") in (tmp_path / "a" / "report.md"
                                                              ).read_text()
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    crash_at(monkeypatch, 10, tiny(depth=6), "digits", 3, out_dir=tmp_path / "b", **options)
    resumed = compress(tiny(depth=6), "digits", 3, out_dir=tmp_path / "b", resume=True,
                       **options)
    assert resumed.report["losses"] == full.report["losses"]
    assert resumed.report["summary"]["skipped_steps"] == summary["skipped_steps"]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_forward_pass_that_overflows_fp16_is_named_as_such(fp16):
    net = tiny()
    with torch.no_grad():  # outputs past fp16's largest number (65504); squared, past fp32's
        net.final_layer.linear.bias.fill_(1e20)
    with pytest.raises(FloatingPointError, match=r"not finite; .* under fp16 autocast the "
                                                 r"forward pass may have overflowed: run with "
                                                 r"ENTPRUNER_AUTOCAST=bf16 .*, or off"):
        train(net, "digits", TrainConfig(steps=1, batch_size=4), progress=False, device="cpu")
    with mixed_precision("off"), pytest.raises(FloatingPointError) as error:  # fp32: not said
        train(net, "digits", TrainConfig(steps=1, batch_size=4), progress=False, device="cpu")
    assert "fp16" not in str(error.value)


def test_a_resume_on_another_processor_names_both_and_an_older_checkpoint_is_taken_as_is(
        tmp_path):
    config = TrainConfig(steps=2, batch_size=4, checkpoint_every=2)
    longer = TrainConfig(**{**config.__dict__, "steps": 3})
    here = computed_on("cpu")
    assert here["processor"].startswith(platform.machine())  # "x86_64 AVX2", say
    for run, then in (("moved", {**here, "processor": "aarch64 SVE"}),
                      ("older", {"device": "cpu", "arithmetic": here["arithmetic"]})):
        train(tiny(), "digits", config, out_dir=tmp_path / run, progress=False, device="cpu")
        state = next((tmp_path / run).rglob("state.json"))
        meta = json.loads(state.read_text())
        assert meta["computed_on"] == here
        state.write_text(json.dumps({**meta, "computed_on": then}))
    with pytest.warns(UserWarning, match=rf"was made on cpu \(aarch64 SVE\) in fp32, and the "
                                         rf"run continues on cpu \({here['processor']}\) in "
                                         rf"fp32: it will not end exactly"):
        train(tiny(), "digits", longer, out_dir=tmp_path / "moved", resume=True,
              progress=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no processor recorded: nothing known to differ
        train(tiny(), "digits", longer, out_dir=tmp_path / "older", resume=True,
              progress=False, device="cpu")


def test_a_resume_in_another_arithmetic_says_it_will_not_end_as_an_uninterrupted_run(
        tmp_path):
    config = TrainConfig(steps=2, batch_size=4, checkpoint_every=2)
    longer = TrainConfig(**{**config.__dict__, "steps": 4})
    for run in ("same", "other"):
        train(tiny(), "digits", config, out_dir=tmp_path / run, progress=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same device and arithmetic: nothing to say
        train(tiny(), "digits", longer, out_dir=tmp_path / "same", resume=True, progress=False,
              device="cpu")
    with mixed_precision("bf16"), pytest.warns(
            UserWarning, match=r"the checkpoint in .*other.*checkpoint was made on cpu in fp32, "
                               r"and the run continues on cpu in bf16 autocast: it will not end "
                               r"exactly as an uninterrupted run would"):
        train(tiny(), "digits", longer, out_dir=tmp_path / "other", resume=True,
              progress=False, device="cpu")
    options = dict(FAST, steps=8, checkpoint_every=4, interval=4)
    compress(tiny(depth=6), "digits", 4, out_dir=tmp_path / "compress", **options)
    with mixed_precision("fp16"), pytest.warns(UserWarning, match=r"made on cpu in fp32, and "
                                                                   r"the run continues on cpu "
                                                                   r"in fp16 autocast"):
        compress(tiny(depth=6), "digits", 4, out_dir=tmp_path / "compress", resume=True,
                 **options)
