"""``entpruner info``: what a model or an export is (config, size, provenance, classes)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from entpruner_sdk.cli import common

if TYPE_CHECKING:  # imported when the command runs
    from entpruner_sdk.models import DiffusionTransformer


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``info`` subcommand: the model or export to describe, and ``--json``."""
    p = common.command(
        sub, "info", "Describe a model or an export: config, parameters, FLOPs, "
        "provenance, classes (a compressed model's data, steps, measured speedup and quality; "
        "an export's files, batch profile and parity, and how its model was made).", """\
        entpruner info --model dit-digits
        entpruner info --model runs/dit-d6        # a compress output: how it was made
        entpruner info --model DiT-XL-2-256x256.pt --family dit --json
        entpruner info --model results/000-SiT-B-2/checkpoints/0400000.pt  # from train.py
        entpruner info --model exports/dit-d6     # an export directory
        """)
    p.add_argument("--model", required=True,
                   help="registry name, bundled teacher name, model path, released file or "
                        "export directory")
    common.released_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def model_summary(model: DiffusionTransformer) -> dict:
    """A model's family, config, size and provenance as plain data (``info --json``)."""
    from entpruner_sdk.data.latents import is_latent, recorded_vae
    from entpruner_sdk.models import count_parameters, forward_flops
    from entpruner_sdk.objectives import OBJECTIVES

    objective = OBJECTIVES[model.family]
    return {"family": model.family, "config": model.config.to_dict(),
            "latent": is_latent(model.config),
            # the VAE folder its data was encoded with, the one sample and evaluate decode with
            "vae": (recorded_vae(model.metadata) or {}).get("path") if is_latent(
                model.config) else None,
            # the diffusers pipeline folder it was loaded from, whose vae/ that is
            "pipeline": (model.metadata.get("pipeline") or {}).get("path"),
            "parameters": count_parameters(model),
            "gflops_per_image": forward_flops(model.config) / 1e9,
            "provenance": model.provenance, "objective": model.objective,
            # what it samples with, as the server's /v1/models lists it
            "samplers": list(objective.samplers), "defaults": objective.sampling_defaults(),
            # a compress output's model keeps its report's summary: data, steps, figures
            **({"compression": model.metadata["compression"]}
               if "compression" in model.metadata else {})}


def export_summary(directory: str | Path) -> dict:
    """``model_summary`` of the model inside an export directory, from its manifest (no
    runtime is opened), plus the export's format, files, batch profile and parity checks."""
    from entpruner_sdk.export.metadata import config_and_objective
    from entpruner_sdk.export.runtime import damaged_files, read_manifest
    from entpruner_sdk.models import DiffusionTransformer

    manifest = read_manifest(directory)
    metadata = manifest["metadata"]
    config, _ = config_and_objective(metadata)
    with torch.device("meta"):  # shapes only, for the parameter count
        model = DiffusionTransformer(config, metadata.get("provenance"),
                                     metadata.get("objective_settings"))
    for step in ("compression", "training", "pipeline"):  # how it was made travels with it
        if step in metadata:
            model.metadata[step] = metadata[step]
    summary = model_summary(model)
    summary["export"] = {key: manifest.get(key) for key in
                         ("format", "precision", "files", "contents", "batch", "created",
                          "torch", "parity")}
    summary["export"]["damaged"] = damaged_files(directory, manifest)
    if manifest["format"] == "aoti":  # machine code: what it was compiled for
        from entpruner_sdk.export.aoti import TARGET_KEYS

        summary["export"]["target"] = {key: metadata[key] for key in TARGET_KEYS
                                       if key in metadata}
    return summary


def run(args: argparse.Namespace) -> int:
    """Print what ``--model`` is, as text or JSON; 0 on success."""
    from entpruner_sdk.data.latents import trained_vae
    from entpruner_sdk.export.runtime import is_export_dir

    if is_export_dir(args.model):
        summary = export_summary(args.model)
    else:
        summary = model_summary(common.released_model(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 2 if summary.get("export", {}).get("damaged") else 0
    cfg = summary["config"]
    print(f"{summary['family'].upper()}  depth {cfg['depth']}  hidden {cfg['hidden_size']}  "
          f"heads {cfg['num_heads']}  patch {cfg['patch_size']}  input {cfg['in_channels']}x"
          f"{cfg['input_size']}x{cfg['input_size']}  classes {cfg['num_classes']}  "
          f"learn_sigma {cfg['learn_sigma']}"
          + (f"  flow path {summary['objective'].get('path', 'linear')}"
             if summary["family"] == "sit" else ""))
    print(f"parameters {summary['parameters']:,}  forward {summary['gflops_per_image']:.4f} "
          "GFLOPs/image")
    print(f"kept blocks {summary['provenance']['kept_blocks']}")
    trained = summary["provenance"].get("trained_with")
    if trained:  # the args of the reference train.py run that made the weights
        print("trained by train.py as " + _training_line(trained))
    compression = summary["provenance"].get("compression")
    if compression:  # a compress output: how it was made, beside what it kept
        _print_compression(compression, summary.get("compression") or {})
    names = summary["provenance"].get("class_names") or []
    tuned = summary["provenance"].get("data_classes")

    def listed(ids: list[int], limit: int = 20) -> str:
        shown = ", ".join(f"{i} {names[i]}" if names else str(i) for i in ids[:limit])
        return shown + (f", ... ({len(ids)} in all; --json lists every one)"
                        if len(ids) > limit else "")

    if names:
        print("classes " + listed(list(range(len(names)))))
    if tuned:
        print("fine-tuned on classes " + listed(tuned))
    carried = {"decoder", "pipeline"} & set(summary.get("export", {}).get("files") or {})
    if summary["latent"] and carried:  # an ONNX decoder, or a DiTPipeline's vae/
        print(f"works on {cfg['in_channels']}-channel VAE latents: the export carries the "
              "VAE decoder, so sample and serve need no --vae")
    elif summary["latent"] and summary["vae"]:
        print(f"works on {cfg['in_channels']}-channel VAE latents: sample, evaluate, serve and "
              f"demo decode them with {summary['vae']}, "
              + ("its diffusers pipeline's VAE" if summary.get("pipeline") else
                 "which its data was encoded with") + " (--vae DIR: another)")
    elif summary["latent"]:
        vae = trained_vae(summary["provenance"])
        print(f"works on {cfg['in_channels']}-channel VAE latents: sample, evaluate, serve and "
              "demo decode them with --vae DIR"
              + (f" (it was trained with {vae})" if vae else ""))
    print(_samplers_line(summary["samplers"], summary["defaults"]))
    if "export" in summary:
        _print_export(summary["export"])
        if summary["export"]["damaged"]:  # said last, where it is seen, and as a failure
            print(f"entpruner info: error: this export is incomplete or altered: "
                  f"{'; '.join(summary['export']['damaged'])}. Copy the whole folder again, "
                  "or export again", file=sys.stderr)
            return 2
    return 0


def _samplers_line(samplers: list[str], defaults: dict) -> str:
    """``samplers ddim (default: 50 steps, cfg 2), ddpm, dpm-solver++``: what sample,
    evaluate and serve take, the default first with the steps and guidance they use."""
    default = defaults["sampler"]
    others = [name for name in samplers if name != default]
    return (f"samplers {default} (default: {defaults['steps']} steps, cfg "
            f"{defaults['cfg_scale']:g}), " + ", ".join(others))


def _training_line(args: dict) -> str:
    """The reference train.py settings that say what the weights are, as one line."""
    named = {"model": "{}", "image_size": "{} px images", "num_classes": "{} classes",
             "path_type": "path {}", "prediction": "{} prediction", "epochs": "{} epochs",
             "global_batch_size": "batch {}"}
    return ", ".join(form.format(args[key]) for key, form in named.items()
                     if args.get(key) is not None)


def _print_compression(made: dict, report: dict) -> None:
    """How a compressed model was made (its provenance) and, when it was saved with its
    report's summary, on what data and how it measured against its original."""
    from entpruner_sdk.compress.report import quality_line, spread

    where = (f" on {report['data']} in {report['steps']} fine-tuning steps"
             if "data" in report and "steps" in report else "")
    source = (made.get("original") or {}).get("source")  # runs before it did not record it
    print(f"compressed{f' from {source}' if source else ''} to {made['budget']} by "
          f"{made['importance']} ({made['schedule']}){where}; removed blocks "
          f"{made['removed_blocks']}")
    earlier = made.get("earlier")
    while earlier:  # a model compressed again: each compression before, latest first
        source = (earlier.get("original") or {}).get("source")
        print(f"  before that: compressed{f' from {source}' if source else ''} to "
              f"{earlier['budget']} by {earlier['importance']} ({earlier['schedule']}); "
              f"removed blocks {earlier['removed_blocks']}")
        earlier = earlier.get("earlier")
    latency = report.get("sampling_latency")
    if latency:
        arithmetic = f" in {latency['arithmetic']}" if "arithmetic" in latency else ""
        print(f"sampling speedup {latency['speedup']:.2f}x{spread(latency)} on "
              f"{latency['device']}{arithmetic} (batch {latency['batch']}), measured by "
              "compress")
    if "quality_pruned" in report:
        print(quality_line(report))


def _aoti_target_line(target: dict) -> str:
    """Where an AOTInductor package's machine code runs: its device, processor and vector
    instructions or compute capability (exports before these records name the device only)."""
    device = target.get("device", "cpu")
    capability = target.get("cuda_capability")
    details = [target.get("machine"), target.get("cpu_isa"),
               capability and f"compute capability {capability}"]
    where = ", ".join(detail for detail in details if detail)
    return (f"compiled for {device}{f' ({where})' if where else ''}: it runs on machines "
            "that have these, with the torch that made it")


def _print_export(export: dict) -> None:
    contents = export.get("contents")  # exports made before it list their graphs only
    files = ([f"{name} ({common.human_size(size)})" for name, size in contents.items()]
             if contents else sorted(set(export["files"].values())))
    # the batch range an engine or package was built for; other formats take any batch
    profile = (f", batch profile {export.get('batch')}"
               if export["format"] in ("aoti", "tensorrt", "torch-tensorrt") else "")
    print(f"export: {export['format']} {export.get('precision') or ''}, files "
          f"{', '.join(files)}{profile}, made with torch "
          f"{export.get('torch')} at {export.get('created')}")
    if export["format"] == "aoti":
        print(_aoti_target_line(export.get("target", {})))
    checks = export.get("parity") or []
    if checks:
        passed = sum(check["passed"] for check in checks)
        worst = max(check["relative_error"] for check in checks)
        print(f"parity with PyTorch: {passed} of {len(checks)} checks passed (largest "
              f"relative error {worst:.2g})")
    else:
        print("parity with PyTorch: not checked (it was exported with --no-check)")
