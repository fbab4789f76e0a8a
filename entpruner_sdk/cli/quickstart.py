"""``entpruner quickstart``: the main job on the bundled data."""

from __future__ import annotations

import argparse

from entpruner_sdk.cli import common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``quickstart`` subcommand: the output folder, sample count, compress steps and seed."""
    p = common.command(
        sub, "quickstart", "The main job on bundled data: sample the bundled teachers, "
        "compress each to half depth, evaluate both, print the comparison.", """\
        entpruner quickstart
        entpruner quickstart --out runs/quickstart --device cuda
        """)
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--samples", type=int, default=300, help="evaluation samples per model")
    p.add_argument("--compress-steps", type=int, default=500,
                   help="fine-tuning steps of each compress run")
    p.add_argument("--seed", type=int, default=0, help="seeds every run and evaluation")
    common.run_options(p)


def run(args: argparse.Namespace) -> int:
    """Run the main job on the bundled data and print its comparison table; 0 on success."""
    from entpruner_sdk.quickstart import run_quickstart

    run_quickstart(out=args.out, samples=args.samples, compress_steps=args.compress_steps,
                   seed=args.seed, device=args.device, progress=not args.quiet)
    return 0
