"""ONNX export of the denoiser and the guidance graph, with metadata and the ONNX checker.

The exporter is torch's ``torch.export``-based one (``dynamo=True``, the default since torch
2.9), at opset 18; ``exporter="torchscript"`` selects the older tracer, which is faster to run
and exports this model equally well (both are parity-checked the same way). Left unset, the
exporter is dynamo where torch has it (2.5 and later) and onnxscript, which it writes with, is
installed, and the tracer otherwise, so torch 2.4 exports too.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.export.graphs import (
    Denoiser,
    GuidedDenoiser,
    LatentDecoder,
    example_inputs,
    example_latents,
    input_names,
)
from entpruner_sdk.export.metadata import METADATA_KEY, dumps, export_metadata
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.files import atomic_writer
from entpruner_sdk.utils.versions import require_torch

OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
# Above this size the weights go to an external data file (protobuf caps a file at 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30


def require_onnx() -> ModuleType:
    """The ``onnx`` module, or an ImportError naming the extra to install."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx extra: pip install 'entpruner-sdk[onnx]'"
        ) from error
    return onnx


def resolve_exporter(exporter: str | None = None) -> str:
    """The exporter to run: ``exporter`` when this installation can run it (else an error
    that says what is missing), or with None the dynamo exporter where it can run and the
    TorchScript tracer where it cannot."""
    if exporter is None:
        return "dynamo" if _has_dynamo_exporter() and _has_onnxscript() else "torchscript"
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if exporter == "dynamo":
        if not _has_dynamo_exporter():
            instead = "export with the TorchScript tracer: --exporter torchscript"
            require_torch("2.5", "the dynamo ONNX exporter (torch.onnx.export(dynamo=True))",
                          instead)
            # a torch of 2.5 or later whose export takes no dynamic_shapes (a vendor's build)
            raise RuntimeError(f"this torch ({torch.__version__}) has no torch.onnx.export("
                               f"dynamic_shapes=...), which the dynamo exporter needs: {instead}")
        if not _has_onnxscript():
            raise ImportError("the dynamo ONNX exporter writes its graphs with onnxscript, "
                              "which is not installed: pip install 'entpruner-sdk[onnx]' (or "
                              "onnxscript), or export with --exporter torchscript")
    return exporter


def _has_dynamo_exporter() -> bool:
    # the torch.export-based exporter came in torch 2.5 with dynamic_shapes=; 2.4's dynamo=True
    # ran the older dynamo_export, which takes neither those shapes nor opset 18 as we ask
    return "dynamic_shapes" in inspect.signature(torch.onnx.export).parameters


def _has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(
    model: DiffusionTransformer,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    guided: bool = False,
    opset: int = OPSET,
    exporter: str | None = None,
) -> Path:
    """Export ``model`` (or its guidance graph) to ``path`` with a dynamic batch dimension;
    ``exporter``: ``dynamo``, ``torchscript`` or None (:func:`resolve_exporter`).

    The file carries :func:`export_metadata` under the ``entpruner`` metadata key and passes
    ``onnx.checker``. Written to a temporary name first, so a failed export leaves nothing.
    """
    exporter = resolve_exporter(exporter)
    module = (GuidedDenoiser if guided else Denoiser)(model, dtype)
    metadata = {**export_metadata(model), "graph": "guided" if guided else "denoiser",
                "precision": str(dtype).removeprefix("torch."), "opset": opset,
                "exporter": exporter}
    return _export_module(module, example_inputs(model, batch=2, guided=guided),
                          input_names(guided), Path(path), metadata, opset, exporter)


def export_vae_decoder(space: LatentSpace, config: TransformerConfig, path: str | os.PathLike, *,
                       opset: int = OPSET, exporter: str | None = None) -> Path:
    """Export the VAE decoder of a latent model (``config``): scaled latents [N, C, h, w] ->
    images [N, 3, H, W] in [-1, 1], fp32, dynamic batch, with its metadata (scale and shift,
    shapes and the VAE's fingerprint) in the file."""
    exporter = resolve_exporter(exporter)
    module = LatentDecoder(space.vae, space.scale, space.shift)
    metadata = {"graph": "vae_decoder", "scale": space.scale, "shift": space.shift,
                "vae": space.fingerprint,
                "latent_shape": [config.in_channels, config.input_size, config.input_size],
                "image_shape": list(space.image_shape(config)), "precision": "float32",
                "opset": opset, "exporter": exporter}
    latents = example_latents(config.in_channels, config.input_size)
    return _export_module(module, (latents,), ["latents"], Path(path), metadata, opset,
                          exporter)


def _export_module(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str],
                   path: Path, metadata: dict, opset: int, exporter: str) -> Path:
    """Export ``module`` with a dynamic batch, add ``metadata``, pass the ONNX checker; written
    to a temporary name first, so a failed export leaves nothing."""
    onnx = require_onnx()
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as tmp:
        tmp_path = Path(tmp) / path.name
        with torch.no_grad(), warnings.catch_warnings(), _quiet_logger(REGISTRATION_LOGGER):
            warnings.simplefilter("ignore")  # exporter chatter; parity is checked afterwards
            _run_exporter(module, inputs, names, tmp_path, opset, exporter, large)
        proto = onnx.load(str(tmp_path), load_external_data=False)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, dumps(metadata)
        proto.producer_name = "entpruner"
        onnx.save(proto, str(tmp_path))
        onnx.checker.check_model(str(tmp_path), full_check=True)
        for item in Path(tmp).iterdir():  # the graph plus any external data file
            os.replace(item, path.parent / item.name)
    return path


# Without torchvision, torch's ONNX exporter logs a warning per torchvision operator it skips
# (nms, roi_align, ...), twice per graph: noise for a model that uses none of them.
REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_exporter(module, inputs, names, path: Path, opset: int, exporter: str,
                  large: bool) -> None:
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            module, inputs, input_names=names, output_names=["out"], opset_version=opset,
            dynamic_shapes=tuple({0: batch} for _ in inputs), dynamo=True, verbose=False,
        )
        program.save(str(path), external_data=large)
        return
    dynamic = {name: {0: "batch"} for name in [*names, "out"]}
    torch.onnx.export(module, inputs, str(path), input_names=names, output_names=["out"],
                      dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    if large:
        onnx = require_onnx()
        proto = onnx.load(str(path))
        onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data")


def share_external_data(graph: Path, donor: Path) -> bool:
    """Point ``graph``'s external tensors at the byte-identical ones in ``donor``'s data file,
    and delete ``graph``'s own data, when every one of them has its twin there; returns
    whether it did. The guidance graph holds the denoiser's weights, and a second copy would
    double a large export (DiT-XL/2: 2.7 GB). Twins are found by content, not by name: the
    exporter names some tensors of each graph differently."""
    onnx = require_onnx()
    donor_proto = onnx.load(str(donor), load_external_data=False)
    by_content = {digest: where for where, digest in _external_tensors(donor_proto, donor.parent)}
    proto = onnx.load(str(graph), load_external_data=False)
    own = list(_external_tensors(proto, graph.parent))
    if not own or any(digest not in by_content for _, digest in own):
        return False
    own_files = {where[0] for where, _ in own}
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor, (_, digest) in zip(external, own):
        location, offset, length = by_content[digest]
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    with atomic_writer(graph) as tmp:  # beside it, so the data's relative location holds
        onnx.save(proto, str(tmp))
    for name in own_files - {by_content[digest][0] for _, digest in own}:
        (graph.parent / name).unlink()
    return True


def _external_tensors(proto, folder: Path) -> Iterator[tuple[tuple[str, int, int], str]]:
    """(location, offset, length) and the SHA-256 of the bytes of each external initializer,
    in the graph's order."""
    import hashlib

    onnx = require_onnx()
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location, offset = info["location"], int(info.get("offset", 0))
        with open(folder / location, "rb") as handle:
            handle.seek(offset)
            data = handle.read(int(info.get("length", -1)))  # no length: to the end
        yield (location, offset, len(data)), hashlib.sha256(data).hexdigest()


def read_metadata(path: str | os.PathLike) -> dict:
    """The entpruner metadata of an ONNX file (without loading its weights)."""
    import json

    onnx = require_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX file ({error})") from error
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(f"{path} has no entpruner metadata; export it with `entpruner export`")

