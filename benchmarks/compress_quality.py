r"""Quality of compress methods at equal fine-tuning budgets.

For each bundled dataset and teacher family, at two budgets (keep 50% of the blocks, and a
harder one), every method gets the same number of fine-tuning steps:

    ced-adaptive (the default) | ced-one-shot | bi (ShortGPT Block Influence, one-shot)
    uniform (every other block, one-shot) | random (one-shot)

and the pruned EMA model is scored against the real training split: FD-domain, precision /
recall (domain features), class accuracy, and standard FID (Inception) where the ``fid``
extra is installed. The teacher is scored the same way.

    python benchmarks/compress_quality.py            # full grid (about 1 hour on 2 CPU cores)
    python benchmarks/compress_quality.py --random-draws 3   # + random at seeds 1, 2
    python benchmarks/compress_quality.py --seeds 3 --no-fid --tag grid3   # three seeds
    python benchmarks/compress_quality.py --quick    # digits, DiT, 50% budget, short runs
    python benchmarks/compress_quality.py --only digits:dit:6 --methods ced-adaptive,bi
    python benchmarks/compress_quality.py --quick --methods ced-variants   # CED options
    python benchmarks/compress_quality.py --only digits:sit:6 --seeds 2 --steps 300 \
        --samples 400 --no-fid --tag medium     # repeated seeds: mean +- sd
    python benchmarks/compress_quality.py --tag long --steps 2400 --table-only   # tables only

Results are appended to benchmarks/results/compress_quality[_quick].json as each run ends (a
rerun skips finished runs), then printed as a table and written to
benchmarks/results/compress_quality[_quick].md; with several seeds, a second table compares
every method with the default paired by seed.
"""

from __future__ import annotations

import argparse
import json
import time
import weakref
from pathlib import Path
from statistics import fmean, stdev

import torch

from entpruner_sdk.compress import compress
from entpruner_sdk.compress.config import recovery_lr
from entpruner_sdk.evaluation.classifier import domain_classifier
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.evaluation.likelihood import bits_per_dim, likelihood_images
from entpruner_sdk.teachers import SAMPLING, load_teacher
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"
METHODS = {
    "ced-adaptive": dict(importance="ced", schedule="adaptive"),
    "ced-one-shot": dict(importance="ced", schedule="one-shot"),
    "bi": dict(importance="bi", schedule="one-shot"),
    "uniform": dict(importance="uniform", schedule="one-shot"),
    "random": dict(importance="random", schedule="one-shot"),
}
# CED variants (what X is, which estimator), for choosing the defaults: --methods ced-variants
# (measured before the full grid, with removals allowed until half of the steps: pinned here
# so a rerun reproduces the recorded rows)
CED_VARIANTS = {
    # (these variants re-rank at every decision, as the default did when they were measured)
    "ced-prediction": dict(ced_output="prediction", rerank=True),
    "ced-sampler": dict(ced_output="sampler", rerank=True),
    "ced-diagonal": dict(ced_estimator="diagonal", rerank=True),
    "ced-prediction-diagonal": dict(ced_output="prediction", ced_estimator="diagonal",
                                    rerank=True),
    # X = sampler output, ranked once on the teacher like the default
    "ced-sampler-once": dict(ced_output="sampler"),
    # X = the denoised estimate clipped to the data's range, ranked once like the default
    "ced-clipped": dict(ced_output="clipped"),
    # re-ranking the current student at every decision (the default before the medium run)
    "ced-adaptive-rerank": dict(rerank=True),
    # removals packed into the first quarter of the steps (decision every 1/12 of the run)
    "ced-adaptive-early": dict(prune_fraction=0.25, interval="steps/12", rerank=True),
}
CED_VARIANTS = {name: {"importance": "ced", "schedule": "adaptive", "prune_fraction": 0.5,
                       **options} for name, options in CED_VARIANTS.items()}
# the adaptive schedule over another ranking: BI scored once on the teacher
OTHER_VARIANTS = {
    "bi-adaptive-half": dict(importance="bi", schedule="adaptive", prune_fraction=0.5),
    # the default before the full grid: removals may run until half of the steps
    "ced-adaptive-half": dict(importance="ced", schedule="adaptive", prune_fraction=0.5),
    # every timestep an equal say in the CED ranking (ced_weighting="normalized")
    "ced-normalized": dict(importance="ced", schedule="adaptive", ced_weighting="normalized"),
    # re-ranking the current student at every decision, at the default rate and window
    "ced-rerank": dict(importance="ced", schedule="adaptive", rerank=True),
    # the adaptive schedule over the best baselines' orders (BI on DiT, uniform on SiT)
    "bi-adaptive": dict(importance="bi", schedule="adaptive"),
    # uniform plans its final set over the teacher's blocks, so it ends where one-shot does;
    # rows named uniform-adaptive-respaced come from before that plan (commit ffa9ba9), when
    # each removal re-spaced over the blocks left and keep 4 ended at [0, 1, 6, 11]
    "uniform-adaptive": dict(importance="uniform", schedule="adaptive"),
    # X = the denoised estimate clipped to the data's range, at the default schedule
    "ced-adaptive-clipped": dict(importance="ced", schedule="adaptive", ced_output="clipped"),
    # a rank vote of CED and BI (importance="ced+bi"), at the default schedule
    "ced+bi-adaptive": dict(importance="ced+bi", schedule="adaptive"),
    # recovery with the masked feature loss (weight 1 at the start, fading to 0), which
    # every method would get if it became the default: the default and BI
    "ced-adaptive-feature": dict(importance="ced", schedule="adaptive", feature_weight=1.0),
    "bi-feature": dict(importance="bi", schedule="one-shot", feature_weight=1.0),
}
# the recovery learning-rate sweep (compress's default is 1.2e-3 for the width-96 teachers)
for _lr in (1e-4, 3e-4, 1e-3, 2e-3):
    OTHER_VARIANTS[f"ced-adaptive-lr{_lr:g}"] = dict(importance="ced", schedule="adaptive",
                                                     lr=_lr)
    OTHER_VARIANTS[f"bi-lr{_lr:g}"] = dict(importance="bi", schedule="one-shot", lr=_lr)
ALL_METHODS = {**METHODS, **CED_VARIANTS, **OTHER_VARIANTS}
TABLE_ORDER = ["teacher", *METHODS, *OTHER_VARIANTS, *CED_VARIANTS]
TEACHERS = {("digits", "dit"): "dit-digits", ("digits", "sit"): "sit-digits",
            ("photos", "dit"): "dit-photos", ("photos", "sit"): "sit-photos"}


def _table_rank(method: str) -> int:
    """Where a method's rows go in a table: the teacher, the grid's methods, then variants."""
    return TABLE_ORDER.index(method) if method in TABLE_ORDER else len(TABLE_ORDER)


def settings(quick: bool) -> dict:
    """Fine-tuning steps, samples per evaluation, and where standard FID is computed.

    Inception features cost about 0.3 s per image on 2 CPU cores, so the full grid computes
    FID on ``fid_samples`` images at the 50% budget only (``fid_keep``); every run gets the
    domain-feature metrics on ``samples`` images: the grid took 58 minutes on 2 cores.
    """
    if quick:
        return dict(steps=150, samples=200, inception=False, interval=25, fidelity=True)
    return dict(steps=600, samples=500, inception=True, interval=50, fid_samples=300,
                fid_keep=0.5, fidelity=False)


# each model's bits per dimension by image count: fixed images and noise, so one measurement
_BITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def score(model, data, family_sampling, config, original=None, seed=0,
          fid: bool = False) -> dict:
    """Domain metrics on ``config["samples"]`` images (+ fidelity to ``original``), and
    standard FID on ``config["fid_samples"]`` images when ``fid``. With ``config["likelihood"]``
    also the bits per dimension of that many real images, the same images and noise for every
    model and seed (seed 0), so any two runs compare image by image."""
    report = evaluate(model, data, samples=config["samples"], features=("domain",),
                      original=original, progress=False, seed=1000 * seed, **family_sampling)
    metrics = {**report.metrics, **{f"fidelity_{k}": v for k, v in report.fidelity.items()},
               "domain_network": report.settings["feature_networks"]["domain"]}
    if config.get("likelihood"):
        count = config["likelihood"]
        measured = _BITS.setdefault(model, {})
        if count not in measured:  # the teacher, scored again for each seed, is measured once
            images = likelihood_images(data, count, seed=0)
            measured[count] = bits_per_dim(model, images).mean().item()
        metrics.update(bits_per_dim=measured[count], likelihood_images=count)
    if fid:
        samples = config.get("fid_samples", config["samples"])
        inception = evaluate(model, data, samples=samples, features=("inception",),
                             progress=False, seed=1000 * seed, **family_sampling)
        metrics.update(fid=inception.metrics["fid"], fid_samples=samples)
    return metrics


def wants_fid(config: dict, keep: int, depth: int) -> bool:
    """Standard FID for this budget? (all of them unless ``fid_keep`` names one)"""
    return config["inception"] and keep == round(depth * config.get("fid_keep", keep / depth))


def run_grid(grid, methods, config, results_path: Path, seeds: int = 1,
             random_draws: int = 1, models_dir: Path | None = None) -> list[dict]:
    """Every method with seeds 0..seeds-1; ``random`` with seeds 0..max(seeds, random_draws)-1
    (its blocks are a draw, so its expected quality needs several). ``models_dir``: keep each
    pruned model there (``DATASET-FAMILY-kKEEP-METHOD-sSEED``), to score it again later."""
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    _check_steps(rows, config["steps"], results_path)
    done = {_run_key(r, r.get("lr", PRE_RECORDING_LR)) for r in rows}
    for dataset, family, keep in grid:
        name = TEACHERS[(dataset, family)]
        teacher = load_teacher(name)
        data = _data(dataset)
        _check_network(rows, dataset, network_fingerprint(domain_classifier(data)), results_path)
        sampling = SAMPLING[family]
        fid = wants_fid(config, keep, teacher.depth)
        for seed in range(max(seeds, random_draws)):
            teacher_row = dict(dataset=dataset, family=family, keep=teacher.depth,
                               method="teacher", seed=seed)
            if seed < seeds and _run_key(teacher_row, None) not in done:
                rows.append(dict(**teacher_row, seconds=0.0,
                                 **score(teacher, data, sampling, config, seed=seed,
                                         fid=config["inception"])))
                done.add(_run_key(teacher_row, None))
                _write(results_path, rows)
            for method in methods:
                options = {"interval": config["interval"],
                           **({"lr": config["lr"]} if config.get("lr") else {}),
                           **ALL_METHODS[method]}
                run = dict(dataset=dataset, family=family, keep=keep, method=method, seed=seed)
                wanted = max(seeds, random_draws) if method == "random" else seeds
                lr = options.get("lr") or recovery_lr(teacher.config.hidden_size)
                if seed >= wanted or _run_key(run, lr) in done:
                    continue
                torch.manual_seed(seed)
                start = time.perf_counter()
                if options["interval"] == "steps/12":
                    options["interval"] = max(1, config["steps"] // 12)
                result = compress(teacher, data, keep, steps=config["steps"], progress=False,
                                  seed=seed, report_samples=0, **options)
                seconds = time.perf_counter() - start
                if models_dir is not None:
                    result.save(models_dir / f"{dataset}-{family}-k{keep}-{method}-s{seed}")
                latency = result.report["summary"]["sampling_latency"]
                rows.append(dict(
                    **run, seconds=seconds, steps=config["steps"],
                    kept_blocks=result.model.kept_blocks, lr=result.report["settings"]["lr"],
                    speedup=latency["speedup"], speedup_range=latency["speedup_range"],
                    **score(result.model, data, sampling, config,
                            original=teacher if config["fidelity"] else None, seed=seed,
                            fid=fid)))
                _write(results_path, rows)
                print(f"{dataset}/{family} keep {keep} {method} seed {seed}: "
                      f"{rows[-1]}", flush=True)
    return rows


def _check_network(rows: list[dict], dataset: str, network: str, results_path: Path) -> None:
    """A results file compares runs scored by one domain classifier per dataset: FD-domain
    from another network (a classifier trained on another machine) differs by a few percent,
    as much as the methods do. Rows from before the network was recorded carry none."""
    recorded = sorted({r["domain_network"] for r in rows
                       if r["dataset"] == dataset and "domain_network" in r})
    if recorded and recorded != [network]:
        raise SystemExit(f"{results_path.name} holds {dataset} runs scored by the domain "
                         f"classifier {recorded}, not this one ({network}); write these to "
                         "another file with --tag")


def _check_steps(rows: list[dict], steps: int, results_path: Path) -> None:
    """A results file holds one step count: the run key leaves steps out, so a rerun at
    another count would otherwise skip runs it has not made. Rows from before steps were
    recorded carry none and are taken as they are."""
    recorded = sorted({r["steps"] for r in rows if "steps" in r})
    if recorded and recorded != [steps]:
        raise SystemExit(f"{results_path.name} holds runs at {recorded} fine-tuning steps, not "
                         f"{steps}; write these to another file with --tag")


# rows written before the benchmark recorded the rate ran at compress's default then, 1e-4
PRE_RECORDING_LR = 1e-4


def _run_key(row: dict, lr: float | None) -> tuple:
    """What makes a run: a rerun skips rows with the same key, so a run at another learning
    rate (a changed default, or ``--lr``) is a new run. Teachers are not fine-tuned."""
    rate = None if row["method"] == "teacher" else f"{lr:.6g}"
    return row["dataset"], row["family"], row["keep"], row["method"], row.get("seed", 0), rate


def _data(dataset: str):
    from entpruner_sdk.data import load_data

    return load_data(dataset)


def _write(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")


def _rate_labelled(rows: list[dict]) -> list[dict]:
    """The rows, with the learning rate added to the method's name where one file holds a
    method at several rates, so that no table averages across rates."""
    rates: dict[tuple, set] = {}
    for r in rows:  # compared as _run_key does, so 1.2e-3 and 0.0012000000000000001 are one
        rates.setdefault((r["dataset"], r["family"], r["keep"], r["method"]), set()).add(
            f"{r.get('lr', PRE_RECORDING_LR):.6g}")
    return [{**r, "method": f"{r['method']} @ lr {r.get('lr', PRE_RECORDING_LR):g}"}
            if len(rates[(r["dataset"], r["family"], r["keep"], r["method"])]) > 1 else r
            for r in rows]


def table(rows: list[dict], config: dict) -> str:
    """One line per (dataset, family, keep, method): the mean over seeds, +- the standard
    deviation when there are several."""
    rows = _rate_labelled(rows)
    metrics = ["fid", "fd_domain", "precision_domain", "recall_domain", "class_accuracy",
               "bits_per_dim"]
    present = [m for m in metrics if any(m in r for r in rows)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["family"], r["keep"], r["method"]), []).append(r)
    seeds = max((len(g) for k, g in groups.items() if k[3] != "random"), default=1)
    draws = max((len(g) for k, g in groups.items() if k[3] == "random"), default=seeds)
    draw_note = f" (random: {draws} draws)" if draws > seeds else ""
    # Extra seeds run for some methods only: say how many each row averages.
    uneven = len({len(g) for g in groups.values()}) > 1
    seed_note = f"up to {max(seeds, draws)} seeds per method, as the seeds column says" \
        if uneven else f"{seeds} seed(s) per method{draw_note}"
    steps, samples = config["steps"], config["samples"]
    fid_note = (f"FID is standard FID (Inception) on {config.get('fid_samples', samples)} "
                "samples, comparable only within this table; " if any("fid" in r for r in rows)
                else "")
    rates = sorted({r["lr"] for r in rows if "lr" in r})
    rate_note = (f"learning rate {rates[0]:g}; " if len(rates) == 1 else
                 "learning rate as the method's name says; " if rates else "")
    lines = [f"Fine-tuning steps per method: {steps}; {rate_note}{samples} samples per "
             "evaluation; "
             f"{seed_note} (compress seed and evaluation noise), "
             f"mean{' +- sd' if max(seeds, draws) > 1 else ''}; samplers: DiT DDIM 50 steps, "
             "SiT Heun 25 steps, cfg 2.0; " + fid_note + "FD-domain is the Fréchet distance "
             "in the domain classifier's features (not FID).", "",
             "| dataset | family | keep | method | " + ("seeds | " if uneven else "")
             + " | ".join(present) + " | speedup |",
             "|---" * (5 + uneven + len(present)) + "|"]
    settings_seen = list(dict.fromkeys(key[:2] for key in groups))

    def position(key: tuple) -> tuple:
        return settings_seen.index(key[:2]), -key[2], _table_rank(key[3]), key[3]

    for dataset, family, keep, method in sorted(groups, key=position):
        group = groups[(dataset, family, keep, method)]
        values = " | ".join(_mean_sd([r[m] for r in group if m in r]) for m in present)
        speeds = [r["speedup"] for r in group if "speedup" in r]
        speed = f"{fmean(speeds):.2f}x" if speeds else "-"
        count = f"{len(group)} | " if uneven else ""
        lines.append(f"| {dataset} | {family} | {keep} | {method} | {count}{values} | {speed} |")
    return "\n".join(lines) + "\n"


def paired_table(rows: list[dict], reference: str = "ced-adaptive",
                 metric: str = "fd_domain") -> str:
    """Every method (and the teacher) against ``reference``, paired by seed: the seed sets the
    evaluation noise too, which moves every model's score alike, so per-seed differences
    separate methods better than means do. Empty when no setting has several seeds."""
    # (dataset, family, keep, method) -> seed -> (value, domain classifier)
    scores: dict[tuple, dict[int, tuple[float, str | None]]] = {}
    for r in _rate_labelled(rows):
        if metric in r:
            key = (r["dataset"], r["family"], r["keep"], r["method"])
            scores.setdefault(key, {})[r.get("seed", 0)] = (r[metric], r.get("domain_network"))
    lines = []
    for (dataset, family, keep, method), ref in scores.items():
        if method != reference or len(ref) < 2:
            continue
        teacher = next((v for (d, f, _, m), v in scores.items()
                        if (d, f, m) == (dataset, family, "teacher")), {})
        others = sorted(m for d, f, k, m in scores
                        if (d, f, k) == (dataset, family, keep) and m not in ("teacher", reference))
        for other, theirs in [("teacher", teacher),
                              *((m, scores[(dataset, family, keep, m)]) for m in others)]:
            # a pair shares the evaluation noise (the seed) and the network that scored it
            common = sorted(s for s in set(ref) & set(theirs)
                            if same_classifier(ref[s][1], theirs[s][1]))
            if len(common) < 2:
                continue
            change = [100 * (theirs[s][0] - ref[s][0]) / ref[s][0] for s in common]
            reference_better = sum(ref[s][0] < theirs[s][0] for s in common)
            lines.append(f"| {dataset} / {family} keep {keep} | {other} | "
                         f"{fmean(change):+.1f}% "
                         f"({min(change):+.1f}% to {max(change):+.1f}%) | "
                         f"{reference_better} of {len(common)} | {_paired_p(change)} |")
    if not lines:
        return ""
    return "\n".join([
        f"Paired by seed against {reference} ({metric}, lower is better): the method's score "
        f"minus {reference}'s, as a % of {reference}'s, mean over seeds (range); negative = "
        f"the method is better. p: two-sided paired t-test of the per-seed differences against "
        f"zero (with 3 seeds only a consistent difference reaches p < 0.05).", "",
        f"| setting | method | vs {reference} | seeds where {reference} is better | p |",
        "|---|---|---|---|---|", *lines]) + "\n"


def same_classifier(network: str | None, other: str | None) -> bool:
    """Whether two FD-domain scores can be compared: FD-domain's level moves by up to 23%
    with the domain classifier. Rows from before the network was recorded carry none (digits,
    whose classifier agrees across machines to about 1e-6) and compare with any."""
    return network == other or network is None or other is None


def _paired_p(differences: list[float]) -> str:
    """Two-sided p-value of a one-sample t-test of the paired differences against zero: whether
    a method's gap to the reference is larger than its seed-to-seed spread explains."""
    try:
        from scipy.stats import ttest_1samp
    except ImportError:  # scipy comes with the fid and dev extras
        return "-"
    if len(set(differences)) == 1:  # no spread: t is undefined
        return "0" if differences[0] else "1"
    p = ttest_1samp(differences, 0.0).pvalue
    return "<0.01" if p < 0.01 else f"{p:.2f}"


def shortfall_table(rows: list[dict], metric: str = "fd_domain") -> str:
    """How far each method falls behind the best one, setting by setting: its mean minus the
    setting's best mean, as a % of the best, summarised per method. Only methods run in every
    setting count, so each is judged on the same settings, and each setting's means are over
    the seeds all those methods ran there (the seed sets the evaluation noise, which moves every
    score alike). Empty with fewer than two."""
    values: dict[tuple, dict[str, dict[int, float]]] = {}  # setting -> method -> seed -> score
    for r in _rate_labelled(rows):
        if metric in r and r["method"] != "teacher":
            setting = (r["dataset"], r["family"], r["keep"])
            values.setdefault(setting, {}).setdefault(r["method"], {})[r.get("seed", 0)] = \
                r[metric]
    if not values:
        return ""
    common = set.intersection(*(set(methods) for methods in values.values()))
    methods = sorted(common, key=lambda m: (_table_rank(m), m))
    if len(methods) < 2:
        return ""
    gaps: dict[str, list[tuple[float, tuple]]] = {m: [] for m in methods}
    for setting, scores in values.items():
        seeds = set.intersection(*(set(scores[m]) for m in methods))
        if not seeds:  # no seed that all ran (random's extra draws): fall back to every run
            seeds = set.union(*(set(scores[m]) for m in methods))
        means = {m: fmean([scores[m][s] for s in seeds if s in scores[m]]) for m in methods}
        best = min(means.values())
        for m in methods:
            gaps[m].append((100 * (means[m] - best) / best, setting))
    lines = []
    for m in methods:
        shortfalls = [gap for gap, _ in gaps[m]]
        worst, (dataset, family, keep) = max(gaps[m])
        lines.append(f"| {m} | {fmean(shortfalls):.1f}% | {worst:.1f}% "
                     f"({dataset} / {family} keep {keep}) | "
                     f"{sum(gap == 0 for gap in shortfalls)} of {len(shortfalls)} |")
    return "\n".join([
        f"Shortfall from the best method in each setting ({metric}, mean over seeds, lower is "
        f"better): a method's mean minus the best mean, as a % of the best, over the "
        f"{len(values)} settings where all of {', '.join(methods)} ran.", "",
        "| method | mean shortfall | worst shortfall (setting) | best in |",
        "|---|---|---|---|", *lines]) + "\n"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{fmean(values):.3f} +- {stdev(values):.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="digits, DiT, keep 6 only; 150 steps, 200 samples, no FID")
    parser.add_argument("--only", action="append",
                        help="dataset:family:keep (repeatable), e.g. digits:dit:6")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods (default: the five of the issue); "
                             "ced-variants expands to the CED options")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repeat every method with seeds 0..N-1 (mean +- sd in the table)")
    parser.add_argument("--random-draws", type=int, default=1,
                        help="run the random baseline with seeds 0..N-1 (its blocks are a "
                             "draw; the table shows the mean over the draws)")
    parser.add_argument("--steps", type=int, help="override the fine-tuning steps")
    parser.add_argument("--samples", type=int, help="override the evaluation samples")
    parser.add_argument("--lr", type=float,
                        help="fine-tuning learning rate for every method (default: compress's)")
    parser.add_argument("--no-fid", action="store_true", help="skip the Inception FID")
    parser.add_argument("--fidelity", action="store_true",
                        help="also score fidelity to the teacher (PSNR/SSIM; samples the "
                             "teacher once per run)")
    parser.add_argument("--likelihood", type=int, metavar="N",
                        help="also measure each model's bits per dimension on N real images "
                             "(evaluate --likelihood's method, at its default steps)")
    parser.add_argument("--tag", help="results go to compress_quality_TAG.json / .md")
    parser.add_argument("--save-models", type=Path, metavar="DIR",
                        help="keep every pruned model (and its report) under DIR")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the .md from the results file, running nothing (give "
                             "the run's --tag and --steps)")
    args = parser.parse_args(argv)
    config = settings(args.quick)
    config.update({k: v for k, v in (("steps", args.steps), ("samples", args.samples),
                                     ("lr", args.lr), ("likelihood", args.likelihood))
                   if v is not None})
    if args.no_fid:
        config["inception"] = False
    if args.fidelity:
        config["fidelity"] = True
    if args.only:
        grid = [(d, f, int(k)) for d, f, k in (o.split(":") for o in args.only)]
    elif args.quick:
        grid = [("digits", "dit", 6)]
    else:
        grid = [(d, f, k) for d in ("digits", "photos") for f in ("dit", "sit") for k in (6, 4)]
    suffix = f"_{args.tag}" if args.tag else "_quick" if args.quick else ""
    results = RESULTS / f"compress_quality{suffix}.json"
    methods = args.methods.replace("ced-variants", ",".join(CED_VARIANTS)).split(",")
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(ALL_METHODS)}")
    if args.table_only:
        if not results.exists():
            parser.error(f"{results} does not exist; run the benchmark first")
        rows = json.loads(results.read_text())
        _check_steps(rows, config["steps"], results)
    else:
        rows = run_grid(grid, methods, config, results, args.seeds, args.random_draws,
                        args.save_models)
    text = table(rows, config)
    for summary in (paired_table(rows), paired_table(rows, metric="bits_per_dim"),
                    shortfall_table(rows)):
        if summary:
            text += "\n" + summary
    atomic_write_text(RESULTS / f"compress_quality{suffix}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
