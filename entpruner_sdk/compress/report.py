"""The compression report: JSON (everything), Markdown (for people) and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from entpruner_sdk.data.latents import is_latent
from entpruner_sdk.evaluation.report import likelihood_lines, timing_lines
from entpruner_sdk.models.transformer import DiffusionTransformer, count_parameters, forward_flops
from entpruner_sdk.sampling import sample
from entpruner_sdk.utils.device import arithmetic
from entpruner_sdk.utils.files import atomic_write_text, atomic_writer
from entpruner_sdk.utils.timing import interleaved_times

if TYPE_CHECKING:  # the runner imports this module, and these from it
    from entpruner_sdk.compress.budget import Budget
    from entpruner_sdk.compress.config import CompressConfig
    from entpruner_sdk.compress.decide import Decision
    from entpruner_sdk.data import ImageDataset
    from entpruner_sdk.schedule import LatencyModel


def sampling_latency(original: DiffusionTransformer, pruned: DiffusionTransformer,
                     device: torch.device, batch: int = 8, steps: int = 10,
                     repeats: int = 5) -> dict[str, Any]:
    """Seconds per sampling call of both models, measured side by side.

    The speedup is the ratio of the medians. Beside it, the lowest and highest ratio of one
    round (one call of each model, back to back) show how much the machine's load moved it:
    the median's ratio always lies between them."""
    labels = torch.arange(batch) % original.config.num_classes

    def run(model):
        return sample(model, labels, steps=steps, device=device)

    times = interleaved_times({"original": lambda: run(original),
                               "pruned": lambda: run(pruned)}, repeats=repeats)
    original_s, pruned_s = (statistics.median(times[side]) for side in ("original", "pruned"))
    rounds = [a / b for a, b in zip(times["original"], times["pruned"], strict=True)]
    return {"device": str(device), "arithmetic": arithmetic(device), "batch": batch,
            "steps": steps, "original_s": original_s, "pruned_s": pruned_s,
            "speedup": original_s / pruned_s,
            "rounds": repeats, "speedup_range": [min(rounds), max(rounds)]}


def build_report(teacher: DiffusionTransformer, pruned: DiffusionTransformer,
                 data: ImageDataset, config: CompressConfig, budget: Budget,
                 decisions: list[Decision], losses: list[float], latency: LatencyModel,
                 protected: list[int], device: torch.device, wall_seconds: float
                 ) -> dict[str, Any]:
    """The report of one compress run as plain data: ``summary`` (sizes before and after, removed
    blocks, costs, quality), the decision log with each decision's scores, and the losses."""
    removed = sorted(set(teacher.kept_blocks) - set(pruned.kept_blocks))
    importance_s = sum(d.importance_seconds for d in decisions)
    proxy_s = sum(d.proxy_seconds for d in decisions)
    summary = {
        "family": teacher.family, "data": data.name, "budget": budget.describe(),
        "depth_before": teacher.depth, "depth_after": pruned.depth,
        "parameters_before": count_parameters(teacher),
        "parameters_after": count_parameters(pruned),
        "gflops_before": forward_flops(teacher.config) / 1e9,
        "gflops_after": forward_flops(pruned.config) / 1e9,
        "kept_blocks": pruned.kept_blocks, "removed_blocks": removed,
        "protected_blocks": protected, "importance": config.importance,
        "schedule": config.schedule.kind, "steps": config.steps,
        # where and how the run computed: bf16 autocast on a GPU by default ($ENTPRUNER_AUTOCAST)
        "device": str(device), "arithmetic": arithmetic(device),
        "wall_seconds": wall_seconds, "importance_seconds": importance_s,
        "proxy_seconds": proxy_s, "proxy_share": proxy_s / max(wall_seconds, 1e-9),
        "latency_model": dataclasses.asdict(latency),
        # what the budget was resolved with: the latency model's forward-pass ratio
        "predicted_speedup": latency.speedup(teacher.depth, pruned.depth),
    }
    if budget.speedup is not None:
        summary["target_speedup"] = budget.speedup
    if is_latent(teacher.config):  # its samples are VAE latents, not images
        summary["latent"] = True
    if "resized_classes" in teacher.provenance:
        summary["resized_classes"] = teacher.provenance["resized_classes"]
    present = data.classes_present
    if len(present) < teacher.config.num_classes:  # fine-tuned on a subset of its classes
        summary["data_classes"] = present
    summary["sampling_latency"] = sampling_latency(teacher, pruned, device)
    return {"summary": summary, "settings": config.to_dict(),
            "decisions": [d.to_dict() for d in decisions], "losses": losses}


def write_report(report: dict[str, Any], directory: Path) -> None:
    """Write ``report.json``, ``report.md`` and the two plots into ``directory``; the texts
    atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(directory / "report.md", to_markdown(report))
    plot_losses(report, directory / "loss.png")
    plot_scores(report, directory / "importance.png")


def read_report(directory: str | Path) -> dict[str, Any]:
    """The report ``write_report`` wrote to ``directory``, with the fix when it is missing or
    corrupt."""
    path = Path(directory) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a compress output (no report.json); "
                                "its model alone loads with entpruner_sdk.load")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt ({error}); compress with --resume (resume=True) "
                         "writes it again while the run's checkpoint/ is there") from error


def spread(latency: dict[str, Any]) -> str:
    """The lowest and highest ratio of one round, as " (1.70-1.86 over 5 rounds)"; empty for
    a report written before they were recorded."""
    if "speedup_range" not in latency:
        return ""
    low, high = latency["speedup_range"]
    return f" ({low:.2f}-{high:.2f} over {latency['rounds']} rounds)"


def quality_line(summary: dict[str, Any]) -> str:
    """The report's headline quality figures, original -> pruned, on one line (the CLI's
    summary and ``entpruner info``)."""
    q, before, after = (summary["quality_settings"], summary["quality_original"],
                        summary["quality_pruned"])
    names = {"class_accuracy": "class accuracy", "fd_domain": "FD-domain", "fid": "FID"}
    figures = [f"{name} {before[key]:.4f} -> {after[key]:.4f}" for key, name in names.items()
               if key in after and key in before]
    if "psnr" in after:  # fidelity: the pruned model's samples against the original's
        figures.append(f"PSNR to the original {after['psnr']:.2f} dB")
    return (f"quality of {q['samples']} samples ({q['sampler']} x {q['steps']}, cfg "
            f"{q['cfg_scale']}): {', '.join(figures)}")


def _speedup_note(s: dict[str, Any]) -> list[str]:
    """For a speedup budget: the prediction it was resolved with, against the measurement."""
    target, predicted = s.get("target_speedup"), s.get("predicted_speedup")
    if target is None or predicted is None:
        return []
    measured = s["sampling_latency"]["speedup"]
    note = (f"The {target:g}x budget was resolved with the latency model measured before the "
            f"run, which predicts {predicted:.2f}x for a forward pass at depth "
            f"{s['depth_after']}; sampling measured {measured:.2f}x after it.")
    if measured < target:
        note += (" That is below the budget: timings move with other work on the machine, "
                 "so measure again on an idle one (benchmarks/sampling_speed.py), or ask "
                 "for a larger speedup.")
    return ["", note]


def _where(s: dict[str, Any]) -> str:
    """Where and how the run computed, as ' on cuda:0 in bf16 autocast' (in fp16, with the
    steps its loss scaler skipped); empty for a report written before they were recorded."""
    if "arithmetic" not in s:
        return ""
    return f" on {s['device']} in {s['arithmetic']}{_skipped(s.get('skipped_steps'))}"


def _skipped(count: int | None) -> str:
    """What fp16's loss scaler did (None: it did not run)."""
    if count is None:
        return ""
    if count == 0:
        return " (loss-scaled, no step skipped)"
    return f" ({count} skipped: their fp16 gradients overflowed)"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: sizes before and after, kept blocks, costs, quality and the
    decision log."""
    s = report["summary"]
    lines = [
        f"# Compression report: {s['family'].upper()} on {s['data']}", "",
        f"Budget: {s['budget']}. Importance: {s['importance']}, schedule: {s['schedule']}, "
        f"{s['steps']} fine-tuning steps{_where(s)}, {s['wall_seconds']:.0f} s wall time.", "",
        "| | before | after | ratio |", "|---|---|---|---|",
        f"| depth | {s['depth_before']} | {s['depth_after']} | "
        f"{s['depth_before'] / s['depth_after']:.2f}x |",
        f"| parameters | {s['parameters_before']:,} | {s['parameters_after']:,} | "
        f"{s['parameters_before'] / s['parameters_after']:.2f}x |",
        f"| GFLOPs / image | {s['gflops_before']:.4f} | {s['gflops_after']:.4f} | "
        f"{s['gflops_before'] / s['gflops_after']:.2f}x |",
    ]
    lat = s["sampling_latency"]
    arithmetic_used = f", {lat['arithmetic']}" if "arithmetic" in lat else ""
    lines.append(f"| sampling latency ({lat['device']}{arithmetic_used}, batch {lat['batch']}, "
                 f"{lat['steps']} steps) | {lat['original_s'] * 1e3:.0f} ms | "
                 f"{lat['pruned_s'] * 1e3:.0f} ms | "
                 f"{lat['speedup']:.2f}x{spread(lat)} |")
    lines += _speedup_note(s)
    if "quality_pruned" in s:
        q = s["quality_settings"]
        space = ("images decoded by the VAE" if q.get("vae") else
                 "latents" if s.get("latent") else "images")
        lines += ["", f"Quality ({q['samples']} samples, sampler {q['sampler']} x {q['steps']}, "
                  f"cfg {q['cfg_scale']}, against {q['reference']}, measured on {space}; "
                  "FD-domain is measured in the domain classifier's features, not "
                  "Inception's):", "",
                  "| metric | original | pruned |", "|---|---|---|"]
        for key, value in s["quality_pruned"].items():
            before = s["quality_original"].get(key)
            lines.append(f"| {key} | {'-' if before is None else f'{before:.4f}'} | "
                         f"{value:.4f} |")
        # the quality samples' own timing, at the quality sampler's steps and batch size
        lines += ["", *timing_lines(q, "the pruned model")]
    lines += likelihood_lines(s.get("likelihood", {}), "pruned")
    lines += ["", f"Kept blocks (original indices): {s['kept_blocks']}",
              f"Removed blocks: {s['removed_blocks']} (protected: {s['protected_blocks']})", ""]
    if "resized_classes" in s:
        r = s["resized_classes"]
        lines += [f"The label embedder was resized from {r['from']} to {r['to']} classes "
                  "(null class kept; new classes start class-neutral).", ""]
    if "data_classes" in s:
        present = s["data_classes"]
        shown = ", ".join(map(str, present[:20])) + (", ..." if len(present) > 20 else "")
        lines += [f"The data holds {len(present)} of the model's classes ({shown}); the label "
                  "embedder was kept, and the quality figures sample those classes only.", ""]
    lines += [f"Importance scoring took {s['importance_seconds']:.1f} s and the zero-shot "
              f"proxies {s['proxy_seconds']:.1f} s ({s['proxy_share']:.1%} of the wall time).",
              "", "## Decisions", "",
              "| step | loss | k range | candidates (k: vote) | chosen k | removed |",
              "|---|---|---|---|---|---|"]
    for d in report["decisions"]:
        votes = ", ".join(f"{c['k']}: {c['vote'] if c['vote'] is not None else '-'}"
                          for c in d["candidates"])
        loss = "-" if d["loss"] is None else f"{d['loss']:.4f}"
        lines.append(f"| {d['step']} | {loss} | {d['plan']['k_min']}..{d['plan']['k_max']} | "
                     f"{votes} | {d['chosen_k']} | {d['removed']} |")
    if report["decisions"]:
        lines += ["", "## Block scores at the first decision", "",
                  *_scores_table(report["decisions"][0]["scores"],
                                 report.get("calibration_times"))]
    return "\n".join(lines) + "\n"


def _scores_table(scores: list[dict[str, Any]], times: list[float] | None) -> list[str]:
    """One row per block; a column of per-timestep scores for criteria that have them (CED),
    none for those that score a block once (BI, or a criterion of your own)."""
    if not any(row.get("per_timestep") for row in scores):
        return ["| block | score |", "|---|---|",
                *(f"| {row['block']} | {row['score']:.4f} |" for row in scores)]
    header = "per timestep" + (f" (t = {', '.join(f'{t:g}' for t in times)})" if times else "")
    return [f"| block | score | {header} |", "|---|---|---|",
            *(f"| {row['block']} | {row['score']:.4f} | "
              f"{', '.join(f'{v:.4f}' for v in row.get('per_timestep', []))} |"
              for row in scores)]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(report: dict[str, Any], path: Path) -> None:
    """The training loss over the steps (smoothed), with each removal marked, as a PNG."""
    plt = _figure()
    losses = report["losses"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if losses:
        window = max(1, len(losses) // 50)
        smooth = torch.tensor(losses).unfold(0, window, 1).mean(1).tolist() \
            if len(losses) >= window else losses
        ax.plot(range(window, window + len(smooth)), smooth, lw=1.2, label="training loss")
    for d in report["decisions"]:
        if d["removed"]:
            ax.axvline(d["step"], color="tab:red", ls="--", lw=0.8)
            # pinned to the top of the axes, a little inside, so the frame never cuts it
            ax.annotate(f"removed {', '.join(map(str, d['removed']))}", (d["step"], 1),
                        xycoords=("data", "axes fraction"), xytext=(-2, -4),
                        textcoords="offset points", fontsize=7, rotation=90, va="top",
                        ha="right", color="tab:red")
    ax.set(xlabel="step", ylabel="loss", title="Training loss with block removals")
    _save(fig, path)


def plot_scores(report: dict[str, Any], path: Path) -> None:
    """Each block's score at the first decision, the removed blocks in red, as a PNG."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if report["decisions"]:
        rows = report["decisions"][0]["scores"]
        removed = set(report["summary"]["removed_blocks"])
        ax.bar([str(r["block"]) for r in rows], [r["score"] for r in rows],
               color=["tab:red" if r["block"] in removed else "tab:blue" for r in rows])
    ax.set(xlabel="block (original index); red = removed", ylabel="score",
           title=f"{report['summary']['importance'].upper()} per block at the first decision")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_writer(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
