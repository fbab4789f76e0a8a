"""Seeded class-conditional sampling: the pipeline that ties a model to its objective."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from entpruner_sdk.data.classes import resolve_labels
from entpruner_sdk.data.datasets import eight_bit
from entpruner_sdk.data.latents import is_latent
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.transformer import COMPILED_CACHE, DiffusionTransformer
from entpruner_sdk.objectives import ModelFn, Objective, guided, objective_for
from entpruner_sdk.objectives.base import SplitGenerator, normal
from entpruner_sdk.teachers import as_model
from entpruner_sdk.utils.device import autocast, resolve_device
from entpruner_sdk.utils.progress import progress_bar
from entpruner_sdk.utils.timing import CallCounter

if TYPE_CHECKING:  # PIL is imported where pictures are made
    from PIL import Image

# guided_fn(x_t, model_time, labels, scale [N]) -> guided output
GuidedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# the torch.compile modes that sampling, the server and evaluate offer ("default";
# "reduce-overhead" and "max-autotune" capture CUDA graphs on a GPU)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@runtime_checkable
class RuntimeDenoiser(Protocol):
    """A denoiser another runtime runs (an export's ONNX Runtime session, AOTInductor package
    or TensorRT engine: ``entpruner_sdk.export.load_exported`` opens one) that samples through
    this module's pipeline. ``sample`` and ``evaluate`` take one where they take a model, so
    an export is measured exactly as the model it was made from."""

    config: TransformerConfig
    objective: Objective

    @property
    def provenance(self) -> dict[str, Any]:
        """The exported model's provenance (kept blocks, classes, compression)."""

    @property
    def fingerprint(self) -> str:
        """Names these exact graphs and weights (what a resumed evaluation keys its batches
        by)."""

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs it: the format, the precision and the backend (reports state it)."""

    def sample(self, labels: Sequence[int | str] | torch.Tensor, *, sampler: str | None = None,
               steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
               clip_denoised: bool = False, noise: torch.Tensor | None = None,
               progress: bool = False, objective: Objective | None = None,
               counter: CallCounter | None = None) -> torch.Tensor:
        """The images :func:`sample` gives for the model it was made from."""


def objective_of(model: DiffusionTransformer | RuntimeDenoiser) -> Objective:
    """The objective a model, or an export of one, samples with."""
    return model.objective if isinstance(model, RuntimeDenoiser) else objective_for(model)


def class_ids(labels: Sequence[int | str] | torch.Tensor, num_classes: int,
              class_names: Sequence[str] = ()) -> Sequence[int] | torch.Tensor:
    """``labels`` as class ids: a tensor or ids as they are; names (``"coffee"``) looked up
    in ``class_names``, as the CLI and the server do (``resolve_labels``)."""
    if isinstance(labels, torch.Tensor) or not any(isinstance(x, str) for x in labels):
        return labels
    return resolve_labels(labels, num_classes, class_names)


def check_cfg_scale(cfg_scale: float) -> None:
    """Refuse a guidance scale that is negative or not finite, as the server does: 1 is
    unguided, 0 the unconditional model, above 1 guided."""
    if not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale} (1 = "
                         "unguided, 0 = the unconditional model, 4 = the DiT paper's figures)")


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Refuse a class label outside ``0..num_classes - 1``, naming it."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"unknown class label {int(labels[bad][0])}: this model has classes "
            f"0..{num_classes - 1}"
        )


@torch.no_grad()
def sample(
    model: DiffusionTransformer | RuntimeDenoiser | str | os.PathLike,
    labels: Sequence[int | str] | torch.Tensor,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    objective: Objective | None = None,
    device: str | torch.device | None = None,
    clip_denoised: bool = False,
    reference_cfg: bool = False,
    noise: torch.Tensor | None = None,
    progress: bool = False,
    compile: bool | str = False,
    counter: CallCounter | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Generate one image per label from ``model`` (a model, or a bundled teacher's name or
    a saved model's path); returns [N, C, H, W] on the CPU. A label is a class id or, when
    the model knows its classes' names, a name. ``sampler``, ``steps`` and ``cfg_scale``
    left out are the family's defaults (``Objective.sampling_defaults``: DDIM x 50 for DiT,
    Heun x 25 for SiT, both guided at 2), those of every verb that samples.

    The initial noise and every per-step noise come from a CPU generator seeded with ``seed``,
    so a seed gives the same images on any device (up to the device's arithmetic). The model
    is moved to ``device`` (in place, as ``model.to``) when it is elsewhere.
    ``sampler``: ``ddpm`` / ``ddim`` / ``dpm-solver++`` for DiT, ``euler`` / ``heun`` /
    ``euler-maruyama`` / ``heun-sde`` / ``dopri5`` for SiT. The SDE samplers are the SiT
    reference's (``objective=FlowMatching(..., diffusion_form=, diffusion_norm=, last_step=,
    last_step_size=)`` sets their diffusion and last step); ``dopri5`` is adaptive:
    ``steps`` caps its steps and its tolerances are the objective's,
    ``objective=FlowMatching(..., atol=, rtol=)``.
    ``compile``: ``True`` runs the denoiser through ``torch.compile``; ``"reduce-overhead"``
    also captures it in CUDA graphs (fixed shapes, the fastest on GPUs for a sampling loop);
    the compiled module is cached on the model, so the compile cost is paid once.
    ``counter`` (a :class:`CallCounter`) counts the model calls the sampler makes.
    ``batch_size``: sample that many images at a time, batch b seeded ``seed + b`` as
    ``evaluate``'s batches are (None: all at once, seeded ``seed``; so do as many or fewer);
    :func:`sample_batches` yields the same batches one at a time, as they are made.
    An export (a :class:`RuntimeDenoiser`) samples where its runtime was opened; ``device``,
    ``compile`` and ``reference_cfg`` are for PyTorch models.
    """
    if batch_size is not None and (batch_size < 1 or len(labels) > batch_size):
        return torch.cat(list(sample_batches(
            model, labels, batch_size, seed=seed, noise=noise, progress=progress,
            sampler=sampler, steps=steps, cfg_scale=cfg_scale, objective=objective,
            device=device, clip_denoised=clip_denoised, reference_cfg=reference_cfg,
            compile=compile, counter=counter)))
    if isinstance(model, RuntimeDenoiser):
        if compile or reference_cfg:
            raise ValueError("compile and reference_cfg apply to a PyTorch model, not an "
                             "export: its graphs are fixed when it is exported")
        return model.sample(labels, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                            seed=seed, clip_denoised=clip_denoised, noise=noise,
                            progress=progress, objective=objective, counter=counter)
    device = resolve_device(device)
    model = as_model(model)
    model.to(device)  # in place, as nn.Module.to: sampling runs where the caller asked
    denoiser = compiled(model, compile) if compile else model

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            out = denoiser(x, t, y).float()
        # a CUDA graph replays into the buffers it returned before, and Heun keeps one output
        # while it makes the next call; in fp32, .float() copies nothing
        return out.clone() if compile else out

    was_training = model.training
    model.eval()
    try:
        labels = class_ids(labels, model.config.num_classes,
                           model.provenance.get("class_names", ()))
        return sample_with(
            model_fn, model.config, objective or objective_for(model), labels,
            sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed, device=device,
            clip_denoised=clip_denoised, reference_cfg=reference_cfg, noise=noise,
            progress=progress, counter=counter,
        )
    finally:
        model.train(was_training)


def sample_batches(model: DiffusionTransformer | RuntimeDenoiser | str | os.PathLike,
                   labels: Sequence[int | str] | torch.Tensor, batch_size: int, *,
                   seed: int = 0, noise: torch.Tensor | None = None, progress: bool = False,
                   **settings: Any) -> Iterator[torch.Tensor]:
    """:func:`sample` ``batch_size`` labels at a time, each batch yielded as it is made:
    batch b is seeded ``seed + b`` (and given its rows of ``noise``), as ``evaluate``'s
    batches are, so ``torch.cat`` of them is ``sample(..., batch_size=batch_size)``. What
    takes them a batch at a time (``entpruner sample --npz``) never holds every sample.
    ``settings`` are :func:`sample`'s; ``progress`` follows the batches, or a lone batch's
    steps."""
    if batch_size < 1:  # here, not at the first batch: a generator would wait until then
        raise ValueError(f"batch_size={batch_size}: at least 1 image at a time")
    model = model if isinstance(model, RuntimeDenoiser) else as_model(model)
    starts = range(0, len(labels), batch_size)
    several = len(starts) > 1

    def batches() -> Iterator[torch.Tensor]:
        for b in progress_bar(range(len(starts)), enabled=progress and several,
                              desc="sampling batches"):
            yield sample_batch_at(model, labels, batch_size, b, seed=seed, noise=noise,
                               progress=progress and not several, **settings)

    return batches()


def sample_batch_at(model: DiffusionTransformer | RuntimeDenoiser | str | os.PathLike,
                    labels: Sequence[int | str] | torch.Tensor, batch_size: int, index: int,
                    *, seed: int = 0, noise: torch.Tensor | None = None,
                    **settings: Any) -> torch.Tensor:
    """Batch ``index`` of :func:`sample_batches` alone: ``labels``' rows ``index *
    batch_size`` onwards (and those of ``noise``), seeded ``seed + index``; what a run
    that kept its other batches (``entpruner sample --npz``, resumed) still has to make."""
    rows = slice(index * batch_size, (index + 1) * batch_size)
    return sample(model, labels[rows], seed=seed + index,
                  noise=None if noise is None else noise[rows], **settings)


def check_compile_mode(mode: str | None) -> None:
    """Refuse a torch.compile mode the package does not offer (None: not compiled)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of "
                         f"{', '.join(COMPILE_MODES)}")


def compiled(model: DiffusionTransformer, mode: bool | str = True) -> torch.nn.Module:
    """``torch.compile(model)`` (``mode``: True for the default, or a torch.compile mode such
    as ``"reduce-overhead"`` for CUDA graphs), cached on the model."""
    mode = None if mode is True else mode
    cache = model.__dict__.setdefault(COMPILED_CACHE, {})
    if mode not in cache:
        cache[mode] = torch.compile(model, mode=mode)
    return cache[mode]


def initial_noise(config: TransformerConfig, n: int,
                  generator: torch.Generator | SplitGenerator) -> torch.Tensor:
    """The starting noise [n, C, H, W]: the first draw of the seeded CPU generator."""
    return normal((n, config.in_channels, config.input_size, config.input_size), generator)


@torch.no_grad()
def sample_with(
    model_fn: ModelFn,
    config: TransformerConfig,
    objective: Objective,
    labels: Sequence[int] | torch.Tensor,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int | SplitGenerator = 0,
    device: str | torch.device = "cpu",
    clip_denoised: bool = False,
    reference_cfg: bool = False,
    noise: torch.Tensor | None = None,
    progress: bool = False,
    guided_fn: GuidedFn | None = None,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """The sampling pipeline for any denoiser: a PyTorch model, an ONNX Runtime session, an
    AOTInductor package or a TensorRT engine, given as ``model_fn(x, t, y) -> output``.

    ``guided_fn(x, t, y, scale)``, when given, computes a guided prediction in one call (an
    exported guidance graph) and replaces the host-side guidance wrapper. Same seed, same
    noise, same images as :func:`sample`. ``seed`` may be a :class:`SplitGenerator` giving
    each slice of the batch its own seed (a server's batch of requests).
    ``clip_denoised`` clips the denoised estimate to the pixel range [-1, 1] at every step; a
    latent model's samples are never clipped, since VAE latents have no fixed range.
    ``counter`` counts the denoiser's calls: what an adaptive sampler really cost (a guided
    call, both halves in one batch, counts one).
    """
    if counter is not None:
        model_fn, guided_fn = counter.wrap(model_fn), counter.wrap(guided_fn)
    device = torch.device(device)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_labels(y, config.num_classes)
    settled = objective.settle_sampling(sampler, steps, cfg_scale)
    sampler, steps, cfg_scale = settled["sampler"], settled["steps"], settled["cfg_scale"]
    check_cfg_scale(cfg_scale)
    generator = (seed if isinstance(seed, SplitGenerator)
                 else torch.Generator().manual_seed(seed))
    if noise is None:
        noise = initial_noise(config, len(y), generator)
    null_class = config.num_classes  # the null row follows the real classes
    if guided_fn is not None and cfg_scale != 1.0 and not reference_cfg:
        def fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return guided_fn(x, t, labels, torch.full((len(x),), float(cfg_scale),
                                                      device=x.device))
    else:
        fn = guided(model_fn, cfg_scale, null_class, config.in_channels, reference_cfg)
    clip_denoised = clip_denoised and not is_latent(config)
    out = objective.sample(fn, noise.to(device), y.to(device), sampler=sampler, steps=steps,
                           generator=generator, clip_denoised=clip_denoised, progress=progress)
    return out.cpu()


def image_grid(images: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Tile [N, C, H, W] images into one [C, H', W'] image, one background pixel between
    them: floats in [-1, 1] give floats, 8-bit pixels (a quarter of the memory, for a large
    preview) give 8-bit pixels."""
    n, c, h, w = images.shape
    rows = rows or max(1, int(n**0.5))
    cols = -(-n // rows)
    eight = images.dtype == torch.uint8
    grid = images.new_full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 0 if eight else -1)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = (
            images[i] if eight else images[i].clamp(-1, 1)
        )
    return grid


def to_picture(image: torch.Tensor) -> Image.Image:
    """One [C, H, W] image in [-1, 1], or 8-bit, as a PIL image (gray for one channel),
    rounded as ``eight_bit`` rounds."""
    from PIL import Image

    pixels = eight_bit(image).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def image_format(path: str | os.PathLike) -> str:
    """The Pillow format a file name's suffix names (``.png`` -> ``"PNG"``, ``.jpg`` ->
    ``"JPEG"``); PNG when it has none. An unknown suffix, or one Pillow only reads, is refused
    before any sampling, so no work is lost to a typo in ``--out``."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    Image.init()  # registers every plugin's extensions
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"cannot write an image grid to {path}: Pillow writes no {suffix} "
                         "files; use .png (lossless), .jpg or .webp")
    return fmt


def save_grid(images: torch.Tensor, path: str | os.PathLike, rows: int | None = None,
              scale: int | None = None) -> None:
    """Write the images as one grid, in the format the file's suffix names (PNG without one;
    see ``image_format``). ``scale``: a nearest-neighbour upscale, so small images stay
    visible; by default 4x up to 32 pixels, 2x up to 64, none above (a 256-pixel sample
    is seen as it is, and a grid of many is not 16 times the pixels)."""
    from PIL import Image

    from entpruner_sdk.utils.files import atomic_writer

    fmt = image_format(path)
    if scale is None:
        scale = max(1, min(4, 128 // images.shape[-1]))
    picture = to_picture(image_grid(images, rows))
    picture = picture.resize((picture.width * scale, picture.height * scale),
                             Image.Resampling.NEAREST)
    with atomic_writer(path) as tmp:
        picture.save(tmp, format=fmt)
