"""Folder read speed: how fast a class folder of camera-sized JPEGs is read and centre-cropped
(``ImageFolder``, as ``encode``, ``evaluate``'s reference and ``load_data`` read folders), with
the JPEG decoded at a reduced scale (``folder._draft``, the default) and at full size, and a
whole read by this process alone and by reader processes.

    python benchmarks/folder_read.py            # 48 photos of 4000x3000, cropped to 256x256
    python benchmarks/folder_read.py --quick    # 16 photos of 2000x1500, cropped to 128x128

The photos are smooth random patterns with a little noise, saved as JPEG quality 90 (a phone's
12-megapixel picture). Every variant runs in alternation, ``--repeats`` times (5; quick 3),
and the median is kept; the ratios are measured side by side in one run. Also reported: how
far the reduced-scale crops are from the full-size ones (mean and largest difference in 8-bit
levels). Prints a table and writes benchmarks/results/folder_read.json (quick:
folder_read_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from entpruner_sdk.data import folder as folder_module
from entpruner_sdk.data.folder import ImageFolder
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_medians, machine

RESULTS = Path(__file__).parent / "results"


def write_photos(root: Path, count: int, width: int, height: int) -> None:
    """``count`` camera-sized JPEGs over two classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    for i in range(count):
        phase = rng.uniform(0, 6, 3).astype(np.float32)
        smooth = np.sin(x * (20 + i) + y * (13 + i) + phase) * 100 + 128
        pixels = (smooth + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"class{i % 2}" / f"{i}.jpg", quality=90)


def load(folder: ImageFolder, full_size: bool = False, workers: int = 0) -> torch.Tensor:
    """Every image read whole (``ImageFolder.load``), JPEGs at full size or reduced scale."""
    real = folder_module._draft
    if full_size:
        folder_module._draft = lambda image, short_side: None
    try:
        return folder.load(workers=workers).images
    finally:
        folder_module._draft = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 photos of 2000x1500 at 128")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; quick: 3)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="reader processes for the parallel whole read (default: "
                             "%(default)s)")
    args = parser.parse_args()
    count, (width, height), size = (16, (2000, 1500), 128) if args.quick else (
        48, (4000, 3000), 256)
    repeats = args.repeats or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), count, width, height)
        folder = ImageFolder(tmp, image_size=size)
        # in 8-bit levels, as the images are held
        difference = (load(folder).int() - load(folder, full_size=True).int()).abs()
        times = interleaved_medians({
            "full size": lambda: load(folder, full_size=True),
            "reduced scale": lambda: load(folder),
            "reduced, processes": lambda: load(folder, workers=args.workers),
        }, repeats=repeats)
    per_image = {name: seconds / count * 1e3 for name, seconds in times.items()}
    print(f"{count} JPEGs of {width}x{height} -> {size}x{size}, median of {repeats}")
    print("| read | ms per image | speedup over full size |")
    print("|---|---|---|")
    for name, ms in per_image.items():
        label = f"{name} ({args.workers} readers)" if name.endswith("processes") else name
        print(f"| {label} | {ms:.1f} | {per_image['full size'] / ms:.2f}x |")
    print(f"reduced vs full-size crops: mean difference {float(difference.mean()):.2f} "
          f"levels, largest {int(difference.max())} (of 255)")
    name = "folder_read_quick.json" if args.quick else "folder_read.json"
    atomic_write_text(RESULTS / name, json.dumps({
        "machine": machine(torch.device("cpu")), "images": count, "photo": [width, height],
        "crop": size, "repeats": repeats, "workers": args.workers,
        "ms_per_image": {k: round(v, 2) for k, v in per_image.items()},
        "speedup": {k: round(per_image["full size"] / v, 2) for k, v in per_image.items()},
        "difference_levels": {"mean": round(float(difference.mean()), 3),
                              "max": int(difference.max())}}, indent=2))
    print(f"written to {RESULTS / name}")


if __name__ == "__main__":
    main()
