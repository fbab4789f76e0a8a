r"""Does a comparison of methods by FD-domain depend on the classifier behind the features?

FD-domain is the Fréchet distance in the features of a small classifier trained on the
dataset. Its training is seeded but not reproducible across CPUs: other vector instructions
round differently and, on photos, end at other weights. This script scores the same pruned
models (kept by ``compress_quality.py --save-models DIR``) and their teacher with several
classifiers: the shipped one, the same training on other instruction sets of this CPU
(``ATEN_CPU_CAPABILITY``, in a subprocess), and other training seeds. For every classifier it
prints each method's mean FD-domain and its difference from a reference method, paired by
seed. Samples are drawn once per model (the benchmark's sampler, noise seed 1000 x seed), so
only the classifier changes between columns.

    python benchmarks/compress_quality.py --only photos:sit:6 --methods ced-adaptive,bi \
        --seeds 3 --steps 2400 --no-fid --tag long-feature --save-models runs/models
    python benchmarks/classifier_sensitivity.py --models runs/models --setting photos:sit:6

Results: benchmarks/results/classifier_sensitivity.json and .md (4 minutes on 2 cores for
two methods, three seeds and five classifiers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import fmean

from safetensors.torch import load_file

from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation.classifier import (
    DomainClassifier,
    domain_classifier,
    train_classifier,
)
from entpruner_sdk.evaluation.features import DomainFeatures
from entpruner_sdk.evaluation.generation import balanced_labels, generate
from entpruner_sdk.evaluation.metrics import FeatureStats, frechet_distance
from entpruner_sdk.models.io import load
from entpruner_sdk.teachers import SAMPLING, load_teacher
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"
TRAIN_ELSEWHERE = """
import sys
from safetensors.torch import save_file
from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation.classifier import train_classifier
save_file(train_classifier(load_data(sys.argv[1])).state_dict(), sys.argv[2])
"""


def trained_on(capability: str, dataset: str) -> DomainClassifier:
    """The shipped classifier's training (same seed) run with ATen's ``capability`` kernels."""
    data = load_data(dataset)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "classifier.safetensors"
        subprocess.run([sys.executable, "-c", TRAIN_ELSEWHERE, dataset, str(weights)],
                       env={**os.environ, "ATEN_CPU_CAPABILITY": capability}, check=True)
        model = DomainClassifier(data.channels, data.num_classes)
        model.load_state_dict(load_file(str(weights)))
    return model.eval()


def classifiers(dataset: str, capabilities: list[str], seeds: list[int]) -> dict:
    data = load_data(dataset)
    found = {"shipped": domain_classifier(data)}
    found.update({f"trained with {c}": trained_on(c, dataset) for c in capabilities})
    found.update({f"training seed {s}": train_classifier(data, seed=s).eval() for s in seeds})
    return found


def saved_models(models: Path, setting: str) -> dict[str, dict[int, Path]]:
    """method -> seed -> model folder, from compress_quality's ``--save-models`` names."""
    dataset, family, keep = setting.split(":")
    prefix = f"{dataset}-{family}-k{keep}-"
    found: dict[str, dict[int, Path]] = {}
    for folder in sorted(models.glob(prefix + "*")):
        method, seed = folder.name[len(prefix):].rsplit("-s", 1)
        found.setdefault(method, {})[int(seed)] = folder / "model"
    if not found:
        raise SystemExit(f"no saved models for {setting} in {models}; make them with "
                         "compress_quality.py --save-models")
    return found


def score(setting: str, models: dict, networks: dict, samples: int) -> list[dict]:
    """FD-domain of every model (and the teacher, once per seed) under every classifier."""
    dataset, family, _ = setting.split(":")
    data = load_data(dataset)
    extractors = {name: DomainFeatures(network) for name, network in networks.items()}
    reference = {name: FeatureStats.of(extract(data.images))
                 for name, extract in extractors.items()}
    labels = balanced_labels(samples, data.classes_present)
    seeds = sorted({seed for by_seed in models.values() for seed in by_seed})
    runs = [("teacher", seed, None) for seed in seeds]
    runs += [(method, seed, path) for method, by_seed in models.items()
             for seed, path in by_seed.items()]
    rows = []
    for method, seed, path in runs:
        model = (load(path) if path else load_teacher(f"{family}-{dataset}")).eval()
        images = generate(model, labels, seed=1000 * seed, batch_size=250, progress=False,
                          **SAMPLING[family])
        for name, extract in extractors.items():
            rows.append(dict(setting=setting, method=method, seed=seed, classifier=name,
                             network=extract.fingerprint, fd_domain=frechet_distance(
                                 FeatureStats.of(extract(images)), reference[name])))
        print(method, seed, {r["classifier"]: round(r["fd_domain"], 4) for r in rows[-len(
            extractors):]}, flush=True)
    return rows


def table(rows: list[dict], reference: str) -> str:
    """Per classifier: mean FD-domain of every method, and each method against ``reference``
    paired by seed (negative: the method is better)."""
    fd = {(r["classifier"], r["method"], r["seed"]): r["fd_domain"] for r in rows}
    names = list(dict.fromkeys(r["classifier"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    others = [m for m in methods if m not in ("teacher", reference)]
    seeds = sorted({r["seed"] for r in rows})
    header = ["classifier", "network", *methods, *(f"{m} vs {reference}, paired" for m in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        network = next(r["network"] for r in rows if r["classifier"] == name)
        means = [f"{fmean(fd[(name, m, s)] for s in seeds):.3f}" for m in methods]
        paired = []
        for method in others:
            diffs = [100 * (fd[(name, method, s)] / fd[(name, reference, s)] - 1) for s in seeds]
            better = sum(d > 0 for d in diffs)
            paired.append(f"{fmean(diffs):+.1f}% ({min(diffs):+.1f} to {max(diffs):+.1f}), "
                          f"{reference} better on {better} of {len(seeds)}")
        lines.append("| " + " | ".join([name, network, *means, *paired]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True,
                        help="the folder compress_quality.py --save-models wrote")
    parser.add_argument("--setting", default="photos:sit:6",
                        help="dataset:family:keep of the saved models (default: photos:sit:6)")
    parser.add_argument("--reference", default="ced-adaptive",
                        help="the method the others are paired against (default: ced-adaptive)")
    parser.add_argument("--capabilities", default="avx2,default",
                        help="ATen instruction sets to retrain the classifier with, comma-"
                             "separated (default: avx2,default)")
    parser.add_argument("--training-seeds", default="1,2",
                        help="other classifier training seeds, comma-separated (default: 1,2)")
    parser.add_argument("--samples", type=int, default=500,
                        help="samples per model, as the quality benchmark (default: 500)")
    parser.add_argument("--tag", help="results go to classifier_sensitivity_TAG.json / .md")
    args = parser.parse_args(argv)
    models = saved_models(args.models, args.setting)
    networks = classifiers(args.setting.split(":")[0],
                           [c for c in args.capabilities.split(",") if c],
                           [int(s) for s in args.training_seeds.split(",") if s])
    rows = score(args.setting, models, networks, args.samples)
    text = (f"FD-domain of the same samples under several domain classifiers ({args.setting}, "
            f"{args.samples} samples per model, mean over seeds; network: the hash of the "
            f"classifier's weights, shipped = {network_fingerprint(networks['shipped'])}).\n\n"
            + table(rows, args.reference))
    suffix = f"_{args.tag}" if args.tag else ""
    atomic_write_text(RESULTS / f"classifier_sensitivity{suffix}.json",
                      json.dumps(rows, indent=1) + "\n")
    atomic_write_text(RESULTS / f"classifier_sensitivity{suffix}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
