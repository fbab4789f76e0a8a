"""Mixed precision: what bf16 and fp16 autocast do to sampling speed and sample quality
against fp32, side by side on one device.

    python benchmarks/mixed_precision.py                   # both digits teachers, CPU, 500 samples
    python benchmarks/mixed_precision.py --device cuda     # a GPU, where bf16 is the default
    python benchmarks/mixed_precision.py --quick           # 100 samples, 10 steps

Each model samples the same labels from the same noise in fp32 (``ENTPRUNER_AUTOCAST=off``),
in bf16 autocast (``ENTPRUNER_AUTOCAST=bf16``) and in fp16 autocast (``ENTPRUNER_AUTOCAST=
fp16``, for GPUs without bf16). Each is evaluated against the data (FD-domain, class
accuracy), the rounded samples beside the fp32 ones (PSNR), and one sampling call of each is
timed in alternation, so the speed ratios are taken under the same load. Prints a table and
writes benchmarks/results/mixed_precision.json.
Goal: bf16's and fp16's FD-domain within 2% of fp32's. Speed is the device's to say: both are
faster on GPUs with tensor cores for them and slower on CPUs without their instructions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from benchmark_table import print_table, write_results

from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation import evaluate
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import resolve_model
from entpruner_sdk.utils.device import autocast_dtype, mixed_precision, resolve_device
from entpruner_sdk.utils.timing import interleaved_medians, machine

RESULTS = Path(__file__).parent / "results"
GOAL = 0.02  # bf16's and fp16's FD-domain within 2% of fp32's
# the row's arithmetic -> the policy; fp32 first, the others are measured against it
MODES = {"fp32": "off", "bf16 autocast": "bf16", "fp16 autocast": "fp16"}


def modes_on(device: torch.device) -> dict[str, str]:
    """The arithmetics ``device`` runs (a GPU without bf16 refuses it), each with its policy."""
    usable = {}
    for arithmetic, policy in MODES.items():
        with mixed_precision(policy):
            try:
                autocast_dtype(device)
            except RuntimeError as refused:
                print(f"{arithmetic} left out: {refused}")
                continue
        usable[arithmetic] = policy
    return usable


def measure(name: str, data, device: torch.device, modes: dict[str, str], batch: int,
            repeats: int, **run) -> list[dict]:
    """fp32's figures, then those of the other ``modes`` beside them, from the same noise;
    and one call of each timed in alternation."""
    model = resolve_model(name).eval()
    with mixed_precision("off"):
        exact = evaluate(model, data, model_name=name, device=device, **run)
    reports = {"fp32": exact}
    for arithmetic, policy in list(modes.items())[1:]:
        with mixed_precision(policy):
            reports[arithmetic] = evaluate(model, data, model_name=f"{name} {policy}",
                                           device=device, original=model,
                                           original_images=exact.images, **run)
    seconds = call_seconds(model, device, modes, batch, repeats, run["steps"],
                           run["cfg_scale"])
    return [{**row(name, arithmetic, report.metrics, exact.metrics, seconds,
                   report.fidelity.get("psnr") if report is not exact else None),
             "sampler": report.settings["sampler"]}
            for arithmetic, report in reports.items()]


def call_seconds(model, device: torch.device, modes: dict[str, str], batch: int,
                 repeats: int, steps: int, cfg_scale: float) -> dict[str, float]:
    """Median seconds of one sampling call (``batch`` images) in each arithmetic."""
    labels = torch.arange(batch) % model.config.num_classes

    def in_mode(policy: str):
        def call():
            with mixed_precision(policy):
                sample(model, labels, steps=steps, cfg_scale=cfg_scale, device=device,
                       progress=False)
        return call

    return interleaved_medians({arithmetic: in_mode(policy)
                                for arithmetic, policy in modes.items()}, repeats=repeats)


def row(model: str, arithmetic: str, metrics: dict, fp32: dict, seconds: dict[str, float],
        psnr: float | None) -> dict:
    fd_ratio = metrics["fd_domain"] / fp32["fd_domain"]
    return dict(model=model, arithmetic=arithmetic, class_accuracy=metrics["class_accuracy"],
                fd_domain=metrics["fd_domain"], fd_domain_vs_fp32=fd_ratio,
                psnr_to_fp32_db=psnr, call_s=seconds[arithmetic],
                speedup_vs_fp32=seconds["fp32"] / seconds[arithmetic],
                meets_goal=abs(fd_ratio - 1) <= GOAL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append",
                        help="a model (repeatable; default: dit-digits and sit-digits)")
    parser.add_argument("--data", default="digits", help="real data the figures compare with")
    parser.add_argument("--samples", type=int, default=500, help="samples per arithmetic")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise")
    parser.add_argument("--batch", type=int, default=8, help="images per timed sampling call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per arithmetic")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quick", action="store_true", help="100 samples, 10 steps")
    parser.add_argument("--out", default=str(RESULTS / "mixed_precision.json"),
                        help="JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.steps = 100, 10
    device = resolve_device(args.device)
    data = load_data(args.data)
    run = dict(samples=args.samples, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
               features=("domain",), progress=False)
    modes = modes_on(device)
    rows = []
    for name in args.model or ["dit-digits", "sit-digits"]:
        rows += measure(name, data, device, modes, args.batch, args.repeats, **run)
    print_rows(rows, args, device)
    document = {**{k: v for k, v in machine(device).items() if k != "arithmetic"},
                "data": args.data, "samples": args.samples, "steps": args.steps,
                "cfg_scale": args.cfg, "seed": args.seed, "batch": args.batch,
                "goal": f"bf16's and fp16's FD-domain within {GOAL:.0%} of fp32's",
                "met": all(r["meets_goal"] for r in rows), "rows": rows}
    write_results(args.out, document)
    return 0


def print_rows(rows: list[dict], args, device: torch.device) -> None:
    def cells(r: dict) -> list[str]:
        psnr = r["psnr_to_fp32_db"]
        return [Path(r["model"]).name, r["arithmetic"], f"{r['class_accuracy']:.3f}",
                f"{r['fd_domain']:.4f}", f"{r['fd_domain_vs_fp32']:.4f}x",
                "-" if psnr is None else f"{psnr:.1f} dB", f"{r['call_s'] * 1e3:.0f} ms",
                f"{r['speedup_vs_fp32']:.2f}x"]

    print_table(f"mixed precision on {device}: {args.samples} samples, {args.steps} steps, cfg "
                f"{args.cfg:g}, {args.data}; bf16 and fp16 beside fp32 from the same noise; "
                f"one call of {args.batch} images timed",
                ("model", "arithmetic", "class accuracy", "FD-domain", "vs fp32",
                 "PSNR to fp32", "call", "speed vs fp32"), map(cells, rows))


if __name__ == "__main__":
    raise SystemExit(main())
