"""``entpruner encode``: images to VAE latents, the data of a latent model."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from entpruner_sdk.cli import common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``encode`` subcommand: the VAE, the images, the output and the readers."""
    p = common.command(
        sub, "encode", "Encode images to VAE latents: the data for a latent model "
        "(DiT-XL/2, SiT-XL/2) to train, compress and evaluate on. The latents done so "
        "far are kept in OUT.encoding/ (each minute): after Ctrl-C or a crash, the same "
        "command continues from there.", """\
        entpruner encode --vae ./sd-vae-ft-ema --data ./my_images --out my_latents.npz
        entpruner encode --vae ./sd-vae-ft-ema --data ./imagenet_subset --image-size 256 \\
            --class-index LOC_synset_mapping.txt --device cuda --batch-size 64 --workers 8 \\
            --out subset.npz       # n02099601/... folders under ImageNet's ids, streamed
        entpruner encode --vae ./sd-vae-ft-ema --data hf:ethz/food101 --image-size 256 \\
            --device cuda --out food101.npz   # a Hugging Face dataset, read row by row
        entpruner compress --model DiT-XL-2-256x256.pt --family dit --data my_latents.npz \\
            --budget 14 --out runs/xl-d14
        """)
    common.vae_option(p, "encodes the images", required=True)
    p.add_argument("--data", required=True,
                   help="bundled name, class folders, a .csv of image files and classes "
                        "(file_name,label), an .npz of images, or a Hugging Face dataset "
                        "(saved with save_to_disk, or hf:NAME[:CONFIG])")
    common.folder_options(p, " (256 for DiT-XL/2 and SiT-XL/2 at 256x256)")
    p.add_argument("--out", required=True,
                   help=".npz to write: latents, labels and class names")
    p.add_argument("--batch-size", type=int, default=32, help="images per VAE call")
    common.workers_option(p, ". Class folders and a Hugging Face dataset (saved, or hf:) are "
                          "read one batch at a time, so they need not fit in memory")
    common.run_options(p)


def run(args: argparse.Namespace) -> int:
    """Encode ``--data`` with ``--vae`` into the ``.npz`` ``--out``, continuing an interrupted
    encode; 0 on success."""
    from entpruner_sdk.data.datasets import save_npz
    from entpruner_sdk.data.latents import LatentSpace
    from entpruner_sdk.utils.files import check_output_path

    check_output_path(args.out, folder=False)  # not after an hour of encoding
    space = LatentSpace.from_pretrained(args.vae, device=args.device)
    data = common.read_data(args, stream=True)  # it may be larger than memory
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


def interrupted(args: argparse.Namespace) -> str:
    """The latents an interrupted encode saved, which a rerun continues from."""
    from safetensors import safe_open

    partials = _encode_work_dir(args.out).glob("*.partial.safetensors")
    for partial in sorted(partials, key=lambda path: path.stat().st_mtime, reverse=True):
        with safe_open(str(partial), "pt") as file:  # the newest: this data's
            if "keys" in file.keys():  # noqa: SIM118 (safe_open has no __contains__)
                done = int((file.get_tensor("keys") != 0).sum())
                which = f"{done} images' latents"
            else:
                done = file.get_slice("latents").get_shape()[0]
                which = f"the first {done} images' latents"
        return f"{partial.parent} holds {which}: run the same command to continue from there"
    return "no latents were saved yet, so running it again starts over"
