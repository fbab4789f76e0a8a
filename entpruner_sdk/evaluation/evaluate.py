"""``evaluate``: the figures a user judges a (pruned) model by, in one call.

- FID with the standard Inception features (when the ``fid`` extra is installed);
- FD-domain: the Fréchet distance in the feature space of the dataset's own small classifier
  (fast; reported under that name, never as FID);
- precision / recall (k-NN manifolds) in each feature space;
- class accuracy (overall and per class) and per-class diversity;
- with ``original``: the same figures of the original's samples, drawn from identical noise and
  labels, side by side with the model's; and fidelity to them (PSNR, SSIM, Inception and
  domain feature cosine distance).

The steps live beside it: ``reference`` (the real data), ``generation`` (the samples),
``batches`` (kept on disk as they finish), ``features`` (the feature spaces) and ``report``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from entpruner_sdk.data.datasets import DataError, fit_class_names
from entpruner_sdk.data.latents import LatentSpace, decoder_for, is_latent
from entpruner_sdk.evaluation.batches import EvaluationBatches
from entpruner_sdk.evaluation.classifier import domain_classifier, predict
from entpruner_sdk.evaluation.features import DomainFeatures, feature_extractors, sharded_features
from entpruner_sdk.evaluation.fidelity import feature_cosine_distance, psnr, ssim
from entpruner_sdk.evaluation.generation import (
    balanced_labels,
    generate_side_by_side,
    warm_up_for_batches,
)
from entpruner_sdk.evaluation.likelihood import check_pixel_model, paired_likelihood
from entpruner_sdk.evaluation.metrics import (
    FeatureStats,
    TooFewSamples,
    frechet_distance,
    per_class_diversity,
    precision_recall,
)
from entpruner_sdk.evaluation.reference import (
    REFERENCE_SIZE,
    load_reference,
    reference_data,
    reference_stats,
)
from entpruner_sdk.evaluation.report import EvaluationReport
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.sampling import (
    RuntimeDenoiser,
    check_cfg_scale,
    check_compile_mode,
    objective_of,
)
from entpruner_sdk.teachers import as_model
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.device import arithmetic, resolve_device
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.files import check_output_path
from entpruner_sdk.utils.timing import CallCounter

FEATURES = ("domain", "inception")


def differences_but_depth(original: DiffusionTransformer | RuntimeDenoiser,
                          model: DiffusionTransformer | RuntimeDenoiser) -> list[str]:
    """The config fields, other than depth, in which two models differ ("num_heads 16 vs 4"),
    and SiT's flow path ("flow path linear vs gvp"): the same weights on another path are
    sampled as another model."""
    ours, theirs = asdict(model.config), asdict(original.config)
    differ = [f"{key} {theirs[key]} vs {ours[key]}" for key in ours
              if key != "depth" and ours[key] != theirs[key]]
    # a model's objective settings, or an export's objective: the path is asked of either
    paths = [getattr(objective_of(m), "path", None) for m in (original, model)]
    if model.family == original.family == "sit" and paths[0] != paths[1]:
        differ.append(f"flow path {paths[0]} vs {paths[1]}")
    return differ


def check_same_but_depth(original: DiffusionTransformer | RuntimeDenoiser,
                         model: DiffusionTransformer | RuntimeDenoiser) -> None:
    """Fidelity compares two models on identical inputs: only their depth may differ."""
    differ = differences_but_depth(original, model)
    if not differ:
        return
    ours, theirs = model.config, original.config
    resized = model.provenance.get("resized_classes")
    hint = (f"; compress resized this model's label embedder from {resized['from']} to "
            f"{resized['to']} classes: pass entpruner_sdk.compress.as_compressed(original, "
            "model) as the original, resized the same way (the CLI does)"
            if resized and ours.num_classes != theirs.num_classes else "")
    raise ValueError(f"the original and the evaluated model differ in more than depth "
                     f"(original vs evaluated: {', '.join(differ)}){hint}")


def evaluate(
    model: DiffusionTransformer | RuntimeDenoiser | str | os.PathLike,
    data: Any,
    *,
    samples: int = 1000,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    original: DiffusionTransformer | RuntimeDenoiser | str | os.PathLike | None = None,
    features: tuple[str, ...] = FEATURES,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = True,
    model_name: str = "model",
    original_images: torch.Tensor | None = None,
    vae: LatentSpace | str | os.PathLike | None = None,
    reference_size: int | None = REFERENCE_SIZE,
    checkpoint_dir: str | os.PathLike | None = None,
    keep_batches: bool = False,
    sampler_settings: dict[str, float | str] | None = None,
    likelihood: int = 0,
    likelihood_steps: int | None = None,
    on_batch: Callable[[str, int, int], None] | None = None,
    compile: str | None = None,
) -> EvaluationReport:
    """Sample ``samples`` class-balanced images from ``model`` and compare them with ``data``.
    ``model`` and ``original``: models, or bundled teachers' names or saved models' paths, or
    exports opened with ``entpruner_sdk.export.load_exported``: an export is measured as its
    model is, from the same noise, so ``evaluate(export, data, original=model)`` says what the
    export's precision and runtime cost in quality (the report's ``settings["runtime"]``
    names them).

    ``sampler``, ``steps`` and ``cfg_scale`` left out are the family's defaults
    (``Objective.sampling_defaults``), as :func:`entpruner_sdk.sample` takes them.

    ``features`` picks the feature spaces: ``"domain"`` (fast) and/or ``"inception"`` (standard
    FID; needs the ``fid`` extra). ``original``: also sample that model from the same noise
    and labels, batch by batch in turn with the model so that ``settings["sampling_speedup"]``
    compares their times side by side, and report its figures (``report.original_metrics``,
    equal to its own evaluation's ``metrics``) and the model's fidelity to it;
    ``original_images``: its samples from an evaluation with the same samples, seed and
    sampler (that report's ``images``), so they are not drawn a second time.

    ``vae``: for a latent model (DiT-XL/2, SiT-XL/2), the VAE (a ``LatentSpace`` or its
    folder) that decodes the samples, so every figure is measured on images; ``data`` may then
    be real images of the decoded size or the latents they were encoded to (decoded once and
    cached). Without it a latent model is measured in latent space, with ``("domain",)`` only.

    ``reference_size``: at most that many real images, balanced over the classes, make the
    reference (None: all of them); ``StreamedImages`` (``open_data``) read only those, and
    none when the domain classifier and reference statistics made from them are cached.

    The samples (``report.images``) are held as the reference is: 8-bit pixels (uint8) against
    8-bit real images (a folder, a uint8 ``.npz``, decoded latents), each rounded as a saved
    image would be, else floats; ``settings["samples_held"]`` says which.

    ``checkpoint_dir``: every finished batch of samples is written there, so a rerun after a
    crash or Ctrl-C, with the same models and settings, continues from the batches already
    made (and makes the same samples as an uninterrupted run); removed when the evaluation
    ends, unless ``keep_batches``: then the caller removes them (``report.kept_batches``)
    once every evaluation that a rerun would repeat has ended (a caller that evaluates one
    model, then another against its samples: a crash in the second must not cost the first
    its samples).

    ``sampler_settings``: a SiT sampler's settings (``atol`` / ``rtol`` for dopri5;
    ``diffusion_form``, ``diffusion_norm``, ``last_step`` / ``last_step_size`` for the SDE
    samplers); the report states the ones that govern the sampler used.

    ``likelihood``: also measure the bits per dimension of that many real images of ``data``
    (class-balanced, chosen by ``seed``) under the model, and under ``original`` on the same
    images with the same noise, with their paired difference (``report.likelihood``).
    ``likelihood_steps``: SiT's ODE steps (50), DiT's bound's timesteps (1000).

    ``on_batch``: called after each batch of samples with whose they are (``model_name`` or
    ``"original"``), the batches made and their count, for a progress display; what it raises
    ends the evaluation (a page's Stop), keeping the batches made in ``checkpoint_dir``.

    ``compile``: sample the PyTorch models through ``torch.compile`` in this mode (one of
    ``sampling.COMPILE_MODES``; ``"reduce-overhead"``: CUDA graphs), compiled for the batch
    size (and a smaller last batch) before the timed sampling, so ``settings`` holds
    ``compile_seconds``, what compiling took, apart from ``sampling_seconds``. Kept batches of
    an evaluation made without it serve one made with it, and the other way round: the
    samples differ by float error only.
    """
    model = sampled_model(model)
    original = sampled_model(original, "original") if original is not None else None
    _check_request(model, features, vae, original, original_images, samples, batch_size,
                   likelihood)
    _check_compile(compile, model, original)
    # refused before any work when they do not apply; stated in the report and the batch key
    objective = objective_of(model)
    # the family's defaults for what is not given, named in the report
    settled = objective.settle_sampling(sampler, steps, cfg_scale)
    sampler_used, steps, cfg_scale = settled["sampler"], settled["steps"], settled["cfg_scale"]
    objective.check_steps(sampler_used, steps)
    check_cfg_scale(cfg_scale)
    if checkpoint_dir is not None:
        check_output_path(checkpoint_dir, folder=True)
    if likelihood:
        objective.likelihood_steps(likelihood_steps)  # a DiT's bound of 1 timestep is refused
    governing = (objective.with_sampler_settings(sampler_used,
                                                 **(sampler_settings or {}))
                 .settings_for(sampler))
    device = resolve_device(device)
    data, available = load_reference(data, reference_size)
    # the model's ids for the data's classes, matched by name (folders are numbered A to Z)
    data = fit_class_names(data, model.provenance.get("class_names"))
    decoder = decoder_for(model.config, vae, device) if vae is not None else None
    # under torchrun rank 0 makes (and caches) what the data lacks, a trained classifier or
    # decoded latents, and the other processes then read it
    data = distributed.main_first(lambda: reference_data(model, data, decoder, progress))
    # only the classes the data holds: samples of a class with no real images have nothing
    # to be compared with (a model of 1000 classes fine-tuned on a few of them)
    classes = data.classes_present
    labels = balanced_labels(samples, classes)
    # the samples are held as the real images are: 8-bit when those are (image files, decoded
    # latents), so both sides are measured after the same rounding to saved pixels, as the
    # standard FID protocol does, and 10,000 samples at 256 x 256 take 1.9 GB, not 7.5
    sampling = dict(sampler=sampler_used, steps=steps, cfg_scale=cfg_scale, device=device,
                    as_eight_bit=data.is_eight_bit,
                    **({"sampler_settings": governing} if governing else {}))
    run = dict(seed=seed, batch_size=batch_size, progress=progress, decoder=decoder,
               compile=compile, **sampling)
    # the original sampled with the model, batch by batch in turn, so their times compare
    sampled = {"model": model, **({"original": original}
                                  if original is not None and original_images is None else {})}
    # the batch folders are this run's until it ends, however it ends
    with EvaluationBatches(checkpoint_dir, labels, seed, batch_size, sampling, decoder) as kept:
        images, resumed, timing, notes = _timed_samples(sampled, model_name, kept, labels,
                                                        on_batch, run)
        report = EvaluationReport(
            images=images["model"], labels=labels, classes=classes, settings=dict(
                model=model_name, samples=samples, sampler=sampler_used, steps=steps,
                **({"sampler_settings": governing} if governing else {}), cfg_scale=cfg_scale,
                seed=seed, reference=data.name, reference_size=len(data),
                device=str(device), processes=distributed.world_size(), features=list(features),
                **timing, samples_held="uint8" if data.is_eight_bit else "float32",
                **({"compile": compile} if compile else {}),
                **({"vae": decoder.fingerprint} if decoder is not None else {}),
                **_arithmetic(model, original, device), **_runtimes(model, original)))
        _note_scope(report, model, data, available, resumed["model"], batch_size)
        report.notes += notes
        classifier = distributed.main_first(
            lambda: domain_classifier(data, progress=progress, device=device))
        extractors = feature_extractors(features, classifier, device, report.notes)
        generated = _model_figures(report, data, classifier, extractors, progress)
        if original is not None:
            _original_figures(report, images.get("original", original_images), generated, data,
                              classifier, extractors, progress)
        if likelihood:
            report.likelihood = paired_likelihood(model, original, data, likelihood,
                                                  steps=likelihood_steps, seed=seed, device=device,
                                                  progress=progress)
        if keep_batches:
            report.kept_batches = [batches.directory for batches in kept.made]
        else:
            kept.clear()
        return report


def _timed_samples(models: dict[str, DiffusionTransformer | RuntimeDenoiser],
                   model_name: str, kept: EvaluationBatches, labels: torch.Tensor,
                   on_batch: Callable[[str, int, int], None] | None, run: dict[str, Any]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, Any],
                              list[str]]:
    """The samples of the ``"model"`` (named ``model_name``) and of the ``"original"`` when
    it is given, made batch by batch in turn; how many of each one's batches an interrupted
    run had kept; their timing settings; and the notes a reader needs about them.

    Each model runs at its steady speed: each batch size is sampled once before the clock
    starts, which compiles a compiled model (``compile_seconds``, with ``run["compile"]``)
    and spares the first batch an eager model's first-call costs. Then ``sampling_seconds``,
    what its batches of this run took, and ``model_calls``, their denoiser calls (a guided
    call, both halves at once, counts one): what an adaptive sampler really cost. The
    original's keys are prefixed ``original_``; with it, the model's speedup (see
    :func:`_speedup`)."""
    names = {"model": model_name, "original": "original"}
    finished = {role: kept.of(model, names[role]) for role, model in models.items()}
    compile_seconds = {role: warm_up_for_batches(model, labels, finished=finished[role], **run)
                       for role, model in models.items()}
    counters = {role: CallCounter() for role in models}
    sampled = generate_side_by_side(
        models, labels, desc="sampling " + " and ".join(names[role] for role in models),
        finished=finished, counters=counters,
        on_batch=on_batch and (lambda role, done, total: on_batch(names[role], done, total)),
        **run)
    calls = torch.tensor([counters[role].calls for role in models])  # every process's
    distributed.all_reduce_sum_([calls])
    timing: dict[str, Any] = {}
    for (role, of_model), model_calls in zip(sampled.items(), calls.tolist(), strict=True):
        prefix = "original_" if role == "original" else ""
        if run["compile"]:
            timing[f"{prefix}compile_seconds"] = compile_seconds[role]
        timing[f"{prefix}sampling_seconds"] = of_model.seconds
        timing[f"{prefix}model_calls"] = int(model_calls)
    notes = []
    if "original" in sampled:
        notes = _speedup(sampled["model"].batch_seconds, sampled["original"].batch_seconds,
                         -(-len(labels) // run["batch_size"]), timing)
    return ({role: of_model.images for role, of_model in sampled.items()},
            {role: kept.loaded_by_all(finished[role]) for role in models}, timing, notes)


def _speedup(seconds: dict[int, float], original_seconds: dict[int, float], batches: int,
             timing: dict[str, Any]) -> list[str]:
    """The model's speedup, into ``timing``: the median, over the batches both made in this
    run, of the batch's ratio of the original's seconds to the model's (each pair made one
    after the other, so under much the same load; a burst of load that hits one pair moves
    the median little), with the lowest and highest ratio; and the notes on what it covers.
    Batches an interrupted run kept have no time, and a pair with one of them is left out."""
    pairs = [b for b in sorted(set(seconds) & set(original_seconds)) if seconds[b] > 0]
    if not pairs:
        return ["no sampling speedup is given: no batch was made by both models in this run "
                "(the others were made before an interruption)"]
    ratios = [original_seconds[b] / seconds[b] for b in pairs]
    timing.update(sampling_speedup=statistics.median(ratios),
                  sampling_speedup_range=[min(ratios), max(ratios)],
                  sampling_speedup_batches=len(pairs))
    if len(pairs) < batches:
        return [f"the sampling speedup is timed over the {len(pairs)} of the {batches} batches "
                "both models made in this run (the others were made before an interruption)"]
    return []


def sampled_model(model: DiffusionTransformer | RuntimeDenoiser | str | os.PathLike,
                  role: str = "model") -> DiffusionTransformer | RuntimeDenoiser:
    """What ``evaluate`` samples: a model as every verb takes it (``as_model``), or an export
    opened by its runtime (``entpruner_sdk.export.load_exported``) as it is."""
    return model if isinstance(model, RuntimeDenoiser) else as_model(model, role)


def _arithmetic(model, original, device: torch.device) -> dict[str, str]:
    """How the PyTorch models sampled computed: bf16 autocast on a GPU by default
    (``$ENTPRUNER_AUTOCAST``); an export's runtime states its own precision."""
    sampled = [m for m in (model, original) if m is not None]
    if all(isinstance(m, RuntimeDenoiser) for m in sampled):
        return {}
    return {"arithmetic": arithmetic(device)}


def _runtimes(model, original) -> dict[str, Any]:
    """The report's word on what ran an export: its format, precision and backend."""
    return {key: sampled.runtime for key, sampled in (("runtime", model),
                                                       ("original_runtime", original))
            if isinstance(sampled, RuntimeDenoiser)}


def _check_compile(mode: str | None, *models: DiffusionTransformer | RuntimeDenoiser | None
                   ) -> None:
    """A compile mode is one on offer, and every model sampled is a PyTorch model."""
    check_compile_mode(mode)
    if mode is not None and any(isinstance(m, RuntimeDenoiser) for m in models):
        raise ValueError("compile applies to PyTorch models, and an export's graphs were fixed "
                         "when it was exported: drop compile= (--compile), or evaluate the "
                         "model the export was made from")


def _check_request(model: DiffusionTransformer | RuntimeDenoiser, features: tuple[str, ...],
                   vae: Any, original: DiffusionTransformer | RuntimeDenoiser | None,
                   original_images: torch.Tensor | None, samples: int,
                   batch_size: int, likelihood: int = 0) -> None:
    """Refuse, before any sampling, what the evaluation cannot measure."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: at least 1 sample at a time "
                         "(--batch-size N)")
    if likelihood < 0:
        raise ValueError(f"likelihood={likelihood}: the number of real images to measure, "
                         "0 for none")
    if likelihood:
        if any(isinstance(m, RuntimeDenoiser) for m in (model, original)):
            raise ValueError("the likelihood needs the PyTorch model (SiT's ODE likelihood "
                             "differentiates it): evaluate the model the export was made from "
                             "with likelihood=, and the export without")
        check_pixel_model(model)
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown feature spaces {sorted(unknown)}; choose from {FEATURES}")
    if vae is None and is_latent(model.config) and "inception" in features:
        raise DataError("Inception features need images but this model samples VAE latents: "
                        "pass vae= (--vae DIR) to decode them, or features=('domain',) "
                        "(--features domain) to measure in latent space")
    if original is not None:
        check_same_but_depth(original, model)
    if original_images is not None and (original is None or original_images.shape[0] != samples):
        raise ValueError("original_images are the original's samples for this evaluation: "
                         f"pass original= too, and {samples} of them (got "
                         f"{original_images.shape[0]})")
    if samples < 2:
        raise TooFewSamples(f"samples={samples}: at least 2 are needed for a covariance "
                            "(and a few hundred for a stable FID)")


def _note_scope(report: EvaluationReport, model: DiffusionTransformer, data,
                available: int, resumed: int, batch_size: int) -> None:
    """Say what the figures cover, where it is not the whole of what was asked."""
    samples = report.settings["samples"]
    if resumed:
        report.settings["batches_resumed"] = resumed
        report.notes.append(f"{resumed} of the {-(-samples // batch_size)} sample batches were "
                            "made before an interruption and kept on disk; sampling_seconds "
                            "counts only this run's")
    if len(report.classes) < model.config.num_classes:
        report.notes.append(f"{data.name} holds {len(report.classes)} of the model's "
                            f"{model.config.num_classes} classes; only those were sampled")
    if len(data) < available:
        report.notes.append(f"the reference is {len(data)} of the {available} images of "
                            f"{data.name}, balanced over the classes (reference_size=, "
                            "--reference-size)")


def _class_figures(report: EvaluationReport, classifier, data) -> None:
    """Class accuracy, overall and per class, by the dataset's own classifier."""
    labels, classes = report.labels, report.classes
    predictions = predict(classifier, report.images)
    if data.named:
        report.class_names = [data.class_names[c] for c in classes]
    report.metrics["class_accuracy"] = _accuracy(predictions, labels)
    report.per_class_accuracy = _per_class_accuracy(predictions, labels, classes)


def _model_figures(report: EvaluationReport, data, classifier, extractors: dict[str, Any],
                   progress: bool) -> dict[str, torch.Tensor]:
    """The model's figures against ``data``: class accuracy, each feature space's distances
    and the per-class diversity. Returns the samples' features, which fidelity reuses."""
    _class_figures(report, classifier, data)
    # the networks behind the figures: class accuracy and FD-domain are only comparable
    # between reports that name the same domain classifier
    report.settings["feature_networks"] = {
        "domain": network_fingerprint(classifier),
        **{name: extractor.fingerprint for name, extractor in extractors.items()}}
    figures, generated = _distribution_figures(report.images, data, extractors, progress,
                                               report.notes)
    report.metrics.update(figures)
    domain = generated.get("domain")
    if domain is None:
        domain = DomainFeatures(classifier)(report.images)
    report.per_class_diversity = per_class_diversity(domain, report.labels, report.classes)
    return generated


def _original_figures(report: EvaluationReport, original_images: torch.Tensor,
                      generated: dict[str, torch.Tensor], data, classifier,
                      extractors: dict[str, Any], progress: bool) -> None:
    """The original's figures from its samples, measured as the model's were (the comparison
    a user makes, at the cost of its samples' features, which fidelity needs anyway), and the
    model's fidelity to it."""
    figures, of_original = _distribution_figures(original_images, data, extractors, progress)
    labels = report.labels
    predictions = predict(classifier, original_images)
    report.original_metrics = {"class_accuracy": _accuracy(predictions, labels), **figures}
    # which classes the model lost or kept, beside its own per-class figures
    report.original_per_class_accuracy = _per_class_accuracy(predictions, labels,
                                                             report.classes)
    report.fidelity = _fidelity(report.images, original_images, generated, of_original)


def _accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).double().mean())


def _per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor,
                        classes: list[int]) -> list[float]:
    return [float((predictions[labels == c] == c).double().mean()) if (labels == c).any()
            else 0.0 for c in classes]


def _distribution_figures(images: torch.Tensor, data, extractors: dict[str, Any],
                          progress: bool, notes: list[str] | None = None
                          ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The Fréchet distance and precision / recall of ``images`` against the reference in
    each feature space, and the images' features, which fidelity and diversity reuse.
    ``notes`` takes what a reader must know about the figures."""
    figures, generated = {}, {}
    for name, extractor in extractors.items():
        real_stats, real_features = reference_stats(data, extractor, name, progress)
        fake = sharded_features(extractor, images, progress)
        generated[name] = fake
        distance = "fid" if name == "inception" else "fd_domain"
        figures[distance] = frechet_distance(FeatureStats.of(fake), real_stats)
        figures[f"precision_{name}"], figures[f"recall_{name}"] = precision_recall(
            real_features, fake)
        if notes is not None and len(fake) <= fake.shape[1]:
            notes.append(f"{name}: {len(fake)} samples for {fake.shape[1]}-d features; "
                         "the covariance is rank-deficient and the distance is biased "
                         "upward, compare only figures with equal sample counts")
    return figures, generated


def _fidelity(images, reference, features: dict[str, torch.Tensor],
              reference_features: dict[str, torch.Tensor], chunk: int = 256
              ) -> dict[str, float]:
    # pair by pair, a chunk at a time: 8-bit samples are never held as floats whole
    pairs = list(zip(images.split(chunk), reference.split(chunk)))
    out = {"psnr": float(torch.cat([psnr(a, b) for a, b in pairs]).mean()),
           "ssim": float(torch.cat([ssim(a, b) for a, b in pairs]).mean())}
    for name, ours in features.items():
        distance = feature_cosine_distance(ours, reference_features[name])
        out[f"{name}_cosine_distance"] = float(distance.mean())
    return out
