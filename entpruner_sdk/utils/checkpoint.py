"""Resumable training state in safetensors + JSON, swapped in atomically as one folder.

Optimizer state is flattened into named tensors (no pickle anywhere); random generator states
are byte tensors, so a resumed run continues the exact random stream.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from entpruner_sdk.utils.cache import UNREADABLE
from entpruner_sdk.utils.files import atomic_directory, check_output_path
from entpruner_sdk.utils.versions import newer_format

TENSORS, META = "state.safetensors", "state.json"
# the layout of a checkpoint folder, kept in its metadata under FORMAT_KEY; a newer one is
# refused on resume rather than read as this one
FORMAT_VERSION, FORMAT_KEY = 1, "checkpoint_format"


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` to ``directory``, replacing any previous checkpoint only
    once the new one is complete."""
    directory = Path(directory)
    with atomic_directory(directory, staging=_staging(directory),
                          retired=_retired(directory)) as staging:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(staging / TENSORS))
        (staging / META).write_text(json.dumps({**meta, FORMAT_KEY: FORMAT_VERSION}, indent=1))


def _staging(directory: Path) -> Path:
    """Where a new checkpoint is built before it takes the folder's place."""
    return directory.with_name(directory.name + ".tmp")


def _retired(directory: Path) -> Path:
    """Where the previous checkpoint waits while the new one is moved into place."""
    return directory.with_name(directory.name + ".old")


def discard_checkpoint(directory: str | os.PathLike) -> None:
    """Delete the checkpoint in ``directory`` with the copies a save in flight leaves beside it
    (a run that will not be resumed need not keep several times its model's size on disk)."""
    directory = Path(directory)
    for folder in (directory, _staging(directory), _retired(directory)):
        shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint folder's tensors and metadata; after a crash between the two renames of a
    save, the complete previous checkpoint kept aside."""
    directory = Path(directory)
    if not (directory / META).exists():
        # A crash between the two renames leaves the complete previous state in ".old".
        retired = _retired(directory)
        if (retired / META).exists():
            directory = retired
        else:
            raise FileNotFoundError(f"no checkpoint in {directory}; nothing to resume")
    try:
        tensors, meta = load_file(str(directory / TENSORS)), json.loads(
            (directory / META).read_text())
    except UNREADABLE as error:  # written whole, so damaged on disk since: not ours to delete
        raise ValueError(f"the checkpoint in {directory} cannot be read ({type(error).__name__}: "
                         f"{error}); delete that folder to start the run over") from error
    newer = newer_format(meta.pop(FORMAT_KEY, 1), FORMAT_VERSION,
                         f"the checkpoint in {directory} was")
    if newer:
        raise ValueError(f"{newer}, or delete that folder to start the run over")
    return tensors, meta


def saved_step(directory: str | os.PathLike) -> int | None:
    """The step of the checkpoint in ``directory`` (or of the complete one a crash between
    the two renames left aside), None when there is none."""
    directory = Path(directory)
    for folder in (directory, _retired(directory)):
        if (folder / META).exists():
            try:
                return int(json.loads((folder / META).read_text())["step"])
            except (*UNREADABLE, TypeError):
                return -1  # there, though unreadable: still not a new run's to replace
    return None


def checkpoint_folder(out_dir: str | os.PathLike | None, resume: bool) -> Path | None:
    """``out_dir/checkpoint``, where a run keeps its checkpoints (None without ``out_dir``),
    checked for how the run starts: a resume needs it, and a new run may not replace an
    earlier run's (``refuse_to_overwrite``)."""
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs out_dir, where the checkpoint lives")
        return None
    check_output_path(out_dir, folder=True)
    directory = Path(out_dir) / "checkpoint"
    if not resume:
        refuse_to_overwrite(directory)
    return directory


def refuse_to_overwrite(directory: str | os.PathLike) -> None:
    """Refuse to start a run whose checkpoints would replace an earlier run's in
    ``directory``: forgetting ``--resume`` after an interruption must not cost the hours of
    work the checkpoint holds."""
    step = saved_step(directory)
    if step is None:
        return
    at = f" (step {step})" if step >= 0 else ""
    raise FileExistsError(
        f"{directory} holds the checkpoint of an earlier run{at}, which a new run would "
        "replace; continue that run with --resume (resume=True), or start over in another "
        f"output directory or after deleting {directory}")


def check_same_run(directory: str | os.PathLike, saved: dict[str, Any],
                   current: dict[str, Any], may_change: Iterable[str] = ()) -> None:
    """Refuse to resume from the checkpoint in ``directory`` when anything that decides the
    run's result (``current``: the model, data, budget, settings) differs from what it was
    made with (``saved``), naming each difference. ``may_change``: dotted names a resumed run
    may set otherwise (``settings.steps``). A name the checkpoint does not record (one added
    since it was written) is not compared."""
    then, now = _flat(saved), _flat(current)
    changed = [f"{name} was {_shown(then[name])}, now {_shown(now[name])}"
               for name in now if name in then and then[name] != now[name]
               and name not in set(may_change)]
    if changed:
        raise ValueError(
            f"the checkpoint in {directory} belongs to another run: {'; '.join(changed)}. "
            "Resume with what it was made with, or start over in another output directory")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted names (``schedule.interval``), so a difference
    names the setting itself; lists and tuples compare alike, as JSON keeps them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim."
                      ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer's state into named tensors plus its JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            tensors[f"{prefix}{index}.{name}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      param_groups: list[dict[str, Any]], prefix: str = "optim.") -> None:
    """Load an optimizer's state from the checkpoint tensors saved under ``prefix``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def warn_if_computed_otherwise(directory: str | os.PathLike, meta: dict[str, Any],
                               now: dict[str, str]) -> None:
    """Say when a resumed run computes on another kind of device, another processor or in
    another arithmetic than its checkpoint was made with (``meta["computed_on"]``; ``now``:
    ``computed_on``). It may: the GPU is gone, the job moved to another machine, or bf16 is
    wanted from here on. But the run will not then end exactly as an uninterrupted one,
    which a resume otherwise does."""
    then = meta.get("computed_on")
    if then is None:  # written before it was recorded
        return
    shared = then.keys() & now.keys()  # a checkpoint of an earlier version names no processor
    if all(then[key] == now[key] for key in shared):
        return

    moved = "processor" in shared and then["processor"] != now["processor"]

    def where(computed: dict[str, str]) -> str:
        return computed["device"] + (f" ({computed['processor']})" if moved else "")

    warnings.warn(f"the checkpoint in {directory} was made on {where(then)} in "
                  f"{then['arithmetic']}, and the run continues on {where(now)} in "
                  f"{now['arithmetic']}: it will not end exactly as an uninterrupted run "
                  "would, since the two round differently", stacklevel=3)


def restore_scaler(scaler: torch.amp.GradScaler, meta: dict[str, Any]) -> None:
    """Load fp16's loss scale from a checkpoint's ``meta["grad_scaler"]``. A checkpoint
    written in another arithmetic (or before the scale was saved) has none: the scaler then
    starts from its initial scale, and finds its level again within a few steps."""
    state = meta.get("grad_scaler") or {}
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with ``prefix`` before each name, for one flat checkpoint file."""
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors saved under ``prefix``, with it taken off their names."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
