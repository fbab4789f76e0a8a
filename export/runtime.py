"""Runtimes for exported denoisers: each turns a file into ``model_fn(x, t, y)`` (and, where
the export has one, ``guided_fn(x, t, y, scale)``) and samples with the shared pipeline, so
an export reproduces the PyTorch samples for the same seed."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entpruner_sdk.export.metadata import config_and_objective
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.objectives import Objective
from entpruner_sdk.sampling import class_ids, sample_with
from entpruner_sdk.utils.timing import CallCounter
from entpruner_sdk.utils.versions import torch_release

MANIFEST = "export.json"

# Short names for ONNX Runtime execution providers.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class ExportedDenoiser(ABC):
    """An exported denoiser plus the metadata needed to sample from it."""

    backend: str
    # a latent model's exported VAE decoder, when the export carries one (export(vae=...))
    decoder: OnnxLatentDecoder | None = None
    # the most images one call may hold (a TensorRT profile's max); larger batches are split
    max_batch: int | None = None

    def __init__(self, metadata: dict[str, Any], paths: Sequence[str | os.PathLike] = ()
                 ) -> None:
        self.metadata = metadata
        self.config, self.objective = config_and_objective(metadata)
        self.paths = [Path(path) for path in paths if path]  # the graph files it runs
        self.manifest: dict[str, Any] | None = None  # export.json, when opened from a folder

    def __repr__(self) -> str:
        guided = ", guidance graph" if self.has_guided_graph else ""
        return (f"{type(self).__name__}({self.family.upper()} depth {self.config.depth}, "
                f"kept blocks {self.metadata.get('kept_blocks')}, {self.backend}{guided})")

    @property
    def family(self) -> str:
        """``"dit"`` or ``"sit"``."""
        return self.config.family

    @property
    def provenance(self) -> dict[str, Any]:
        """The exported model's provenance (kept blocks, compression, data classes)."""
        return self.metadata.get("provenance", {})

    @property
    def fingerprint(self) -> str:
        """Names these exact graphs: the manifest (or metadata) and each file's size and
        modification time, so a re-export with other weights or precision differs."""
        files = [(path.name, path.stat().st_size, path.stat().st_mtime_ns)
                 for path in self.paths]
        text = json.dumps([self.manifest or self.metadata, self.backend, files],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def runtime(self) -> dict[str, Any]:
        """What runs this export: its format and precision (from the manifest) and backend."""
        manifest = self.manifest or {}
        return {"format": manifest.get("format", self.backend),
                "precision": manifest.get("precision"), "backend": self.backend}

    @property
    def time_dtype(self) -> torch.dtype:
        """The graph's time input: int64 timesteps for DiT, float32 t for SiT."""
        return torch.long if self.config.family == "dit" else torch.float32

    @abstractmethod
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raw model output for a batch."""

    def guided(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
        """Guided output from the exported guidance graph, for exports that have one."""
        raise RuntimeError("this export has no guidance graph; re-export with guided=True")

    @property
    def has_guided_graph(self) -> bool:
        """Whether the export holds the guidance graph (one call per guided step)."""
        return False

    def sample(self, labels: Sequence[int | str] | torch.Tensor, *, sampler: str | None = None,
               steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
               clip_denoised: bool = False, noise: torch.Tensor | None = None,
               progress: bool = False, objective: Objective | None = None,
               counter: CallCounter | None = None) -> torch.Tensor:
        """Same arguments and same images as :func:`entpruner_sdk.sample` for the source model
        (``objective``: by default the export's; ``self.objective.with_sampler_settings(...)``
        changes a SiT sampler's settings)."""
        labels = class_ids(labels, self.config.num_classes,
                           self.provenance.get("class_names", ()))
        return sample_with(
            self.model_fn, self.config, objective or self.objective, labels, sampler=sampler,
            steps=steps, cfg_scale=cfg_scale, seed=seed, clip_denoised=clip_denoised,
            noise=noise, progress=progress, guided_fn=self.guided_fn, counter=counter,
        )

    @property
    def model_fn(self) -> Callable[..., torch.Tensor]:
        """``model_fn(x, t, y)`` for :func:`entpruner_sdk.sampling.sample_with`, any batch."""
        return self._split(self)

    @property
    def guided_fn(self) -> Callable[..., torch.Tensor] | None:
        """``guided_fn(x, t, y, scale)`` from the guidance graph, any batch; None without
        one."""
        return self._split(self.guided) if self.has_guided_graph else None

    def _split(self, run: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``run`` over slices of at most ``max_batch`` images: an engine built for batches
        up to 32 still samples 250 at a time (an evaluation's batch, a guided batch doubled).
        Every input is batch-first, so the slices' outputs join in order."""
        if self.max_batch is None:
            return run

        def split(*inputs: torch.Tensor) -> torch.Tensor:
            size = self.max_batch
            if len(inputs[0]) <= size:
                return run(*inputs)
            return torch.cat([run(*(tensor[i:i + size] for tensor in inputs))
                              for i in range(0, len(inputs[0]), size)])

        return split


class OnnxRuntimeDenoiser(ExportedDenoiser):
    """An ONNX export run by an ONNX Runtime session (``provider``: cpu, cuda, tensorrt or a
    full provider name); the guidance graph is used when the export has one."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, guided_path: str | os.PathLike | None = None,
                 provider: str = "cpu", threads: int | None = None) -> None:
        from entpruner_sdk.export.onnx_export import read_metadata

        ort = _require_onnxruntime()
        super().__init__(read_metadata(path), (path, guided_path))
        self.providers = _providers(ort, provider)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # No busy-waiting between runs: the session shares the CPU with PyTorch's own threads
        # (the sampler's arithmetic runs in torch between calls).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        self.guided_session = (
            ort.InferenceSession(str(guided_path), options, providers=self.providers)
            if guided_path else None
        )

    @property
    def has_guided_graph(self) -> bool:
        return self.guided_session is not None

    @property
    def runtime(self) -> dict[str, Any]:
        return {**super().runtime, "providers": self.providers}

    def __call__(self, x, t, y):
        return self._run(self.session, {"x": x, "t": t, "y": y})

    def guided(self, x, t, y, scale):
        if self.guided_session is None:
            return super().guided(x, t, y, scale)  # raises: no guidance graph
        return self._run(self.guided_session, {"x": x, "t": t, "y": y, "cfg_scale": scale})

    def _run(self, session, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = {
            "x": feeds["x"].detach().cpu().float().numpy(),
            "t": feeds["t"].detach().cpu().to(self.time_dtype).numpy(),
            "y": feeds["y"].detach().cpu().long().numpy(),
        }
        if "cfg_scale" in feeds:
            arrays["cfg_scale"] = feeds["cfg_scale"].detach().cpu().float().numpy()
        (out,) = session.run(["out"], arrays)
        return torch.from_numpy(np.asarray(out)).to(feeds["x"].device)


class OnnxLatentDecoder:
    """A latent model's VAE decoder exported to ONNX, run by ONNX Runtime: the same
    ``decode`` / ``image_shape`` as :class:`entpruner_sdk.data.latents.LatentSpace`, so
    sampling, the server and the CLI decode with either."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu",
                 threads: int | None = None) -> None:
        from entpruner_sdk.export.onnx_export import read_metadata

        ort = _require_onnxruntime()
        self.metadata = read_metadata(path)
        self.scale = float(self.metadata["scale"])
        self.shift = float(self.metadata.get("shift", 0.0))  # exports before it had none
        self.fingerprint = str(self.metadata["vae"])
        self.latent_channels = int(self.metadata["latent_shape"][0])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=_providers(ort, provider))

    def image_shape(self, config: TransformerConfig) -> tuple[int, int, int]:
        """(channels, height, width) of the images it decodes (the export recorded them)."""
        channels, height, width = self.metadata["image_shape"]
        return int(channels), int(height), int(width)

    def decode(self, latents: torch.Tensor, batch_size: int = 32,
               progress: bool = False) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1], ``batch_size`` at a time."""
        chunks = [self.session.run(["out"], {"latents": latents[i:i + batch_size].detach()
                                             .cpu().float().numpy()})[0]
                  for i in range(0, len(latents), batch_size)]
        return torch.from_numpy(np.concatenate(chunks))


class AotiDenoiser(ExportedDenoiser):
    """An AOTInductor package (.pt2): compiled code plus weights, no model code needed."""

    backend = "aoti"

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any],
                 guided_path: str | os.PathLike | None = None,
                 built_with: str | None = None) -> None:
        """``metadata`` holds the export's build target (``aoti.build_target``) and
        ``built_with`` the torch that compiled it (the manifest's ``torch``)."""
        from entpruner_sdk.export.aoti import require_aoti, target_mismatch

        require_aoti()
        redo = ("Export the model again on this machine (entpruner export MODEL --format aoti), "
                "or ship its ONNX export, which runs anywhere")
        problem = target_mismatch(metadata)
        if problem:
            raise RuntimeError(f"cannot run the AOTInductor package {path} here: {problem}. "
                               f"{redo}")
        super().__init__(metadata, (path, guided_path))
        try:
            self.runner = torch._inductor.aoti_load_package(str(path))
            self.guided_runner = (torch._inductor.aoti_load_package(str(guided_path))
                                  if guided_path else None)
        except Exception as error:  # said again below, with the likely cause
            if built_with is None or torch_release(built_with) == torch_release():
                raise
            raise RuntimeError(
                f"cannot load the AOTInductor package {path}: it was compiled by torch "
                f"{built_with}, and this is torch {torch.__version__} ({error}). {redo}"
            ) from error
        self.device = torch.device(metadata.get("device", "cpu"))

    @property
    def has_guided_graph(self) -> bool:
        return self.guided_runner is not None

    def __call__(self, x, t, y):
        return self.runner(*self._inputs(x, t, y)).to(x.device)

    def guided(self, x, t, y, scale):
        if self.guided_runner is None:
            return super().guided(x, t, y, scale)  # raises: no guidance graph
        return self.guided_runner(*self._inputs(x, t, y),
                                  scale.to(self.device).float()).to(x.device)

    def _inputs(self, x, t, y):
        device = self.device
        return x.to(device).float(), t.to(device, self.time_dtype), y.to(device).long()


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The export's manifest, ``export.json``; a clear error when it is missing or corrupt."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an export directory (no {MANIFEST}); create one with "
            "`entpruner export --model DIR --format onnx --out DIR`"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt ({error}); re-run `entpruner export`") from error


def damaged_files(directory: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """What differs from the files the export wrote (``contents``: each file and its size):
    one line per missing or resized file, none for an intact export (or one made before
    ``contents`` was recorded). A copy cut short or a weight file left behind shows here,
    before a runtime reads it."""
    problems = []
    for name, size in (manifest.get("contents") or {}).items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} is {path.stat().st_size:,} bytes on disk but was "
                            f"written as {size:,}")
    return problems


def load_exported(directory: str | os.PathLike, provider: str = "cpu",
                  threads: int | None = None) -> ExportedDenoiser:
    """Open an export directory written by :func:`entpruner_sdk.export.export`; a file
    missing or of another size than the export wrote is refused (``damaged_files``)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    problems = damaged_files(directory, manifest)
    if problems:
        raise ValueError(f"the export in {directory} is incomplete or altered: "
                         f"{'; '.join(problems)}. Copy the whole folder again, or export again")
    runtime = _open_denoiser(directory, manifest, provider, threads)
    runtime.manifest = manifest
    if manifest["format"] in ("tensorrt", "torch-tensorrt"):  # built for this batch range
        runtime.max_batch = int(manifest["batch"][2])
    decoder = manifest["files"].get("decoder")
    if decoder:  # ONNX Runtime decodes, whatever runs the denoiser
        runtime.decoder = OnnxLatentDecoder(directory / decoder, provider, threads)
    return runtime


def _open_denoiser(directory: Path, manifest: dict[str, Any], provider: str,
                   threads: int | None) -> ExportedDenoiser:
    files = manifest["files"]
    fmt = manifest["format"]
    if fmt in ("onnx", "onnx-fp16"):
        guided = files.get("guided")
        return OnnxRuntimeDenoiser(directory / files["denoiser"],
                                   directory / guided if guided else None, provider, threads)
    if fmt == "aoti":
        guided = files.get("guided")
        return AotiDenoiser(directory / files["denoiser"], manifest["metadata"],
                            directory / guided if guided else None, manifest.get("torch"))
    if fmt == "reference":
        from entpruner_sdk.export.reference import ReferenceDenoiser

        return ReferenceDenoiser(directory, manifest["metadata"],
                                 "cuda" if provider in ("cuda", "tensorrt") else "cpu")
    if fmt == "diffusers":
        from entpruner_sdk.export.diffusers_export import DiffusersDenoiser

        return DiffusersDenoiser(directory, manifest["metadata"],
                                 "cuda" if provider in ("cuda", "tensorrt") else "cpu")
    if fmt == "tensorrt":
        from entpruner_sdk.export.tensorrt import TensorRTDenoiser

        return TensorRTDenoiser(directory / files["denoiser"], manifest["metadata"])
    if fmt == "torch-tensorrt":
        from entpruner_sdk.export.tensorrt import TorchTensorRTDenoiser

        return TorchTensorRTDenoiser(directory / files["denoiser"], manifest["metadata"])
    raise ValueError(f"unknown export format {fmt!r} in {directory / MANIFEST}")


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an export directory (it holds ``export.json``)."""
    return (Path(path) / MANIFEST).is_file()


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "ONNX Runtime is not installed: pip install 'entpruner-sdk[onnx]' (CPU) or "
            "'entpruner-sdk[gpu]' (CUDA; never both)"
        ) from error
    return onnxruntime


def _providers(ort, provider: str) -> list[str]:
    name = PROVIDERS.get(provider, provider)
    available = ort.get_available_providers()
    if name not in available:
        raise RuntimeError(
            f"ONNX Runtime provider {name!r} is not available here (available: "
            f"{', '.join(available)}); for CUDA install onnxruntime-gpu instead of onnxruntime"
        )
    # Fall back to the CPU for any node the accelerator cannot take.
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
