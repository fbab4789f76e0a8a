"""Large arrays read in place: mapped from the file that holds them rather than copied into
the process.

A latent dataset is read whole by every process that trains on it: under torchrun, each rank
held its own copy (8 ranks, 8 copies of 13 GB for 200,000 latents of DiT-XL/2 at 512 pixels).
Mapped, the ranks share the operating system's page cache, which also gives the pages back
under memory pressure instead of failing. The maps are copy-on-write: a write lands in this
process's memory, never in the file (the caches' files are replaced whole, atomically, so a
map keeps reading the version it opened).

Arrays smaller than ``MAP_FROM`` are read as before: for them a map saves nothing worth an
open file.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

MAP_FROM = 64 * 2**20  # bytes: smaller arrays are read into memory

# safetensors' dtype names, for those numpy holds (bf16 has no numpy type: read instead)
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def npz_member(path: str | os.PathLike, key: str) -> np.ndarray | None:
    """``key`` of an ``.npz`` mapped from the file, when it is stored uncompressed as
    ``np.savez`` and ``entpruner encode`` write it, in C order and this machine's byte order;
    None otherwise (``np.savez_compressed``'s, say), for the caller to read it instead."""
    with zipfile.ZipFile(path) as archive:
        try:
            member = archive.getinfo(f"{key}.npy")
        except KeyError:
            return None
    if member.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as file:
        # the member's data follows its local header, whose name and extra field lengths
        # may differ from the central directory's (zip64 sizes)
        file.seek(member.header_offset)
        local = file.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        file.seek(member.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(file)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(file)
        offset = file.tell()
    if fortran_order or dtype.hasobject or not dtype.isnative:
        return None
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)


def safetensors_tensor(path: str | os.PathLike, key: str) -> torch.Tensor | None:
    """Tensor ``key`` of a safetensors file mapped from the file; None when its dtype has no
    numpy type (bf16), on a big-endian machine, or when the file does not hold it. A file cut
    short raises ``ValueError``, as reading it would fail."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    entry = header.get(key)
    if entry is None or entry["dtype"] not in _SAFETENSORS_DTYPES:
        return None
    start, end = entry["data_offsets"]
    # safetensors stores little-endian: on another machine the bytes would need swapping
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
    if not dtype.isnative:
        return None
    shape = tuple(entry["shape"])
    if end - start != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"{path}: {key} holds {end - start} bytes, not {shape} {dtype}")
    if Path(path).stat().st_size < 8 + length + end:
        raise ValueError(f"{path} is cut short: {key} ends past the end of the file")
    if not shape or 0 in shape:
        return torch.from_numpy(np.zeros(shape, dtype))
    array = np.memmap(path, dtype=dtype, mode="c", offset=8 + length + start, shape=shape)
    return torch.from_numpy(array)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``: those of ``MAP_FROM`` bytes or more mapped where they can
    be (``npz_member``), the others read."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: _npz_array(archive, path, key) for key in archive.files}


def _npz_array(archive: np.lib.npyio.NpzFile, path: str | os.PathLike, key: str) -> np.ndarray:
    if archive.zip.getinfo(f"{key}.npy").file_size >= MAP_FROM:
        mapped = npz_member(path, key)
        if mapped is not None:
            return mapped
    return archive[key]


def read_tensor(path: str | os.PathLike, key: str) -> torch.Tensor:
    """Tensor ``key`` of a safetensors file: mapped when the file is ``MAP_FROM`` bytes or
    more (``safetensors_tensor``), else read."""
    if os.path.getsize(path) >= MAP_FROM:
        mapped = safetensors_tensor(path, key)
        if mapped is not None:
            return mapped
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        return file.get_tensor(key)
