"""Read the tensors of a TorchScript archive without TorchScript.

``torch.jit.load`` is deprecated, and it runs the archive's code. A TorchScript ``.pt`` is a zip
whose ``data.pkl`` pickles the module tree (each module's attributes in a dict) and whose
``data/<key>`` files hold the raw storages. This reads that pickle with an allow-list of the few
globals it names, so nothing from the file is executed, and returns the tensors by their
dotted module path, as a ``state_dict`` names them.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ArchiveError(ValueError):
    """The file is not a TorchScript archive this reader understands, or it is damaged."""
    pass


class ScriptedModule:
    """One pickled TorchScript module: its attributes (children included) as a dict."""

    attributes: dict[str, Any] | None = None  # until the pickle gives them

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ArchiveError(f"a module's state is a {type(state).__name__}, not a dict")
        self.attributes = state


def rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...],
                   stride: tuple[int, ...], *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without its hooks: a view of the storage."""
    return storage.as_strided(size, stride, offset)


class ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``: storages from the zip, modules as ``ScriptedModule``s, and
    nothing outside the allow-list."""

    def __init__(self, archive: zipfile.ZipFile, root: str, file: Any) -> None:
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, torch.Tensor] = {}  # tensors that share a storage share it

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return ScriptedModule  # its code stays unread: only its attributes are wanted
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        allowed = {("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch.jit._pickle", "build_intlist"): list,
                   ("torch.jit._pickle", "build_doublelist"): list,
                   ("torch.jit._pickle", "build_boollist"): list}
        if (module, name) not in allowed:
            raise ArchiveError(f"the archive names {module}.{name}, which this reader does "
                               "not load (only module attributes and tensors are read)")
        return allowed[module, name]

    def persistent_load(self, key: Any) -> torch.Tensor:
        _, dtype, name, _location, numel = key  # ('storage', dtype, key, location, numel)
        if name in self.storages:
            return self.storages[name]
        raw = self.archive.read(f"{self.root}/data/{name}")
        # a writable buffer, which the tensor keeps alive: the bytes are copied once
        storage = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else (
            torch.empty(0, dtype=dtype))
        if storage.numel() != numel:
            raise ArchiveError(f"storage {name} holds {storage.numel()} values, not {numel}")
        self.storages[name] = storage
        return storage


def flatten(module: ScriptedModule, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a module tree by dotted path, as ``state_dict`` names them."""
    if module.attributes is None:
        raise ArchiveError(f"the module at '{prefix}' has no attributes in the archive")
    tensors = {}
    for name, value in module.attributes.items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value
        elif isinstance(value, ScriptedModule):
            tensors.update(flatten(value, f"{prefix}{name}."))
    return tensors


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor a TorchScript archive's modules hold (parameters, buffers and tensor
    attributes), keyed by dotted path. Raises ``ArchiveError`` for a damaged or foreign file."""
    with open(path, "rb") as file:  # a path that cannot be read raises its own OSError
        return flatten(read_top_module(file, path))


def read_top_module(file: Any, path: str | Path) -> ScriptedModule:
    """The archive's top module, its tree of attributes unpickled."""
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ArchiveError(f"{path} is a zip but not a TorchScript archive "
                                   "(it holds no single <name>/data.pkl)")
            root = pickles[0].rsplit("/", 1)[0]
            with archive.open(pickles[0]) as pickled:
                top = ArchiveUnpickler(archive, root, pickled).load()
    except ArchiveError:
        raise
    except Exception as error:  # a damaged zip or pickle fails in many ways: all are this one
        raise ArchiveError(f"{path} is damaged or not a TorchScript archive "
                           f"({type(error).__name__}: {error})") from error
    if not isinstance(top, ScriptedModule):
        raise ArchiveError(f"{path} does not hold a TorchScript module")
    return top
