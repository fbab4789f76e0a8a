"""The ``entpruner`` command line: ``train``, ``sample``, ``info``, ``encode``, ``compress``,
``evaluate``, ``export``, ``serve``, ``demo`` and ``quickstart`` (the main job).

Every subcommand has ``--help`` with examples; ``--quiet`` silences progress bars.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import torch

from entpruner_sdk.evaluation.batches import IN_PROGRESS
from entpruner_sdk.evaluation.reference import REFERENCE_SIZE
from entpruner_sdk.importance import IMPORTANCES
from entpruner_sdk.importance.ced import OUTPUTS, WEIGHTINGS
from entpruner_sdk.importance.entropy import ESTIMATORS
from entpruner_sdk.schedule import SCHEDULES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entpruner",
        description="Entropy-guided depth pruning for DiT / SiT, and the tools to ship it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              entpruner quickstart                      # the main job on bundled data
              entpruner info --model dit-digits
              entpruner sample --model sit-digits --per-class 4 --out grid.png
              entpruner train --model DiT-S/2 --data ./my_images --steps 5000 --out runs/dit
            """),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_sample(sub)
    _add_info(sub)
    _add_encode(sub)
    _add_compress(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_demo(sub)
    _add_quickstart(sub)
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples printed as written; every option's help ends with its default, unless the
    text already states it or there is none to state (a flag, or a value left unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or "default" in text
                or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def _command(sub, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text,
                          formatter_class=_HelpFormatter,
                          epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples), "  "))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _heads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-heads", type=int,
                   help="attention heads of a released checkpoint whose width is not a "
                        "published size (weights do not record it; default: the published "
                        "table, else 64 channels per head)")


def _vae_option(p: argparse.ArgumentParser, does: str = "decodes a latent model's samples to "
                "images", required: bool = False) -> None:
    p.add_argument("--vae", metavar="DIR", required=required,
                   help="local diffusers AutoencoderKL folder (sd-vae-ft-ema for DiT-XL/2 and "
                        f"SiT-XL/2): it {does}")


def _workers_option(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes that read and crop a folder's images while the VAE encodes "
                        "(default: %(default)s; 0 reads them in this process)" + note)


def _folder_options(p: argparse.ArgumentParser, note: str = "") -> None:
    """--image-size and --class-index: how a class folder is read."""
    p.add_argument("--image-size", type=int, metavar="N",
                   help="scale class-folder images so the short side is N and cut the "
                        "centred N x N square, as DiT's and SiT's training code does" + note
                        + "; the size of the bundled photos")
    p.add_argument("--class-index", metavar="FILE",
                   help="the model's classes in order, when the class folders are some of them "
                        "(ImageNet's LOC_synset_mapping.txt, 'n01440764 tench, ...' per line, "
                        "or imagenet_class_index.json): each folder is labelled by its line")


def _hflip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hflip", action="store_true",
                   help="mirror each training image left-right with probability 1/2, as DiT's "
                        "and SiT's training does: for photos and their latents, not for "
                        "digits or text")


def _load_data(args: argparse.Namespace, stream: bool = False):
    """The --data of a command, read with --image-size and --class-index; ``stream``: a folder
    as an ``ImageFolder``, which reads its images when they are used."""
    from entpruner_sdk.data import load_data
    from entpruner_sdk.data.folder import open_data

    return (open_data if stream else load_data)(args.data, image_size=args.image_size,
                                                class_index=args.class_index)


def _training_data(args: argparse.Namespace, latent: bool, config=None,
                   device: str | torch.device | None = None):
    """The --data of train or compress; with --vae, images for a latent model are encoded
    first, a folder streamed, into the entpruner cache (by content and VAE: a second run or
    --resume reads the latents back, and an interrupted encode continues). ``config``: the
    model's, when it is known already, checked against the VAE and the images first."""
    if not (args.vae and latent):
        return _load_data(args)
    from entpruner_sdk.data.latents import to_latents
    from entpruner_sdk.evaluation.classifier import cache_root
    from entpruner_sdk.utils import distributed

    # under torchrun rank 0 encodes while the others wait, then they read its cache
    if not distributed.is_main():
        distributed.barrier()
    data = to_latents(_load_data(args, stream=True), args.vae, cache_root() / "latents",
                      config=config, device=device or args.device, workers=args.workers,
                      progress=not args.quiet and distributed.is_main())
    if distributed.is_main():
        distributed.barrier()
    return data


def _classes_options(p: argparse.ArgumentParser, note: str = "") -> None:
    """--num-classes or --keep-classes: what to do with data of fewer or other classes."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--num-classes", type=int,
                       help="data with another class count: resize the model's label embedder "
                            "to N classes (the null class is kept)" + (f"; {note}" if note
                                                                        else ""))
    group.add_argument("--keep-classes", action="store_true",
                       help="the data's labels are the model's own class ids, a subset of its "
                            "classes (e.g. ImageNet ids for DiT-XL/2): keep its label "
                            "embedder; sampling and evaluation use the classes the data holds")


def _add_train(sub) -> None:
    p = _command(sub, "train", "Train or fine-tune a DiT / SiT on class-conditional data.", """\
        entpruner train --model DiT-S/2 --data digits --steps 2000 --out runs/dit
        entpruner train --family sit --depth 12 --hidden 96 --heads 4 --patch 2 \\
            --data digits --steps 6000 --out runs/sit
        entpruner train --model runs/dit/model --data ./my_folder --steps 500 --out runs/ft
        entpruner train --model DiT-XL-2-256x256.pt --family dit --data ./my_latents.npz \\
            --num-classes 10 --steps 2000 --out runs/xl-ft   # 10 classes instead of 1000
        entpruner train --model DiT-XL-2-256x256.pt --family dit --data ./dogs.npz \\
            --keep-classes --steps 2000 --out runs/xl-dogs   # labels are ImageNet ids
        entpruner train --model DiT-XL-2-256x256.pt --family dit --data ./my_images \\
            --image-size 256 --vae ./sd-vae-ft-ema --num-classes 10 --out runs/xl-ft
        entpruner train ... --out runs/dit --resume    # continue an interrupted run
        """)
    p.add_argument("--model", help="registry name (DiT-S/2, SiT-B/4, ...), a bundled teacher, "
                   "or a checkpoint / model directory to fine-tune")
    p.add_argument("--family", choices=["dit", "sit"],
                   help="model family (needed for custom sizes and released files)")
    p.add_argument("--depth", type=int, help="custom size: number of blocks")
    p.add_argument("--hidden", type=int, help="custom size: hidden width")
    p.add_argument("--heads", type=int,
                   help="custom size: attention heads (also for a released checkpoint of a "
                        "width that is not a published size)")
    p.add_argument("--patch", type=int, default=2, help="custom size: patch size")
    p.add_argument("--no-learn-sigma", action="store_true",
                   help="predict only epsilon / velocity (no learned variance channels)")
    p.add_argument("--flow-path", choices=["linear", "gvp"], default="linear",
                   help="SiT interpolant path")
    p.add_argument("--data", default="digits",
                   help="bundled name (digits, photos), class folders, or .npz")
    _folder_options(p)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    _hflip_option(p)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--ema-decay", type=float, default=0.9999,
                   help="decay of the EMA weights that are saved and sampled")
    p.add_argument("--seed", type=int, default=0, help="seeds the data order and the noise")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between resumable checkpoints")
    _classes_options(p, "a new model takes the data's count")
    _vae_option(p, "encodes image data first, for a latent model (cached: a second run or "
                   "--resume reads the latents back); a new model is then built on latents")
    _workers_option(p)
    p.add_argument("--out", required=True, help="output directory (checkpoint/, model/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    _common(p)


def _add_sample(sub) -> None:
    p = _command(sub, "sample", "Sample class-conditional images and save a PNG grid.", """\
        entpruner sample --model dit-digits --per-class 8 --out digits.png
        entpruner sample --model runs/sit/model --labels 3,3,7 --sampler euler-maruyama \\
            --steps 100 --cfg 2.0 --seed 1 --out sit.png --npz sit.npz
        entpruner sample --model dit-photos --labels coffee,rocket --out photos.png  # names
        entpruner sample --model DiT-XL-2-256x256.pt --family dit --labels 207 \\
            --vae ./sd-vae-ft-ema --out dog.png         # latents decoded by the VAE
        entpruner sample --model exports/dit-onnx --cfg 2 --out onnx.png   # ONNX Runtime
        """)
    p.add_argument("--model", required=True,
                   help="bundled teacher name, model path, or an export directory")
    p.add_argument("--family", choices=["dit", "sit"], help="required for released files")
    _heads_option(p)
    p.add_argument("--provider", default="cpu",
                   help="ONNX Runtime provider for an ONNX export: cpu, cuda or tensorrt")
    p.add_argument("--labels", help="comma-separated class ids or names (names for a model "
                   "trained on named classes: class folders, an .npz's class_names)")
    p.add_argument("--per-class", type=int, default=0,
                   help="N images of every class (default: 4 when --labels is not given; a "
                        "model fine-tuned on a subset of its classes samples those)")
    p.add_argument("--sampler", help="ddpm/ddim (DiT) or euler/heun/euler-maruyama (SiT)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="classifier-free guidance scale (1 = unguided)")
    p.add_argument("--reference-cfg", action="store_true",
                   help="guide only the first 3 channels, like the reference code")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial noise")
    p.add_argument("--out", default="samples.png", help="PNG grid path")
    p.add_argument("--npz", help="also save the samples (images, decoded when --vae is given) "
                   "and labels to this .npz")
    _vae_option(p)
    _common(p)


def _add_info(sub) -> None:
    p = _command(sub, "info", "Describe a model or an export: config, parameters, FLOPs, "
                 "provenance, classes (and an export's files, batch profile and parity).", """\
        entpruner info --model dit-digits
        entpruner info --model DiT-XL-2-256x256.pt --family dit --json
        entpruner info --model exports/dit-d6     # an export directory
        """)
    p.add_argument("--model", required=True,
                   help="registry name, bundled teacher name, model path, released file or "
                        "export directory")
    p.add_argument("--family", choices=["dit", "sit"], help="required for released files")
    _heads_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_encode(sub) -> None:
    p = _command(sub, "encode", "Encode images to VAE latents: the data for a latent model "
                 "(DiT-XL/2, SiT-XL/2) to train, compress and evaluate on. The latents done so "
                 "far are kept in OUT.encoding/ (each minute): after Ctrl-C or a crash, the same "
                 "command continues from there.", """\
        entpruner encode --vae ./sd-vae-ft-ema --data ./my_images --out my_latents.npz
        entpruner encode --vae ./sd-vae-ft-ema --data ./imagenet_subset --image-size 256 \\
            --class-index LOC_synset_mapping.txt --device cuda --batch-size 64 --workers 8 \\
            --out subset.npz       # n02099601/... folders under ImageNet's ids, streamed
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data my_latents.npz \\
            --budget 14 --out runs/xl-d14
        """)
    _vae_option(p, "encodes the images", required=True)
    p.add_argument("--data", required=True,
                   help="bundled name, class folders or an .npz of images")
    _folder_options(p, " (256 for DiT-XL/2 and SiT-XL/2 at 256x256)")
    p.add_argument("--out", required=True,
                   help=".npz to write: latents, labels and class names")
    p.add_argument("--batch-size", type=int, default=32, help="images per VAE call")
    _workers_option(p, ". A folder is read one batch at a time, so it need not fit in memory")
    _common(p)


def _add_compress(sub) -> None:
    p = _command(sub, "compress", "Prune whole blocks guided by CED while fine-tuning on your "
                 "data, recover by distillation, and write the smaller model plus a report.",
                 """\
        entpruner compress --model dit-digits --data digits --budget 6 --out runs/dit-d6
        entpruner compress --model sit-digits --budget 0.5 --steps 2000 --out runs/sit-half
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data ./my_latents.npz \\
            --budget 2x --device cuda --out runs/xl --num-classes 10
        entpruner compress --model runs/xl-dogs/model --data ./dogs.npz --keep-classes \\
            --budget 14 --hflip --out runs/dogs-d14   # ImageNet classes under their ids
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data ./my_images \\
            --image-size 256 --vae ./sd-vae-ft-ema --budget 14 --num-classes 10 \\
            --out runs/xl-d14        # images: encoded first (cached), report on images
        entpruner compress ... --out runs/dit-d6 --resume     # continue after an interruption
        torchrun --nproc_per_node 4 -m entpruner_sdk compress --model DiT-XL-2-256x256.pt \\
            --family dit --data ./latents.npz --budget 14 --out runs/xl-d14   # data-parallel
        """)
    p.add_argument("--model", required=True, help="bundled teacher name or model path")
    p.add_argument("--family", choices=["dit", "sit"], help="required for released files")
    _heads_option(p)
    p.add_argument("--data", default="digits",
                   help="downstream data: bundled name, class folders or .npz")
    _folder_options(p)
    p.add_argument("--budget", required=True,
                   help="blocks to keep (6), FLOPs share to keep (0.5 or 50%%) or speedup (2x)")
    p.add_argument("--out", required=True, help="output directory (model/, report, plots)")
    p.add_argument("--importance", default="ced", choices=list(IMPORTANCES),
                   help="how blocks are ranked for removal (default ced: on the bundled "
                        "benchmark at 2400 steps it falls least short of the best method "
                        "on the mean, though bi and others win some settings; "
                        "ced+bi is a rank vote of the two; docs/benchmarks.md)")
    p.add_argument("--schedule", default="adaptive", choices=SCHEDULES,
                   help="adaptive: remove progressively at decision points chosen by the "
                        "zero-shot proxies; one-shot: remove every block at step 0")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=64, help="images per fine-tuning step")
    _hflip_option(p)
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default: 1e-4 at DiT-XL's width 1152, "
                        "scaled by 1/width, at most 2e-3)")
    p.add_argument("--interval", type=int, default=50, help="steps between decision points")
    p.add_argument("--k-max", type=int, default=2, help="most blocks removed per decision")
    p.add_argument("--prune-fraction", type=float, default=0.25,
                   help="every removal happens within this share of the steps")
    p.add_argument("--rerank", action="store_true",
                   help="recompute the importance on the current student at every decision "
                        "(default: rank once on the teacher and remove in that order; the "
                        "schedule decides when and how many either way)")
    p.add_argument("--calibration-per-class", type=int, default=16,
                   help="CED calibration images of every class")
    p.add_argument("--calibration-times", type=_time_grid, default=8, metavar="N|LEVELS",
                   help="CED's timestep grid: N timesteps spread over the whole schedule, or "
                        "comma-separated noise levels (0 = clean, 1 = pure noise), e.g. "
                        "0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--ced-output", default="denoised",
                   choices=OUTPUTS,
                   help="what CED measures the entropy of: the raw prediction, the denoised "
                        "estimate, that estimate clipped to the data's range, or a short "
                        "sampler run")
    p.add_argument("--ced-estimator", default="sample", choices=ESTIMATORS,
                   help="Gaussian entropy from one sigma per sample, or per class and "
                        "dimension across samples")
    p.add_argument("--ced-weighting", default="mean", choices=WEIGHTINGS,
                   help="combine the timesteps by the plain mean, or give every timestep an "
                        "equal say (each normalized by its sum over the blocks)")
    p.add_argument("--protect", help="comma-separated original block indices never removed "
                   "(default: first and last); 'none' protects nothing")
    p.add_argument("--kd-weight", type=float, default=0.9,
                   help="weight of the MSE to the teacher's prediction")
    p.add_argument("--gt-weight", type=float, default=0.1,
                   help="weight of the ordinary diffusion / flow loss")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="initial weight of the masked feature loss on aligned blocks "
                        "(decays to 0)")
    _classes_options(p)
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes torchrun started (automatic when "
                        "torchrun sets WORLD_SIZE > 1)")
    p.add_argument("--report-samples", type=int, default=200,
                   help="samples for the report's quality figures (0 skips them)")
    p.add_argument("--report-fid", action="store_true",
                   help="also report standard FID (Inception; needs the fid extra)")
    _vae_option(p, "encodes image data for a latent model first (cached: a second run or "
                   "--resume reads the latents back) and decodes its samples for the report's "
                   "quality figures (without it they are measured in latent space)")
    _workers_option(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seeds calibration, data order and noise (same seed, same result)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    _common(p)


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


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", "Score a model against real data: FID (Inception), FD-domain, "
                 "precision/recall, class accuracy, and fidelity to an original.", """\
        entpruner evaluate --model dit-digits --data digits --samples 1000 --steps 50 --cfg 2
        entpruner evaluate --model runs/pruned --original dit-digits --data digits \\
            --samples 500 --features domain --out runs/eval
        entpruner evaluate --model runs/xl-d14/model --original DiT-XL-2-256x256.pt \\
            --family dit --data ./my_images --image-size 256 --vae ./sd-vae-ft-ema \\
            --reference-size 50000              # a latent model against 50k real images
        entpruner evaluate --model runs/xl-d14/model --family dit --vae ./sd-vae-ft-ema \\
            --data VIRTUAL_imagenet256_labeled.npz --samples 50000 --steps 250 --cfg 1.5 \\
            --sampler ddpm --save-samples --out runs/fid50k   # ADM's reference batch and format
        """)
    p.add_argument("--model", required=True, help="bundled teacher name or model path")
    p.add_argument("--family", choices=["dit", "sit"], help="required for released files")
    _heads_option(p)
    p.add_argument("--original", help="also report fidelity to this model (same noise/labels)")
    p.add_argument("--data", default="digits", help="real data to compare with")
    _folder_options(p)
    p.add_argument("--samples", type=int, default=1000, help="generated images to score")
    p.add_argument("--sampler", help="ddpm/ddim (DiT) or euler/heun/euler-maruyama (SiT)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="classifier-free guidance scale (1 = unguided)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the noise (the labels are class-balanced)")
    p.add_argument("--features", default="domain,inception",
                   help="comma-separated feature spaces: domain, inception or both")
    p.add_argument("--reference-size", type=int, default=REFERENCE_SIZE,
                   help="real images to compare with, balanced over the classes (default: "
                        "%(default)s; 0: all); a folder reads only those")
    p.add_argument("--out", default="runs/evaluation",
                   help="writes evaluation.json and .md; the samples made so far are kept in "
                        f"OUT/{IN_PROGRESS}/ until the end: after Ctrl-C or a crash, the "
                        "same command continues from there")
    p.add_argument("--save-samples", action="store_true",
                   help="also write OUT/samples.npz: the samples as 8-bit images (arr_0, "
                        "N x H x W x C) and their labels (arr_1), the format of "
                        "guided-diffusion's samples and ADM's evaluation suite")
    _vae_option(p)
    _common(p)


def _add_export(sub) -> None:
    p = _command(sub, "export", "Export a model for deployment (ONNX, AOTInductor, TensorRT).",
                 """\
        entpruner export --model runs/quickstart/dit-digits-pruned --out exports/dit-onnx
        entpruner export --model dit-digits --format onnx-fp16 --out exports/fp16 --verify
        entpruner export --model runs/sit --format aoti --out exports/sit-aoti
        entpruner export --model runs/dit --format tensorrt --batch 1,8,32 --out exports/trt
        entpruner sample --model exports/dit-onnx --cfg 2 --out onnx.png   # run an export
        """)
    from entpruner_sdk.export import FORMATS

    p.add_argument("--model", required=True, help="bundled teacher name or model path")
    p.add_argument("--family", choices=["dit", "sit"], help="required for released files")
    _heads_option(p)
    p.add_argument("--format", default="onnx", choices=FORMATS, help="what to export to")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--verify", action="store_true",
                   help="print the parity table (exports are always checked unless --no-check)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--batch", default="1,8,32",
                   help="min,opt,max batch (TensorRT profile, AOTInductor max, parity opt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="ONNX exporter (default: torch.export-based, opset 18)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="TensorRT / torch-tensorrt precision (default fp16; bf16 only for "
                        "torch-tensorrt)")
    p.add_argument("--no-guided", action="store_true",
                   help="ONNX: skip the classifier-free-guidance graph")
    _vae_option(p, "is exported too (vae_decoder.onnx), so the export samples images on its "
                   "own")
    _common(p)


def _add_serve(sub) -> None:
    p = _command(sub, "serve", "Serve models over HTTP (FastAPI, micro-batching, metrics).", """\
        entpruner serve --model dit-digits                       # http://127.0.0.1:8000/docs
        entpruner serve --model original=dit-digits --model pruned=runs/quickstart/dit-digits-pruned
        entpruner serve --model exports/dit-onnx --backend onnxruntime --port 8080
        entpruner serve --model pruned=runs/x/model --max-batch 32 --max-wait-ms 20
        ENTPRUNER_API_KEY=secret entpruner serve --model dit-digits --host 0.0.0.0
        entpruner serve --model dit-digits --ray --replicas 4    # Ray Serve replicas
        curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
            -d '{"model": "pruned", "class_labels": [3, 7], "seed": 1}'
        """)
    from entpruner_sdk.serve.models import BACKENDS

    p.add_argument("--model", action="append", required=True, metavar="[NAME=]SOURCE",
                   help="teacher name, model dir, checkpoint or export dir (repeatable)")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="what runs the models: PyTorch or an export's runtime")
    p.add_argument("--provider", help="ONNX Runtime provider: cpu, cuda or tensorrt")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=int, default=16, help="images per batch (1 = off)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64, help="queued requests before 503")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-steps", type=int, default=250,
                   help="most sampling steps a request may ask for")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--api-key", help="require this X-API-Key (default: $ENTPRUNER_API_KEY)")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment")
    p.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas")
    p.add_argument("--family", choices=["dit", "sit"],
                   help="required for released checkpoints (their keys do not say)")
    _heads_option(p)
    _vae_option(p)
    _common(p)


def _add_demo(sub) -> None:
    p = _command(sub, "demo", "Gradio app: original vs pruned sampling, side by side.", """\
        entpruner demo          # dit-digits vs runs/quickstart/dit-digits-pruned (from quickstart)
        entpruner demo --original sit-digits --pruned runs/quickstart/sit-digits-pruned
        entpruner demo --pruned runs/dit-d6 --onnx --port 7861   # adds ONNX Runtime
        """)
    from entpruner_sdk.apps.pair import DEFAULT_ORIGINAL, DEFAULT_PRUNED

    p.add_argument("--original", default=DEFAULT_ORIGINAL, help="teacher name or model path")
    p.add_argument("--pruned", default=DEFAULT_PRUNED,
                   help="a `compress` output folder (with report.json) or a model path")
    p.add_argument("--onnx", action="store_true",
                   help="export both models to ONNX (cached) and offer ONNX Runtime; with "
                        "--vae the decoder is exported and run by ONNX Runtime too")
    p.add_argument("--data", help="data for the quick evaluation (default: the report's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--family", choices=["dit", "sit"],
                   help="a released original checkpoint's family (default: the pruned "
                        "model's, as its head count is)")
    _vae_option(p)
    _common(p)


def _add_quickstart(sub) -> None:
    p = _command(sub, "quickstart", "The main job on bundled data: sample the bundled teachers, "
                 "compress each to half depth, evaluate both, print the comparison.", """\
        entpruner quickstart
        entpruner quickstart --out runs/quickstart --device cuda
        """)
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--samples", type=int, default=300, help="evaluation samples per model")
    p.add_argument("--compress-steps", type=int, default=500,
                   help="fine-tuning steps of each compress run")
    p.add_argument("--seed", type=int, default=0, help="seeds every run and evaluation")
    _common(p)


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from entpruner_sdk.models import (
        DiffusionTransformer,
        TransformerConfig,
        config_from_name,
        resize_classes,
    )
    from entpruner_sdk.teachers import resolve_model
    from entpruner_sdk.training import TrainConfig, train

    registry_name = bool(args.model) and "/" in args.model and args.model.split("-")[
        0].lower() in ("dit", "sit") and not Path(args.model).exists()
    # a model to fine-tune is opened first, so --vae images are checked against it before the
    # encode; a new model takes its shape from the data (with --vae: from its latents)
    given = (resolve_model(args.model, args.family, num_heads=args.heads)
             if args.model and not registry_name else None)
    data = _training_data(args, latent=True,
                          config=given.config if given is not None else None)
    shape = dict(input_size=data.image_size, in_channels=data.channels,
                 num_classes=data.num_classes)
    objective = {"path": args.flow_path} if args.family == "sit" or (
        args.model or "").lower().startswith("sit-") else {}
    if registry_name:
        config = config_from_name(args.model, **shape, learn_sigma=not args.no_learn_sigma)
        model = DiffusionTransformer(config, objective=objective)
    elif given is not None:
        model = given
        if args.num_classes is not None and args.num_classes != model.config.num_classes:
            model = resize_classes(model, args.num_classes)
    else:
        if not (args.family and args.depth and args.hidden and args.heads):
            raise SystemExit("give --model, or --family, --depth, --hidden and --heads")
        config = TransformerConfig(family=args.family, depth=args.depth, hidden_size=args.hidden,
                                   num_heads=args.heads, patch_size=args.patch,
                                   learn_sigma=not args.no_learn_sigma, **shape)
        model = DiffusionTransformer(config, objective=objective)
    torch.manual_seed(args.seed)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         ema_decay=args.ema_decay, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, hflip=args.hflip)
    model.provenance.setdefault("training_command", "entpruner " + " ".join(sys.argv[1:]))
    result = train(model, data, config, keep_classes=args.keep_classes, out_dir=args.out,
                   resume=args.resume, device=args.device, progress=not args.quiet)
    recent = result.losses[-50:]
    print(f"trained {args.steps} steps; loss over the last {len(recent)} steps "
          f"{sum(recent) / len(recent):.4f}; "
          f"EMA model saved to {Path(args.out) / 'model'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from entpruner_sdk.data.classes import offered_classes, resolve_labels
    from entpruner_sdk.data.latents import decoder_for
    from entpruner_sdk.sampling import sample, save_grid
    from entpruner_sdk.teachers import resolve_model

    exported = _exported(args.model, args.provider)
    model = exported or resolve_model(args.model, args.family, num_heads=args.num_heads)
    # an export of a latent model may carry its VAE decoder; --vae takes precedence
    vae = args.vae or (exported.decoder if exported is not None else None)
    decoder = decoder_for(model.config, vae, args.device)
    if args.labels:
        labels = resolve_labels(args.labels.split(","), model.config.num_classes,
                                model.provenance.get("class_names", ()))
    else:
        per_class = args.per_class or 4
        labels = [c for c in offered_classes(model.provenance, model.config.num_classes)
                  for _ in range(per_class)]
    if exported is not None:
        images = exported.sample(labels, sampler=args.sampler, steps=args.steps,
                                 cfg_scale=args.cfg, seed=args.seed, clip_denoised=True,
                                 progress=not args.quiet)
    else:
        images = sample(model, labels, sampler=args.sampler, steps=args.steps,
                        cfg_scale=args.cfg, seed=args.seed, device=args.device,
                        reference_cfg=args.reference_cfg, clip_denoised=True,
                        progress=not args.quiet)
    if decoder is not None:
        images = decoder.decode(images, progress=not args.quiet)
    rows = len(set(labels)) if not args.labels else None
    save_grid(images, args.out, rows=rows)
    if args.npz:
        np.savez(args.npz, images=images.numpy(), labels=np.array(labels))
    print(f"{len(labels)} samples -> {args.out}")
    return 0


def _exported(path: str, provider: str):
    """An export directory opened with its runtime, or None for anything else."""
    if not Path(path).is_dir() or not (Path(path) / "export.json").is_file():
        return None
    from entpruner_sdk.export import load_exported

    return load_exported(path, provider=provider)


def model_summary(model) -> dict:
    from entpruner_sdk.data.latents import is_latent
    from entpruner_sdk.models import count_parameters, forward_flops

    return {"family": model.family, "config": model.config.to_dict(),
            "latent": is_latent(model.config),
            "parameters": count_parameters(model),
            "gflops_per_image": forward_flops(model.config) / 1e9,
            "provenance": model.provenance, "objective": model.objective}


def export_summary(directory: str | Path) -> dict:
    """``model_summary`` of the model inside an export directory, from its manifest (no
    runtime is opened), plus the export's format, files, batch profile and parity checks."""
    from entpruner_sdk.export.metadata import config_and_objective
    from entpruner_sdk.export.runtime import read_manifest
    from entpruner_sdk.models import DiffusionTransformer

    manifest = read_manifest(directory)
    metadata = manifest["metadata"]
    config, _ = config_and_objective(metadata)
    with torch.device("meta"):  # shapes only, for the parameter count
        model = DiffusionTransformer(config, metadata.get("provenance"),
                                     metadata.get("objective_settings"))
    summary = model_summary(model)
    summary["export"] = {key: manifest.get(key) for key in
                         ("format", "precision", "files", "batch", "created", "torch", "parity")}
    return summary


def cmd_info(args: argparse.Namespace) -> int:
    from entpruner_sdk.export.runtime import is_export_dir
    from entpruner_sdk.teachers import resolve_model

    if is_export_dir(args.model):
        summary = export_summary(args.model)
    else:
        summary = model_summary(resolve_model(args.model, args.family, num_heads=args.num_heads))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    cfg = summary["config"]
    print(f"{summary['family'].upper()}  depth {cfg['depth']}  hidden {cfg['hidden_size']}  "
          f"heads {cfg['num_heads']}  patch {cfg['patch_size']}  input {cfg['in_channels']}x"
          f"{cfg['input_size']}x{cfg['input_size']}  classes {cfg['num_classes']}  "
          f"learn_sigma {cfg['learn_sigma']}")
    print(f"parameters {summary['parameters']:,}  forward {summary['gflops_per_image']:.4f} "
          "GFLOPs/image")
    print(f"kept blocks {summary['provenance']['kept_blocks']}")
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
    if summary["latent"]:
        print(f"works on {cfg['in_channels']}-channel VAE latents: sample, evaluate, serve and "
              "demo decode them with --vae DIR")
    if "export" in summary:
        _print_export(summary["export"])
    return 0


def _print_export(export: dict) -> None:
    files = sorted(set(export["files"].values()))
    print(f"export: {export['format']} {export.get('precision') or ''}, files "
          f"{', '.join(files)}, batch profile {export.get('batch')}, made with torch "
          f"{export.get('torch')} at {export.get('created')}")
    if "decoder" in export["files"]:
        print("carries the VAE decoder: sample and serve need no --vae")
    checks = export.get("parity") or []
    if checks:
        passed = sum(check["passed"] for check in checks)
        worst = max(check["relative_error"] for check in checks)
        print(f"parity with PyTorch: {passed} of {len(checks)} checks passed (largest "
              f"relative error {worst:.2g})")
    else:
        print("parity with PyTorch: not checked (it was exported with --no-check)")


def cmd_compress(args: argparse.Namespace) -> int:
    from entpruner_sdk.compress import compress
    from entpruner_sdk.data.latents import is_latent
    from entpruner_sdk.teachers import resolve_model
    from entpruner_sdk.utils import distributed

    device = args.device
    if args.distributed or distributed.launched_by_torchrun():
        device = distributed.init_from_env(None if device == "auto" else torch.device(device))
    model = resolve_model(args.model, args.family, num_heads=args.num_heads)
    protect = None
    if args.protect:
        protect = () if args.protect == "none" else tuple(
            int(v) for v in args.protect.split(","))
    data = _training_data(args, is_latent(model.config), model.config, device)
    result = compress(
        model, data, args.budget, device=device,
        out_dir=args.out,
        resume=args.resume, progress=not args.quiet, importance=args.importance,
        schedule=args.schedule, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        hflip=args.hflip,
        interval=args.interval, k_max=args.k_max, prune_fraction=args.prune_fraction,
        rerank=args.rerank,
        calibration_per_class=args.calibration_per_class,
        calibration_times=args.calibration_times, ced_output=args.ced_output,
        ced_estimator=args.ced_estimator, ced_weighting=args.ced_weighting, protect=protect,
        kd_weight=args.kd_weight, gt_weight=args.gt_weight, feature_weight=args.feature_weight,
        num_classes=args.num_classes, keep_classes=args.keep_classes, seed=args.seed,
        report_samples=args.report_samples,
        report_features=("domain", "inception") if args.report_fid else ("domain",),
        report_vae=args.vae)
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
    print(f"sampling speedup {lat['speedup']:.2f}x on {lat['device']}{asked}; "
          f"model and report in {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from entpruner_sdk.data.latents import is_latent
    from entpruner_sdk.evaluation.evaluate import evaluate
    from entpruner_sdk.teachers import resolve_model

    model = resolve_model(args.model, args.family, num_heads=args.num_heads)
    original = (resolve_model(args.original, args.family, num_heads=args.num_heads)
                if args.original else None)
    if original is not None:  # the teacher as compress used it (a resized label embedder)
        from entpruner_sdk.compress import as_compressed

        original = as_compressed(original, model)
    if args.save_samples and is_latent(model.config) and not args.vae:
        raise SystemExit("--save-samples writes images, and this model samples VAE latents: "
                         "pass --vae DIR to decode them")
    data = _load_data(args, stream=True)  # a folder: only the reference images are read
    report = evaluate(model, data, reference_size=args.reference_size or None,
                      samples=args.samples, sampler=args.sampler,
                      steps=args.steps, cfg_scale=args.cfg, seed=args.seed, original=original,
                      features=tuple(f.strip() for f in args.features.split(",")),
                      device=args.device, progress=not args.quiet, model_name=args.model,
                      vae=args.vae, checkpoint_dir=Path(args.out) / IN_PROGRESS)
    report.save(args.out)
    print(report.to_markdown())
    print(f"written to {Path(args.out) / 'evaluation.json'} and evaluation.md")
    if args.save_samples:
        print(f"samples written to {report.save_samples(Path(args.out) / 'samples.npz')}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from entpruner_sdk.data.datasets import save_npz
    from entpruner_sdk.data.latents import LatentSpace

    space = LatentSpace.from_pretrained(args.vae, device=args.device)
    data = _load_data(args, stream=True)  # a folder may be larger than memory
    work = _encode_work_dir(args.out)  # holds the latents done so far until the .npz is out
    latents = space.encode_dataset(data, cache_dir=work, batch_size=args.batch_size,
                                   progress=not args.quiet, workers=args.workers)
    save_npz(latents, args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{len(latents)} images of {data.channels}x{data.image_size}x{data.image_size} -> "
          f"{latents.channels}x{latents.image_size}x{latents.image_size} latents "
          f"({_classes_held(latents)}) in {args.out}")
    return 0


def _classes_held(data) -> str:
    held, count = len(data.classes_present), data.num_classes
    return f"{count} classes" if held == count else f"{held} of its {count} classes"


def _encode_work_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".encoding")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from entpruner_sdk.quickstart import run_quickstart

    run_quickstart(out=args.out, samples=args.samples, compress_steps=args.compress_steps,
                   seed=args.seed, device=args.device, progress=not args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from entpruner_sdk.export import export
    from entpruner_sdk.export.parity import format_checks
    from entpruner_sdk.teachers import resolve_model

    try:
        batch = tuple(int(v) for v in args.batch.split(","))
    except ValueError as error:
        raise ValueError(f"--batch must be min,opt,max integers, got {args.batch!r}") from error
    model = resolve_model(args.model, args.family, num_heads=args.num_heads)
    device = None if args.device == "auto" else args.device
    result = export(model, args.out, args.format, verify=not args.no_check, batch=batch,
                    overwrite=args.overwrite, guided=not args.no_guided,
                    exporter=args.exporter, precision=args.precision, device=device,
                    vae=args.vae)
    if args.verify and result.parity:
        print(format_checks(result.parity))
    files = ", ".join(sorted(set(result.files.values())))
    checked = "parity checked" if result.parity else "not checked"
    print(f"{args.format} export ({checked}) -> {result.directory}: {files}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from entpruner_sdk.serve import ServerSettings, parse_model_specs, serve, serve_ray

    specs = parse_model_specs(args.model)
    settings = ServerSettings(
        max_batch_images=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_images_per_request=args.max_images, max_steps=args.max_steps,
        request_timeout_s=args.timeout,
        api_key=args.api_key or os.environ.get("ENTPRUNER_API_KEY"))
    device = None if args.device == "auto" else args.device
    if args.ray:
        serve_ray(specs, backend=args.backend, host=args.host, port=args.port,
                  replicas=args.replicas, settings=settings, device=device,
                  provider=args.provider, vae=args.vae, family=args.family,
                  num_heads=args.num_heads)
    else:
        serve(specs, backend=args.backend, host=args.host, port=args.port, settings=settings,
              device=device, provider=args.provider, vae=args.vae, family=args.family,
              num_heads=args.num_heads,
              log_level="warning" if args.quiet else "info")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from entpruner_sdk.apps.demo import launch
    from entpruner_sdk.apps.pair import DEFAULT_PRUNED, MAKE_PRUNED

    if args.pruned == DEFAULT_PRUNED and not Path(DEFAULT_PRUNED).exists():
        print(f"note: no pruned model at {DEFAULT_PRUNED}; make it with:\n  {MAKE_PRUNED}\n"
              "(the demo starts anyway and shows this in the page)", file=sys.stderr)
    launch(args.original, args.pruned, port=args.port, host=args.host, onnx=args.onnx,
           data=args.data, vae=args.vae, family=args.family)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "encode": cmd_encode,
            "compress": cmd_compress, "evaluate": cmd_evaluate, "export": cmd_export,
            "serve": cmd_serve, "demo": cmd_demo, "quickstart": cmd_quickstart}


# The extra that installs each optional module, for the missing-module hint.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "httpx": "serve",
          "gradio": "app", "gradio_client": "app", "playwright": "app", "ray": "ray",
          "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tensorrt": "tensorrt",
          "torch_tensorrt": "tensorrt", "diffusers": "latent"}


def _error_message(error: Exception) -> str:
    """The error, plus the install command when it is a missing optional dependency."""
    name = getattr(error, "name", None) or ""
    extra = EXTRAS.get(name.split(".")[0]) if isinstance(error, ImportError) else None
    if extra is None:
        return str(error)
    return f"{error}; install it with: pip install 'entpruner-sdk[{extra}]'"


def _interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted command kept: for train and compress, the checkpoint to resume;
    for encode, the latents made; for evaluate, the sample batches made."""
    message = f"entpruner {args.command}: interrupted"
    if args.command == "evaluate":
        folder = Path(args.out) / IN_PROGRESS
        done = len(list(folder.glob("*/batch_*.safetensors")))
        if done:
            return (message + f"; {folder} holds {done} finished sample batches: run the same "
                    "command to continue from them")
        return message + "; no sample batch was finished yet, so running it again starts over"
    if args.command == "encode":
        from safetensors import safe_open

        partials = _encode_work_dir(args.out).glob("*.partial.safetensors")
        for partial in sorted(partials, key=lambda path: path.stat().st_mtime, reverse=True):
            with safe_open(str(partial), "pt") as file:  # the newest: this data's
                done = file.get_slice("latents").get_shape()[0]
            return (message + f"; {partial.parent} holds the first {done} images' latents: run "
                    "the same command to continue from there")
        return message + "; no latents were saved yet, so running it again starts over"
    if args.command not in ("train", "compress") or not getattr(args, "out", None):
        return message
    from entpruner_sdk.utils.checkpoint import META

    state = Path(args.out) / "checkpoint" / META
    try:
        step = json.loads(state.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return message + "; no checkpoint was written yet, so running it again starts over"
    return (message + f"; {state.parent} holds step {step}: run the same command with --resume "
            "to continue from there")


def main(argv: list[str] | None = None) -> int:
    from entpruner_sdk.data import DataError
    from entpruner_sdk.evaluation.inception import FeatureNetworkMissing
    from entpruner_sdk.export import ParityError
    from entpruner_sdk.models.io import CheckpointError

    args = _parser().parse_args(argv)
    if getattr(args, "quiet", False):
        import os

        os.environ["ENTPRUNER_QUIET"] = "1"
    try:
        return COMMANDS[args.command](args)
    except (CheckpointError, DataError, ValueError, TypeError, FileNotFoundError,
            FileExistsError, FeatureNetworkMissing, ParityError, ImportError,
            RuntimeError) as error:
        print(f"entpruner {args.command}: error: {_error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: say where the work is, not where Python was
        print(_interrupted_message(args), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `entpruner info --json | head`: the reader has what it wanted
        import os

        # stdout is gone; point it at devnull so the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
