"""What several commands share: their common options, the help layout with examples, and
reading ``--data`` as the options say."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from entpruner_sdk.utils.device import AUTOCAST_MODES

# where the shared options go: a command's parser or one of its argument groups
Options = argparse._ActionsContainer

if TYPE_CHECKING:  # the command modules import the layers lazily
    from entpruner_sdk.data import ImageDataset
    from entpruner_sdk.data.streamed import StreamedImages
    from entpruner_sdk.models import DiffusionTransformer, TransformerConfig
    from entpruner_sdk.sampling import RuntimeDenoiser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples printed as written; every option's help ends with its default, unless the
    text already states it or there is none to state (a flag, or a value left unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or "default" in text
                or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def command(sub: argparse._SubParsersAction, name: str, help_text: str, examples: str
            ) -> argparse.ArgumentParser:
    """A command's parser, its description followed by its examples."""
    return sub.add_parser(name, help=help_text, description=help_text,
                          formatter_class=HelpFormatter,
                          epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples), "  "))


def run_options(p: Options, precision: bool = True) -> None:
    """--device and --quiet, which every command that computes takes, and --mixed-precision
    where PyTorch models compute under the policy (not export, which checks in fp32)."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if precision:
        p.add_argument("--mixed-precision", choices=AUTOCAST_MODES,
                       help="how PyTorch models compute: auto (bf16 autocast on a CUDA GPU "
                            "that has bf16, fp32 elsewhere), bf16, fp16 (loss-scaled "
                            "training; GPUs without bf16) or off (fp32); default: "
                            "$ENTPRUNER_AUTOCAST, else auto")


def distributed_option(p: Options, does: str) -> None:
    """--distributed: run ``does`` over torchrun's processes."""
    p.add_argument("--distributed", action="store_true",
                   help=f"{does} over the processes torchrun started (automatic when torchrun "
                        "sets WORLD_SIZE > 1)")


def join_processes(args: argparse.Namespace) -> str | torch.device:
    """This process's device: under torchrun (or --distributed) it joins the process group
    and takes its rank's device (``cuda:LOCAL_RANK`` on GPUs); else --device as given."""
    from entpruner_sdk.utils import distributed

    if not (args.distributed or distributed.launched_by_torchrun()):
        return args.device
    return distributed.init_from_env(None if args.device == "auto"
                                     else torch.device(args.device))


def resume_options(p: Options) -> None:
    """--resume and --no-keep-checkpoint: what OUT/checkpoint is for, and whether it stays."""
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint, with the model, data and settings it "
                        "was made with (a difference is refused and named); without it, a run "
                        "whose OUT holds a checkpoint is refused rather than replacing it")
    p.add_argument("--keep-checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="keep OUT/checkpoint once the run has saved its result (default), so "
                        "--resume can remake it; --no-keep-checkpoint deletes it (several "
                        "times the model's size)")


def memory_options(p: Options) -> None:
    """--gradient-accumulation and --gradient-checkpointing: a step that fits in less memory
    and computes the same (up to float rounding)."""
    p.add_argument("--gradient-accumulation", type=int, default=1, metavar="N",
                   help="run each step's batch as N equal micro-batches and add their "
                        "gradients: the same step, 1/N of the activation memory (on a GPU, "
                        "small micro-batches are slow: try --gradient-checkpointing first)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="hold only each block's input and recompute the block in backward: "
                        "far less activation memory for about one more forward pass")


def sampler_options(p: Options) -> None:
    """--sampler, --steps and --cfg, the same for every command that samples; left out, the
    family's defaults, as the server, the demo and the compress report sample."""
    p.add_argument("--sampler",
                   help="ddpm, ddim or dpm-solver++ for DiT (default ddim; dpm-solver++, "
                        "second order, matches ddim's accuracy in about half the steps); "
                        "euler, heun, euler-maruyama, heun-sde or dopri5 for SiT (default "
                        "heun; euler-maruyama and heun-sde are the SiT reference's SDE "
                        "samplers, at least 2 steps; dopri5, its adaptive ODE solver, picks "
                        "its own steps)")
    p.add_argument("--steps", type=int,
                   help="sampling steps (default 50 for DiT, 25 for SiT; dopri5: the most it "
                        "may take)")
    p.add_argument("--cfg", type=float,
                   help="classifier-free guidance scale, >= 0 (default 2; 1 = unguided, 0 = "
                        "the unconditional model)")
    # the SiT reference's sample.py flags, under its names and defaults
    p.add_argument("--atol", type=float, help="dopri5's absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=float, help="dopri5's relative tolerance (default 1e-3)")
    p.add_argument("--diffusion-form", metavar="FORM",
                   help="the SDE samplers' diffusion w(t): constant, SBDM, sigma, linear, "
                        "decreasing or increasing-decreasing (default sigma, w = norm * "
                        "sigma_t)")
    p.add_argument("--diffusion-norm", type=float,
                   help="the SDE samplers' diffusion scale (default 1; 0 is the ODE)")
    p.add_argument("--last-step", metavar="STEP",
                   help="the SDE samplers' last, noiseless step: Mean (of the SDE's drift), "
                        "Euler (of the ODE's), Tweedie (the denoised estimate) or None "
                        "(default Mean)")
    p.add_argument("--last-step-size", type=float,
                   help="the length of the SDE samplers' last step (default 0.04)")


def sampler_settings(args: argparse.Namespace) -> dict[str, float | str]:
    """The SiT sampler settings given on the command line, as the objective takes them
    (each flag is its setting's name: --diffusion-norm, diffusion_norm)."""
    from entpruner_sdk.objectives import FlowMatching

    return {name: getattr(args, name) for name in FlowMatching.sampler_setting_samplers
            if getattr(args, name) is not None}


def provider_option(p: Options) -> None:
    """``--provider``: what runs an ONNX export's graphs."""
    p.add_argument("--provider", default="cpu",
                   help="ONNX Runtime provider for an ONNX export: cpu, cuda or tensorrt")


def open_export(path: str, provider: str) -> RuntimeDenoiser | None:
    """An export directory opened with its runtime, or None for anything else."""
    from entpruner_sdk.export import is_export_dir, load_exported

    return load_exported(path, provider=provider) if is_export_dir(path) else None


def released_options(p: Options) -> None:
    """--family and --num-heads: what a released weights file does not record."""
    p.add_argument("--family", choices=["dit", "sit"],
                   help="required for a released weights file, whose keys are the same for "
                        "both (the release's own name, DiT-XL-2-256x256.pt, and a train.py "
                        "checkpoint's args say it)")
    heads_option(p)
    p.add_argument("--flow-path", choices=["linear", "gvp"],
                   help="the path a released SiT file was trained on (default: linear, as "
                        "the released SiT-XL/2; a train.py checkpoint's args name it)")


def released_model(args: argparse.Namespace, spec: str | None = None,
                   device: str | torch.device = "cpu") -> DiffusionTransformer:
    """``spec`` (default ``--model``) read with the ``released_options``."""
    from entpruner_sdk.teachers import resolve_model

    return resolve_model(spec or args.model, args.family, device=device,
                         num_heads=args.num_heads, flow_path=args.flow_path)


def heads_option(p: Options) -> None:
    """--num-heads, for a released checkpoint of a width the published table lacks."""
    p.add_argument("--num-heads", type=int,
                   help="attention heads of a released checkpoint whose width is not a "
                        "published size (weights do not record it; default: the published "
                        "table, else 64 channels per head)")


def vae_option(p: Options, does: str = "decodes a latent model's samples to images",
               required: bool = False) -> None:
    """--vae DIR: the diffusers VAE folder of a latent model; the help says what it ``does``."""
    p.add_argument("--vae", metavar="DIR", required=required,
                   help="local diffusers AutoencoderKL folder (sd-vae-ft-ema for DiT-XL/2 and "
                        "SiT-XL/2), or its Hub name when the Hugging Face cache holds it "
                        f"(stabilityai/sd-vae-ft-ema): it {does}")


def recorded_vae_of(model: Any, device: str | torch.device | None) -> Any:
    """The VAE ``model``'s data was encoded with, as its training or compression recorded it
    (``latents.recorded_vae``), opened on ``device`` and said when it is used; None for a
    model of images, or when nothing (or no folder still there) was recorded."""
    from entpruner_sdk.data.latents import is_latent, open_recorded_vae, recorded_vae
    from entpruner_sdk.utils import distributed

    record = recorded_vae(getattr(model, "metadata", None)) if is_latent(model.config) else None
    if record is None:
        return None
    if distributed.is_main():
        whose = ("its diffusers pipeline's VAE" if record is model.metadata.get(
            "pipeline", {}).get("vae") else "the VAE its data was encoded with")
        print(f"decoding with {record['path']}, {whose} (--vae: another)")
    return open_recorded_vae(record, device)


def workers_option(p: Options, note: str = "") -> None:
    """--workers: the reader processes that read and crop the images."""
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes that read and crop the images while the VAE encodes "
                        "(default: %(default)s; 0 reads them in this process)" + note)


def folder_options(p: Options, note: str = "") -> None:
    """--image-size, --class-index and --split: how a class folder or a dataset is read."""
    p.add_argument("--image-size", type=int, metavar="N",
                   help="scale the images of class folders and tables so the short side "
                        "is N and cut the centred N x N square, as DiT's and SiT's training "
                        "code does" + note
                        + "; the size of the bundled photos")
    p.add_argument("--class-index", metavar="FILE",
                   help="the model's classes in order, when the class folders (or a table's "
                        "classes) are some of them (ImageNet's LOC_synset_mapping.txt, "
                        "'n01440764 tench, ...' per line, or imagenet_class_index.json): each "
                        "folder is labelled by its line")
    p.add_argument("--split", metavar="NAME",
                   help="the split of a bundled dataset (train or test), of a folder of "
                        "splits (train/, val/, test/, each of class folders) or of a Hugging "
                        "Face dataset (default train)")


def hflip_option(p: Options) -> None:
    """--hflip: mirror training images at random, as DiT's and SiT's training does."""
    p.add_argument("--hflip", action="store_true",
                   help="mirror each training image left-right with probability 1/2, as DiT's "
                        "and SiT's training does: for photos and their latents, not for "
                        "digits or text")


def classes_options(p: Options, note: str = "") -> None:
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


def read_data(args: argparse.Namespace, stream: bool = False
              ) -> ImageDataset | StreamedImages:
    """The --data of a command, read with --image-size, --class-index and --split;
    ``stream``: a folder or a Hugging Face dataset on disk opened (``open_data``), its
    images read when they are used."""
    from entpruner_sdk.data.datasets import load_data, open_data

    return (open_data if stream else load_data)(args.data, image_size=args.image_size,
                                                class_index=args.class_index,
                                                split=args.split or "train")


def training_data(args: argparse.Namespace, latent: bool,
                  config: TransformerConfig | None = None,
                  device: str | torch.device | None = None,
                  model: Any = None) -> ImageDataset:
    """The --data of train or compress; with --vae, images for a latent model are encoded
    first, a folder streamed, into the entpruner cache (by content and VAE: a second run or
    --resume reads the latents back, and an interrupted encode continues). ``config``: the
    model's, when it is known already, checked against the VAE and the images first.
    ``model``: the latent model to train, whose recorded VAE (its data's, or its diffusers
    pipeline's: ``latents.recorded_vae``) encodes images when no --vae is given."""
    from entpruner_sdk.data.latents import is_latent, open_recorded_vae, recorded_vae

    record = (recorded_vae(model.metadata) if model is not None and args.vae is None
              and is_latent(model.config) else None)
    if not ((args.vae or record) and latent):
        return read_data(args)
    from entpruner_sdk.data.latents import to_latents
    from entpruner_sdk.utils import distributed
    from entpruner_sdk.utils.cache import cache_root

    def encoded() -> ImageDataset:
        data = read_data(args, stream=True)
        vae = args.vae
        if record is not None and data.pixels:  # only images need it opened
            if distributed.is_main():
                print(f"encoding with {record['path']}, the VAE the model decodes with "
                      "(--vae: another)")
            vae = open_recorded_vae(record, device or args.device)
        return to_latents(data, vae, cache_root() / "latents", config=config,
                          device=device or args.device, workers=args.workers,
                          progress=not args.quiet and distributed.is_main())

    # under torchrun rank 0 encodes while the others wait, then they read its cache
    return distributed.main_first(encoded)


def resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted train or compress left in OUT/checkpoint, for ``--resume``."""
    from entpruner_sdk.utils.checkpoint import saved_step

    checkpoint = Path(args.out) / "checkpoint"
    step = saved_step(checkpoint)
    if step is None or step < 0:
        return "no checkpoint was written yet, so running it again starts over"
    return (f"{checkpoint} holds step {step}: run the same command with --resume to "
            "continue from there")


def note_unfinished_runs(folder: Path, run: str) -> None:
    """Say on stderr what runs of another model or settings that did not finish (of a
    ``run``: "evaluation", "sample --npz") left in ``folder``, the finished run's own batches
    being gone: kept for a rerun of those, and taking room until then, which a
    50,000-sample FID run makes gigabytes. Folders a running process holds are its work in
    progress, not left behind."""
    from entpruner_sdk.evaluation.batches import SampleBatches
    from entpruner_sdk.utils.files import tree_bytes

    others = ([p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
              if folder.is_dir() else [])
    unfinished = [p for p in others if not SampleBatches.in_use(p)]
    if unfinished:
        size = human_size(sum(tree_bytes(p) for p in unfinished))
        print(f"note: {folder} still holds the sample batches of {len(unfinished)} {run}(s) "
              f"that did not finish, with other models or settings ({size}): the command "
              "that started one continues from them; delete the folder if none will run "
              "again", file=sys.stderr)


def human_size(count: int) -> str:
    """Bytes in the largest unit that keeps the number at least 1 (decimal units, as du -h
    --si and file managers show)."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
