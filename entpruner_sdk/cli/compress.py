"""``entpruner compress``: the product's main verb, with every option of ``CompressConfig``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from entpruner_sdk.cli import common
from entpruner_sdk.importance import available_importances
from entpruner_sdk.importance.ced import OUTPUTS, WEIGHTINGS
from entpruner_sdk.importance.entropy import ESTIMATORS
from entpruner_sdk.schedule import SCHEDULES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``compress`` subcommand: model, data, budget and every ``CompressConfig`` option."""
    p = common.command(
        sub, "compress", "Prune whole blocks guided by CED while fine-tuning on your "
        "data, recover by distillation, and write the smaller model plus a report.",
        """\
        entpruner compress --model dit-digits --data digits --budget 6 --out runs/dit-d6
        entpruner compress --model sit-digits --budget 0.5 --steps 2000 --out runs/sit-half
        entpruner compress --model sit-digits --budget 6 --out runs/sit-d6 \\
            --report-likelihood 100   # + bits per dimension of 100 digits, paired
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data ./my_latents.npz \\
            --budget 2x --device cuda --out runs/xl --num-classes 10
        entpruner compress --model runs/xl-dogs/model --data ./dogs.npz --keep-classes \\
            --budget 14 --hflip --out runs/dogs-d14   # ImageNet classes under their ids
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data ./my_images \\
            --image-size 256 --vae ./sd-vae-ft-ema --budget 14 --num-classes 10 \\
            --out runs/xl-d14        # images: encoded first (cached), report on images
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data hf:ethz/food101 \\
            --image-size 256 --vae ./sd-vae-ft-ema --budget 14 --num-classes 101 \\
            --out runs/food-d14      # a Hugging Face dataset (the hf extra; --split NAME)
        entpruner compress ... --out runs/dit-d6 --resume     # continue after an interruption
        entpruner compress ... --batch-size 64 --gradient-accumulation 4 \\
            --gradient-checkpointing      # the same run in less GPU memory
        entpruner compress ... --out runs/dit-d6 --no-keep-checkpoint  # less disk, no resume
        entpruner compress --model dit-digits --budget 2x --out runs/plan --dry-run  # plan only
        torchrun --nproc_per_node 4 -m entpruner_sdk compress --model DiT-XL-2-256x256.pt \\
            --family dit --data ./latents.npz --budget 14 --out runs/xl-d14   # data-parallel
        """)
    _model_and_data(p.add_argument_group("model and data"))
    _budget_and_schedule(p.add_argument_group("budget and schedule"))
    _importance(p.add_argument_group("importance: how blocks are ranked"))
    _fine_tuning(p.add_argument_group("fine-tuning and distillation"))
    _report(p.add_argument_group("report"))
    _run(p.add_argument_group("run"))


def _model_and_data(g: common.Options) -> None:
    g.add_argument("--model", required=True,
                   help="bundled teacher name, model path, or the Hub name of a DiTPipeline "
                        "the Hugging Face cache holds (facebook/DiT-XL-2-256)")
    common.released_options(g)
    g.add_argument("--data", default="digits",
                   help="downstream data: bundled name, class folders, a .csv of image files and "
                        "classes (file_name,label), .npz, a Hugging Face dataset saved with "
                        "save_to_disk, or hf:NAME[:CONFIG] (load_dataset)")
    common.folder_options(g)
    common.classes_options(g)
    common.vae_option(g, "encodes image data for a latent model first (cached: a second run or "
                      "--resume reads the latents back) and decodes its samples for the "
                      "report's quality figures (without it they are measured in latent space)")
    common.workers_option(g)


def _budget(text: str):
    """``--budget`` read when the arguments are, so unreadable text is refused before the
    model and data are."""
    from entpruner_sdk.compress.budget import Budget, BudgetError

    try:
        return Budget.parse(text)
    except BudgetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _budget_and_schedule(g: common.Options) -> None:
    g.add_argument("--budget", required=True, type=_budget,
                   help="blocks to keep (6), FLOPs share to keep (0.5 or 50%%) or speedup (2x)")
    g.add_argument("--schedule", default="adaptive", choices=SCHEDULES,
                   help="adaptive: remove progressively at decision points chosen by the "
                        "zero-shot proxies; one-shot: remove every block at step 0")
    g.add_argument("--interval", type=int, default=50, help="steps between decision points")
    g.add_argument("--k-max", type=int, default=2, help="most blocks removed per decision")
    g.add_argument("--prune-fraction", type=float, default=0.25,
                   help="every removal happens within this share of the steps")
    g.add_argument("--protect", type=_protected_blocks,
                   help="comma-separated original block indices never removed "
                   "(default: first and last); 'none' protects nothing")


def _importance(g: common.Options) -> None:
    g.add_argument("--importance", default="ced", choices=available_importances(),
                   help="how blocks are ranked for removal (default ced: on the bundled "
                        "benchmark at 2400 steps it falls least short of the best method "
                        "on the mean, though bi and others win some settings; "
                        "ced+bi is a rank vote of the two; docs/benchmarks.md); an installed "
                        "package adds its own under the 'entpruner_sdk.importance' entry "
                        "points")
    g.add_argument("--rerank", action="store_true",
                   help="recompute the importance on the current student at every decision "
                        "(default: rank once on the teacher and remove in that order; the "
                        "schedule decides when and how many either way)")
    g.add_argument("--calibration-per-class", type=int, default=16,
                   help="CED calibration images of every class")
    g.add_argument("--calibration-times", type=_time_grid, default=8, metavar="N|LEVELS",
                   help="CED's timestep grid: N timesteps spread over the whole schedule, or "
                        "comma-separated noise levels (0 = clean, 1 = pure noise), e.g. "
                        "0.1,0.3,0.5,0.7,0.9")
    g.add_argument("--ced-output", default="denoised",
                   choices=OUTPUTS,
                   help="what CED measures the entropy of: the raw prediction, the denoised "
                        "estimate, that estimate clipped to the data's range, or a short "
                        "sampler run")
    g.add_argument("--ced-estimator", default="sample", choices=ESTIMATORS,
                   help="Gaussian entropy from one sigma per sample, or per class and "
                        "dimension across samples")
    g.add_argument("--ced-weighting", default="mean", choices=WEIGHTINGS,
                   help="combine the timesteps by the plain mean, or give every timestep an "
                        "equal say (each normalized by its sum over the blocks)")


def _fine_tuning(g: common.Options) -> None:
    g.add_argument("--steps", type=int, default=1000, help="fine-tuning steps")
    g.add_argument("--batch-size", type=int, default=64, help="images per fine-tuning step")
    g.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default: 1e-4 at DiT-XL's width 1152, "
                        "scaled by 1/width, at most 2e-3)")
    common.memory_options(g)
    common.hflip_option(g)
    g.add_argument("--kd-weight", type=float, default=0.9,
                   help="weight of the MSE to the teacher's prediction")
    g.add_argument("--gt-weight", type=float, default=0.1,
                   help="weight of the ordinary diffusion / flow loss")
    g.add_argument("--feature-weight", type=float, default=0.0,
                   help="initial weight of the masked feature loss on aligned blocks "
                        "(decays to 0)")


def _report(g: common.Options) -> None:
    g.add_argument("--report-samples", type=int, default=200,
                   help="samples for the report's quality figures (0 skips them)")
    g.add_argument("--report-likelihood", type=int, default=0, metavar="N",
                   help="also report the bits per dimension of N real training images under "
                        "the original and the pruned model, paired (pixel models; DiT's bound "
                        "costs 1000 model calls an image, SiT's ODE 100)")
    g.add_argument("--report-fid", action="store_true",
                   help="also report standard FID (Inception; needs the fid extra)")


def _run(g: common.Options) -> None:
    g.add_argument("--out", required=True, help="output directory (model/, report, plots)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds calibration, data order and noise (same seed, same result)")
    g.add_argument("--checkpoint-every", type=int, default=200, metavar="N",
                   help="steps between resumable checkpoints, beside the one at each removal")
    common.resume_options(g)
    g.add_argument("--dry-run", action="store_true",
                   help="only plan: resolve the budget, score the blocks and print which "
                        "would go and the size and speed that leaves, without fine-tuning "
                        "(the bundled DiT: 8 s, where a 600-step run takes 154 s); writes "
                        "OUT/plan.md and plan.json")
    common.distributed_option(g, "data-parallel")
    common.run_options(g)


def _protected_blocks(text: str) -> tuple[int, ...]:
    """``none`` (nothing protected) or ``0,11`` (original block indices); compress checks
    that the blocks exist."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither 'none' nor comma-separated block indices (0,11)") from None


def _time_grid(text: str) -> int | tuple[float, ...]:
    """``8`` (a count) or ``0.1,0.5,0.9`` (noise levels); checked fully by compress."""
    try:
        if "," in text or "." in text:
            return tuple(float(v) for v in text.split(","))
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of timesteps (8) nor comma-separated noise levels "
            "(0.1,0.5,0.9)") from None


def run(args: argparse.Namespace) -> int:
    """Compress ``--model`` on ``--data`` to ``--budget`` into ``--out`` (or only plan it,
    ``--dry-run``), printing the summary; 0 on success."""
    from entpruner_sdk.compress import compress, plan
    from entpruner_sdk.compress.report import quality_line, spread
    from entpruner_sdk.data.latents import is_latent
    from entpruner_sdk.utils import distributed
    from entpruner_sdk.utils.files import check_output_path

    check_output_path(args.out, folder=True)  # before the data is read or encoded
    device = common.join_processes(args)
    model = common.released_model(args)
    data = common.training_data(args, is_latent(model.config), model.config, device, model)
    options = dict(
        importance=args.importance, schedule=args.schedule, steps=args.steps,
        batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        gradient_checkpointing=args.gradient_checkpointing, lr=args.lr, hflip=args.hflip,
        interval=args.interval,
        k_max=args.k_max, prune_fraction=args.prune_fraction, rerank=args.rerank,
        calibration_per_class=args.calibration_per_class,
        calibration_times=args.calibration_times, ced_output=args.ced_output,
        ced_estimator=args.ced_estimator, ced_weighting=args.ced_weighting, protect=args.protect,
        kd_weight=args.kd_weight, gt_weight=args.gt_weight, feature_weight=args.feature_weight,
        num_classes=args.num_classes, keep_classes=args.keep_classes, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        report_samples=args.report_samples, report_likelihood=args.report_likelihood,
        report_features=("domain", "inception") if args.report_fid else ("domain",),
        report_vae=args.vae)
    if args.dry_run:
        found = plan(model, data, args.budget, device=device, **options)
        return _print_plan(found, args.out) if distributed.is_main() else 0
    result = compress(model, data, args.budget, device=device, out_dir=args.out,
                      resume=args.resume, keep_checkpoint=args.keep_checkpoint,
                      progress=not args.quiet, **options)
    if not distributed.is_main():
        return 0
    s = result.report["summary"]
    lat = s["sampling_latency"]
    print(f"{s['family'].upper()}: depth {s['depth_before']} -> {s['depth_after']}, "
          f"parameters {s['parameters_before']:,} -> {s['parameters_after']:,}, "
          f"GFLOPs {s['gflops_before']:.4f} -> {s['gflops_after']:.4f}")
    print(f"kept blocks {s['kept_blocks']}; removed {s['removed_blocks']}")
    asked = (f" (budget {s['target_speedup']:g}x; latency model {s['predicted_speedup']:.2f}x)"
             if "target_speedup" in s else "")
    if "quality_pruned" in s:
        print(quality_line(s))
    if "likelihood" in s:
        lik = s["likelihood"]
        print(f"bits per dimension of {lik['images']} real images: "
              f"{lik['original_bits_per_dim']['mean']:.4f} -> {lik['bits_per_dim']['mean']:.4f} "
              f"(paired difference {lik['difference']['mean']:+.4f} +- "
              f"{lik['difference']['sem']:.4f})")
    print(f"sampling speedup {lat['speedup']:.2f}x{spread(lat)} on {lat['device']}{asked}; "
          f"model and report in {args.out}")
    return 0


def _print_plan(found, out: str) -> int:
    """Print the plan, and keep it in OUT as plan.md and plan.json."""
    from entpruner_sdk.utils.files import atomic_write_text

    text = found.to_markdown()
    print(text, end="")
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "plan.md", text)
    atomic_write_text(Path(out) / "plan.json", json.dumps(found.to_dict(), indent=2))
    print(f"plan written to {Path(out) / 'plan.md'} and plan.json; nothing was fine-tuned")
    return 0


interrupted = common.resume_hint  # what an interrupted run left for --resume
