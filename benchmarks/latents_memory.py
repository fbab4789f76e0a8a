"""Latents memory under torchrun: each process's own memory while a data-parallel compress
trains on a large ``.npz`` of latents, with the latents read into each process (as before)
and mapped from the file (``data.mapped``: the processes share the system's file cache).

    python benchmarks/latents_memory.py            # 512 MB of latents, 2 processes
    python benchmarks/latents_memory.py --quick    # 128 MB

The latents are random 4x16x16 floats (4 KB each), ten classes, written as
``entpruner encode`` writes them (an uncompressed ``.npz``); the model is a small random
latent DiT saved beside them. Each setting runs a short compress (a few steps, no report
samples) through ``torchrun --nproc_per_node N`` on the CPU (gloo), and each process samples
its own (anonymous) resident memory, ``RssAnon``, every 5 ms: the memory it holds itself, not
the mapped file's pages, which the system holds once for every process and takes back when
memory is short. The two settings alternate, ``--repeats`` times (2; quick: 1), and each
process's least peak is kept. Prints a table and writes benchmarks/results/latents_memory.json
(latents_memory_quick.json with --quick).
Goal: mapped, no process holds its own copy of the latents (its peak drops by their size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from encode_memory import AnonymousPeak, write_results

SETTINGS = ("read", "mapped")
SHAPE = (4, 16, 16)  # one latent: 4 KB of floats


def write_latents(path: Path, megabytes: int, classes: int = 10) -> int:
    """An uncompressed ``.npz`` of about ``megabytes`` MB of random latents (as encode writes
    them); returns how many."""
    count = megabytes * 2**20 // (4 * int(np.prod(SHAPE)))
    rng = np.random.default_rng(0)
    np.savez(path, latents=rng.standard_normal((count, *SHAPE), dtype=np.float32),
             labels=rng.integers(0, classes, count), class_names=np.array(
                 [f"class {c}" for c in range(classes)]))
    return count


def write_model(path: Path, classes: int = 10) -> None:
    """A small random DiT on the latents' shape."""
    import entpruner_sdk as ep
    from entpruner_sdk.models import DiffusionTransformer, TransformerConfig

    config = TransformerConfig(family="dit", input_size=SHAPE[1], patch_size=2,
                               in_channels=SHAPE[0], hidden_size=64, depth=6, num_heads=2,
                               num_classes=classes)
    ep.save(DiffusionTransformer(config), path)


def measure(setting: str, argv: list[str]) -> dict:
    """``entpruner ARGV`` in this process (one of torchrun's), with the latents read or
    mapped: its peak own memory (MB)."""
    from entpruner_sdk.cli import main
    from entpruner_sdk.data import mapped

    if setting == "read":
        mapped.MAP_FROM = 2**62  # no file is that large: every array read, as before
    with AnonymousPeak() as own:
        status = main(argv)
    return {"setting": setting, "rank": int(os.environ.get("RANK", 0)), "status": status,
            "own_peak_mb": own.peak_mb}


def run(setting: str, processes: int, npz: Path, model: Path, out: Path) -> list[dict]:
    """One compress through torchrun with ``processes`` processes; each one's figures."""
    argv = ["compress", "--model", str(model), "--data", str(npz), "--budget", "3",
            "--steps", "4", "--interval", "2", "--batch-size", "8",
            "--calibration-per-class", "2", "--calibration-times", "2", "--report-samples",
            "0", "--device", "cpu", "--quiet", "--no-keep-checkpoint", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         __file__, "--child", setting, json.dumps(argv), str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed ({done.returncode}): {done.stderr[-3000:]}")
    # each process writes its own file: their printed lines would interleave
    return [json.loads((out / f"memory-rank{rank}.json").read_text())
            for rank in range(processes)]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 MB of latents")
    parser.add_argument("--megabytes", type=int, default=None, help="latents (512; quick: 128)")
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes (2)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per setting (2; quick: 1)")
    parser.add_argument("--child", nargs=3, metavar=("SETTING", "ARGV", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setting, argv, out = args.child
        figures = measure(setting, json.loads(argv))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"memory-rank{figures['rank']}.json").write_text(json.dumps(figures))
        return
    megabytes = args.megabytes or (128 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 2)
    best: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        npz, model = Path(tmp) / "latents.npz", Path(tmp) / "model"
        count = write_latents(npz, megabytes)
        write_model(model)
        for repeat in range(repeats):
            for setting in SETTINGS:
                rows = run(setting, args.processes, npz, model,
                           Path(tmp) / f"{setting}{repeat}")
                if any(row["status"] != 0 for row in rows):
                    raise RuntimeError(f"{setting}: a process failed: {rows}")
                kept = best.setdefault(setting, rows)
                for i, row in enumerate(rows):  # each process's least peak
                    if row["own_peak_mb"] < kept[i]["own_peak_mb"]:
                        kept[i] = row
        file_mb = round(npz.stat().st_size / 2**20, 1)
    print(f"{count} latents of {'x'.join(map(str, SHAPE))}, {file_mb} MB, "
          f"{args.processes} processes")
    print("| latents | each process's own peak (MB) | all processes (MB) |")
    print("|---|---|---|")
    totals = {}
    for setting in SETTINGS:
        peaks = [row["own_peak_mb"] for row in best[setting]]
        totals[setting] = round(sum(peaks), 1)
        print(f"| {setting} | {', '.join(f'{p:.0f}' for p in peaks)} | {totals[setting]:.0f} |")
    saved = round(totals["read"] - totals["mapped"], 1)
    print(f"mapped: {saved:.0f} MB less own memory over {args.processes} processes "
          f"({saved / args.processes / file_mb:.2f} of the file per process); the file's pages "
          "are the system's cache, held once")
    write_results("latents_memory", args.quick, latents=count, file_mb=file_mb,
                  processes=args.processes, repeats=repeats,
                  rows={setting: best[setting] for setting in SETTINGS},
                  total_own_peak_mb=totals, saved_mb=saved)


if __name__ == "__main__":
    main()
