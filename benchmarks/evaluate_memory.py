"""Evaluate memory: the peak resident memory of a first ``evaluate`` against a class folder,
when its reference images are read (nothing cached from them yet), with as many samples as
reference images and fidelity to an original (whose samples are held too), at two folder
sizes, so the growth with the images held shows. Side by side with the same reference held
as floats in [-1, 1], and so the samples too, as evaluate held both before it kept 8-bit
pixels.

    python benchmarks/evaluate_memory.py            # 600 and 1200 photos cropped to 256x256
    python benchmarks/evaluate_memory.py --quick    # 100 and 200 photos cropped to 128x128

The photos are random JPEGs of mixed sizes (``encode_memory.write_photos``). The original is
a pixel SiT with random weights (2 blocks of width 64, patch 16) and the evaluated model its
first block, each sampling in 2 steps, so the images held are what grows; the domain
classifier is trained briefly and cached first, as a repeated evaluation finds it, and the
reference statistics are not. Each measurement runs in a fresh process (``ru_maxrss``),
``--repeats`` times (3; quick: 1), the least peak kept. The figures of the two modes differ
only by the samples' rounding to 8 bits (FD-domain and PSNR are shown for both).
Prints a table and writes benchmarks/results/evaluate_memory.json.
Goal: the peak grows by the images' 8-bit pixels (3 bytes a pixel), not by their floats.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from pathlib import Path

import torch
from encode_memory import (
    child_json,
    folder_parser,
    folder_settings,
    keep_least_peak,
    peak_growth,
    write_photos,
    write_results,
)

MODES = ("8-bit", "floats")


def tiny_model(size: int):
    """The original, two blocks with random weights."""
    from entpruner_sdk.models import DiffusionTransformer, TransformerConfig

    torch.manual_seed(0)
    model = DiffusionTransformer(TransformerConfig(
        family="sit", depth=2, hidden_size=64, num_heads=2, patch_size=16, input_size=size,
        in_channels=3, num_classes=4, learn_sigma=False))
    with torch.no_grad():  # not adaLN-Zero's init, whose blocks and output are zero
        for name, parameter in model.named_parameters():
            if name != "pos_embed":
                parameter.normal_(std=0.2)
    return model


def reference(mode: str, folder: Path, size: int):
    """What evaluate compares with: the folder (read as 8-bit pixels), or its images read and
    held as floats."""
    from entpruner_sdk.data import ImageDataset, ImageFolder, load_data, unit_range

    if mode == "8-bit":
        return ImageFolder(folder, image_size=size)
    held = load_data(folder, image_size=size)
    return ImageDataset(unit_range(held.images), held.labels, held.num_classes, held.name)


def cache_classifier(mode: str, folder: Path, size: int) -> None:
    """A briefly trained domain classifier, cached where ``evaluate`` looks for it."""
    from entpruner_sdk.evaluation.classifier import save_classifier, train_classifier
    from entpruner_sdk.evaluation.reference import load_reference
    from entpruner_sdk.utils.cache import cache_root

    data, _ = load_reference(reference(mode, folder, size), None)
    save_classifier(train_classifier(data, steps=20), data,
                    cache_root() / "classifiers" / f"{data.name}-{data.fingerprint()}")


def measure(mode: str, folder: Path, size: int) -> dict:
    """A first evaluation in this process, as many samples as reference images, with fidelity
    to the original: its peak memory (MB), FD-domain, PSNR and how the samples were held."""
    from entpruner_sdk.evaluation.evaluate import evaluate

    data = reference(mode, folder, size)
    original = tiny_model(size)
    report = evaluate(original.keep_blocks([0]), data, samples=len(data), steps=2,
                      original=original, features=("domain",), progress=False,
                      reference_size=None)
    return {"peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "fd_domain": report.metrics["fd_domain"], "psnr": report.fidelity["psnr"],
            "samples_held": report.settings["samples_held"]}


def change(eight: dict, floats: dict, key: str) -> float:
    """The relative change of a figure from the floats' to the 8-bit samples'."""
    return abs(eight[key] - floats[key]) / abs(floats[key])


def child(action: str, mode: str, folder: Path, size: int, cache: Path) -> dict:
    """``action`` in a fresh process with its own entpruner cache."""
    return child_json(__file__, action, mode, folder, size,
                      env={**os.environ, "ENTPRUNER_CACHE": str(cache)})


def main() -> None:
    args = folder_parser(__doc__, "600,1200", ("ACTION", "MODE", "FOLDER", "SIZE")).parse_args()
    if args.child:
        action, mode, folder, size = args.child
        if action == "cache":
            cache_classifier(mode, Path(folder), int(size))
            print("{}")
        else:
            print(json.dumps(measure(mode, Path(folder), int(size))))
        return
    counts, size, repeats = folder_settings(args, "600,1200")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            folder, cache = Path(tmp) / f"photos{count}", Path(tmp) / f"cache{count}"
            write_photos(folder, count)
            held = 3 * count  # the reference, the samples and the original's samples
            row = {"images": count, "samples": count, "size": size,
                   "pixels_8bit_mb": round(held * 3 * size * size / 2**20, 1),
                   "pixels_float_mb": round(held * 3 * size * size * 4 / 2**20, 1)}
            for mode in MODES:
                child("cache", mode, folder, size, cache)
            for _ in range(repeats):  # in alternation; each a first evaluation
                for mode in MODES:
                    shutil.rmtree(cache / "reference", ignore_errors=True)
                    keep_least_peak(row, mode, child("measure", mode, folder, size, cache))
            rows.append(row)
    print(f"first evaluate against a folder, reference read whole ({size}x{size}), as many "
          f"samples, fidelity to the original; least peak of {repeats}")
    print("| reference images / samples | pixels held, 8-bit (MB) | as floats (MB) "
          "| peak MB, 8-bit | peak MB, floats | 8-bit / floats | FD-domain (8-bit) "
          "| its change from floats | PSNR change |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        eight, floats = row["8-bit"], row["floats"]
        print(f"| {row['images']} / {row['samples']} | {row['pixels_8bit_mb']} | "
              f"{row['pixels_float_mb']} | {eight['peak_mb']:.0f} | {floats['peak_mb']:.0f} | "
              f"{eight['peak_mb'] / floats['peak_mb']:.2f} | "
              f"{eight['fd_domain']:.4f} | {change(eight, floats, 'fd_domain'):.1e} | "
              f"{change(eight, floats, 'psnr'):.1e} |")
    first, last = rows[0], rows[-1]
    growth = peak_growth(rows, MODES)
    pixels = round(last["pixels_8bit_mb"] - first["pixels_8bit_mb"], 1)
    print(f"peak growth from {first['images']} to {last['images']} reference images and "
          f"samples: 8-bit {growth['8-bit']:+.0f} MB, floats {growth['floats']:+.0f} MB; the "
          f"pixels held {pixels:+.0f} MB at 8 bits, {4 * pixels:+.0f} MB as floats")
    write_results("evaluate_memory", args.quick, repeats=repeats, rows=rows, growth_mb=growth,
                  pixels_8bit_growth_mb=pixels)


if __name__ == "__main__":
    main()
