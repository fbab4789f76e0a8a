"""The Gradio demo: model pairing and errors, the API through gradio_client, and an end-to-end
run in a real Chromium driven by Playwright (screenshot saved under test-artifacts/)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entpruner_sdk.apps.pair import generate_pair, load_pair
from entpruner_sdk.compress import compress
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.models.io import save
from tests.conftest import free_port, latent_model, randomized, tiny_config, tiny_vae

gr = pytest.importorskip("gradio")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FAST = dict(steps=12, batch_size=8, interval=4, calibration_per_class=2, calibration_times=2,
            proxy_samples=4, report_samples=0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny digits teacher and a real `compress` output folder made from it."""
    root = tmp_path_factory.mktemp("demo")
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=4)))
    save(teacher, root / "teacher")
    # with the report's quality figures and likelihood, which the Generate tab shows
    compress(teacher, "digits", 2, **dict(FAST, report_samples=8, report_likelihood=2)
             ).save(root / "pruned")
    return str(root / "teacher"), str(root / "pruned")


@pytest.fixture(scope="module")
def running_demo(models):
    from entpruner_sdk.apps.demo import launch

    port = free_port()
    demo = launch(*models, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_pair_loads_report_and_samples_from_the_same_noise(models, monkeypatch):
    from entpruner_sdk.apps import pair as pair_module

    pair = load_pair(*models)
    # a shape both sides have not sampled is sampled once before the timing, each shape once:
    # the page's default, when loading; a guided call of 2 images, at the first Generate below
    warmed, real_warm_up = [], pair_module.warm_up_for_batches

    def warm_up(model, labels, **settings):
        warmed.append((model.depth, len(labels), settings["cfg_scale"]))
        return real_warm_up(model, labels, **settings)

    monkeypatch.setattr(pair_module, "warm_up_for_batches", warm_up)
    assert pair.warmed == {(pair_module.DEFAULT_COUNT, True, "PyTorch")}
    assert pair.ready and not pair.errors
    assert pair.pruned.depth == 2 and pair.report["summary"]["depth_after"] == 2
    from entpruner_sdk.apps.demo import _report_figures
    from entpruner_sdk.compress.report import spread

    summary, figures = pair.report["summary"], _report_figures(pair)
    latency = summary["sampling_latency"]
    assert (f"| measured sampling speedup (cpu, fp32, batch 8) | {latency['speedup']:.2f}x"
            f"{spread(latency)} |") in figures
    assert spread(latency).endswith(" over 5 rounds)")
    original, pruned = summary["quality_original"], summary["quality_pruned"]
    # to 4 decimals, as report.md: a perfect accuracy reads 1.0000 -> 1.0000, not 1 -> 1
    assert (f"| fd_domain | {original['fd_domain']:.4f} -> {pruned['fd_domain']:.4f} |"
            in figures)
    assert (f"| class_accuracy | {original['class_accuracy']:.4f} -> "
            f"{pruned['class_accuracy']:.4f} |" in figures)
    assert f"| psnr | {pruned['psnr']:.4f} |" in figures  # fidelity: the pruned side only
    assert "| quality measured with | 8 samples, ddim x 50, cfg 2.0 |" in figures
    lik = summary["likelihood"]
    assert (f"| bits per dimension of 2 real images (lower is better) | "
            f"{lik['original_bits_per_dim']['mean']:.4f} -> {lik['bits_per_dim']['mean']:.4f} |"
            in figures)
    assert spread({"speedup": 1.8}) == ""  # a report written before the rounds were kept
    left, right = generate_pair(pair, 3, seed=5, count=2, sampler="ddim", steps=3, cfg_scale=2)
    assert left.images.shape == right.images.shape == (2, 1, 8, 8)
    assert left.seconds > 0 and right.images_per_second > 0
    assert left.model_calls == right.model_calls == 3  # one a step, guided halves in one call
    assert warmed == [(4, 2, 2), (2, 2, 2)]  # the original, then the pruned model: 2 images
    # the side that samples first alternates click by click: seen by the models' own calls
    first_calls = []
    hooks = [model.register_forward_pre_hook(lambda *_, name=name: first_calls.append(name))
             for name, model in (("original", pair.original), ("pruned", pair.pruned))]
    try:
        again = generate_pair(pair, 1, seed=0, count=2, sampler="ddim", steps=2, cfg_scale=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(warmed) == 2  # another guidance scale, the same shape: no warm-up
    assert left.sampled_first and not right.sampled_first  # the first click: the original
    assert first_calls[0] == "pruned" and again[1].sampled_first and not again[0].sampled_first
    # Same seed, same noise: a "pruned" model that kept every block gives identical images.
    pair.pruned = pair.original.keep_blocks(range(pair.original.depth))
    a, b = generate_pair(pair, 3, seed=5, count=2, sampler="ddpm", steps=3, cfg_scale=2)
    torch.testing.assert_close(a.images, b.images)


def test_the_pair_runs_where_it_is_asked_to(models, capsys):
    from entpruner_sdk.apps.demo import _status
    from entpruner_sdk.cli import main

    pair = load_pair(*models, device="cpu")
    assert pair.device == torch.device("cpu") and "PyTorch runs on cpu in fp32." in _status(pair)
    assert {p.device for m in (pair.original, pair.pruned) for p in m.parameters()} == {
        torch.device("cpu")}
    if not torch.cuda.is_available():  # a GPU asked for and absent: said before any page
        assert main(["demo", "--original", models[0], "--pruned", models[1], "--device",
                     "cuda", "--port", "1"]) == 2
        assert "no CUDA GPU is visible; use 'cpu'" in capsys.readouterr().err


def test_a_pruned_model_with_resized_classes_pairs_with_its_original(models, tmp_path):
    from entpruner_sdk.data import ImageDataset, load_data

    digits = load_data("digits")
    first_three = digits.labels < 3
    subset = ImageDataset(digits.images[first_three], digits.labels[first_three], 3)
    teacher = load_pair(*models).original
    compress(teacher, subset, 2, num_classes=3, **FAST).save(tmp_path / "resized")
    pair = load_pair(models[0], str(tmp_path / "resized"))
    assert pair.ready and not pair.errors and pair.num_classes == 3
    # the original's label embedder was resized as compress resized it; class 2 is unchanged
    assert pair.original.config.num_classes == 3
    unchanged = generate_pair(pair, 2, seed=1, count=1, sampler="ddim", steps=3, cfg_scale=2)[0]
    pair.pruned = teacher.keep_blocks([0, 1])  # any 10-class model samples class 2 the same
    pair.original = teacher
    torch.testing.assert_close(
        unchanged.images,
        generate_pair(pair, 2, seed=1, count=1, sampler="ddim", steps=3, cfg_scale=2)[0].images)


def test_latent_models_are_shown_through_their_vae(tmp_path):
    teacher = latent_model()
    teacher.provenance["trained_with"] = {"vae": "mse"}  # a reference train.py run's args
    save(teacher, tmp_path / "teacher")
    save(teacher.keep_blocks([0, 3]), tmp_path / "pruned")
    paths = str(tmp_path / "teacher"), str(tmp_path / "pruned")
    without = load_pair(*paths)
    assert not without.ready and "--vae DIR" in without.errors[0]
    assert "sd-vae-ft-mse, which its train.py run encoded with" in without.errors[0]
    pair = load_pair(*paths, vae=str(tiny_vae(tmp_path / "vae")))
    assert pair.ready and not pair.errors
    left, right = generate_pair(pair, 3, seed=5, count=2, sampler="ddim", steps=3, cfg_scale=2)
    assert left.images.shape == right.images.shape == (2, 3, 16, 16)



@pytest.mark.slow
def test_the_onnx_side_of_a_latent_pair_decodes_in_onnx_runtime(tmp_path, monkeypatch):
    # the deployed pipeline end to end: denoiser and VAE decoder both exported and both run
    # by ONNX Runtime, giving the images PyTorch gives
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path / "cache"))  # this test's exports only
    teacher = latent_model()
    save(teacher, tmp_path / "teacher")
    save(teacher.keep_blocks([0, 3]), tmp_path / "pruned")
    pair = load_pair(str(tmp_path / "teacher"), str(tmp_path / "pruned"), onnx=True,
                     vae=str(tiny_vae(tmp_path / "vae")))
    assert pair.ready and not pair.errors
    # one ONNX decoder, exported and parity-checked once, decodes both sides
    assert pair.runtimes["original"].decoder is not None
    assert pair.runtimes["pruned"].decoder is pair.runtimes["original"].decoder
    decoders = {e.name.split("-")[0]: (e / "vae_decoder.onnx").exists()
                for e in (tmp_path / "cache" / "exports").iterdir()}
    assert decoders == {"teacher": True, "pruned": False}
    torch_side = generate_pair(pair, 3, 5, 2, "ddim", 3, 2.0, "PyTorch")
    onnx_side = generate_pair(pair, 3, 5, 2, "ddim", 3, 2.0, "ONNX Runtime")
    for a, b in zip(torch_side, onnx_side):
        assert b.images.shape == (2, 3, 16, 16) and a.model_calls == b.model_calls == 3
        torch.testing.assert_close(a.images, b.images, rtol=1e-3, atol=1e-3)

def test_a_released_original_takes_the_pruned_models_family_heads_and_path(tmp_path):
    # a released-style .pt (a plain state dict) does not say whether it is a DiT or a SiT,
    # nor, at a width that is not a published size, how many heads it has (64 -> 1 assumed),
    # nor a SiT's flow path (linear assumed)
    teacher = randomized(DiffusionTransformer(tiny_config("sit", hidden_size=64, num_heads=2)))
    teacher.objective = {"path": "gvp"}
    torch.save(teacher.state_dict(), tmp_path / "released.pt")
    save(teacher.keep_blocks([0, 3]), tmp_path / "pruned")
    pair = load_pair(str(tmp_path / "released.pt"), str(tmp_path / "pruned"))
    assert pair.ready and not pair.errors and pair.original.config == teacher.config
    assert pair.original.objective == {"path": "gvp"}
    # an original that records another path is another model
    save(DiffusionTransformer(teacher.config), tmp_path / "linear")
    other = load_pair(str(tmp_path / "linear"), str(tmp_path / "pruned"))
    assert "trained on the linear path, not gvp" in other.errors[0]
    wrong = load_pair(str(tmp_path / "released.pt"), str(tmp_path / "pruned"), family="dit")
    assert "do not match (original vs pruned: family dit vs sit" in wrong.errors[0]


def test_the_original_defaults_to_the_one_the_pruned_model_was_made_from(tmp_path):
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=4)))
    save(teacher, tmp_path / "teacher")
    compress(str(tmp_path / "teacher"), "digits", 2, **FAST).save(tmp_path / "pruned")
    pair = load_pair(None, str(tmp_path / "pruned"))
    assert pair.ready and not pair.errors
    assert pair.original_source == str((tmp_path / "teacher").resolve())
    # another original of the same shape is compared, with a note that it is another model
    save(randomized(DiffusionTransformer(tiny_config("dit", depth=4)), seed=1),
         tmp_path / "other")
    noted = load_pair(str(tmp_path / "other"), str(tmp_path / "pruned"))
    assert noted.ready and len(noted.errors) == 1
    assert noted.errors[0].startswith(f"Original model {str(tmp_path / 'other')!r} is not the "
                                      "one the pruned model was compressed from")
    # the recorded original moved away: said so
    shutil.move(tmp_path / "teacher", tmp_path / "moved")
    gone = load_pair(None, str(tmp_path / "pruned"))
    assert not gone.ready
    assert "(the model the pruned one records as its original) could not be loaded" in (
        gone.errors[0])


def test_the_quick_evaluation_finds_the_data_the_run_used(tmp_path):
    from entpruner_sdk.apps.demo import _data_name
    from entpruner_sdk.data import load_data, save_npz

    data = save_npz(load_data("digits").subset(range(200)), tmp_path / "mine.npz")
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=4)))
    save(teacher, tmp_path / "teacher")
    compress(teacher, str(data), 2, **FAST).save(tmp_path / "pruned")
    pair = load_pair(str(tmp_path / "teacher"), str(tmp_path / "pruned"))
    assert pair.report["summary"]["data_source"] == str(data.resolve())
    assert _data_name(pair) == str(data.resolve())


def test_the_quick_evaluation_loads_the_data_as_the_run_did(tmp_path):
    from entpruner_sdk.apps.demo import _data_options, _quick_evaluation
    from entpruner_sdk.data import load_data
    from entpruner_sdk.evaluation.classifier import save_classifier, train_classifier
    from entpruner_sdk.utils.cache import cache_root

    photos = load_data("photos", image_size=8)  # not the bundled size: the run must say so
    save_classifier(train_classifier(photos, steps=20), photos,
                    cache_root() / "classifiers" / f"{photos.name}-{photos.fingerprint()}")
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=4, in_channels=3,
                                                          num_classes=8)))
    save(teacher, tmp_path / "teacher")
    compress(teacher, photos, 2, **FAST).save(tmp_path / "pruned")
    pair = load_pair(str(tmp_path / "teacher"), str(tmp_path / "pruned"))
    assert pair.report["summary"]["data_source"] == "photos"
    assert _data_options(pair) == {"image_size": 8}
    table = _quick_evaluation(pair, 4, None, lambda *args, **kwargs: None)
    assert "Quick evaluation on `photos`" in table and "| fd_domain |" in table
    # the original's column is the original's own evaluation with the same settings (and
    # batches: each batch's noise has its own seed)
    from entpruner_sdk.apps.demo import QUICK_BATCHES
    from entpruner_sdk.apps.pair import default_sampling
    from entpruner_sdk.evaluation.evaluate import evaluate

    own = evaluate(pair.original, photos, samples=4, features=("domain",), progress=False,
                   batch_size=-(-4 // QUICK_BATCHES), **default_sampling("dit")).metrics
    assert f"| fd_domain | {own['fd_domain']:.4f} |" in table
    assert f"| recall_domain | {own['recall_domain']:.4f} |" in table
    assert re.search(r"\| sampling seconds, batch by batch in turn \| [\d.]+ \| [\d.]+ "
                     r"\([\d.]+x as fast\) \|", table)


def test_the_quick_evaluation_reads_a_hugging_face_dataset_the_run_used(tmp_path):
    datasets = pytest.importorskip("datasets")
    from entpruner_sdk.apps.demo import _data_name, _data_options, _quick_evaluation
    from entpruner_sdk.data import eight_bit, load_data

    digits = load_data("digits").subset(range(120))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(
        names=digits.class_names)})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(
        {"image": [Image.fromarray(eight_bit(image)[0].numpy()) for image in digits.images],
         "label": digits.labels.tolist()}, features=features)}).save_to_disk(
        str(tmp_path / "hf-digits"))
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=4)))
    save(teacher, tmp_path / "teacher")
    data = load_data(tmp_path / "hf-digits", split="test")
    compress(teacher, data, 2, **FAST).save(tmp_path / "pruned")
    pair = load_pair(str(tmp_path / "teacher"), str(tmp_path / "pruned"))
    # the demo opens the dataset the run used, by its path and split, and reads its rows
    assert _data_name(pair) == str((tmp_path / "hf-digits").resolve())
    assert _data_options(pair) == {"split": "test"}
    table = _quick_evaluation(pair, 4, None, lambda *args, **kwargs: None)
    assert f"Quick evaluation on `{tmp_path / 'hf-digits'}`" in table
    assert "| fd_domain |" in table


def test_missing_and_incompatible_models_become_messages(models, tmp_path):
    missing = load_pair(models[0], str(tmp_path / "nowhere"))
    assert not missing.ready and "quickstart" in missing.errors[0]
    other = randomized(DiffusionTransformer(tiny_config("dit", depth=2, num_classes=4)))
    save(other, tmp_path / "other")
    mismatch = load_pair(models[0], str(tmp_path / "other"))
    assert "do not match (original vs pruned: num_classes 10 vs 4)" in mismatch.errors[0]
    assert not mismatch.ready
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{ not json")
    broken = load_pair(models[0], str(tmp_path / "broken"))
    assert "could not be loaded" in broken.errors[0]
    with pytest.raises(ValueError, match="load an original and a pruned model"):
        generate_pair(missing, 0, 0, 1, "ddim", 2, 1.0)


def test_speedup_caption_says_when_the_solver_chose_its_steps():
    from entpruner_sdk.apps.demo import _speedup
    from entpruner_sdk.apps.pair import SideResult

    def sides(count: int, seconds: tuple[float, float], calls: tuple[int, int],
              original_first: bool = True):
        return [SideResult(torch.zeros(count, 1, 8, 8), s, c, first)
                for s, c, first in zip(seconds, calls, (original_first, not original_first))]

    assert _speedup(*sides(4, (1.92, 1.0), (50, 50)), "dit", "ddim", 50, "PyTorch") == (
        "**speedup: 1.92x** (pruned vs original, PyTorch, 4 images, 50 steps; the original "
        "sampled first, the order alternating click by click)")
    assert _speedup(*sides(1, (3.0, 2.0), (62, 44), original_first=False), "sit", "dopri5",
                    25, "ONNX Runtime").endswith(
        "1 images, dopri5, adaptive, at most 25 steps: 62 vs 44 model calls; the pruned model "
        "sampled first, the order alternating click by click)")


def test_api_generate_evaluate_and_load(running_demo, models, tmp_path):
    from gradio_client import Client

    client = Client(running_demo, verbose=False)
    original, o_timing, pruned, p_timing, speedup = client.predict(
        2, 7, 3, "ddim", 5, 2.0, "PyTorch", api_name="/generate")
    assert len(original) == 3 and len(pruned) == 3
    # the galleries show the samples themselves, losslessly: Gradio's default WebP would blur
    # the differences the page is for
    from entpruner_sdk.apps.demo import _pictures
    from entpruner_sdk.sampling import to_picture

    left, right = generate_pair(load_pair(*models), 2, seed=7, count=3, sampler="ddim",
                                steps=5, cfg_scale=2.0)
    for shown, side in ((original, left), (pruned, right)):
        assert [Path(item["image"]).suffix for item in shown] == [".png"] * 3
        for item, picture in zip(shown, _pictures(side.images), strict=True):
            assert np.array_equal(np.asarray(Image.open(item["image"])), np.asarray(picture))
    assert "images/s" in o_timing and "images/s" in p_timing and "speedup" in speedup
    # 8 x 8 digits are upscaled by a whole factor, and a 256 x 256 image (DiT-XL/2's) is
    # shown at its own size: shrunk to the small images' size it lost most of its pixels
    assert Image.open(original[0]["image"]).size == (96, 96)
    large = torch.rand(1, 3, 256, 256) * 2 - 1
    assert _pictures(large)[0].size == (256, 256)
    assert np.array_equal(np.asarray(_pictures(large)[0]),
                          np.asarray(to_picture(large[0])))
    assert o_timing.endswith(", 5 model calls") and p_timing.endswith(", 5 model calls")
    with pytest.raises(Exception, match="12 is not in the list of choices"):
        client.predict(12, 0, 1, "ddim", 2, 1.0, "PyTorch", api_name="/generate")
    table = client.predict(20, api_name="/evaluate")
    assert "fd_domain" in table and "fidelity to original: psnr" in table
    status, *_ = client.predict(models[0], str(tmp_path / "nowhere"), api_name="/load")
    assert "No pruned model" in status and "Traceback" not in status
    # a path pasted with the quotes and spaces a terminal or file manager copies with it
    status, *shown = client.predict(f" '{models[0]}' ", f'"{models[1]}"\n', api_name="/load")
    assert status.startswith("Loaded") and f"(`{models[1]}`)" in status
    # the samples and figures of the pair shown before are cleared, not left beside this one
    from entpruner_sdk.apps.demo import NO_EVALUATION

    assert shown[-6:] == [[], "", [], "", "", NO_EVALUATION]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium "
                    "(apt-get install -y chromium)")
def test_browser_end_to_end(running_demo):
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # not "networkidle": a page with session state keeps a heartbeat request open
            page.goto(running_demo, wait_until="load")
            page.get_by_text("Loaded: original").wait_for(timeout=30_000)
            page.locator("#generate").click()
            for side in ("original", "pruned"):
                page.locator(f"#{side}-gallery img").first.wait_for(timeout=60_000)
                assert page.locator(f"#{side}-gallery img").count() >= 4
                assert "images/s" in page.locator(f"#{side}-timing").inner_text()
                # the gallery is as tall as its images (one row of 4 here), with no empty half
                # below them nor a scroll bar: DEMO_CSS, which launch passes to Gradio
                gallery, grid = (page.locator(f"#{side}-gallery {part}").first.bounding_box()
                                 for part in (".grid-wrap", ".grid-container"))
                assert grid["height"] > 50 and gallery["height"] < grid["height"] + 40
            assert "speedup" in page.locator("#speedup").inner_text()
            page.screenshot(path=str(ARTIFACTS / "demo-generate.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "demo-generate.png").stat().st_size > 10_000


@pytest.mark.slow
def test_onnx_runtime_backend_matches_pytorch(models, tmp_path):
    pytest.importorskip("onnxruntime")
    pair = load_pair(*models, onnx=True)
    assert not pair.errors and set(pair.runtimes) == {"original", "pruned"}
    torch_side = generate_pair(pair, 1, 4, 2, "ddim", 4, 2.0, "PyTorch")
    onnx_side = generate_pair(pair, 1, 4, 2, "ddim", 4, 2.0, "ONNX Runtime")
    for a, b in zip(torch_side, onnx_side):
        torch.testing.assert_close(a.images, b.images, rtol=1e-3, atol=1e-3)
    # a kept export the disk damaged since is exported again, not an ONNX side lost for good
    from entpruner_sdk.utils.cache import cache_root

    kept = next((cache_root() / "exports").glob("teacher-*-onnx")) / "model.onnx"
    whole = kept.read_bytes()
    kept.write_bytes(whole[: len(whole) // 2])
    again = load_pair(*models, onnx=True)
    assert not again.errors and kept.stat().st_size == len(whole)
    onnx_again = generate_pair(again, 1, 4, 2, "ddim", 4, 2.0, "ONNX Runtime")
    for a, b in zip(onnx_side, onnx_again):
        torch.testing.assert_close(a.images, b.images)
    # a model retrained in place is exported again, even where its folder's time stayed
    # the same (the key was the path and that time: the old weights' export was reused)
    shutil.copytree(models[0], tmp_path / "teacher2")
    first = load_pair(str(tmp_path / "teacher2"), models[1], onnx=True)
    stamp = (tmp_path / "teacher2").stat().st_mtime_ns
    retrained = randomized(DiffusionTransformer(tiny_config("dit", depth=4)), seed=11)
    save(retrained, tmp_path / "teacher2")
    os.utime(tmp_path / "teacher2", ns=(stamp, stamp))
    second = load_pair(str(tmp_path / "teacher2"), models[1], onnx=True)
    assert second.runtimes["original"].fingerprint != first.runtimes["original"].fingerprint
    torch_side, onnx_side = (generate_pair(second, 1, 4, 2, "ddim", 4, 2.0, backend)
                             for backend in ("PyTorch", "ONNX Runtime"))
    torch.testing.assert_close(torch_side[0].images, onnx_side[0].images, rtol=1e-3,
                               atol=1e-3)


@pytest.fixture(scope="module")
def sit_models(tmp_path_factory):
    """A tiny SiT original and a 'pruned' model that keeps half its blocks."""
    root = tmp_path_factory.mktemp("sit-demo")
    teacher = randomized(DiffusionTransformer(tiny_config("sit", depth=4)), seed=3)
    save(teacher, root / "teacher")
    save(teacher.keep_blocks([0, 3]), root / "pruned")
    return str(root / "teacher"), str(root / "pruned")


def test_sit_sampler_settings_reach_both_sides(sit_models):
    from entpruner_sdk.apps.pair import governed_settings
    from entpruner_sdk.objectives import objective_for
    from entpruner_sdk.sampling import sample

    pair = load_pair(*sit_models)
    objective = objective_for(pair.original)
    every = dict(diffusion_form="SBDM", diffusion_norm=0.5, last_step="None",
                 last_step_size=0.04, atol=1e-4, rtol=1e-2)
    # each sampler takes its own; no last step's size without a last step
    assert governed_settings(objective, "heun", every) == {}
    assert governed_settings(objective, "dopri5", every) == {"atol": 1e-4, "rtol": 1e-2}
    assert governed_settings(objective, "euler-maruyama", every) == {
        "diffusion_form": "SBDM", "diffusion_norm": 0.5, "last_step": "None"}
    chosen = {"diffusion_form": "SBDM", "last_step": "Tweedie"}
    left, right = generate_pair(pair, 2, 4, 2, "euler-maruyama", 6, 2.0,
                                sampler_settings=chosen)
    for side, model in ((left, pair.original), (right, pair.pruned)):
        expected = sample(model, [2, 2], sampler="euler-maruyama", steps=6, cfg_scale=2.0,
                          seed=4, clip_denoised=True, device="cpu",
                          objective=objective.with_sampler_settings("euler-maruyama", **chosen))
        torch.testing.assert_close(side.images, expected)
    default, _ = generate_pair(pair, 2, 4, 2, "euler-maruyama", 6, 2.0)
    assert not torch.allclose(default.images, left.images)
    assert left.model_calls == 6  # 5 noisy steps and Tweedie's
    with pytest.raises(ValueError, match="the SDE's diffusion_norm must be >= 0"):
        generate_pair(pair, 2, 4, 1, "euler-maruyama", 6, 2.0,
                      sampler_settings={"diffusion_norm": -1.0})


def test_api_takes_the_sit_sampler_settings(sit_models, models):
    from gradio_client import Client

    from entpruner_sdk.apps.demo import launch

    port = free_port()
    demo = launch(*sit_models, port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        *_, speedup = client.predict(1, 0, 2, "heun-sde", 6, 2.0, "PyTorch", "SBDM", 1.0,
                                     "Tweedie", 0.04, 1e-6, 1e-3, api_name="/generate")
        assert ("6 steps, diffusion_form SBDM, diffusion_norm 1, last_step Tweedie, "
                "last_step_size 0.04; ") in speedup
        *_, speedup = client.predict(1, 0, 2, "heun", 6, 2.0, "PyTorch", "SBDM", 1.0,
                                     "Tweedie", 0.04, 1e-6, 1e-3, api_name="/generate")
        assert "6 steps; " in speedup  # heun takes none of them
        with pytest.raises(Exception, match="last_step_size must be in \\(0, 1\\)"):
            client.predict(1, 0, 1, "euler-maruyama", 6, 2.0, "PyTorch", "sigma", 1.0, "Mean",
                           2.0, 1e-6, 1e-3, api_name="/generate")
        # loading a DiT pair brings DiT's samplers, defaults, and no SiT settings
        client.predict(*models, api_name="/load")
        *_, speedup = client.predict(1, 0, 1, "ddim", 3, 2.0, "PyTorch", api_name="/generate")
        assert "3 steps; " in speedup
    finally:
        demo.close()


def test_each_viewer_keeps_the_pair_its_page_shows(models, sit_models):
    """One viewer's Load changed the models behind every open page (and behind pages opened
    later, which still showed the launched pair): a DiT page then sampled a SiT pair."""
    from gradio_client import Client

    from entpruner_sdk.apps.demo import launch

    port = free_port()
    demo = launch(*models, port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        presenter, viewer = Client(url, verbose=False), Client(url, verbose=False)
        status, *_ = presenter.predict(*sit_models, api_name="/load")
        assert status.startswith("Loaded: original SIT")
        assert f"(`{sit_models[0]}`)" in status and f"(`{sit_models[1]}`)" in status
        *_, speedup = presenter.predict(1, 0, 1, "heun", 3, 2.0, "PyTorch",
                                        api_name="/generate")
        assert "3 steps; " in speedup
        # the viewer's page, and one opened after the load, still sample the DiT pair
        for client in (viewer, Client(url, verbose=False)):
            original, *_, speedup = client.predict(1, 0, 1, "ddim", 3, 2.0, "PyTorch",
                                                   api_name="/generate")
            assert len(original) == 1 and "3 steps; " in speedup
            with pytest.raises(Exception, match="heun"):  # not among the DiT pair's samplers
                client.predict(1, 0, 1, "heun", 3, 2.0, "PyTorch", api_name="/generate")
    finally:
        demo.close()


@pytest.mark.parametrize("quiet", [False, True])
def test_the_command_says_what_it_loads_and_each_problem_the_page_shows(tmp_path, quiet):
    """A console said only that the server ran, while the page held a problem."""
    import subprocess
    import sys
    import threading

    port = free_port()
    command = [sys.executable, "-m", "entpruner_sdk", "demo", "--pruned",
               str(tmp_path / "nowhere"), "--port", str(port)] + (["--quiet"] if quiet else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines, deadline = [], threading.Timer(120, process.kill)  # a hung start ends the read
    deadline.start()
    try:
        for line in process.stdout:  # until the server runs; the problems come before
            lines.append(line)
            if "Running on" in line:
                break
    finally:
        deadline.cancel()
        process.kill()
        process.wait()
    said = "".join(lines)
    assert "Running on local URL" in said
    assert f"entpruner demo: problem: No pruned model at '{tmp_path / 'nowhere'}'" in said
    assert ("entpruner demo: loading" in said) is not quiet


def test_a_demo_open_to_the_network_asks_for_a_password_or_warns(models):
    """Other machines could sample and open any model path here from the Models panel."""
    import warnings

    from gradio_client import Client

    from entpruner_sdk.apps.demo import check_exposure, launch
    from entpruner_sdk.cli.demo import _user_and_password

    with pytest.warns(UserWarning, match="the demo on 0.0.0.0 asks for no password"):
        check_exposure("0.0.0.0", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_exposure("0.0.0.0", ("team", "s3cret"))
        check_exposure("127.0.0.1", None)
    assert _user_and_password("team:s3:cret") == ("team", "s3:cret")
    with pytest.raises(ValueError, match="takes USER:PASSWORD, both non-empty"):
        _user_and_password("team")
    port = free_port()
    demo = launch(*models, port=port, block=False, auth=("team", "s3cret"))
    try:
        url = f"http://127.0.0.1:{port}/"
        from gradio_client.exceptions import AuthenticationError

        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        client = Client(url, auth=("team", "s3cret"), verbose=False)
        original, *_ = client.predict(1, 0, 1, "ddim", 2, 1.0, "PyTorch", api_name="/generate")
        assert len(original) == 1
    finally:
        demo.close()


def test_the_demo_refuses_a_taken_port_before_loading_its_models(tmp_path, monkeypatch,
                                                                 capsys):
    import socket

    from entpruner_sdk.apps.demo import launch
    from entpruner_sdk.cli import main

    nowhere = str(tmp_path / "nowhere")  # would load as an error panel: never reached
    with pytest.raises(ValueError, match=r"port 70000 is not a TCP port"):
        launch(nowhere, nowhere, port=70000, block=False)
    with socket.socket() as holder:  # a server started earlier on the same port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            launch(nowhere, nowhere, port=port, block=False)
        # the command says so alone, without first promising that the demo starts anyway
        monkeypatch.chdir(tmp_path)  # no runs/quickstart model here: the note's case
        assert main(["demo", "--port", str(port)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"entpruner demo: error: cannot listen on 127.0.0.1:{port}: Address already in "
            "use; choose another --port, or stop what holds it"]


def test_stop_ends_a_slow_generate_and_frees_the_model_thread(tmp_path):
    """A slow request (16 images at 250 steps) held the one model thread until it ended."""
    import threading
    import time

    from gradio_client import Client

    from entpruner_sdk.apps.demo import launch
    from entpruner_sdk.apps.pair import Stopped
    from entpruner_sdk.teachers import resolve_model

    teacher = resolve_model("sit-digits")  # large enough that 250 steps take seconds here
    save(teacher.keep_blocks([0, 5, 11]), tmp_path / "pruned")
    pair = load_pair("sit-digits", str(tmp_path / "pruned"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped, match="stopped after 0 model calls"):
        generate_pair(pair, 1, 0, 2, "heun", 25, 2.0, stop=stop)
    port = free_port()
    demo = launch("sit-digits", str(tmp_path / "pruned"), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        settings = ("sigma", 1.0, "Mean", 0.04, 1e-6, 1e-3)
        job = client.submit(1, 0, 16, "heun", 250, 2.0, "PyTorch", *settings,
                            api_name="/generate")
        while job.status().code.name != "PROCESSING" and not job.done():
            time.sleep(0.05)
        time.sleep(0.5)  # into the sampling
        client.predict(api_name="/stop")
        assert all(output == {"__type__": "update"} for output in job.result())  # kept
        # the page's next Generate runs to the end
        original, *_, speedup = client.predict(1, 0, 2, "heun", 3, 2.0, "PyTorch", *settings,
                                               api_name="/generate")
        assert len(original) == 2 and "3 steps; " in speedup
    finally:
        demo.close()


def test_the_quick_evaluation_shows_its_batches_and_stops_between_them(models):
    """Its bar sat at 5% until both models had sampled, and nothing could stop it."""
    import threading

    from entpruner_sdk.apps.demo import _quick_evaluation
    from entpruner_sdk.apps.pair import Stopped

    pair, stop, shown = load_pair(*models), threading.Event(), []

    def progress(fraction: float, desc: str = "") -> None:
        shown.append((fraction, desc))
        if desc == "sampling the original model: batch 2 of 5":
            stop.set()  # as the page's Stop would, while batch 3 samples

    with pytest.raises(Stopped, match="stopped after 2 of 5 batches of the pruned model"):
        _quick_evaluation(pair, 20, None, progress, stop)
    # the two models sample batch by batch in turn, so their times compare, the order
    # reversed every other batch
    descriptions = [desc for _, desc in shown[1:]]
    assert descriptions == [f"sampling the {side} model: batch {b} of 5" for b, side in (
        (1, "pruned"), (1, "original"), (2, "original"))]
    fractions = [fraction for fraction, _ in shown]
    assert fractions == sorted(fractions) and fractions[3] == pytest.approx(0.29)
    table = _quick_evaluation(pair, 20, None, lambda *args, **kwargs: None, threading.Event())
    assert "| fd_domain |" in table


def test_the_shelf_keeps_its_capacity_and_loads_a_dropped_pair_again():
    from entpruner_sdk.apps.pair import ModelPair, PairShelf

    loads = []

    def load(original, pruned):
        loads.append((original, pruned))
        return ModelPair(original_source=original)

    shelf = PairShelf(load, capacity=2)
    first = shelf.get(PairShelf.key(None, "a"))
    assert shelf.get(("", "a")) is first and loads == [(None, "a")]
    shelf.get(PairShelf.key("t", "b"))
    shelf.get(PairShelf.key("t", "c"))  # drops ("", "a"), the least recently used
    assert len(shelf) == 2 and shelf.get(("", "a")) is not first
    assert loads[-1] == (None, "a") and len(loads) == 4
    assert shelf.get(("t", "c"), reload=True) is not None and len(loads) == 5
    with pytest.raises(ValueError, match="at least one pair"):
        PairShelf(load, capacity=0)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium "
                    "(apt-get install -y chromium)")
def test_browser_shows_an_unstable_sit_setting_and_why(sit_models):
    """The SiT settings are on the page, and an unstable choice (Heun-SDE at 5 steps) still
    samples, with a warning that says why and what mends it."""
    playwright = pytest.importorskip("playwright.sync_api")
    from entpruner_sdk.apps.demo import launch

    port = free_port()
    demo = launch(*sit_models, port=port, block=False)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
                page.get_by_text("Loaded: original SIT").wait_for(timeout=30_000)
                page.get_by_text("SiT sampler settings").click()
                assert page.get_by_label("last step size (SDE)").input_value() == "0.04"
                page.get_by_label("sampler", exact=True).click()
                page.get_by_role("option", name="heun-sde", exact=True).click()
                steps = page.get_by_label("number input for steps")
                steps.fill("5")
                steps.press("Enter")
                page.locator("#generate").click()
                warning = page.get_by_text("heun-sde x 5 with diffusion_form sigma").first
                warning.wait_for(timeout=60_000)
                assert "take more than 5 steps" in warning.inner_text()
                page.locator("#pruned-gallery img").first.wait_for(timeout=60_000)
                assert "last_step Mean" in page.locator("#speedup").inner_text()
                page.screenshot(path=str(ARTIFACTS / "demo-sit-settings.png"), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()
