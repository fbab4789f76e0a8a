"""Models as the server sees them: a name, a backend and a ``generate`` call, whichever of
PyTorch, ONNX Runtime or TensorRT runs the denoiser."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.data.latents import (
    LatentSpace,
    decoder_for,
    open_recorded_vae,
    recorded_vae,
    trained_vae,
)
from entpruner_sdk.models import DiffusionTransformer, count_parameters
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.objectives import ModelFn, Objective, objective_for
from entpruner_sdk.objectives.base import SplitGenerator
from entpruner_sdk.sampling import GuidedFn, check_compile_mode, compiled, sample_with
from entpruner_sdk.teachers import SAMPLING, resolve_model
from entpruner_sdk.utils.device import (
    arithmetic,
    autocast,
    autocast_mode,
    mixed_precision,
    resolve_device,
)
from entpruner_sdk.utils.timing import CallCounter

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass
class ServedModel:
    """One model behind the API."""

    name: str
    backend: str
    config: TransformerConfig
    objective: Objective
    model_fn: ModelFn
    guided_fn: GuidedFn | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kept_blocks: list[int] = field(default_factory=list)
    source: str = ""
    decoder: LatentSpace | None = None  # a latent model's VAE: samples leave as images
    # the classes it was fine-tuned on when a subset of its own (provenance "data_classes")
    data_classes: list[int] | None = None
    class_names: list[str] = field(default_factory=list)  # requests may name classes
    # a compressed model's report summary: its data, steps, measured speedup and quality
    compression: dict[str, Any] | None = None
    # an export's format, precision and backend (what ops ask of a server: fp16 or fp32?)
    export: dict[str, Any] | None = None
    # a PyTorch model's: "bf16 autocast" on a GPU by default, else "fp32" ($ENTPRUNER_AUTOCAST)
    arithmetic: str | None = None
    trained_vae: str | None = None  # the VAE its train.py run encoded with, when recorded
    recorded_vae: dict | None = None  # what its data was encoded with, when still there
    compile: str | None = None  # the torch.compile mode of a compiled PyTorch model

    def __post_init__(self) -> None:
        with torch.device("meta"):  # shapes only: no memory, no compute
            self.parameters = count_parameters(DiffusionTransformer(self.config))

    @property
    def defaults(self) -> dict[str, Any]:
        """The sampler, steps and cfg scale a request gets when it names none."""
        return dict(SAMPLING[self.config.family])

    def info(self) -> dict[str, Any]:
        """The model as ``/v1/models`` lists it."""
        return {
            "name": self.name, "family": self.config.family, "backend": self.backend,
            "depth": self.config.depth, "parameters": self.parameters,
            "kept_blocks": self.kept_blocks, "num_classes": self.config.num_classes,
            "image_shape": list(self.image_shape),
            "latent": self.decoder is not None,
            **({"class_names": self.class_names} if self.class_names else {}),
            **({"data_classes": self.data_classes} if self.data_classes else {}),
            "samplers": list(self.objective.samplers), "defaults": self.defaults,
            # what a request's "sampler_settings" may change, at the values it has unchanged
            "sampler_settings": self.objective.sampler_settings,
            "device": str(self.device), "source": self.source,
            **({"arithmetic": self.arithmetic} if self.arithmetic else {}),
            **({"compile": self.compile} if self.compile else {}),
            **({"compression": self.compression} if self.compression else {}),
            **({"export": self.export} if self.export else {}),
        }

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images a request gets back."""
        if self.decoder is not None:
            return self.decoder.image_shape(self.config)
        return (self.config.in_channels, self.config.input_size, self.config.input_size)

    @torch.no_grad()
    def generate(self, labels: list[int], seeds: list[int], counts: list[int], *,
                 sampler: str, steps: int, cfg_scale: float,
                 objective: Objective | None = None,
                 counter: CallCounter | None = None, decode: bool = True) -> torch.Tensor:
        """Images in [-1, 1] for ``labels``; slice i (``counts[i]`` images) uses ``seeds[i]``.
        ``objective``: the model's own, or one with other sampler settings; ``counter``
        counts the denoiser's calls (a guided call, both halves at once, counts one);
        ``decode=False`` leaves a latent model's samples as latents."""
        images = sample_with(
            self.model_fn, self.config, objective or self.objective, labels, sampler=sampler,
            steps=steps, cfg_scale=cfg_scale, seed=SplitGenerator(seeds, counts),
            device=self.device, clip_denoised=True, guided_fn=self.guided_fn, counter=counter,
        )
        return images if self.decoder is None or not decode else self.decoder.decode(images)

    def warm_up(self, max_batch_images: int) -> list[int]:
        """Compile a compiled model for every batch size a server of ``max_batch_images``
        can call it with, so no request pays for a compile; returns those sizes (none for a
        model that is not compiled). Each size is sampled as a request is (the inputs' dtypes
        are part of what a compiled graph is built for), for two steps: CUDA graphs run a
        new shape once before they record it."""
        if self.compile is None:
            return []
        sizes = batch_buckets(max_batch_images)
        for rows in sizes:  # unguided: one row an image; the VAE is not compiled
            self.generate([0] * rows, [0], [rows], sampler=self.defaults["sampler"], steps=2,
                          cfg_scale=1.0, decode=False)
        return sizes


def bucket(rows: int) -> int:
    """The batch a compiled denoiser runs ``rows`` at: the next power of two."""
    return 1 << (rows - 1).bit_length()


def batch_buckets(max_batch_images: int) -> list[int]:
    """Every bucket a server's denoiser calls fall in: up to ``max_batch_images`` images a
    batch, twice that in a guided call (the conditional and unconditional halves at once)."""
    return sorted({bucket(rows) for rows in range(1, 2 * max_batch_images + 1)})


def padded_to_buckets(model_fn: ModelFn) -> ModelFn:
    """``model_fn`` called at bucket sizes only. A compiled graph is built (and, in
    "reduce-overhead" mode, a CUDA graph recorded) for each batch shape it meets; a server's
    batches take any size, so rows are repeated up to the bucket and cut off after. Rows do
    not interact in the model, so the padding changes nothing for the real ones. The output
    is a copy: a CUDA graph replays into the same buffers, and a sampler such as Heun keeps
    one output while it makes the next call."""

    def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        index = torch.arange(bucket(rows), device=x.device).clamp(max=rows - 1)
        return model_fn(x[index], t[index], y[index])[:rows].clone()

    return call


def load_served_model(name: str, source: str, backend: str = "torch",
                      device: str | torch.device | None = None,
                      provider: str | None = None,
                      vae: LatentSpace | str | None = None,
                      family: str | None = None, num_heads: int | None = None,
                      flow_path: str | None = None,
                      compile: str | None = None) -> ServedModel:
    """Open ``source`` (teacher name, model directory or checkpoint, or an export directory)
    for ``backend``. A plain model asked for ONNX Runtime or TensorRT is exported first (into a
    temporary directory, parity-checked). A latent model needs ``vae`` (a ``LatentSpace`` or
    its folder), which decodes its samples to images; ``family`` ("dit" or "sit") is needed
    for a released checkpoint, whose keys do not say (``num_heads`` too, for a width that is
    not a published size, and ``flow_path`` for a SiT trained on the GVP path).
    ``compile``: a mode of ``sampling.COMPILE_MODES`` runs a PyTorch model through
    ``torch.compile`` at bucketed batch sizes (:meth:`ServedModel.warm_up` compiles them)."""
    check_compile_mode(compile)
    served = _load_served_model(name, source, backend, device, provider,
                                dict(family=family, num_heads=num_heads, flow_path=flow_path),
                                compile)
    # --vae, else the decoder an export of a latent model carries, else the VAE its data was
    # encoded with
    if vae is None and served.decoder is None and served.recorded_vae is not None:
        vae = open_recorded_vae(served.recorded_vae, device)
    elif vae is None:
        vae = served.decoder
    served.decoder = decoder_for(served.config, vae, device, trained_with=served.trained_vae)
    return served


def _load_served_model(name: str, source: str, backend: str, device: str | torch.device | None,
                       provider: str | None, released: dict[str, Any],
                       compile: str | None) -> ServedModel:
    from entpruner_sdk.export import is_export_dir, load_exported

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if compile is not None and (backend != "torch" or is_export_dir(source)):
        raise ValueError(f"{source}: compile applies to a PyTorch model served by PyTorch, "
                         "not to an export, whose graph was fixed when it was exported: drop "
                         "--compile, or serve the model itself with --backend torch")
    if is_export_dir(source):  # its own runtime runs it; another one asked for is refused
        runtime = load_exported(source, provider=provider or "cpu")
        if backend != "torch" and not runtime.backend.endswith(backend):
            raise ValueError(
                f"{source} holds the {runtime.runtime['format']} export, run by {runtime.backend}, "
                f"not {backend}: drop --backend to serve it as it is, or serve an export for "
                f"{backend} (entpruner export --format "
                f"{'onnx' if backend == 'onnxruntime' else backend}) or the model itself")
        return _from_runtime(name, runtime, source)
    model = resolve_model(source, **released)
    if backend == "torch":
        return _from_torch(name, model, resolve_device(device), source, compile)
    from entpruner_sdk.export import export

    workdir = Path(tempfile.mkdtemp(prefix=f"entpruner-serve-{name}-"))
    atexit.register(shutil.rmtree, workdir, True)
    fmt = "onnx" if backend == "onnxruntime" else "tensorrt"
    export(model, workdir / fmt, fmt, overwrite=True)
    runtime = load_exported(workdir / fmt, provider=provider or "cpu")
    return _from_runtime(name, runtime, source)


def _from_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    return dict(data_classes=provenance.get("data_classes"),
                class_names=list(provenance.get("class_names", [])),
                trained_vae=trained_vae(provenance))


def _from_torch(name: str, model: DiffusionTransformer, device: torch.device,
                source: str, compile: str | None = None) -> ServedModel:
    model = model.eval().to(device)
    # the policy in force at load, kept for every request whichever thread serves it
    mode = autocast_mode()
    denoiser = compiled(model, compile) if compile else model

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with mixed_precision(mode), autocast(device):
            return denoiser(x, t, y).float()

    return ServedModel(name, "torch", model.config, objective_for(model),
                       padded_to_buckets(model_fn) if compile else model_fn, compile=compile,
                       device=device, kept_blocks=model.kept_blocks, source=source,
                       arithmetic=arithmetic(device),
                       compression=model.metadata.get("compression"),
                       recorded_vae=recorded_vae(model.metadata),
                       **_from_provenance(model.provenance))


def _from_runtime(name: str, runtime, source: str) -> ServedModel:
    return ServedModel(name, runtime.backend, runtime.config, runtime.objective,
                       runtime.model_fn, runtime.guided_fn,
                       kept_blocks=list(runtime.metadata.get("kept_blocks", [])),
                       source=str(source), decoder=runtime.decoder,
                       compression=runtime.metadata.get("compression"),
                       recorded_vae=recorded_vae(runtime.metadata),
                       export=runtime.runtime, **_from_provenance(runtime.provenance))
