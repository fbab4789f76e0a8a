"""Sample memory: the peak resident memory of ``entpruner sample --npz`` at two sample counts,
so the growth with the samples shows. Side by side with the way it sampled before: every
batch sampled, then the whole as floats in [-1, 1] written with ``np.savez``.

    python benchmarks/sample_memory.py            # 1000 and 2000 samples at 256x256
    python benchmarks/sample_memory.py --quick    # 100 and 200 samples at 128x128

The model is a pixel SiT with random weights (2 blocks of width 64, patch 16; the evaluate
memory benchmark's), sampling in 2 steps, 250 images a batch (``sample``'s default) with a
grid of 16, so what grows is the samples held. Each measurement runs in a fresh process
(``ru_maxrss``), the two ways in alternation, ``--repeats`` times (3; quick: 1), the least
peak kept; the two files hold the same samples, as 8-bit pixels and as floats.
Prints a table and writes benchmarks/results/sample_memory.json.
Goal: the peak of ``sample --npz`` does not grow with the number of samples (at most a batch
is held), where holding them all grows by their floats (12 bytes a pixel).
"""

from __future__ import annotations

import json
import resource
import tempfile
from pathlib import Path

import numpy as np
import torch
from encode_memory import (
    child_json,
    folder_parser,
    folder_settings,
    keep_least_peak,
    peak_growth,
    write_results,
)
from evaluate_memory import tiny_model

MODES = ("streamed", "whole")
BATCH, STEPS, GRID = 250, 2, 16


def arguments(model: Path, count: int, out: Path) -> list[str]:
    """``entpruner sample``'s arguments: ``count`` samples over the model's 4 classes."""
    return ["sample", "--model", str(model), "--per-class", str(count // 4), "--steps",
            str(STEPS), "--batch-size", str(BATCH), "--grid-max", str(GRID), "--out",
            str(out / "grid.png"), "--npz", str(out / "samples.npz"), "--quiet",
            "--device", "cpu"]


def sample_whole(model: Path, count: int, out: Path) -> None:
    """The samples made as ``sample --npz`` made them before: all of them, then written."""
    from entpruner_sdk import load
    from entpruner_sdk.sampling import sample, save_grid

    labels = [c for c in range(4) for _ in range(count // 4)]
    images = sample(load(model), labels, steps=STEPS, clip_denoised=True, device="cpu",
                    batch_size=BATCH)
    with open(out / "samples.npz", "wb") as handle:
        np.savez(handle, images=images.numpy(), labels=np.array(labels))
    save_grid(images[:GRID], out / "grid.png")


def measure(mode: str, model: Path, count: int, out: Path) -> dict:
    """Sample ``count`` images one ``mode`` in this process: its peak memory (MB) and file."""
    from entpruner_sdk.cli import main

    if mode == "streamed":
        assert main(arguments(model, count, out)) == 0
    else:
        sample_whole(model, count, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    with np.load(out / "samples.npz") as saved:
        images = saved["arr_0" if mode == "streamed" else "images"]
        return {"peak_mb": round(peak, 1), "file_mb": round(images.nbytes / 2**20, 1),
                "samples": len(images)}


def same_samples(out: Path) -> bool:
    """Whether the 8-bit file holds the float file's samples, rounded as a saved image."""
    from entpruner_sdk.data.datasets import eight_bit

    with np.load(out / "streamed" / "samples.npz") as eight, \
            np.load(out / "whole" / "samples.npz") as floats:
        rounded = eight_bit(torch.from_numpy(floats["images"]))
        return bool(np.array_equal(eight["arr_0"], rounded.permute(0, 2, 3, 1).numpy()))


def main() -> None:
    args = folder_parser(__doc__, "1000,2000", ("MODE", "MODEL", "COUNT", "OUT"),
                         items="samples").parse_args()
    if args.child:
        mode, model, count, out = args.child
        print(json.dumps(same_samples(Path(out)) if mode == "compare" else
                         measure(mode, Path(model), int(count), Path(out))))
        return
    counts, size, repeats = folder_settings(args, "1000,2000")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from entpruner_sdk import save

        model = save(tiny_model(size), Path(tmp) / "model")
        for count in counts:
            row = {"samples": count, "size": size,
                   "floats_mb": round(count * 3 * size * size * 4 / 2**20, 1)}
            for _ in range(repeats):
                for mode in MODES:
                    out = Path(tmp) / mode
                    out.mkdir(exist_ok=True)
                    keep_least_peak(row, mode, child_json(__file__, mode, model, count, out))
            # in a child too: the files read here would stay in this process's memory, and a
            # child forked from it starts its peak (ru_maxrss) at this process's size
            row["same_samples"] = child_json(__file__, "compare", model, count, tmp)
            rows.append(row)
    print(f"sample --npz, {BATCH} a batch, {size}x{size}; least peak of {repeats}")
    print("| samples | their floats (MB) | all held: peak MB | streamed: peak MB | "
          "streamed / all held | .npz, 8-bit (MB) | same samples |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        whole, streamed = row["whole"]["peak_mb"], row["streamed"]["peak_mb"]
        print(f"| {row['samples']} | {row['floats_mb']} | {whole:.0f} | {streamed:.0f} | "
              f"{streamed / whole:.2f} | {row['streamed']['file_mb']} | "
              f"{'yes' if row['same_samples'] else 'NO'} |")
    first, last = rows[0], rows[-1]
    growth = peak_growth(rows, MODES)
    print(f"peak growth from {first['samples']} to {last['samples']} samples: all held "
          f"{growth['whole']:+.0f} MB, streamed {growth['streamed']:+.0f} MB (their floats "
          f"{last['floats_mb'] - first['floats_mb']:+.0f} MB)")
    write_results("sample_memory", args.quick, repeats=repeats, batch_size=BATCH, rows=rows,
                  growth_mb=growth)


if __name__ == "__main__":
    main()
