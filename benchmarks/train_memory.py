"""Training-step memory: what one compress fine-tuning step (distillation from the frozen
teacher into the full-depth student, AdamW) takes beyond the weights and optimizer state, with
each memory setting: plain, gradient checkpointing, gradient accumulation, and both.

    python benchmarks/train_memory.py                 # DiT-B/2 on 4x32x32 latents, batch 16
    python benchmarks/train_memory.py --quick         # DiT-S/2 on 4x16x16 latents, batch 8
    python benchmarks/train_memory.py --arch DiT-XL/2 --batch 32 --device cuda   # on a GPU

Each setting runs in a fresh process, with random weights (they do not change what is held).
After a warm-up step has made Adam's moments, the step's own memory (activations and
gradients: each step frees the last one's gradients first, as compress and train do) is
measured: on CUDA the allocator's peak above what is allocated before the step (exact); on the
CPU the process's peak resident memory above its resident memory before the step, with glibc
told to map every allocation over 128 kB on its own (MALLOC_MMAP_THRESHOLD_), so a freed tensor
leaves the resident memory at once (without it, freed heap pages linger and blur the figure).
"peak" adds what was held before the step: the teacher's and student's weights and Adam's
moments.
Time per step is the mean of --steps steps in the setting's own process; its ratio to the plain
step is timed side by side: one student takes a step with each setting in turn, each round
starting one setting later, for --rounds rounds (4: each setting once in each place), and the
ratio is the median of the rounds' ratios.
Prints a table (ratios to the plain step) and writes
benchmarks/results/train_memory.json (train_memory_quick.json with --quick, or --out).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from entpruner_sdk.compress.distill import DistillConfig, distillation_loss
from entpruner_sdk.models import DiffusionTransformer, config_from_name, count_parameters
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.training import accumulate_gradients
from entpruner_sdk.utils.device import autocast, resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_ratios, machine

RESULTS = Path(__file__).parent / "results"
SETTINGS = {  # name: (gradient_accumulation, gradient_checkpointing)
    "plain": (1, False),
    "checkpointing": (1, True),
    "accumulation 4": (4, False),
    "both": (4, True),
}


def resident_mb() -> float:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def training_step(arch: str, latent: int, batch: int, device: torch.device
                  ) -> tuple[Callable[[str], None], torch.optim.Optimizer]:
    """One compress step of a random ``arch`` student distilled from its frozen copy, run
    with the memory setting named, and the student's optimizer."""
    torch.manual_seed(0)
    config = config_from_name(arch, input_size=latent, in_channels=4, num_classes=1000)
    teacher = DiffusionTransformer(config).to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    student.pos_embed.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    objective = objective_for(teacher)
    generator = torch.Generator().manual_seed(0)
    distill = DistillConfig()

    def loss_of(part):
        with autocast(device):
            return distillation_loss(student, teacher, objective, part, distill, 0.0)[0]

    def step(setting: str) -> None:
        accumulation, student.gradient_checkpointing = SETTINGS[setting]
        images = torch.randn(batch, 4, latent, latent, generator=generator).to(device)
        labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(loss_of, objective.noise_batch(images, labels, generator),
                             accumulation, student)
        optimizer.step()

    return step, optimizer


def measure(setting: str, arch: str, latent: int, batch: int, steps: int, device: str) -> dict:
    """One setting, in this process: the step's memory above the resident state, and its time."""
    accumulation, checkpointing = SETTINGS[setting]
    device = resolve_device(device)
    step, optimizer = training_step(arch, latent, batch, device)
    step(setting)  # warm-up: Adam's moments now exist, as in every later step
    # a step starts by freeing the last step's gradients (zero_grad(set_to_none=True)), so
    # they count in the step's memory, as in compress and train
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = resident_mb()
    started = time.perf_counter()
    for _ in range(steps):
        step(setting)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    if device.type == "cuda":
        step_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
        held_mb = before / 2**20
    else:  # ru_maxrss is in KB on Linux
        step_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        held_mb = before
    return {"setting": setting, "gradient_accumulation": accumulation,
            "gradient_checkpointing": checkpointing, "micro_batch": batch // accumulation,
            "step_mb": round(step_mb, 1), "held_mb": round(held_mb, 1),
            "seconds_per_step": round(seconds, 3)}


def side_by_side(arch: str, latent: int, batch: int, rounds: int, device: torch.device
                 ) -> dict[str, dict]:
    """Each setting's step time as a ratio to the plain step's, timed in alternation on one
    student (a setting is how the step runs, so switching it between steps is free): one
    step of each a round, after a step that makes Adam's moments. Each round starts one
    setting later, so in 4 rounds each setting runs once in each place: on the CPU a step's
    time moved by up to 15% with the setting it followed."""
    step, _ = training_step(arch, latent, batch, device)
    step("plain")
    return interleaved_ratios({setting: functools.partial(step, setting)
                               for setting in SETTINGS}, "plain", rounds, rotate=True)


def child(setting: str, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process (its own peak memory); the JSON it prints last."""
    command = [sys.executable, __file__, "--child", setting, "--arch", args.arch,
               "--latent-size", str(args.latent_size), "--batch", str(args.batch),
               "--steps", str(args.steps), "--device", args.device]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="DiT-S/2, 16x16 latents, batch 8")
    parser.add_argument("--arch", default=None, help="model shape (DiT-B/2; quick: DiT-S/2)")
    parser.add_argument("--latent-size", type=int, default=None,
                        help="latent side (32 = 256x256 images; quick: 16)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (16; quick: 8)")
    parser.add_argument("--steps", type=int, default=2, help="steps timed after the warm-up")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of side-by-side timing, a step of each setting a round, "
                             "each round starting one setting later")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.arch = args.arch or ("DiT-S/2" if args.quick else "DiT-B/2")
    args.latent_size = args.latent_size or (16 if args.quick else 32)
    args.batch = args.batch or (8 if args.quick else 16)
    if args.batch % 4:
        parser.error("--batch must split into 4 micro-batches")
    if args.child:
        print(json.dumps(measure(args.child, args.arch, args.latent_size, args.batch,
                                 args.steps, args.device)))
        return
    rows = [child(setting, args) for setting in SETTINGS]
    device = resolve_device(args.device)
    timing = side_by_side(args.arch, args.latent_size, args.batch, args.rounds, device)
    for row in rows:
        row["time_vs_plain"] = timing[row["setting"]]["ratio"]
        row["timed_rounds_s"] = timing[row["setting"]]["round_s"]
    plain = rows[0]
    config = config_from_name(args.arch, input_size=args.latent_size, in_channels=4,
                              num_classes=1000)
    parameters = count_parameters(DiffusionTransformer(config))
    print(f"{args.arch} ({parameters / 1e6:.0f}M parameters), 4x{args.latent_size}x"
          f"{args.latent_size} latents, batch {args.batch}, on {device}; weights and Adam's "
          f"moments held: {plain['held_mb']:.0f} MB")
    print("| setting | micro-batch | step memory (MB) | vs plain | peak (MB) | vs plain | "
          "s / step | time vs plain, side by side |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        peak = row["held_mb"] + row["step_mb"]
        print(f"| {row['setting']} | {row['micro_batch']} | {row['step_mb']:.0f} | "
              f"{row['step_mb'] / plain['step_mb']:.2f}x | {peak:.0f} | "
              f"{peak / (plain['held_mb'] + plain['step_mb']):.2f}x | "
              f"{row['seconds_per_step']:.2f} | {row['time_vs_plain']:.2f}x |")
    path = args.out or RESULTS / f"train_memory{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(
        {"machine": machine(device), "arch": args.arch, "latent_size": args.latent_size,
         "batch": args.batch, "parameters": parameters, "timed_rounds": args.rounds,
         "rows": rows}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
