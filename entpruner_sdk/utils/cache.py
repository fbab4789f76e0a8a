"""The entpruner cache: work that is costly to make and the same every time, kept between runs.

Everything in it is made again on demand, so any part may be deleted (``entpruner cache
--clear``) while no entpruner process is running. ``ENTPRUNER_CACHE`` moves it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError

from entpruner_sdk.utils.files import tree_bytes

T = TypeVar("T")

# what reading a damaged file raises: safetensors, torch.load and numpy on bytes cut short or
# garbled, or a file that lacks the entry asked for
UNREADABLE = (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, OSError,
              ValueError, KeyError)

# What each folder holds, by the folder's name; a folder of another name is reported as is.
KINDS = {
    "classifiers": "domain classifiers, one per dataset (FD-domain, class accuracy)",
    "reference": "features of the real images evaluations compare with",
    "decoded": "latent references decoded to images by their VAE",
    "latents": "images encoded by a VAE for train and compress --vae",
    "vae-decoders": "VAE decoders exported to ONNX and checked, for export --vae",
    "exports": "the demo's ONNX exports (demo --onnx)",
}


def cache_root() -> Path:
    """The cache's folder: ``$ENTPRUNER_CACHE``, else ``~/.cache/entpruner``."""
    return Path(os.environ.get("ENTPRUNER_CACHE", Path.home() / ".cache" / "entpruner"))


@dataclass(frozen=True)
class CacheUsage:
    """One folder of the cache: its name, what it holds, its entries and their size."""

    kind: str
    description: str
    entries: int
    bytes: int
    path: Path


def read_kept(path: Path, read: Callable[[Path], T]) -> T | None:
    """``read(path)`` for work kept on disk (the cache, finished sample batches); None when the
    file is absent or cannot be read. Such files are written atomically, so an unreadable one
    is a disk fault: it is deleted, and the caller makes the work again."""
    if not path.exists():
        return None
    try:
        return read(path)
    except UNREADABLE:
        with contextlib.suppress(OSError):  # a read-only install keeps its broken file
            path.unlink(missing_ok=True)
        return None


def cache_usage(root: Path | None = None) -> list[CacheUsage]:
    """Every folder in the cache with its size, known kinds first; a kind never made is
    listed with no entries."""
    root = Path(root or cache_root())
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    kinds = list(KINDS) + [name for name in present if name not in KINDS]
    return [_usage(root / kind, kind) for kind in kinds]


def _usage(folder: Path, kind: str) -> CacheUsage:
    """A folder's entries (hidden ones, an interrupted write's leftovers, are not counted but
    are in the size, and are deleted with the rest)."""
    entries = list(folder.iterdir()) if folder.is_dir() else []
    shown = [entry for entry in entries if not entry.name.startswith(".")]
    return CacheUsage(kind, KINDS.get(kind, ""), len(shown), tree_bytes(folder), folder)


def clear_cache(kinds: list[str] | tuple[str, ...], root: Path | None = None) -> int:
    """Delete the named folders of the cache (``"all"``: every one); returns the bytes freed.
    An unknown name is refused before anything is deleted."""
    usage = {u.kind: u for u in cache_usage(root)}
    chosen = list(usage) if "all" in kinds else list(kinds)
    unknown = [kind for kind in chosen if kind not in usage]
    if unknown:
        raise ValueError(f"no cache named {', '.join(unknown)}; choose from "
                         f"{', '.join(usage)} or all")
    freed = 0
    for kind in chosen:
        try:
            shutil.rmtree(usage[kind].path)
        except FileNotFoundError:  # a kind never made
            continue
        except OSError as error:
            raise RuntimeError(f"could not delete {usage[kind].path}: {error}") from error
        freed += usage[kind].bytes
    return freed
