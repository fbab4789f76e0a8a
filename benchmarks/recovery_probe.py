r"""Can a block set's quality after recovery be told before recovery, or early in it?

The full-grid runs (``compress_quality.py --tag long``, 2400 fine-tuning steps) ended with
many different kept sets per setting: CED's, BI's, uniform's, random draws and the variants'.
This script takes every distinct set, removes its complement from the teacher at once and
fine-tunes it with compress's own recovery (``compress(..., protect=set, schedule="one-shot")``:
the protected blocks are exactly the set, so every other block goes at step 0). It measures
the distillation error, the MSE between the student's (EMA) prediction and the teacher's on a
fixed calibration set (16 images per class, 8 timesteps, its own noise), right after removal
and after ``--steps`` steps, and compares both with the set's final FD-domain.

The same comparison is made for the criteria's own view of a set: the sum of CED's, and of
BI's, teacher scores over the blocks it removes, and the CED of the set itself (its removed
blocks dropped at once, so interactions between them count). Two questions, for each predictor:
- its rank correlation (Spearman) with the final quality, per setting;
- choosing among the CED, BI and uniform sets by it: does the chosen set end best?

    python benchmarks/recovery_probe.py                     # the 8 grid settings: 23 minutes
    python benchmarks/recovery_probe.py --table-only        # the tables again, from new finals
    python benchmarks/recovery_probe.py --only digits:dit:6 --steps 100
    python benchmarks/recovery_probe.py --seed 1 --tag seed1    # another recovery seed

The final quality of a set is its FD-domain relative to the teacher's on the same seed (the
seed also sets the evaluation noise), averaged over every run that ended with that set.
Results: benchmarks/results/recovery_probe.json and .md.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import correlation, fmean

import torch
from compress_quality import same_classifier

from entpruner_sdk.compress import compress
from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CalibrationSet, make_importance
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.teachers import load_teacher
from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.progress import progress_bar

RESULTS = Path(__file__).parent / "results"
LONG_RUNS = RESULTS / "compress_quality_long.json"
# the methods whose sets a selector would choose among, and their names in the tables
CHOOSABLE = {"ced-adaptive": "CED", "bi": "BI", "uniform": "uniform"}
# what predicts a set's final quality (lower: better), and how the tables name it
PREDICTORS = {"at_removal": "error at removal", "after_steps": "error after {steps} steps",
              "ced_removed": "CED of the removed blocks", "bi_removed": "BI of the removed blocks",
              "ced_of_set": "CED of the set, removed at once"}
CRITERIA = ("ced_removed", "bi_removed", "ced_of_set")  # scored on the teacher, no training
GRID_KEEPS = (6, 4)  # the grid's two budgets, probed by default; --only reaches the others
CALIBRATION_SEED = 123  # not a seed of the compress runs, so the probe's noise is its own


def final_quality(rows: list[dict]) -> dict[tuple, dict[tuple, dict]]:
    """setting -> kept set -> {final: mean FD-domain / teacher's, runs, methods}.

    A run is divided by the teacher's score on the same seed *and* by the same domain
    classifier (``domain_network``): FD-domain's level differs between classifiers by up to
    23%, so a run scored by one and a teacher by another would not compare. Rows that record
    no network (digits, from before it was recorded) match any. Runs without such a teacher
    row are left out."""
    teachers: dict[tuple, list] = defaultdict(list)  # (dataset, family, seed) -> [(net, fd)]
    for r in rows:
        if r["method"] == "teacher":
            teachers[(r["dataset"], r["family"], r["seed"])].append(
                (r.get("domain_network"), r["fd_domain"]))

    def teacher_score(r: dict) -> float | None:
        candidates = teachers[(r["dataset"], r["family"], r["seed"])]
        return next((fd for network, fd in candidates
                     if same_classifier(network, r.get("domain_network"))), None)

    runs: dict[tuple, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["method"] != "teacher" and (teacher := teacher_score(r)) is not None:
            runs[(r["dataset"], r["family"], r["keep"])][tuple(r["kept_blocks"])].append(
                (r["method"], r["fd_domain"] / teacher))
    return {setting: {kept: {"final": fmean(v for _, v in found), "runs": len(found),
                             "methods": sorted({m for m, _ in found})}
                      for kept, found in by_set.items()}
            for setting, by_set in runs.items()}


def refresh_finals(records: list[dict], quality: dict[tuple, dict[tuple, dict]]) -> list[dict]:
    """The stored probe records with each set's final quality taken again from the results
    file as it is now (runs added, moved or re-scored since the probe ran). A stored set that
    no run ends with any more cannot be judged, so it stops the script."""
    for r in records:
        dataset, family, keep = r["setting"].split(":")
        found = quality.get((dataset, family, int(keep)), {}).get(tuple(r["kept"]))
        if found is None:
            raise SystemExit(f"{LONG_RUNS.name} has no run of {r['setting']} ending with "
                             f"{r['kept']} any more; probe again without --table-only")
        r.update(found)
    return records


@torch.no_grad()
def distillation_error(student, teacher, calibration: CalibrationSet, objective) -> float:
    """MSE of the student's prediction against the teacher's over the calibration set."""
    total, count = 0.0, 0
    for _, batch in calibration.batches(objective, torch.device("cpu")):
        difference = student(batch.x_t, batch.t, batch.y) - teacher(batch.x_t, batch.t, batch.y)
        total += float((difference.float() ** 2).mean()) * len(difference)
        count += len(difference)
    return total / count


def recover(teacher, data, kept: tuple[int, ...], steps: int, seed: int = 0):
    """``teacher`` with every block outside ``kept`` removed at step 0 and ``steps`` steps of
    compress's own recovery (EMA weights): ``kept`` is protected and is the whole budget."""
    return compress(teacher, data, len(kept), protect=kept, importance="random",
                    schedule="one-shot", steps=steps, seed=seed, report_samples=0,
                    progress=False).model


def probe(teacher, data, kept: tuple[int, ...], steps: int, calibration, objective,
          seed: int = 0) -> dict:
    """The distillation error right after removing every block outside ``kept``, and after
    ``steps`` steps of recovery."""
    removed = teacher.keep_blocks([teacher.kept_blocks.index(b) for b in kept]).eval()
    recovered = recover(teacher, data, kept, steps, seed)
    return {"at_removal": distillation_error(removed, teacher, calibration, objective),
            "after_steps": distillation_error(recovered, teacher, calibration, objective)}


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(values):
        order = sorted(values)
        return [order.index(v) + (order.count(v) - 1) / 2 for v in values]
    return correlation(ranks(x), ranks(y))


def criterion_scores(teacher, data, sets: list[list[int]]) -> list[dict]:
    """For each set, the sum of CED's and of BI's teacher scores over the blocks it removes
    (both remove their lowest-scored blocks first, so lower should mean a better set), and
    the CED of the set itself: the entropy deviation with all its removed blocks dropped at
    once, which the sum approximates while ignoring how the blocks interact. Scored as compress
    scores (its default calibration set, seed 0, its default CED)."""
    objective = objective_for(teacher)
    calibration = CalibrationSet.build(data, objective)
    device = torch.device("cpu")
    importances = {criterion: make_importance(criterion, 0) for criterion in ("ced", "bi")}
    by_criterion = {}
    for criterion, importance in importances.items():
        scores = importance.score(teacher, objective, calibration, device)
        by_criterion[criterion] = dict(zip(scores.kept_blocks, scores.scores))
    ced = importances["ced"]
    full = ced.entropies(teacher, objective, calibration, device)
    records = []
    for kept in sets:
        removed = [i for i, b in enumerate(teacher.kept_blocks) if b not in kept]
        dropped = ced.entropies(teacher, objective, calibration, device, skip_blocks=removed)
        records.append({
            **{f"{criterion}_removed": sum(v for b, v in block_scores.items() if b not in kept)
               for criterion, block_scores in by_criterion.items()},
            "ced_of_set": fmean(abs(f - d) for f, d in zip(full, dropped))})
    return records


def with_criteria(records: list[dict]) -> list[dict]:
    """The records, with the criteria's scores added to the settings that lack them."""
    for name in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == name]
        if all(key in r for r in rows for key in CRITERIA):
            continue
        dataset, family, _ = name.split(":")
        teacher = load_teacher(f"{family}-{dataset}").eval()
        scores = criterion_scores(teacher, load_data(dataset), [r["kept"] for r in rows])
        for r, set_scores in zip(rows, scores):
            r.update(set_scores)
    return records


def predictors(rows: list[dict]) -> list[str]:
    return [name for name in PREDICTORS if all(name in r for r in rows)]


def summarise(setting_rows: list[dict]) -> dict:
    """Each predictor's rank correlation with the final quality, and what it would choose."""
    finals = [r["final"] for r in setting_rows]
    # one entry per set; methods that ended with the same set share it ("CED = BI")
    choosable = {" = ".join(CHOOSABLE[m] for m in CHOOSABLE if m in r["methods"]): r
                 for r in setting_rows if set(r["methods"]) & set(CHOOSABLE)}
    ced = next(r for name, r in choosable.items() if "CED" in name.split(" = "))
    best = min(choosable, key=lambda name: choosable[name]["final"])
    summary = {"sets": len(setting_rows), "best_of_three": best,
               "best_final": choosable[best]["final"], "ced_final": ced["final"]}
    for predictor in predictors(setting_rows):
        summary[f"rho_{predictor}"] = spearman([r[predictor] for r in setting_rows], finals)
        chosen = min(choosable, key=lambda name: choosable[name][predictor])
        summary[f"chooses_{predictor}"] = chosen
        summary[f"chosen_final_{predictor}"] = choosable[chosen]["final"]
    return summary


def markdown(records: list[dict], summaries: dict[str, dict], steps: int) -> str:
    used = predictors(records)
    titles = [PREDICTORS[name].format(steps=steps) for name in used]
    lines = [f"# Recovery probe ({steps} steps), against the 2400-step finals", "",
             "| setting | kept | methods | runs | final (FD-domain / teacher) | "
             + " | ".join(titles) + " |", "|---" * (5 + len(used)) + "|"]
    for r in records:
        lines.append(f"| {r['setting']} | {r['kept']} | {', '.join(r['methods'])} | {r['runs']} "
                     f"| {r['final']:.3f} | " + " | ".join(f"{r[n]:.4f}" for n in used) + " |")
    lines += ["", "Spearman of each predictor with the final quality (lower predicted = better), "
              "and the set among CED's, BI's and uniform's that it would choose:", "",
              "| setting | sets | best of CED, BI, uniform | "
              + " | ".join(f"{title}: rho, choice" for title in titles) + " |",
              "|---" * (3 + len(used)) + "|"]
    for setting, s in summaries.items():
        lines.append(
            f"| {setting} | {s['sets']} | {s['best_of_three']} {s['best_final']:.3f} "
            f"(CED {s['ced_final']:.3f}) | " + " | ".join(
                f"{s[f'rho_{n}']:+.2f}, {s[f'chooses_{n}']} {s[f'chosen_final_{n}']:.3f}"
                for n in used) + " |")
    for name, title in zip(used, titles):
        rho = fmean(s[f"rho_{name}"] for s in summaries.values())
        shortfall = [s[f"chosen_final_{name}"] / s["best_final"] - 1
                     for s in summaries.values()]
        lines.append(f"\n{title}: mean Spearman {rho:+.2f}; choosing by it falls short of the "
                     f"best of the three by {fmean(shortfall):.1%} on the mean, "
                     f"{max(shortfall):.1%} at worst")
    shortfall = [s["ced_final"] / s["best_final"] - 1 for s in summaries.values()]
    lines.append(f"\nCED's set alone: {fmean(shortfall):.1%} on the mean, "
                 f"{max(shortfall):.1%} at worst")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> tuple[list[dict], dict[str, dict]]:
    """Probe every set of the chosen settings; the per-set rows and per-setting summaries."""
    torch.manual_seed(0)
    quality = final_quality(json.loads(LONG_RUNS.read_text()))
    settings = sorted(k for k in quality if (f"{k[0]}:{k[1]}:{k[2]}" in args.only if args.only
                                             else k[2] in GRID_KEEPS))
    records, summaries = [], {}
    for dataset, family, keep in settings:
        teacher = load_teacher(f"{family}-{dataset}").eval().requires_grad_(False)
        data, objective = load_data(dataset), objective_for(teacher)
        calibration = CalibrationSet.build(data, objective, 16, 8, CALIBRATION_SEED)
        name = f"{dataset}:{family}:{keep}"
        rows = []
        for kept, final in progress_bar(list(quality[(dataset, family, keep)].items()),
                                        enabled=not args.quiet, desc=name):
            rows.append({"setting": name, "kept": list(kept), **final,
                         **probe(teacher, data, kept, args.steps, calibration, objective,
                                 args.seed)})
        # the teacher and data are loaded already: score the criteria here, not in with_criteria
        for r, set_scores in zip(rows, criterion_scores(teacher, data,
                                                        [r["kept"] for r in rows])):
            r.update(set_scores)
        records += rows
        summaries[name] = summarise(rows)
        print(f"{name}: {summaries[name]}", flush=True)
    return records, summaries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None,
                        help="settings as dataset:family:keep, e.g. digits:dit:6")
    parser.add_argument("--steps", type=int, default=300, help="recovery steps probed")
    parser.add_argument("--seed", type=int, default=0,
                        help="the recovery's seed (batches, label dropout, noise)")
    parser.add_argument("--tag", default="", help="suffix for the results files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the tables from the results file, probing nothing: "
                        "the finals are taken again from the 2400-step results and the "
                        "criteria's scores added where missing (seconds)")
    args = parser.parse_args()
    stem = RESULTS / f"recovery_probe{'_' + args.tag if args.tag else ''}"
    if args.table_only:
        document = json.loads(stem.with_suffix(".json").read_text())
        quality = final_quality(json.loads(LONG_RUNS.read_text()))
        records = with_criteria(refresh_finals(document["sets"], quality))
        summaries = {name: summarise([r for r in records if r["setting"] == name])
                     for name in dict.fromkeys(r["setting"] for r in records)}
        args.steps, args.seed = document["steps"], document.get("seed", 0)
    else:
        records, summaries = run(args)
    document = {"steps": args.steps, "seed": args.seed, "sets": records, "settings": summaries}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(document, indent=1) + "\n")
    table = markdown(records, summaries, args.steps)
    atomic_write_text(stem.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
