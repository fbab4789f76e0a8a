"""Loading and saving DiT / SiT weights.

``load`` accepts, and tells apart:
- our own saved directory (``config.json`` with ``"format": "entpruner"`` + safetensors), or
  a compress output holding one as ``model/``;
- a diffusers ``DiTTransformer2DModel`` directory (keys converted to the reference layout), or
  a ``DiTPipeline`` folder holding one (``transformer/``; its ``vae/`` recorded to decode with);
- a released plain state dict (``.pt`` / ``.pth`` / ``.safetensors``);
- a training checkpoint ``{"model", "ema", "opt", "args"}`` of the DiT or SiT repository's
  ``train.py`` (the EMA weights are used; ``models.reference`` reads its args).

Released files do not say whether they are DiT or SiT (their keys are identical), so they need
``family``, unless they keep the release's own name (``SiT-XL-2-256x256.pt``, read only when
the weights have the shape it names); a training checkpoint's args name it. Everything else
about the architecture is inferred from tensor shapes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from entpruner_sdk.models.config import (
    FAMILIES,
    TransformerConfig,
    default_num_heads,
    published_num_heads,
)
from entpruner_sdk.models.reference import (
    FLOW_PATHS,
    TrainingArgs,
    config_with_args,
    family_from_release_name,
    namespace_allowed,
)
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.files import atomic_write_text, atomic_writer
from entpruner_sdk.utils.versions import newer_format

FORMAT_NAME = "entpruner"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A file that cannot be loaded as a DiT / SiT checkpoint; the message says why and what
    to do instead."""


# ---------------------------------------------------------------------- save
def save(model: DiffusionTransformer, directory: str | os.PathLike,
         dtype: torch.dtype | None = None, **metadata: Any) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (config + provenance) to ``directory``.

    Both files are written atomically, so an interrupted save never leaves a half file.
    ``dtype`` (e.g. ``torch.float16``) stores smaller weights; ``load`` returns float32.
    Extra keyword arguments are stored under ``"metadata"`` (JSON-serialisable values).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items()}
    # each file is replaced whole, but not both at once: both name this save, so a save
    # interrupted between them is refused on load rather than pair weights with another
    # model's config (its kept blocks, its classes)
    save_id = uuid.uuid4().hex
    with atomic_writer(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT_NAME, "save": save_id})
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "save": save_id,
        "family": model.family,
        "config": model.config.to_dict(),
        "provenance": model.provenance,
        "objective": model.objective,
        "metadata": metadata,
    }
    atomic_write_text(directory / CONFIG_FILE, json.dumps(document, indent=2) + "\n")
    return directory


# ---------------------------------------------------------------------- load
def load(
    path: str | os.PathLike,
    family: str | None = None,
    *,
    num_heads: int | None = None,
    flow_path: str | None = None,
    device: str | torch.device = "cpu",
) -> DiffusionTransformer:
    """Load a DiT or SiT from any supported file or directory (see the module docstring).

    ``family`` ("dit" or "sit") is required for released files and diffusers directories and
    checked against the metadata of our own. ``num_heads`` overrides the head count, which
    weight shapes cannot reveal (the published table is used otherwise). ``flow_path``
    ("linear", the default, or "gvp") is the path a released SiT file was trained on; our own
    files and training checkpoints record it, and a different one given is refused.
    """
    path = Path(path)
    if family is not None and family not in FAMILIES:
        raise CheckpointError(f"family must be 'dit' or 'sit', got {family!r}")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a checkpoint file or a model directory")
    if path.is_dir():
        model = _load_directory(path, family, num_heads)
    else:
        model = _load_file(path, family, num_heads, flow_path)
    check_flow_path(model, flow_path, path)
    model.loaded_from = str(path.resolve())
    return model.to(device)


def from_state_dict(
    state: dict[str, torch.Tensor],
    family: str,
    *,
    num_heads: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> DiffusionTransformer:
    """Build a model from a state dict in the reference layout, inferring its config."""
    return build(state, infer_config(state, family, num_heads=num_heads), provenance)


def build(state: dict[str, torch.Tensor], config: TransformerConfig,
          provenance: dict[str, Any] | None = None, objective: dict[str, Any] | None = None
          ) -> DiffusionTransformer:
    """A model of ``config`` holding ``state`` (strictly: every key, every shape)."""
    model = DiffusionTransformer(config, provenance, objective)
    _strict_load(model, state)
    return model


def infer_config(
    state: dict[str, torch.Tensor], family: str, *, num_heads: int | None = None
) -> TransformerConfig:
    """Depth, width, patch, input size, classes and learn_sigma from tensor shapes."""
    _require_layout(state)
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    tokens = state["pos_embed"].shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"pos_embed has {tokens} tokens, which is not a square grid")
    depth = _depth(state)
    out_channels = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(
            f"final layer predicts {out_channels} channels for {in_channels} input channels; "
            "expected C (fixed variance) or 2C (learn_sigma)"
        )
    table_rows = state["y_embedder.embedding_table.weight"].shape[0]
    if num_heads is None and published_num_heads(hidden) is None:
        # a wrong head count loads without error and samples noise: say what was assumed
        heads = default_num_heads(hidden)
        warnings.warn(f"the head count cannot be read from the weights and width {hidden} is "
                      f"not a published DiT/SiT size: assuming {heads} head"
                      f"{'s' * (heads != 1)} of 64 channels; pass num_heads= (--num-heads N) "
                      "if the model was trained with another count", stacklevel=4)
    # Reference models always train with label dropout, hence a null-class row at the end.
    return TransformerConfig(
        family=family,  # type: ignore[arg-type]
        input_size=side * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=num_heads or default_num_heads(hidden),
        num_classes=table_rows - 1,
        class_dropout_prob=0.1,
        learn_sigma=out_channels == 2 * in_channels,
    )


def check_format_version(found: Any, readable: int, what: str) -> None:
    """Refuse a file of a newer format than this version reads, naming the upgrade: read as
    the old format, it could load and then run as another model than it is."""
    message = newer_format(found, readable, what)
    if message:
        raise CheckpointError(message)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- helpers
def _require_family(family: str | None, path: Path) -> str:
    if family is None:
        raise CheckpointError(
            f"{path.name} is a released-style checkpoint, which does not record whether it is "
            "a DiT or a SiT (their keys are identical), nor has the name of a release of its "
            "shape (DiT-XL-2-256x256.pt); pass family='dit' or family='sit' "
            "(CLI: --family dit|sit)"
        )
    return family


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pt`` / ``.bin`` file, loaded safely (a training
    checkpoint gives its EMA weights); a file that cannot be read so is a ``CheckpointError``
    that says why."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TrainingArgs | None]:
    """``read_state_dict``, with the args a training checkpoint recorded (None without)."""
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_file(str(path))
        else:
            obj = _torch_load(path)
    except Exception as error:  # corrupt, truncated, or not a tensor file at all
        if _foreign_object(error):  # torch's own message offers to run the pickle: drop it
            raise _unreadable(path, error) from None
        raise _unreadable(path, error) from error
    args = None
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        args = TrainingArgs.read(obj.get("args"))
        obj = obj["ema"]  # training checkpoint: the EMA weights are the ones to sample with
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        args = TrainingArgs.read(obj.get("args"))
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}, args


def _torch_load(path: Path) -> Any:
    """``torch.load`` that runs no code from the file, reading only the tensors used.

    A training checkpoint holds the raw weights and the optimizer's two moments beside the
    EMA weights, four times the model (11 GB for DiT-XL/2); mapped from the file, only the
    EMA's pages are read. A file of torch's pre-1.6 format cannot be mapped and is read whole.
    """
    with namespace_allowed():  # the reference train.py's args
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def _foreign_object(error: Exception) -> str | None:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return found.group(1) if found else None


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    foreign = _foreign_object(error)
    if foreign:  # torch's own message offers weights_only=False, which would run the pickle
        return CheckpointError(
            f"cannot read {path} safely: it holds the Python object {foreign}, and loading "
            "it would run code from the file (weights_only=True refuses it). If you trust its "
            "source, load it yourself once and save its tensors: for a training checkpoint "
            "the EMA weights, torch.save(checkpoint['ema'], 'weights.pt'), else "
            "torch.save(model.state_dict(), 'weights.pt')")
    # torch's unpickler wraps the cause in paragraphs of advice; keep the cause
    cause = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", str(error),
                      re.DOTALL)
    reason = cause.group(1) if cause else (str(error).strip().splitlines() or [""])[0]
    return CheckpointError(
        f"cannot read {path}: {type(error).__name__}: {reason.rstrip('.')}. The file is "
        "corrupt, truncated, or not a PyTorch/safetensors checkpoint; download or save it "
        "again")


def _load_file(path: Path, family: str | None, num_heads: int | None,
               flow_path: str | None) -> DiffusionTransformer:
    """A released weights file or a training checkpoint, whose args settle what the weights
    cannot: the family, SiT's flow path and a missing null class."""
    state, args = read_checkpoint(path)
    named = args.family if args else None
    if family and named and family != named:
        raise CheckpointError(
            f"{path.name} is a {named.upper()} by its training args ({args.model_name}) but "
            f"family={family!r} was given; drop the family or pass {named!r}")
    if not (family or named):  # a released file under its own name says it there
        named = family_from_release_name(path.name, infer_config(state, "dit", num_heads=1))
    family = _require_family(family or named, path)
    config = infer_config(state, family, num_heads=num_heads)
    config = config_with_args(config, args,
                              state["y_embedder.embedding_table.weight"].shape[0])
    provenance: dict[str, Any] = {"source": path.name, "source_sha256": file_sha256(path)}
    if args and args.values:
        provenance["trained_with"] = args.values
    try:
        objective = args.objective(family) if args else {}
    except ValueError as error:
        raise CheckpointError(f"{path.name}: {error}") from None
    if not objective and flow_path and family == "sit":  # a released file records no path
        objective = {"path": flow_path}
    return build(state, config, provenance, objective)


def check_flow_path(model: DiffusionTransformer, flow_path: str | None,
                    source: str | os.PathLike) -> None:
    """Refuse a ``flow_path`` that ``model`` (read from ``source``) contradicts: one it does
    not record, or any for a DiT."""
    if flow_path is None:
        return
    if flow_path not in FLOW_PATHS:
        raise CheckpointError(f"unknown flow path {flow_path!r}; choose one of "
                              f"{', '.join(FLOW_PATHS)}")
    if model.family != "sit":
        raise CheckpointError(f"{source} holds a DiT, which has no flow path; drop flow_path "
                              "(--flow-path), which is for SiT")
    recorded = model.objective.get("path", "linear")
    if recorded != flow_path:
        raise CheckpointError(f"{source} records that it was trained on the {recorded} path, "
                              f"not {flow_path}; drop flow_path (--flow-path)")


def _require_layout(state: dict[str, torch.Tensor]) -> None:
    required = ("x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight",
                "final_layer.linear.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(
            f"not a DiT/SiT state dict: missing {missing}. Expected the reference layout "
            "(keys such as 'x_embedder.proj.weight', 'blocks.0.attn.qkv.weight'); for a "
            "diffusers model pass its directory instead"
        )


def _depth(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )


def _strict_load(model: DiffusionTransformer, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights do not fit the inferred architecture {model.config}: {error}"
        ) from error


def _load_directory(path: Path, family: str | None, num_heads: int | None) -> DiffusionTransformer:
    if not (path / CONFIG_FILE).exists() and (path / "model" / CONFIG_FILE).exists():
        path = path / "model"  # a compress output: the model beside its report
    config_path = path / CONFIG_FILE
    if not config_path.exists() and (path / "model_index.json").is_file():
        from entpruner_sdk.models.diffusers_convert import load_diffusers_pipeline

        return load_diffusers_pipeline(path, family)  # DiTPipeline's: transformer/, vae/
    if not config_path.exists():
        if (path / "export.json").is_file():  # below export: named by its file alone
            raise CheckpointError(
                f"{path} is an export, not a saved model: sample, evaluate and serve take it "
                "as it is (in Python, opened with entpruner_sdk.export.load_exported(path)); "
                "train, compress and export need the model it was made from")
        if (path / "evaluation.json").is_file():
            raise CheckpointError(
                f"{path} holds an evaluation report, not a model: read evaluation.md, or load "
                "it with entpruner_sdk.EvaluationReport.load(path); pass the model it "
                "evaluated instead")
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; is it a saved model directory?")
    try:
        document = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if document.get("format") == FORMAT_NAME:
        return _load_ours(path, document, family)
    if document.get("_class_name") == "DiTTransformer2DModel":
        from entpruner_sdk.models.diffusers_convert import load_diffusers_dit

        return load_diffusers_dit(path, document, _require_family(family, path))
    raise CheckpointError(
        f"{config_path} is neither an entpruner model nor a diffusers DiTTransformer2DModel"
    )


def _load_ours(path: Path, document: dict[str, Any], family: str | None) -> DiffusionTransformer:
    check_format_version(document.get("format_version", 1), FORMAT_VERSION,
                         f"{path} holds a model")
    config = TransformerConfig.from_dict(document["config"])
    if family is not None and family != config.family:
        raise CheckpointError(
            f"{path} holds a {config.family.upper()} model but family={family!r} was requested"
        )
    weights = path / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as file:
            saved_by = (file.metadata() or {}).get("save")
            names = file.keys()  # a safe_open is not iterable
            state = {name: file.get_tensor(name) for name in names}
    except Exception as error:
        raise CheckpointError(
            f"cannot read {weights}: {type(error).__name__}: {error}; the file is missing or "
            "corrupt, save the model again"
        ) from error
    if saved_by and document.get("save") and saved_by != document["save"]:
        raise CheckpointError(
            f"{weights} and {CONFIG_FILE} in {path} come from two different saves (one was "
            "interrupted between the two files); save the model again")
    model = DiffusionTransformer(config, document.get("provenance"), document.get("objective"))
    _strict_load(model, {k: v.float() for k, v in state.items()})
    model.metadata = document.get("metadata", {})
    return model
