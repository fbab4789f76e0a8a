"""``entpruner train``: train a DiT / SiT, or fine-tune one, on class-conditional data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from entpruner_sdk.cli import common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` subcommand: a new model's shape or a model to fine-tune, the data and the
    training settings."""
    p = common.command(
        sub, "train", "Train or fine-tune a DiT / SiT on class-conditional data.", """\
        entpruner train --model DiT-S/2 --data digits --steps 2000 --out runs/dit
        entpruner train --model DiT-S/2 --depth 6 --data digits --out runs/dit-6  # 6 blocks
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
        entpruner train ... --batch-size 256 --gradient-accumulation 8 \\
            --gradient-checkpointing      # DiT's batch of 256 on one smaller GPU
        """)
    _model(p.add_argument_group("model: one to fine-tune, or a new one's shape"))
    _data(p.add_argument_group("data"))
    _training(p.add_argument_group("training"))
    _run(p.add_argument_group("run"))


def _model(g: common.Options) -> None:
    g.add_argument("--model", help="registry name (DiT-S/2, SiT-B/4, ...), a bundled teacher, "
                   "or a checkpoint / model directory to fine-tune")
    g.add_argument("--family", choices=["dit", "sit"],
                   help="model family (needed for custom sizes and released files)")
    g.add_argument("--depth", type=int, help="custom size: number of blocks (with a registry "
                   "name, that model at this depth)")
    g.add_argument("--hidden", type=int, help="custom size: hidden width (with a registry name, "
                   "that model at this width)")
    g.add_argument("--heads", "--num-heads", type=int, dest="heads",
                   help="custom size: attention heads (also for a released checkpoint of a "
                        "width that is not a published size, as --num-heads elsewhere)")
    g.add_argument("--patch", type=int, default=2, help="custom size: patch size")
    g.add_argument("--no-learn-sigma", action="store_true",
                   help="predict only epsilon / velocity (no learned variance channels)")
    g.add_argument("--flow-path", choices=["linear", "gvp"],
                   help="SiT interpolant path: of a new model (default: linear), or the one a "
                        "released SiT file was trained on")


def _data(g: common.Options) -> None:
    g.add_argument("--data", default="digits",
                   help="bundled name (digits, photos), class folders, a .csv of image files "
                        "and classes (file_name,label), .npz, or a Hugging Face dataset "
                        "(saved with save_to_disk, or hf:NAME[:CONFIG])")
    common.folder_options(g)
    common.classes_options(g, "a new model takes the data's count")
    common.vae_option(g, "encodes image data first, for a latent model (cached: a second run or "
                      "--resume reads the latents back); a new model is then built on latents")
    common.workers_option(g)


def _training(g: common.Options) -> None:
    g.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=64, help="images per step")
    common.memory_options(g)
    common.hflip_option(g)
    g.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    g.add_argument("--ema-decay", type=float, default=0.9999,
                   help="decay of the EMA weights that are saved and sampled")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds a new model's initial weights, the data order and the noise")


def _run(g: common.Options) -> None:
    g.add_argument("--out", required=True, help="output directory (checkpoint/, model/)")
    g.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between resumable checkpoints")
    common.resume_options(g)
    common.run_options(g)


def run(args: argparse.Namespace) -> int:
    """Train (or fine-tune, or ``--resume``) on ``--data`` and save the EMA model to ``--out``;
    0 on success."""
    from entpruner_sdk.models import (
        DiffusionTransformer,
        TransformerConfig,
        config_from_name,
        resize_classes,
    )
    from entpruner_sdk.teachers import resolve_model
    from entpruner_sdk.training import TrainConfig, train
    from entpruner_sdk.utils.files import check_output_path

    # settings out of range, and an --out that cannot be made, are refused before a model is
    # opened or data encoded
    check_output_path(args.out, folder=True)
    training = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           ema_decay=args.ema_decay, seed=args.seed,
                           checkpoint_every=args.checkpoint_every, hflip=args.hflip,
                           gradient_accumulation=args.gradient_accumulation,
                           gradient_checkpointing=args.gradient_checkpointing)
    registry_name = bool(args.model) and "/" in args.model and args.model.split("-")[
        0].lower() in ("dit", "sit") and not Path(args.model).exists()
    sized = {flag: value for flag, value in (("--depth", args.depth), ("--hidden", args.hidden))
             if value is not None}
    if sized and args.model and not registry_name:
        raise SystemExit(f"{' and '.join(sized)} size{'' if len(sized) > 1 else 's'} a new "
                         f"model, and {args.model} is a "
                         "trained one, fine-tuned at its own size: drop them (compress removes "
                         "blocks from a trained model)")
    # a model to fine-tune is opened first, so --vae images are checked against it before the
    # encode; a new model takes its shape from the data (with --vae: from its latents)
    given = (resolve_model(args.model, args.family, num_heads=args.heads,
                           flow_path=args.flow_path)
             if args.model and not registry_name else None)
    data = common.training_data(args, latent=True,
                                config=given.config if given is not None else None, model=given)
    shape = dict(input_size=data.image_size, in_channels=data.channels,
                 num_classes=data.num_classes)
    objective = {"path": args.flow_path or "linear"} if args.family == "sit" or (
        args.model or "").lower().startswith("sit-") else {}
    torch.manual_seed(args.seed)  # a new model's initial weights: same seed, same model
    if registry_name:  # --depth, --hidden and --heads resize the named one
        custom = {field: value for field, value in (("depth", args.depth), (
            "hidden_size", args.hidden), ("num_heads", args.heads)) if value is not None}
        config = config_from_name(args.model, **shape, **custom,
                                  learn_sigma=not args.no_learn_sigma)
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
    model.provenance.setdefault("training_command", "entpruner " + " ".join(sys.argv[1:]))
    result = train(model, data, training, keep_classes=args.keep_classes, out_dir=args.out,
                   resume=args.resume, keep_checkpoint=args.keep_checkpoint,
                   device=args.device, progress=not args.quiet)
    recent = result.losses[-50:]
    skipped = (f" ({result.skipped_steps} skipped: their fp16 gradients overflowed)"
               if result.skipped_steps else "")
    print(f"trained {args.steps} steps{skipped}; loss over the last {len(recent)} steps "
          f"{sum(recent) / len(recent):.4f}; "
          f"EMA model saved to {Path(args.out) / 'model'}")
    return 0


interrupted = common.resume_hint  # what an interrupted run left for --resume
