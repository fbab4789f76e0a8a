"""Encode memory: the peak resident memory of encoding a class folder to VAE latents when the
folder is read whole (``load_data``) and when it streams (``open_data``: an ``ImageFolder``,
as ``entpruner encode`` reads a folder), at two folder sizes, so the growth with the folder
shows; with ``--source hf``, the same photos as a Hugging Face dataset saved with
``save_to_disk`` (streamed: ``HuggingFaceImages``, its rows read one batch at a time).

    python benchmarks/encode_memory.py            # 400 and 800 photos cropped to 256x256
    python benchmarks/encode_memory.py --quick    # 100 and 200 photos cropped to 128x128
    python benchmarks/encode_memory.py --source hf    # the photos as a Hugging Face dataset

The photos are random JPEGs of mixed sizes (the Hugging Face dataset holds the same JPEG
bytes); the VAE is a random diffusers AutoencoderKL with
the Stable Diffusion VAE's 8x downsampling and few channels (its weights do not change what
is held in memory). Each measurement runs in a fresh process (its own peak, ``ru_maxrss``),
reader processes off, ``--repeats`` times (3; quick: 1), and the least peak is kept: the
allocator adds tens of MB at random, never less. Beside it, the peak of the process's own
(anonymous) memory, sampled every 5 ms (Linux): a Hugging Face dataset's Arrow files are
memory-mapped, and the pages read stay in the resident set as the system's file cache,
which it takes back when memory is short, so the resident peak grows by the bytes read.
Prints a table and writes benchmarks/results/encode_memory.json (``--source hf``:
encode_memory_hf.json).
Goal: the streamed peak (of its own memory, for a Hugging Face dataset) does not grow with
the images beyond their latents.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from entpruner_sdk.utils.files import atomic_write_text
from entpruner_sdk.utils.timing import machine

RESULTS = Path(__file__).parent / "results"
MODES = ("whole", "streamed")


def write_photos(folder: Path, count: int, classes: int = 4) -> None:
    """``count`` random JPEGs of mixed sizes (landscape and portrait), spread over classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / f"class{i % classes}").mkdir(parents=True, exist_ok=True)
        height, width = (300, 400) if i % 2 else (420, 320)
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"class{i % classes}" / f"{i}.jpg", quality=90)


def write_hugging_face(folder: Path, saved: Path) -> None:
    """The class folder's JPEGs (their bytes, not decoded) and labels as a Hugging Face
    dataset written with ``save_to_disk``."""
    import datasets

    files = sorted(folder.glob("*/*.jpg"))
    classes = sorted({file.parent.name for file in files})
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=classes)})
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(
        {"image": [{"bytes": file.read_bytes(), "path": None} for file in files],
         "label": [classes.index(file.parent.name) for file in files]},
        features=features).save_to_disk(str(saved))


def write_vae(folder: Path) -> None:
    """A random AutoencoderKL with 8x downsampling (4 latent channels), saved as a folder."""
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4)
    vae.save_pretrained(folder)


def measure(mode: str, source: Path, size: int, vae: Path) -> dict:
    """Encode in this process and return its peak memory (MB: resident, and its own) and
    time (s)."""
    from entpruner_sdk.data.datasets import load_data, open_data
    from entpruner_sdk.data.latents import LatentSpace

    space = LatentSpace.from_pretrained(vae)
    with AnonymousPeak() as anonymous:
        started = time.perf_counter()
        data = (open_data if mode == "streamed" else load_data)(source, image_size=size)
        latents = space.encode_dataset(data, batch_size=32, progress=False, workers=0)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {"peak_mb": round(peak, 1), "anonymous_peak_mb": anonymous.peak_mb,
            "seconds": round(seconds, 2),
            "latents_mb": round(latents.images.numel() * 4 / 2**20, 1)}


class AnonymousPeak:
    """The largest ``RssAnon`` (memory the process holds itself, not mapped files) seen while
    in the block, sampled every 5 ms by a thread; ``peak_mb`` stays None off Linux."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> AnonymousPeak:
        if Path("/proc/self/status").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    megabytes = round(int(line.split()[1]) / 1024, 1)  # reported in kB
                    self.peak_mb = max(self.peak_mb or 0.0, megabytes)


def child_json(script: str, *args: object, env: dict | None = None) -> dict:
    """``script --child args`` in a fresh process (its own peak memory): the JSON it prints
    last."""
    out = subprocess.run([sys.executable, script, "--child", *map(str, args)],
                         capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(mode: str, source: Path, size: int, vae: Path) -> dict:
    """``measure`` in a fresh process."""
    return child_json(__file__, mode, source, size, vae)


def keep_least_peak(row: dict, mode: str, run: dict) -> None:
    """``row[mode]``: the run of least peak memory so far (the allocator's noise only adds)."""
    if mode not in row or run["peak_mb"] < row[mode]["peak_mb"]:
        row[mode] = run


def peak_growth(rows: list[dict], modes: tuple[str, ...]) -> dict[str, float]:
    """Each mode's growth of the peak (MB) from the first row to the last."""
    return {mode: round(rows[-1][mode]["peak_mb"] - rows[0][mode]["peak_mb"], 1)
            for mode in modes}


def folder_parser(doc: str, counts: str, child: tuple[str, ...],
                  items: str = "photos") -> argparse.ArgumentParser:
    """The options of a memory benchmark over two counts of ``items`` (this one's folder
    sizes, evaluate's, sample's), and its hidden ``--child`` (one measurement in its own
    process, with ``child`` arguments)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"100 and 200 {items} at 128x128")
    parser.add_argument("--counts", default=None,
                        help=f"how many {items}, e.g. {counts} (the default)")
    parser.add_argument("--size", type=int, default=None, help="crop size (256; quick: 128)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (3; quick: 1)")
    parser.add_argument("--child", nargs=len(child), metavar=child, help=argparse.SUPPRESS)
    return parser


def folder_settings(args: argparse.Namespace, counts: str) -> tuple[list[int], int, int]:
    """(folder sizes, crop size, repeats) from ``add_folder_options``' options."""
    chosen = args.counts or ("100,200" if args.quick else counts)
    return ([int(c) for c in chosen.split(",")], args.size or (128 if args.quick else 256),
            args.repeats or (1 if args.quick else 3))


def main() -> None:
    parser = folder_parser(__doc__, "400,800", ("MODE", "SOURCE", "SIZE", "VAE"))
    parser.add_argument("--source", choices=("folder", "hf"), default="folder",
                        help="class folders (the default) or a Hugging Face dataset on disk")
    args = parser.parse_args()
    if args.child:
        mode, folder, size, vae = args.child
        print(json.dumps(measure(mode, Path(folder), int(size), Path(vae))))
        return
    counts, size, repeats = folder_settings(args, "400,800")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_vae(Path(tmp) / "vae")
        for count in counts:
            folder = source = Path(tmp) / f"photos{count}"
            write_photos(folder, count)
            if args.source == "hf":
                source = Path(tmp) / f"hf{count}"
                # in a process of its own: the children's peak starts at this one's
                # (Linux carries ru_maxrss over fork and exec), and the write holds every JPEG
                writer = multiprocessing.get_context("spawn").Process(
                    target=write_hugging_face, args=(folder, source))
                writer.start()
                writer.join()
            row = {"images": count, "size": size,
                   "pixels_mb": round(count * 3 * size * size / 2**20, 1)}  # 8-bit, as held
            for mode in MODES:
                runs = [child(mode, source, size, Path(tmp) / "vae") for _ in range(repeats)]
                row[mode] = min(runs, key=lambda run: run["peak_mb"])
            rows.append(row)
    print("| images | pixels, 8-bit (MB) | read whole: peak MB (own) | streamed: peak MB (own) "
          "| latents (MB) | streamed / whole (own) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        whole, streamed = row["whole"], row["streamed"]
        print(f"| {row['images']} at {size}x{size} | {row['pixels_mb']} | {_peaks(whole)} | "
              f"{_peaks(streamed)} | {streamed['latents_mb']} | "
              f"{streamed['peak_mb'] / whole['peak_mb']:.2f}"
              + (f" ({streamed['anonymous_peak_mb'] / whole['anonymous_peak_mb']:.2f})"
                 if whole["anonymous_peak_mb"] else "") + " |")
    first, last = rows[0], rows[-1]
    growth = peak_growth(rows, MODES)
    own = {mode: round(last[mode]["anonymous_peak_mb"] - first[mode]["anonymous_peak_mb"], 1)
           for mode in MODES} if first["whole"]["anonymous_peak_mb"] else None
    print(f"peak growth from {first['images']} to {last['images']} images: read whole "
          f"{growth['whole']:+.0f} MB, streamed {growth['streamed']:+.0f} MB"
          + (f"; own memory: read whole {own['whole']:+.0f} MB, streamed "
             f"{own['streamed']:+.0f} MB" if own else "") + " (latents "
          f"{last['streamed']['latents_mb'] - first['streamed']['latents_mb']:+.1f} MB)")
    write_results("encode_memory" + ("_hf" if args.source == "hf" else ""), args.quick,
                  source=args.source, repeats=repeats, rows=rows, growth_mb=growth,
                  own_growth_mb=own)


def _peaks(run: dict) -> str:
    """A run's resident peak, and its own memory's beside it where it was sampled."""
    own = run.get("anonymous_peak_mb")
    return f"{run['peak_mb']:.0f}" + (f" ({own:.0f})" if own else "")


def write_results(name: str, quick: bool, **results: object) -> None:
    """``results`` and the machine as benchmarks/results/NAME.json (NAME_quick.json)."""
    path = RESULTS / f"{name}{'_quick' if quick else ''}.json"
    atomic_write_text(path, json.dumps({"machine": machine(torch.device("cpu")), **results},
                                       indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
