"""Export speed: per-call and full-sample latency at batch 1 and 8 for torch eager,
torch.compile, ONNX Runtime and AOTInductor, original vs pruned, in one table with every
figure also given as a speedup over the original model in eager PyTorch.

    python benchmarks/export_speed.py                 # dit-digits, CPU
    python benchmarks/export_speed.py --quick         # fewer repeats and steps
    python benchmarks/export_speed.py --model sit-photos --pruned runs/quickstart/sit-digits-pruned
    python benchmarks/export_speed.py --device cuda   # GPU (ONNX Runtime stays on the CPU
                                                      # unless onnxruntime-gpu is installed)

Without --pruned the pruned model is the teacher keeping every other block (speed depends on
the structure, not on which blocks were kept). All candidates are timed in alternation in one
run. Full sample = the teacher's sampler and steps with cfg 2 (ONNX Runtime and AOTInductor
use the exported guidance graph, eager and compile guide on the host). Prints a table and
writes benchmarks/results/export_speed.json.
Goal: pruned + best export >= 3x faster than the original in eager PyTorch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from entpruner_sdk.export import export, load_exported
from entpruner_sdk.export.graphs import example_inputs
from entpruner_sdk.sampling import objective_of, sample_with
from entpruner_sdk.teachers import SAMPLING, resolve_model
from entpruner_sdk.utils.device import autocast, resolve_device
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import interleaved_medians, machine

RESULTS = Path(__file__).parent / "results"
BACKENDS = ("eager", "compile", "onnxruntime", "aoti")
CALLS = 20


def runtimes(model, label: str, device: torch.device, workdir: Path, backends) -> dict:
    """{backend: (model_fn, guided_fn or None)} for one model; build times are printed."""
    model = model.eval().to(device)

    def eager(x, t, y):
        with torch.no_grad(), autocast(device):
            return model(x, t, y).float()

    out = {"eager": (eager, None)}
    if "compile" in backends:
        compiled = torch.compile(model)

        def compiled_fn(x, t, y):
            with torch.no_grad(), autocast(device):
                return compiled(x, t, y).float()

        out["compile"] = (compiled_fn, None)
    if "onnxruntime" in backends:
        start = time.perf_counter()
        export(model.cpu(), workdir / f"{label}-onnx", "onnx", overwrite=True)
        model.to(device)
        runtime = load_exported(workdir / f"{label}-onnx", threads=torch.get_num_threads())
        print(f"  {label}: ONNX export + check {time.perf_counter() - start:.0f} s")
        out["onnxruntime"] = (runtime.model_fn, runtime.guided_fn)
    if "aoti" in backends:
        start = time.perf_counter()
        export(model.cpu(), workdir / f"{label}-aoti", "aoti", overwrite=True, batch=(1, 8, 64),
               device=device)
        model.to(device)
        runtime = load_exported(workdir / f"{label}-aoti")
        out["aoti"] = (runtime.model_fn, runtime.guided_fn)
        print(f"  {label}: AOTInductor compile + check {time.perf_counter() - start:.0f} s")
    return out


def bench(original, pruned, device, backends, steps, repeats, workdir):
    family = original.config.family
    sampler = SAMPLING[family]["sampler"]
    candidates = {}
    for label, model in (("original", original), ("pruned", pruned)):
        for backend, fns in runtimes(model, label, device, workdir, backends).items():
            candidates[(label, backend)] = (model, *fns)
    rows = []
    for batch in (1, 8):
        x, t, y = (v.to(device) for v in example_inputs(original, batch))
        labels = torch.arange(batch) % original.config.num_classes

        def call(fn, x=x, t=t, y=y):
            for _ in range(CALLS):  # sub-millisecond calls: time a run of them
                fn(x, t, y)

        def full(model, fn, guided_fn, labels=labels):
            return sample_with(fn, model.config, objective_of(model), labels, sampler=sampler,
                               steps=steps, cfg_scale=2.0, device=device, guided_fn=guided_fn)

        per_call = interleaved_medians(
            {key: (lambda fn=fn: call(fn)) for key, (_, fn, _) in candidates.items()},
            repeats=max(repeats * 2, 5), warmup=1)
        whole = interleaved_medians(
            {key: (lambda m=m, fn=fn, g=g: full(m, fn, g))
             for key, (m, fn, g) in candidates.items()}, repeats=repeats, warmup=1)
        base_call, base_full = per_call[("original", "eager")], whole[("original", "eager")]
        for (label, backend) in candidates:
            rows.append(dict(model=label, backend=backend, batch=batch,
                             depth=candidates[(label, backend)][0].depth,
                             call_ms=1e3 * per_call[(label, backend)] / CALLS,
                             sample_s=whole[(label, backend)], sampler=sampler, steps=steps,
                             call_speedup=base_call / per_call[(label, backend)],
                             sample_speedup=base_full / whole[(label, backend)]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit-digits", help="original model")
    parser.add_argument("--pruned", help="pruned model (default: every other block kept)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated subset of {', '.join(BACKENDS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the teacher's)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved timings per backend (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="10 steps, 3 repeats")
    parser.add_argument("--out", default=str(RESULTS / "export_speed.json"), help="JSON results")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    original = resolve_model(args.model).eval()
    pruned = (resolve_model(args.pruned) if args.pruned
              else original.keep_blocks(range(0, original.depth, 2))).eval()
    steps = args.steps or SAMPLING[original.config.family]["steps"]
    if args.quick:
        steps, args.repeats = 10, 3
    backends = [b.strip() for b in args.backends.split(",")]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    with tempfile.TemporaryDirectory() as workdir:
        rows = bench(original, pruned, device, backends, steps, args.repeats, Path(workdir))
    print_table(rows, device)
    best = max((r for r in rows if r["model"] == "pruned"), key=lambda r: r["sample_speedup"])
    document = {**machine(device), "model": args.model,
                "pruned": args.pruned or "every other block",
                "goal": "pruned + best export >= 3x the original in eager PyTorch",
                "best_pruned": best, "rows": rows}
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    print(f"best pruned: {best['backend']} at batch {best['batch']}, "
          f"{best['sample_speedup']:.2f}x a full sample of the original in eager")
    print(f"written to {args.out}")
    return 0


def print_table(rows, device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export speed ({device}); speedups are over the original in eager")
    for column in ("model", "depth", "backend", "batch", "per call ms", "call speedup",
                   "full sample s", "sample speedup"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["model"], str(r["depth"]), r["backend"], str(r["batch"]),
                      f"{r['call_ms']:.2f}", f"{r['call_speedup']:.2f}x",
                      f"{r['sample_s']:.3f} ({r['sampler']} x {r['steps']})",
                      f"{r['sample_speedup']:.2f}x")
    Console(width=max(140, Console().width)).print(table)


if __name__ == "__main__":
    raise SystemExit(main())
