"""Atomic file and folder writes: a crash mid-write never leaves a truncated file, or a folder
half old and half new, behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _hidden_sibling(path: Path, suffix: str = "") -> Path:
    """A new hidden name beside ``path``: on the same file system, so ``os.replace`` onto
    ``path`` is atomic."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces ``path`` atomically.

    The result has the permissions of any file the user makes: the temporary file is created
    with mode 0o666, which the kernel trims by the umask, and that mode is set again before
    the swap, since a writer may have replaced the file (safetensors leaves 0o600). Neither
    ``mkstemp`` (0o600) nor reading the umask (which means setting it, racing other threads)
    would do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_sibling(path, ".tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def staging_dir(path: str | os.PathLike) -> Path:
    """A new empty folder beside ``path`` to build its contents in, then ``os.replace`` it
    onto ``path``. Made with mode 0o777 less the umask, as ``mkdir`` makes folders
    (``mkdtemp``'s are 0o700, which would leave only their owner able to read the result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(path)
    staging.mkdir(mode=0o777)
    return staging


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, staging: Path | None = None,
                     retired: Path | None = None) -> Iterator[Path]:
    """Yield an empty folder to build ``path``'s new contents in. When the block ends without
    an error the folder takes ``path``'s place; otherwise it is removed and ``path`` is left
    as it was.

    A folder already at ``path`` is renamed to ``retired`` first and removed once the new one
    is in place: a folder cannot be renamed onto a folder that holds files, and between the
    two renames a crash leaves the old contents whole under ``retired``. Both default to new
    hidden names beside ``path``; a caller that looks for them again gives fixed ones (a
    checkpoint reads ``retired`` back, and reuses ``staging`` so an interrupted save leaves
    one stale copy at most)."""
    path = Path(path)
    if staging is None:
        staging = staging_dir(path)
    else:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    try:
        yield staging
        retired = retired or _hidden_sibling(path, ".old")
        shutil.rmtree(retired, ignore_errors=True)
        if path.exists():
            os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as tmp:
        tmp.write_bytes(data)
