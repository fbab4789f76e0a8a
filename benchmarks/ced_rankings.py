"""Which blocks CED removes from each bundled teacher, and how stable that choice is.

For every bundled teacher, the removal order (lowest CED first, first and last blocks
protected) under:

    calibration seeds 0, 1, 2 at 16 images per class (compress's default size)
    calibration seed 0 at 64 images per class
    greedy: score, remove the lowest block, score the smaller model again (no fine-tuning)

and the blocks each leaves at keep 6 and keep 4 of 12. The quality grid's default ranks once
on the teacher (seed 0, 16 per class); this shows whether its choice is noise (it changes with
the calibration draw) or the criterion's own (it does not).

    python benchmarks/ced_rankings.py      # about 2 minutes on 2 CPU cores

Prints a table and writes benchmarks/results/ced_rankings.json / .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CalibrationSet, make_importance
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.teachers import load_teacher
from entpruner_sdk.utils.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"
TEACHERS = {"dit-digits": "digits", "sit-digits": "digits", "dit-photos": "photos",
            "sit-photos": "photos"}
KEEPS = (6, 4)


def removal_order(model, objective, calibration, greedy: bool) -> list[int]:
    """Original indices of the removable blocks, first removed first."""
    ced = make_importance("ced", 0)
    protected = {model.kept_blocks[0], model.kept_blocks[-1]}
    device = torch.device("cpu")
    if not greedy:
        scores = ced.score(model, objective, calibration, device)
        ranked = sorted(zip(scores.scores, scores.kept_blocks))
        return [block for _, block in ranked if block not in protected]
    order = []
    while len(model.kept_blocks) > len(protected):
        scores = ced.score(model, objective, calibration, device)
        (lowest,) = ced.select(scores, 1, protected)  # the choice compress itself makes
        order.append(lowest)
        model = model.keep_blocks([i for i, b in enumerate(model.kept_blocks) if b != lowest])
    return order


def kept(depth: int, order: list[int], keep: int) -> list[int]:
    return sorted(set(range(depth)) - set(order[: depth - keep]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    variants = [("seed 0, 16/class", 0, 16, False), ("seed 1, 16/class", 1, 16, False),
                ("seed 2, 16/class", 2, 16, False), ("seed 0, 64/class", 0, 64, False),
                ("greedy, seed 0, 16/class", 0, 16, True)]
    rows = []
    for name, dataset in TEACHERS.items():
        teacher, data = load_teacher(name), load_data(dataset)
        objective = objective_for(teacher)
        for label, seed, per_class, greedy in variants:
            calibration = CalibrationSet.build(data, objective, per_class, 8, seed)
            order = removal_order(teacher, objective, calibration, greedy)
            rows.append(dict(teacher=name, ranking=label, removal_order=order,
                             **{f"keep_{k}": kept(teacher.depth, order, k) for k in KEEPS}))
            print(f"{name} {label}: {order}", flush=True)
    lines = ["| teacher | ranking | removal order | keep 6 | keep 4 |", "|---|---|---|---|---|"]
    lines += [f"| {r['teacher']} | {r['ranking']} | {r['removal_order']} | {r['keep_6']} | "
              f"{r['keep_4']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / "ced_rankings.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(RESULTS / "ced_rankings.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
