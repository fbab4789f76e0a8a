"""``entpruner evaluate``: a model's quality against real data, and its fidelity to an original."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from entpruner_sdk.cli import common
from entpruner_sdk.evaluation.batches import IN_PROGRESS
from entpruner_sdk.evaluation.reference import REFERENCE_SIZE
from entpruner_sdk.sampling import COMPILE_MODES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` subcommand: the model, its reference data, the sampler and the feature
    spaces."""
    p = common.command(
        sub, "evaluate", "Score a model against real data: FID (Inception), FD-domain, "
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
        entpruner evaluate --model runs/xl-d14/model --family dit --vae ./sd-vae-ft-ema \\
            --data ./my_images --image-size 256 --samples 10000 --device cuda \\
            --compile reduce-overhead             # sampled with CUDA graphs
        entpruner evaluate --model sit-digits --data digits --sampler dopri5 --steps 250 \\
            --atol 1e-2 --rtol 1e-2 --cfg 2      # dopri5 at looser tolerances
        entpruner evaluate --model runs/sit-pruned --original sit-digits --data digits \\
            --features domain --likelihood 200   # + bits per dimension of 200 real images
        entpruner evaluate --model exports/dit-fp16 --original runs/dit-d6/model \\
            --data digits --cfg 2 --features domain  # what the fp16 export costs in quality
        """)
    _models(p.add_argument_group("models"))
    _sampling(p.add_argument_group("sampling"))
    _reference(p.add_argument_group("real data and figures"))
    _run(p.add_argument_group("run"))


def _models(g: common.Options) -> None:
    g.add_argument("--model", required=True,
                   help="bundled teacher name, model path, or an export directory")
    common.released_options(g)
    g.add_argument("--original", help="also sample this model (or export) from the same noise "
                   "and labels, batch by batch in turn with the model: its figures beside the "
                   "model's, the model's fidelity to it, and its speedup over it")
    common.provider_option(g)
    common.vae_option(g)


def _sampling(g: common.Options) -> None:
    g.add_argument("--samples", type=int, default=1000, help="generated images to score")
    common.sampler_options(g)
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the noise (the labels are class-balanced)")
    g.add_argument("--batch-size", type=int, default=250,
                   help="samples drawn at a time, and the share of work under torchrun: "
                        "lower it when a large model's batch does not fit in memory; each "
                        "batch's noise comes from the seed and its index, so the batch size "
                        "is part of what decides the samples")
    g.add_argument("--compile", choices=COMPILE_MODES,
                   help="sample PyTorch models through torch.compile in this mode "
                        "(reduce-overhead: CUDA graphs on a GPU; default: eager)")


def _reference(g: common.Options) -> None:
    g.add_argument("--data", help="real data to compare with (default: the data --model was "
                   "compressed or trained on, read as it was then, as the model records it; a "
                   "bundled teacher's own dataset; else digits)")
    common.folder_options(g)
    g.add_argument("--features", default="domain,inception",
                   help="comma-separated feature spaces: domain, inception or both")
    g.add_argument("--reference-size", type=int, default=REFERENCE_SIZE,
                   help="real images to compare with, balanced over the classes (default: "
                        "%(default)s; 0: all); a folder reads only those")
    g.add_argument("--likelihood", type=int, default=0, metavar="N",
                   help="also measure the bits per dimension of N real images of --data (and "
                        "under --original, on the same images with the same noise): SiT by "
                        "its ODE, DiT by its variational bound; pixel models only")
    g.add_argument("--likelihood-steps", type=int, metavar="STEPS",
                   help="SiT's ODE steps (default 50) or DiT's bound's timesteps (default "
                        "1000; fewer: a respaced chain's bound, comparable only at equal "
                        "steps)")


def _run(g: common.Options) -> None:
    g.add_argument("--out", default="runs/evaluation",
                   help="writes evaluation.json and .md; the samples made so far are kept in "
                        f"OUT/{IN_PROGRESS}/ until the end: after Ctrl-C or a crash, the "
                        "same command continues from there")
    g.add_argument("--save-samples", action="store_true",
                   help="also write OUT/samples.npz: the samples as 8-bit images (arr_0, "
                        "N x H x W x C) and their labels (arr_1), the format of "
                        "guided-diffusion's samples and ADM's evaluation suite")
    common.distributed_option(g, "shard the sampling")
    common.run_options(g)


def run(args: argparse.Namespace) -> int:
    """Evaluate ``--model`` (and its fidelity to ``--original``), print the table and write the
    report to ``--out``; 0 on success."""
    from entpruner_sdk.data.latents import is_latent
    from entpruner_sdk.evaluation.evaluate import evaluate
    from entpruner_sdk.models.transformer import DiffusionTransformer
    from entpruner_sdk.utils import distributed

    device = common.join_processes(args)

    def opened(spec: str):  # an export with its runtime, else a model
        return (common.open_export(spec, args.provider)
                or common.released_model(args, spec))

    model = opened(args.model)
    original = opened(args.original) if args.original else None
    if isinstance(original, DiffusionTransformer):  # the teacher as compress used it (a
        from entpruner_sdk.compress import as_compressed  # resized label embedder)

        original = as_compressed(original, model)
    # an export of a latent model may carry its VAE decoder; --vae takes precedence
    vae = args.vae or getattr(model, "decoder", None) or common.recorded_vae_of(model, device)
    if args.save_samples and is_latent(model.config) and not vae:
        raise SystemExit("--save-samples writes images, and this model samples VAE latents: "
                         "pass --vae DIR to decode them")
    data = _compared_data(args, model)
    report = evaluate(model, data, reference_size=args.reference_size or None,
                      samples=args.samples, sampler=args.sampler,
                      steps=args.steps, cfg_scale=args.cfg, seed=args.seed, original=original,
                      batch_size=args.batch_size,
                      features=tuple(f.strip() for f in args.features.split(",")),
                      device=device, progress=not args.quiet, model_name=args.model,
                      vae=vae, checkpoint_dir=Path(args.out) / IN_PROGRESS,
                      sampler_settings=common.sampler_settings(args),
                      likelihood=args.likelihood, likelihood_steps=args.likelihood_steps,
                      compile=args.compile)
    if not distributed.is_main():  # every process holds the report; one writes it
        return 0
    report.save(args.out)
    print(report.to_markdown())
    print(f"written to {Path(args.out) / 'evaluation.json'} and evaluation.md")
    if args.save_samples:
        print(f"samples written to {report.save_samples(Path(args.out) / 'samples.npz')}")
    common.note_unfinished_runs(Path(args.out) / IN_PROGRESS, "evaluation")
    return 0


def _compared_data(args: argparse.Namespace, model) -> Any:
    """``--data``, else what ``model`` (a model or an export) was compressed or trained on,
    read with the options it was read with then; else a bundled teacher's own dataset, or
    digits. ``--image-size``, ``--class-index`` and ``--split`` win over what was recorded. A
    class folder or a Hugging Face dataset on disk is opened, not read: only its reference
    images are read, when they are not cached."""
    from entpruner_sdk.data.bundled import BUNDLED
    from entpruner_sdk.data.datasets import open_data, recorded_data
    from entpruner_sdk.data.hugging_face import is_hub_name
    from entpruner_sdk.teachers import TEACHERS
    from entpruner_sdk.utils import distributed

    metadata = getattr(model, "metadata", {})
    # the latest step first: a compressed model's teacher may have been trained elsewhere
    made = None if args.data else next(
        ((how, found) for how, key in (("compressed", "compression"), ("trained", "training"))
         if (found := recorded_data(metadata.get(key))) is not None), None)
    if made is None:  # a bundled teacher is named for its data: dit-photos, photos
        own = args.model.split("-", 1)[1] if args.model in TEACHERS else "digits"
        source, options = args.data or own, {}
    else:
        how, (source, options) = made
    options.update({key: value for key in ("image_size", "class_index", "split")
                    if (value := getattr(args, key)) is not None})
    if made is not None:
        read_as = "".join(f", {key} {value}" for key, value in options.items())
        if source not in BUNDLED and not is_hub_name(source) and not Path(source).exists():
            raise FileNotFoundError(f"{args.model} was {how} on {source}{read_as}, which is "
                                    "not there any more: pass --data")
        if distributed.is_main():
            print(f"comparing with {source}{read_as}: the data {args.model} was {how} on "
                  "(--data compares with other data)")
    return open_data(source, **options)


def interrupted(args: argparse.Namespace) -> str:
    """The finished sample batches an interrupted evaluation left, which a rerun reuses."""
    folder = Path(args.out) / IN_PROGRESS
    done = len(list(folder.glob("*/batch_*.safetensors")))
    if done:
        return (f"{folder} holds {done} finished sample batches: run the same command to "
                "continue from them")
    return "no sample batch was finished yet, so running it again starts over"
