r"""Cost of compress: CED ranking vs N full forwards, the zero-shot proxies' share of the
compress wall time, peak memory, and the cost of its plan (``--dry-run``) beside the run.

    python benchmarks/compress_cost.py               # bundled DiT teacher, CPU
    python benchmarks/compress_cost.py --quick
    python benchmarks/compress_cost.py --xl --device cuda   # DiT-XL/2 shape, random weights,
                                                            # 256 samples x 8 timesteps
    python benchmarks/compress_cost.py --xl --device cuda --forward-passes 7 --rounds 1
                                          # time 7 of the 28 full forwards, scaled to 28
    python benchmarks/compress_cost.py --xl --arch DiT-S/2 --latent-size 8 --samples 64 \
        --timesteps 2 --device cpu                          # a dry run of the --xl path

Goals: CED ranking time over N blocks <= 0.6 x the time of N full forwards on the same
calibration set (the two timed in alternation, ``--rounds`` times, the median round's ratio);
proxies <= 10% of compress wall time. Prints a table and writes
benchmarks/results/compress_cost.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from entpruner_sdk.compress import compress, plan
from entpruner_sdk.data import ImageDataset, load_data
from entpruner_sdk.importance import CED, CalibrationSet
from entpruner_sdk.models import DiffusionTransformer, config_from_name
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.teachers import load_teacher
from entpruner_sdk.utils.device import autocast, resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_times

RESULTS = Path(__file__).parent / "results"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def full_forwards(model, objective, calibration, device, batch_size, passes: int) -> None:
    """``passes`` full forward passes over the calibration set: N of them are the naive
    ranking's work (each block's removal evaluated by a forward of the whole model)."""
    for _ in range(passes):
        for _, batch in calibration.batches(objective, device, batch_size):
            with autocast(device):
                model(batch.x_t, batch.t, batch.y)


def warm_up_set(calibration: CalibrationSet, batch_size: int) -> CalibrationSet:
    """One batch at one timestep: enough to load the kernels and fill the allocator."""
    n = min(batch_size, len(calibration))
    return CalibrationSet(calibration.images[:n], calibration.labels[:n],
                          calibration.noise[:n], calibration.times[:1], calibration.num_classes,
                          calibration.value_range)


def ced_cost(model, data, device, per_class, times, batch_size,
             forward_passes: int | None = None, rounds: int = 3) -> dict:
    """CED's ranking time over the time of N full forwards on the same calibration set,
    timed in alternation for ``rounds`` rounds: the ratio is the median of the rounds'
    ratios, with the lowest and highest. ``forward_passes`` < N times that many passes and
    scales the time to N, to save device time on large models (the passes do the same work,
    so only the noise grows)."""
    objective = objective_for(model)
    calibration = CalibrationSet.build(data, objective, per_class, times)
    ced = CED(batch_size=batch_size)
    ced.score(model, objective, warm_up_set(calibration, batch_size), device)
    passes = model.depth if forward_passes is None else min(forward_passes, model.depth)
    timed = interleaved_times({
        "ced": lambda: ced.score(model, objective, calibration, device),
        "naive": lambda: full_forwards(model, objective, calibration, device, batch_size,
                                       passes)}, repeats=rounds, warmup=0)
    naive = [seconds * model.depth / passes for seconds in timed["naive"]]
    ratios = [c / n for c, n in zip(timed["ced"], naive, strict=True)]
    return {"blocks": model.depth, "samples": len(calibration), "timesteps": times,
            "ced_seconds": statistics.median(timed["ced"]),
            "n_full_forwards_seconds": statistics.median(naive),
            "full_forward_passes_timed": passes, "rounds": rounds,
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "peak_memory_mb": peak_memory_mb(device)}


XL_CLASSES = 32  # calibration classes drawn from the 1000: samples / 32 per class


def xl_model(device, arch: str = "DiT-XL/2", latent_size: int = 32, samples: int = 256
             ) -> tuple[DiffusionTransformer, ImageDataset]:
    """A released architecture with random weights and random latents over 32 classes."""
    torch.manual_seed(0)
    config = config_from_name(arch, num_classes=1000, input_size=latent_size)
    model = DiffusionTransformer(config).to(device)
    with torch.no_grad():  # random (not adaLN-Zero) weights, so blocks are not identities
        for block in model.blocks:
            block.adaLN_modulation[-1].weight.normal_(std=0.02)
    data = ImageDataset(torch.randn(samples, 4, latent_size, latent_size),
                        torch.arange(samples) % XL_CLASSES, 1000, name="random-latents",
                        pixels=False)
    return model.eval(), data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true",
                        help="4 calibration images per class and a 100-step compress")
    parser.add_argument("--xl", action="store_true", help="DiT-XL/2 shape, 256 x 8")
    parser.add_argument("--arch", default="DiT-XL/2", help="architecture for --xl")
    parser.add_argument("--latent-size", type=int, default=32, help="latent side for --xl")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples, --xl")
    parser.add_argument("--timesteps", type=int, default=8, help="timesteps per sample, --xl")
    parser.add_argument("--forward-passes", type=int, default=None, metavar="K",
                        help="time K of the N full forward passes and scale to N "
                             "(default: all N)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of CED and the N forwards, timed in alternation; the "
                             "ratio is the median round's (default 3)")
    parser.add_argument("--out", default=str(RESULTS / "compress_cost.json"), help="JSON results")
    args = parser.parse_args(argv)
    if args.forward_passes is not None and args.forward_passes < 1:
        parser.error("--forward-passes must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    device = resolve_device(args.device)
    result: dict = {"device": str(device), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    if args.xl:
        if args.samples % XL_CLASSES:
            parser.error(f"--samples must be a multiple of {XL_CLASSES} (the classes drawn)")
        model, data = xl_model(device, args.arch, args.latent_size, args.samples)
        result["ced_xl"] = ced_cost(model, data, device, per_class=args.samples // XL_CLASSES,
                                    times=args.timesteps, batch_size=64,
                                    forward_passes=args.forward_passes, rounds=args.rounds)
        result["ced_xl"]["arch"] = args.arch
    else:
        teacher = load_teacher("dit-digits", device)
        data = load_data("digits")
        per_class = 4 if args.quick else 16
        result["ced"] = ced_cost(teacher, data, device, per_class, 8, 256,
                                 forward_passes=args.forward_passes, rounds=args.rounds)
        steps = 100 if args.quick else 600
        settings = dict(steps=steps, device=device, interval=max(steps // 12, 1))
        start = time.perf_counter()  # what --dry-run costs, beside the run it plans
        planned = plan(teacher, data, teacher.depth // 2, **settings)
        result["plan"] = {"wall_seconds": time.perf_counter() - start,
                          "kept_blocks": planned.kept_blocks}
        start = time.perf_counter()
        run = compress(teacher, data, teacher.depth // 2, progress=False, **settings)
        summary = run.report["summary"]
        result["compress"] = {"steps": steps, "wall_seconds": time.perf_counter() - start,
                              "importance_seconds": summary["importance_seconds"],
                              "proxy_seconds": summary["proxy_seconds"],
                              "proxy_share": summary["proxy_share"],
                              "decisions": len(run.report["decisions"]),
                              "peak_memory_mb": peak_memory_mb(device)}
        result["plan"]["share_of_compress"] = (result["plan"]["wall_seconds"]
                                               / result["compress"]["wall_seconds"])
        result["plan"]["same_blocks"] = planned.kept_blocks == summary["kept_blocks"]
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ced = result.get("ced") or result.get("ced_xl")
    low, high = ced["ratio_range"]
    print(f"\nCED ranking / N full forwards: {ced['ratio']:.2f} (goal <= 0.6; {low:.2f}-"
          f"{high:.2f} over {ced['rounds']} rounds timed in alternation)")
    if "compress" in result:
        print(f"proxies' share of compress wall time: {result['compress']['proxy_share']:.1%} "
              "(goal <= 10%)")
        print(f"plan (--dry-run) / compress wall time: {result['plan']['share_of_compress']:.2f}"
              f"; it named the blocks compress kept: {result['plan']['same_blocks']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
