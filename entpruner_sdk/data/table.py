"""A table of image files and their classes (``train.csv``: ``file_name,label``), read lazily.

Many datasets come as a folder of images and a CSV that labels them (Kaggle's, a labelling
tool's export) rather than one folder per class. ``ImageTable`` reads such a table and then
streams its images exactly as ``ImageFolder`` does (``ImageFiles``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

from entpruner_sdk.data.classes import ids_of_names, positions
from entpruner_sdk.data.datasets import DataError
from entpruner_sdk.data.folder import SPLITS, ImageFiles, read_class_index

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
# the headers a column of files and a column of classes go by, most usual first (any case);
# ``file_name`` is what Hugging Face's imagefolder reads in its metadata.csv
FILE_COLUMNS = ("file_name", "filename", "file", "path", "filepath", "file_path", "image",
                "image_path", "image_file", "img")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "y")


class ImageTable(ImageFiles):
    """The images a table lists, read one per item as RGB in [-1, 1] with their labels.

    The table (``.csv``, ``.tsv``, or a ``.jsonl`` of one object per line) has a header
    naming a column of files (``file_name``, ``path``, ``image``, ...:
    ``FILE_COLUMNS``) and a column of classes (``label``, ``class``, ...: ``LABEL_COLUMNS``);
    other columns are ignored. A file is relative to the table's folder, or absolute.
    Labels are class ids (``0``, ``1``, ...), or class names numbered in sorted order, or,
    with ``class_index``, keys of the model's class index (``read_class_index``: ImageNet's
    ``n01440764``), which gives the ids and names. ``image_size`` scales and centre-crops as
    for a class folder.
    """

    def __init__(self, path: str | os.PathLike, image_size: int | None = None,
                 class_index: str | os.PathLike | None = None,
                 num_classes: int | None = None, split: str = "train") -> None:
        self.table = Path(path)
        lines, files, values, splits = _read_columns(self.table)
        # every row's label: each split numbers the classes alike, though one lack a class
        labels, class_names = _labels(values, self.table, class_index, num_classes)
        if splits is None and split != "train":
            raise DataError(f"split={split!r} (--split) picks the rows of a table's split "
                            f"column, and the table {self.table} has none: drop it")
        if splits is not None:  # the rows of one split only
            keep = _split_rows(split, splits, self.table)
            lines, files, labels = ([column[i] for i in keep] for column in (lines, files,
                                                                            labels))
        blank = [line for line, file in zip(lines, files) if not file]
        if blank:
            raise DataError(f"the table {self.table} names no file on line {blank[0]} (and "
                            f"{len(blank) - 1} more); give every row a file, or drop the row")
        root = self.table.parent
        files = [_found(root, file) for file in files]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise DataError(f"{self.table} lists {len(missing)} files that do not exist "
                            f"(e.g. {', '.join(missing[:3])}); a file is relative to the "
                            "table's folder, or absolute: mend those rows, or drop them")
        # "train" or "metadata" alone would not say which data: its folder's name leads
        self.name = "-".join(part for part in (self.table.resolve().parent.name,
                                               self.table.stem) if part)
        self.where = str(self.table)
        self.asked_classes = num_classes  # what origin asks again (fit_class_names may resize)
        self.split = split if splits is not None else None
        self._hold(root, files, labels, class_names, image_size, class_index)

    @property
    def origin(self) -> dict:
        """How to load the same images again (``load_data`` keywords): the absolute table, the
        crop size, the class index and the class count."""
        options = {"split": self.split, "image_size": self.crop_size,
                   "class_index": self.class_index and str(Path(self.class_index).resolve()),
                   "num_classes": self.asked_classes}
        return {"data": str(self.table.resolve()),
                **{key: value for key, value in options.items() if value is not None}}

    def fingerprint(self) -> str:
        """The files' fingerprint (``ImageFiles``) and the class names the table gives."""
        names = "\n".join(self.class_names).encode()
        return hashlib.sha256(super().fingerprint().encode() + names).hexdigest()[:16]


def _found(root: Path, file: str) -> Path:
    """``file`` under the table's folder (an absolute one stays itself); a path written on
    Windows (``images\\cat.png``) is read with its separators when no file has that name."""
    path = root / file
    if "\\" in file and not path.exists():
        return root / file.replace("\\", "/")
    return path


def _read_columns(table: Path) -> tuple[list[int], list[str], list[str], list[str] | None]:
    """The table's line numbers, file column, label column and split column (None without
    one), row by row."""
    lines = _read_rows(table)
    if len(lines) < 2:
        raise DataError(f"the table {table} has no rows under its header; list one image "
                        "file and its class per row")
    header = [cell.strip().lower() for cell in lines[0][1]]
    file_at, label_at = _column(header, FILE_COLUMNS), _column(header, LABEL_COLUMNS)
    if file_at is None or label_at is None:
        lacking = "column of files" if file_at is None else "column of classes"
        names = FILE_COLUMNS if file_at is None else LABEL_COLUMNS
        raise DataError(f"the table {table} has no {lacking}: its header is "
                        f"{', '.join(lines[0][1])}; name that column {', '.join(names[:3])} "
                        f"(or {', '.join(names[3:])}), in any case")
    rows = lines[1:]
    short = [line for line, row in rows if len(row) <= max(file_at, label_at)]
    if short:
        raise DataError(f"the table {table} has rows with fewer cells than its header (line "
                        f"{short[0]}, and {len(short) - 1} more); give every row a file and a "
                        "class")
    split_at = _column(header, ("split",))
    splits = (None if split_at is None else
              [row[split_at].strip() if len(row) > split_at else "" for _, row in rows])
    return ([line for line, _ in rows], [row[file_at].strip() for _, row in rows],
            [row[label_at].strip() for _, row in rows], splits)


def _split_rows(split: str, splits: list[str], table: Path) -> list[int]:
    """The rows whose split column holds ``split``, in any of its spellings (``SPLITS``)."""
    wanted = next((names for names in SPLITS.values() if split.casefold() in names),
                  (split.casefold(),))
    keep = [i for i, name in enumerate(splits) if name.casefold() in wanted]
    if not keep:
        held = ", ".join(sorted(set(splits), key=str.casefold))
        raise DataError(f"the table {table} holds the splits {held}, not {split!r}: pick one "
                        "(--split, split=)")
    return keep


def _read_rows(table: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each line that is not blank, the header first: a ``.jsonl``'s
    objects (Hugging Face's ``metadata.jsonl``) as rows under the first one's keys."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark
            if table.suffix.lower() != ".jsonl":
                reader = csv.reader(handle, delimiter=TABLE_SUFFIXES[table.suffix.lower()])
                return [(reader.line_num, row) for row in reader
                        if any(cell.strip() for cell in row)]
            objects = [(n, json.loads(text)) for n, text in enumerate(handle, 1) if text.strip()]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
        raise DataError(f"cannot read the table {table}: {error}; give a UTF-8 "
                        f"{table.suffix} with a header row (a .jsonl: an object per line)"
                        ) from error
    if not objects:
        return []
    keys = list(objects[0][1])
    if not all(isinstance(row, dict) for _, row in objects):
        raise DataError(f"the table {table} holds a line that is not a JSON object; give one "
                        '{"file_name": ..., "label": ...} per line')
    return [(1, keys)] + [(n, [_cell(row.get(key)) for key in keys]) for n, row in objects]


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None


def _labels(values: list[str], table: Path, class_index: str | os.PathLike | None,
            num_classes: int | None) -> tuple[list[int], list[str]]:
    """The rows' class ids and the class names: from the index, else ids as written, else the
    names in sorted order."""
    source = f"the table {table}"
    if class_index is not None:
        keys, names = read_class_index(class_index)
        ids, unknown = positions(values, keys)
        if unknown:
            raise DataError(f"{source}: the classes {', '.join(unknown[:4])} are not keys of "
                            f"the index {class_index} ({len(keys)} classes, from {keys[0]}); "
                            "label the rows as the index does, or use the model's index")
        return ids, names
    if all(re.fullmatch(r"\d+", value) for value in values):  # class ids
        labels = [int(value) for value in values]
        count = num_classes if num_classes is not None else max(labels) + 1
        if max(labels) >= count:
            raise DataError(f"{source} holds label {max(labels)}, beyond num_classes={count}; "
                            "raise num_classes (--num-classes), or mend the labels")
        return labels, [str(c) for c in range(count)]
    labels, names = ids_of_names(values, source=source)
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"{source} names {len(names)} classes, and num_classes={num_classes}; "
                        "drop num_classes (the names give the count), or label by class id")
    return labels, names
