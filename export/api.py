"""The ``export`` verb: one model, one format, one directory with a manifest."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.data.latents import LatentSpace, decoder_for
from entpruner_sdk.export.decoders import DECODER_FILE, write_decoder
from entpruner_sdk.export.metadata import export_metadata
from entpruner_sdk.export.parity import ParityCheck, check_parity, require_parity
from entpruner_sdk.export.runtime import MANIFEST, load_exported
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.teachers import as_model
from entpruner_sdk.utils.files import atomic_directory, atomic_write_text, check_output_path

FORMATS = ("onnx", "onnx-fp16", "aoti", "tensorrt", "torch-tensorrt", "reference", "diffusers")


@dataclass
class ExportResult:
    """Where the export went, what it holds, and how closely it matches PyTorch."""

    directory: Path
    format: str
    files: dict[str, str]
    parity: list[ParityCheck] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the default would print the whole manifest
        checks = (f"parity {sum(c.passed for c in self.parity)} of {len(self.parity)} checks "
                  f"passed, largest relative error "
                  f"{max(c.relative_error for c in self.parity):.1e}" if self.parity
                  else "parity not checked")
        return (f"ExportResult({self.format} in {self.directory}: "
                f"{', '.join(sorted(set(self.files.values())))}; {checks})")


def export(
    model: DiffusionTransformer | str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "onnx",
    *,
    verify: bool = True,
    batch: tuple[int, int, int] = (1, 8, 32),
    overwrite: bool = False,
    guided: bool = True,
    opset: int | None = None,
    exporter: str | None = None,
    precision: str | None = None,
    device: str | torch.device | None = None,
    vae: LatentSpace | str | os.PathLike | None = None,
) -> ExportResult:
    """Export ``model`` (a model, a saved directory, a checkpoint or a bundled teacher name)
    to ``out_dir`` in ``format``: ``onnx`` / ``onnx-fp16`` (denoiser + guidance graph),
    ``aoti`` (AOTInductor .pt2), ``tensorrt`` (engine from the ONNX), ``torch-tensorrt``,
    ``reference`` (a state dict and constructor arguments for the DiT / SiT repository's own
    ``models.py``, run here in PyTorch), ``diffusers`` (a DiT as a ``DiTTransformer2DModel``
    folder, inside a whole ``DiTPipeline`` folder when it has a VAE: ``vae``, else the one
    the model records).

    With ``verify`` (the default) the export is run on random inputs at batch sizes 1, 3 and
    ``batch``'s opt value and compared with PyTorch; a mismatch raises ``ParityError`` and
    leaves nothing behind. ``out_dir`` must be new or empty unless ``overwrite``.

    ``vae``: a latent model's VAE (a ``LatentSpace`` or its folder); its decoder is exported
    beside the denoiser (``vae_decoder.onnx``, fp32, parity-checked), so the export samples
    images with ONNX Runtime alone. A decoder is exported and checked once per VAE, opset and
    exporter, and copied from the entpruner cache after that.

    ``exporter`` (ONNX graphs): ``dynamo`` or ``torchscript``; None takes dynamo where this
    torch (2.5+) and onnxscript run it, and the tracer where not. The manifest records it.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    model = as_model(model)
    _check_batch(batch)
    out_dir = Path(out_dir)
    check_output_path(out_dir, folder=True)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite "
                              "(overwrite=True) to replace it or choose another --out")
    precision = precision or {"onnx-fp16": "fp16", "tensorrt": "fp16",
                              "torch-tensorrt": "fp16"}.get(format, "fp32")
    if format in ("reference", "diffusers") and precision != "fp32":
        raise ValueError(f"a {format} export holds fp32 weights, as the released checkpoints "
                         f"do, not {precision}; the code that loads it casts them")
    if format == "tensorrt":
        from entpruner_sdk.export.tensorrt import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"TensorRT engines are built in {' or '.join(PRECISIONS)} "
                             f"(strongly typed from the ONNX), not {precision}; use "
                             "--format torch-tensorrt for bf16")
    space = decoder_for(model.config, vae) if vae is not None else None
    pipeline_vae = None
    if format == "diffusers":  # the VAE goes into the pipeline, not into an ONNX decoder
        pipeline_vae, space = _pipeline_vae(model, space), None
    if format in ("onnx", "onnx-fp16", "tensorrt") or space is not None:  # writes ONNX
        from entpruner_sdk.export.onnx_export import resolve_exporter

        exporter = resolve_exporter(exporter)
    if space is not None and not isinstance(space, LatentSpace):
        raise TypeError("export(vae=...) exports the VAE itself: pass its folder or a "
                        "LatentSpace")
    metadata = export_metadata(model)
    with atomic_directory(out_dir) as staging:
        files, extra = _write(model, staging, format, metadata, guided=guided, opset=opset,
                              exporter=exporter, precision=precision, batch=batch,
                              device=device, vae=pipeline_vae)
        decoder_checks = []
        if space is not None:
            from entpruner_sdk.export.onnx_export import OPSET

            decoder_checks = write_decoder(space, model.config, staging, opset=opset or OPSET,
                                           exporter=exporter, verify=verify)
            files["decoder"] = DECODER_FILE
            extra["vae"] = space.fingerprint
        manifest = {
            "format": format, "precision": precision, "files": files,
            # every file a deployment must carry, with its size: the roles above name the
            # graphs, and a model over 1 GB keeps its weights in a .data file beside them
            "contents": {item.relative_to(staging).as_posix(): item.stat().st_size
                         for item in sorted(staging.rglob("*")) if item.is_file()},
            "batch": list(batch), "metadata": {**metadata, **extra}, "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "parity": [],
        }
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2))
        checks: list[ParityCheck] = []
        if verify:
            batches = tuple(sorted({1, 3, batch[1]}))
            runtime = load_exported(staging)
            checks = check_parity(model, runtime, precision, batches) + decoder_checks
            require_parity(checks, f"the {format} export")
            manifest["parity"] = [c.to_dict() for c in checks]
            atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2))
    return ExportResult(out_dir, format, files, checks, manifest)


def _write(model, directory: Path, format: str, metadata: dict, *, guided: bool,
           opset: int | None, exporter: str | None, precision: str, batch, device,
           vae: LatentSpace | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Write the format's files; returns {role: file name} and extra manifest metadata."""
    if format in ("onnx", "onnx-fp16", "tensorrt"):
        from entpruner_sdk.export.onnx_export import OPSET, export_onnx, share_external_data

        opset = opset or OPSET
        # TensorRT builds strongly typed from this file, so it carries the engine's precision
        dtype = torch.float16 if format == "onnx-fp16" or (
            format == "tensorrt" and precision == "fp16") else torch.float32
        export_onnx(model, directory / "model.onnx", dtype=dtype, opset=opset,
                    exporter=exporter)
        files = {"onnx": "model.onnx"}
        if format != "tensorrt":
            files["denoiser"] = "model.onnx"
            if guided and _has_null_class(model):
                export_onnx(model, directory / "model_cfg.onnx", dtype=dtype, guided=True,
                            opset=opset, exporter=exporter)
                share_external_data(directory / "model_cfg.onnx", directory / "model.onnx")
                files["guided"] = "model_cfg.onnx"
            return files, {"opset": opset, "exporter": exporter}
        from entpruner_sdk.export.tensorrt import build_engine

        build_engine(directory / "model.onnx", directory / "model.engine", model.config,
                     metadata, batch=batch, precision=precision,
                     timing_cache=directory / "timing.cache")
        files.update(denoiser="model.engine", sidecar="model.json", timing_cache="timing.cache")
        return files, {"opset": opset}
    if format == "reference":
        from entpruner_sdk.export.reference import write_reference

        return write_reference(model, directory), {}
    if format == "diffusers":
        from entpruner_sdk.export.diffusers_export import write_diffusers

        return write_diffusers(model, directory, vae), (
            {"vae": vae.fingerprint} if vae is not None else {})
    if format == "aoti":
        from entpruner_sdk.export.aoti import build_target, export_aoti

        target = torch.device(device or "cpu")
        export_aoti(model, directory / "model.pt2", max_batch=max(batch[2], 2), device=target)
        files = {"denoiser": "model.pt2"}
        if guided and _has_null_class(model):
            export_aoti(model, directory / "model_cfg.pt2", max_batch=max(batch[2], 2),
                        device=target, guided=True)
            files["guided"] = "model_cfg.pt2"
        return files, build_target(target)  # what the machine code runs on
    from entpruner_sdk.export.tensorrt import compile_torch_tensorrt

    compile_torch_tensorrt(model, directory / "model.ep", batch=batch, precision=precision)
    return {"denoiser": "model.ep"}, {}


def _pipeline_vae(model: DiffusionTransformer, given: Any) -> LatentSpace | None:
    """The VAE a diffusers export's ``DiTPipeline`` holds: the one given, else the one the
    model records (``recorded_vae``); None for the transformer alone. Checked before any file
    is written."""
    from entpruner_sdk.data.latents import is_latent, open_recorded_vae, recorded_vae
    from entpruner_sdk.export.diffusers_export import check_exportable

    record = recorded_vae(model.metadata) if given is None and is_latent(model.config) else None
    vae = open_recorded_vae(record) if record is not None else given
    check_exportable(model, vae)
    return vae


def _has_null_class(model: DiffusionTransformer) -> bool:
    return model.y_embedder.embedding_table.num_embeddings > model.config.num_classes


def _check_batch(batch) -> None:
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"batch must be min,opt,max with 1 <= min <= opt <= max; got {batch}")
