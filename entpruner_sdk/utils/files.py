"""Atomic file and folder writes: a crash mid-write never leaves a truncated file, or a folder
half old and half new, behind."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def _hidden_sibling(path: Path, suffix: str = "") -> Path:
    """A new hidden name beside ``path``: on the same file system, so ``os.replace`` onto
    ``path`` is atomic. It names the process that writes it (``.NAME.PID@HOST.RANDOM``), so
    the next writer of ``path`` can delete what a killed one left (``_remove_abandoned``)."""
    owner = f"{os.getpid()}@{socket.gethostname()}"
    return path.with_name(f".{path.name}.{owner}.{uuid.uuid4().hex[:8]}{suffix}")


def _remove_abandoned(path: Path) -> None:
    """Delete the hidden siblings of ``path`` whose writer, a process on this machine, is gone.

    A process killed with SIGKILL (by the kernel's out-of-memory killer, a job scheduler or
    ``kill -9``) runs no cleanup, and its half-written export or checkpoint would stay
    forever. A writer on another machine (a shared file system) or one still running, or a
    process that took over a dead writer's PID, is left alone."""
    host = socket.gethostname()
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*"):
        owner = _OWNER.fullmatch(sibling.name[len(path.name) + 2:])
        if owner is None or owner["host"] != host or _running(int(owner["pid"])):
            continue
        if sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)


# what follows ".NAME." in a hidden sibling's name; a host name may hold dots
_OWNER = re.compile(r"(?P<pid>\d+)@(?P<host>.+)\.[0-9a-f]{8}(\.tmp|\.old)?")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 delivers nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        pass
    return True


def check_output_path(path: str | os.PathLike, *, folder: bool) -> None:
    """Refuse, before the work that would fill it, an output ``path`` that cannot be made: a
    file where a folder is written (``folder``) or the reverse, a file on the way to it, or a
    folder this process may not write in (tried, not judged from the mode bits: root passes
    those, and a read-only mount or a sysfs does not). Otherwise the first write, minutes or
    hours in, would fail with the system's terse "Not a directory" or "Permission denied"."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind, written = ("a folder", "a file") if path.is_dir() else ("a file", "a folder")
        raise ValueError(f"{path} is {kind}, where {written} is to be written: choose another "
                         "path, or move it away")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot write {path}: {ancestor} is a file, not a folder")
    _check_writable(path if folder and path.is_dir() else ancestor, path)


def _check_writable(folder: Path, path: Path) -> None:
    """Make and remove a file in ``folder``, where writing ``path`` starts."""
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".entpruner-write-check-")
    except OSError as error:
        raise ValueError(f"cannot write {path}: this process may not write in {folder} "
                         f"({error.strerror}); choose another path, or one you own") from error
    os.close(descriptor)
    os.unlink(probe)


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
    _remove_abandoned(path)
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
    _remove_abandoned(path)
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
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one."""
    with atomic_writer(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one."""
    with atomic_writer(path) as tmp:
        tmp.write_bytes(data)


def tree_bytes(path: str | os.PathLike) -> int:
    """The bytes of every file under ``path`` (hidden ones too; 0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
