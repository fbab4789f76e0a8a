"""An ``.npz`` written an array at a time, a large array a chunk at a time.

``np.savez`` needs every array whole in memory: 10,000 samples at 256 pixels are 2 GB as
8-bit pixels and 7.9 GB as floats before a byte is written. The format itself does not: an
``.npz`` is a zip of ``.npy`` members, and a member can be written as a header that states
the whole shape followed by the rows, as they are made. ``np.load`` reads the result as it
reads ``np.savez``'s.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from entpruner_sdk.utils.files import atomic_writer


class Chunks(NamedTuple):
    """An array given as ``parts`` along its first axis: ``rows`` in all, every part of the
    same dtype and trailing shape. The parts are read one at a time, as they are written."""

    rows: int
    parts: Iterable[np.ndarray]


def save_npz_streamed(path: str | os.PathLike,
                      arrays: Mapping[str, np.ndarray | Chunks]) -> Path:
    """Write ``arrays`` to the ``.npz`` ``path`` (atomically; the name as given, where
    ``np.savez`` would add ``.npz``), holding at most one part of a :class:`Chunks` at a
    time. Parts that disagree with the first, or rows that do not add up to ``rows``, raise
    ``ValueError`` and leave no file."""
    path = Path(path)
    with atomic_writer(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                     allowZip64=True) as archive:
        for name, value in arrays.items():
            # force_zip64: the member's size is not known when it is opened, and may pass 4 GB
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(value, Chunks):
                    _write_chunks(member, name, value)
                else:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return path


def _write_chunks(member: IO[bytes], name: str, chunks: Chunks) -> None:
    """The ``.npy`` header for the whole array, from the first part, then each part's rows."""
    first: np.ndarray | None = None
    written = 0
    for part in chunks.parts:
        part = np.ascontiguousarray(part)
        if first is None:
            first = part
            header = {"descr": np.lib.format.dtype_to_descr(part.dtype),
                      "fortran_order": False, "shape": (chunks.rows, *part.shape[1:])}
            np.lib.format.write_array_header_1_0(member, header)
        elif part.dtype != first.dtype or part.shape[1:] != first.shape[1:]:
            raise ValueError(f"{name}: a part of {part.dtype} {part.shape[1:]} after parts of "
                             f"{first.dtype} {first.shape[1:]}; every part must match the first")
        written += len(part)
        if written > chunks.rows:
            raise ValueError(f"{name}: more than the {chunks.rows} rows announced")
        member.write(part.tobytes())
    if written != chunks.rows:
        raise ValueError(f"{name}: {written} rows given of the {chunks.rows} announced")
