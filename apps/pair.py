"""The two models a demo compares, their compression report, and side-by-side sampling.

All PyTorch work runs on one dedicated thread (``ModelThread``): UI frameworks call handlers
from a pool of threads, and on CPU two OpenMP thread teams make every call several times
slower.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.compress import as_compressed
from entpruner_sdk.compress.report import read_report
from entpruner_sdk.data.classes import offered_classes
from entpruner_sdk.data.latents import (
    LatentSpace,
    decoder_for,
    open_recorded_vae,
    recorded_vae,
    trained_vae,
)
from entpruner_sdk.evaluation.evaluate import differences_but_depth
from entpruner_sdk.evaluation.generation import warm_up_for_batches
from entpruner_sdk.models import DiffusionTransformer, count_parameters, forward_flops
from entpruner_sdk.objectives import Objective
from entpruner_sdk.sampling import objective_of, sample
from entpruner_sdk.teachers import SAMPLING, resolve_model
from entpruner_sdk.training import model_identity
from entpruner_sdk.utils.device import resolve_device
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.timing import CallCounter

DEFAULT_ORIGINAL = "dit-digits"
DEFAULT_PRUNED = "runs/quickstart/dit-digits-pruned"
DEFAULT_COUNT = 4  # images a side the Generate tab starts at
MAKE_PRUNED = ("python -m entpruner_sdk quickstart   # about 3 minutes on 2 CPU cores; "
               "writes runs/quickstart/dit-digits-pruned")


class Stopped(Exception):
    """Sampling stopped from the page before it finished."""


class StoppableCounter(CallCounter):
    """Counts model calls and stops the sampler at the next call once ``stop`` is set: a
    page's Stop ends a slow request (250 steps of 16 images on a CPU, say) without waiting for
    it, and frees the one model thread for the next."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop

    def count_call(self) -> None:
        """Count the call, or raise :class:`Stopped` when the page asked to stop."""
        if self.stop.is_set():
            raise Stopped(f"stopped after {self.calls} model calls")
        super().count_call()


class ModelThread:
    """A single worker thread for every model call of the process."""

    _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="entpruner-demo-model")

    @classmethod
    def run(cls, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the model thread; its result (or its exception)."""
        return cls._executor.submit(fn, *args, **kwargs).result()


@dataclass
class SideResult:
    """One side of a comparison: its images, the seconds they took and the model calls."""

    images: torch.Tensor
    seconds: float
    model_calls: int  # the sampler's denoiser calls: an adaptive one picks its own
    sampled_first: bool = False  # of the two sides of one comparison

    @property
    def images_per_second(self) -> float:
        """Throughput of this side."""
        return len(self.images) / self.seconds


@dataclass
class ModelPair:
    """Original and pruned model (either may be missing), with readable load errors."""

    original: DiffusionTransformer | None = None
    pruned: DiffusionTransformer | None = None
    report: dict[str, Any] | None = None
    report_dir: Path | None = None
    errors: list[str] = field(default_factory=list)
    original_source: str | None = None  # the original's name or path, as it was loaded
    pruned_source: str | None = None  # the pruned model's folder or path, as it was given
    runtimes: dict[str, Any] = field(default_factory=dict)  # ONNX Runtime, when exported
    decoder: LatentSpace | None = None  # the VAE of latent models: both sides decode with it
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # PyTorch's side
    # the shapes both sides have sampled since loading: (images, guided, backend)
    warmed: set[tuple[int, bool, str]] = field(default_factory=set)
    comparisons: int = 0  # generate_pair's, which alternate the side that samples first

    @property
    def ready(self) -> bool:
        """Whether both models are loaded."""
        return self.original is not None and self.pruned is not None

    @property
    def family(self) -> str:
        """The pair's family (``"dit"`` until a model is loaded)."""
        model = self.original or self.pruned
        return model.config.family if model is not None else "dit"

    @property
    def num_classes(self) -> int:
        """The classes the pair samples (0 until a model is loaded)."""
        model = self.original or self.pruned
        return model.config.num_classes if model is not None else 0

    @property
    def classes(self) -> list[int]:
        """The classes offered: those the pruned model was fine-tuned on when they were a
        subset of its own (an ImageNet subset), else all of them."""
        provenance = self.pruned.provenance if self.pruned is not None else {}
        return offered_classes(provenance, self.num_classes)

    @property
    def class_choices(self) -> list[tuple[str, int]]:
        """(shown text, class id) for each class offered: "1 coffee" for named classes."""
        names = next((m.provenance["class_names"] for m in (self.pruned, self.original)
                      if m is not None and "class_names" in m.provenance), None)
        return [(f"{c} {names[c]}" if names else str(c), c) for c in self.classes]


def load_pair(original: str | None = None, pruned: str = DEFAULT_PRUNED,
              onnx: bool = False, vae: LatentSpace | str | None = None,
              family: str | None = None, device: str | torch.device | None = None
              ) -> ModelPair:
    """Open both models; problems become messages in ``errors`` instead of exceptions.
    ``original``: a teacher name or path; by default the model the pruned one was compressed
    from, as it records (``DEFAULT_ORIGINAL`` for one that does not). An original given that
    is not the recorded one is noted among ``errors``.
    ``vae``: the VAE (or its folder) that decodes latent models' samples to images.
    ``family``: "dit" or "sit" for a released original checkpoint, whose keys do not say
    (by default the pruned model's family). ``device``: where PyTorch samples, decodes and
    evaluates (None or "auto": CUDA when present, with bf16 autocast, else the CPU)."""
    return ModelThread.run(_load_pair, original, pruned, onnx, vae, family, device)


PairKey = tuple[str, str]  # (original as given, "" for the recorded one; pruned)


class PairShelf:
    """The pairs a demo has loaded, shared by its viewers and keyed by what each was loaded
    from. Each viewer's page holds its own key, so one viewer's Load never changes the models
    behind another viewer's page. Beyond ``capacity`` pairs the least recently used one is
    dropped (a pair of XL/2 models holds GBs of weights) and loaded again when a page that
    still shows it asks for it."""

    def __init__(self, load: Callable[[str | None, str], ModelPair], capacity: int = 2):
        if capacity < 1:
            raise ValueError(f"a demo keeps at least one pair loaded, not {capacity}")
        self._load, self._capacity = load, capacity
        self._pairs: OrderedDict[PairKey, ModelPair] = OrderedDict()
        self._lock = threading.Lock()  # the UI framework calls from a pool of threads

    @staticmethod
    def key(original: str | None, pruned: str) -> PairKey:
        """The key of the pair loaded from ``original`` (None or "": the recorded one) and
        ``pruned``."""
        return (str(original or ""), str(pruned))

    def get(self, key: PairKey, reload: bool = False) -> ModelPair:
        """The pair under ``key``, loaded when it is not kept (or, with ``reload``, in any
        case: a model compressed again into the same folder is read afresh)."""
        with self._lock:
            pair = None if reload else self._pairs.get(key)
            if pair is None:
                pair = self._load(key[0] or None, key[1])
            self._pairs[key] = pair
            self._pairs.move_to_end(key)
            while len(self._pairs) > self._capacity:
                self._pairs.popitem(last=False)
            return pair

    def __len__(self) -> int:
        return len(self._pairs)


def _load_pair(original: str | None, pruned: str, onnx: bool,
               vae: LatentSpace | str | None = None, family: str | None = None,
               device: str | torch.device | None = None) -> ModelPair:
    pair = ModelPair(device=resolve_device(device), pruned_source=str(pruned))
    model_path, report_dir = _pruned_paths(pruned)
    pruned_error = None
    if model_path is None:
        pruned_error = (f"No pruned model at {pruned!r}. Make one with `{MAKE_PRUNED}`, or "
                        "pass --pruned DIR (a `compress` output folder or a model folder).")
    else:
        try:
            pair.pruned = resolve_model(str(model_path)).eval()
        except Exception as error:  # any load failure is shown to the user, not raised
            pruned_error = f"Pruned model {pruned!r} could not be loaded: {error}"
    # a released original records neither its family, its head count nor a SiT's flow path;
    # the pruned model made from it records all three
    made_from = pair.pruned.config if pair.pruned is not None else None
    family = family or (made_from.family if made_from else None)
    heads = made_from.num_heads if made_from else None
    flow_path = (pair.pruned.objective.get("path", "linear")
            if made_from and made_from.family == family == "sit" else None)
    recorded = _recorded_original(pair.pruned)
    chosen = original or recorded.get("source") or DEFAULT_ORIGINAL
    pair.original_source = chosen
    try:
        pair.original = resolve_model(chosen, family, num_heads=heads,
                                      flow_path=flow_path).eval()
    except Exception as error:
        told = "" if original else " (the model the pruned one records as its original)"
        pair.errors.append(f"Original model {chosen!r}{told} could not be loaded: {error}")
    if original and pair.original is not None and recorded.get("model") not in (
            None, model_identity(pair.original)):
        pair.errors.append(
            f"Original model {original!r} is not the one the pruned model was compressed "
            f"from ({recorded.get('source') or 'a model made in memory'}: "
            f"{recorded['model']}); the comparison is with other weights.")
    if pruned_error:
        pair.errors.append(pruned_error)
    if report_dir is not None:
        pair.report_dir = report_dir
        pair.report = read_report(report_dir)
    if pair.ready:
        # a run with num_classes= resized its teacher's label embedder: compare with that
        pair.original = as_compressed(pair.original, pair.pruned)
        differ = differences_but_depth(pair.original, pair.pruned)
        if differ:
            pair.errors.append(f"The models do not match (original vs pruned: "
                               f"{', '.join(differ)}). Pick the original the pruned model "
                               "came from.")
            pair.pruned = None
    if pair.ready:
        try:
            if vae is None:  # the VAE the pruned model's data was encoded with, if recorded
                record = recorded_vae(pair.pruned.metadata) or recorded_vae(
                    pair.original.metadata)
                vae = open_recorded_vae(record, pair.device) if record is not None else None
            pair.decoder = decoder_for(pair.original.config, vae, pair.device,
                                       trained_with=trained_vae(pair.original.provenance))
        except Exception as error:
            pair.errors.append(f"The models cannot be shown: {error}")
            pair.pruned = None
    if pair.ready:  # the page's first Generate, at its defaults, times no first call
        warm_up_sides(pair, DEFAULT_COUNT, SAMPLING[pair.family]["cfg_scale"])
        if onnx:
            pair.runtimes = _onnx_runtimes(pair, chosen, model_path)
    return pair


def _recorded_original(pruned: DiffusionTransformer | None) -> dict[str, Any]:
    """What compress recorded of a pruned model's original (its source and weights), empty
    for a model made before it did so, or not by compress."""
    if pruned is None:
        return {}
    return pruned.provenance.get("compression", {}).get("original") or {}


def _pruned_paths(spec: str) -> tuple[Path | None, Path | None]:
    """(model path, report folder) for a compress output folder, its model/ folder, or any
    model the loader understands."""
    path = Path(spec)
    if (path / "model" / "config.json").is_file():
        return path / "model", path if (path / "report.json").is_file() else None
    if (path / "config.json").is_file():
        parent = path.parent
        return path, parent if (parent / "report.json").is_file() else None
    if path.exists():
        return path, None
    return None, None


def warm_up_sides(pair: ModelPair, count: int, cfg_scale: float, sampler: str | None = None,
                  backend: str = "PyTorch") -> None:
    """Sample ``count`` images from both sides once, for two steps, and decode them, unless
    they have sampled that shape since loading: the timed sampling then pays no first call of
    a shape (on a GPU, the memory a larger batch first takes), which would otherwise fall on
    the original, sampled first, and flatter the speedup. A guided call (``cfg_scale`` other
    than 1) holds two rows an image, so it is a shape of its own."""
    key = (count, cfg_scale != 1.0, backend)
    if key in pair.warmed:
        return
    labels = torch.zeros(count, dtype=torch.long)
    for side, model in (("original", pair.original), ("pruned", pair.pruned)):
        runtime = pair.runtimes.get(side) if backend == "ONNX Runtime" else None
        warm_up_for_batches(runtime or model, labels, batch_size=count, sampler=sampler,
                            cfg_scale=cfg_scale, device=pair.device)
        decoder = (runtime.decoder if runtime is not None else None) or pair.decoder
        if decoder is not None:
            c, size = model.config.in_channels, model.config.input_size
            decoder.decode(torch.zeros(count, c, size, size))
    pair.warmed.add(key)


def _onnx_runtimes(pair: ModelPair, original: str, pruned_path: Path) -> dict[str, Any]:
    """ONNX Runtime sessions for both models, exported once into the entpruner cache. A
    latent model's VAE decoder is exported with the original, and both sides decode with that
    one ONNX decoder, so the ONNX side runs the whole deployed pipeline in ONNX Runtime, not a
    PyTorch decoder behind an ONNX denoiser (and the decoder is exported and checked once)."""
    from entpruner_sdk.utils.cache import cache_root

    runtimes = {}
    for side, model, source in (("original", pair.original, original),
                                ("pruned", pair.pruned, str(pruned_path))):
        vae = pair.decoder if side == "original" else None
        # keyed by the weights, not the path: a model retrained in place, or a bundled
        # teacher after an upgrade, is exported again, and a copy elsewhere is not
        with_vae = vae.fingerprint if vae is not None else ""
        key = hashlib.sha256(f"{network_fingerprint(model)}:{with_vae}".encode()).hexdigest()
        target = cache_root() / "exports" / f"{Path(source).name}-{key[:16]}-onnx"
        try:
            runtimes[side] = _open_kept_export(model, target, vae)
        except Exception as error:
            pair.errors.append(f"ONNX Runtime is unavailable for the {side} model: {error}")
            return {}
    runtimes["pruned"].decoder = runtimes["original"].decoder
    return runtimes


def _open_kept_export(model: DiffusionTransformer, target: Path, vae: Any) -> Any:
    """The demo's export of ``model`` at ``target`` in ONNX Runtime, exported when missing.
    A kept export that no longer opens (a file the disk damaged since) is exported again,
    as the cache's other work is made again, rather than disable the ONNX side for good."""
    from entpruner_sdk.export import export, is_export_dir, load_exported
    from entpruner_sdk.utils.cache import UNREADABLE

    threads = torch.get_num_threads()
    if is_export_dir(target):
        try:
            return load_exported(target, threads=threads)
        except UNREADABLE:
            pass
    export(model, target, "onnx", overwrite=True, vae=vae)
    return load_exported(target, threads=threads)


def generate_pair(pair: ModelPair, label: int, seed: int, count: int, sampler: str,
                  steps: int, cfg_scale: float, backend: str = "PyTorch",
                  sampler_settings: dict[str, Any] | None = None,
                  stop: threading.Event | None = None) -> tuple[SideResult, SideResult]:
    """Sample ``count`` images of ``label`` from both models with the same seed (so the same
    starting noise), timing each side. ``sampler_settings``: a SiT sampler's settings
    (:func:`governed_settings` keeps those the sampler uses), the same for both sides.
    ``stop``: once set, the sampling raises :class:`Stopped` at its next model call."""
    if not pair.ready:
        raise ValueError("load an original and a pruned model first")
    if not 0 <= label < pair.num_classes:
        raise ValueError(f"unknown class label {label}: these models have classes "
                         f"0..{pair.num_classes - 1}")
    if backend == "ONNX Runtime" and not pair.runtimes:
        raise ValueError("no ONNX export is loaded; start the demo with --onnx")
    labels = [int(label)] * int(count)

    def side(name: str, model: DiffusionTransformer, first: bool) -> SideResult:
        start = time.perf_counter()
        counter = StoppableCounter(stop) if stop is not None else CallCounter()
        decoder = pair.decoder
        runtime = pair.runtimes.get(name) if backend == "ONNX Runtime" else None
        objective = objective_of(runtime or model)
        if sampler_settings:  # checked as the CLI and the server check them
            objective = objective.with_sampler_settings(sampler, **sampler_settings)
        images = sample(runtime or model, labels, sampler=sampler, steps=steps,
                        cfg_scale=cfg_scale, seed=seed, device=pair.device, clip_denoised=True,
                        objective=objective, counter=counter)
        if runtime is not None:
            decoder = runtime.decoder or decoder
        if decoder is not None:  # part of each side's latency: what a user waits for
            images = decoder.decode(images)
        return SideResult(images, time.perf_counter() - start, counter.calls, first)

    def both() -> tuple[SideResult, SideResult]:  # on the model thread: one at a time
        warm_up_sides(pair, len(labels), cfg_scale, sampler, backend)
        # the side that samples first alternates from one comparison to the next, so a bias
        # of going first (or second) on a busy machine falls on each side in half the clicks
        order = ("original", "pruned")[::-1 if pair.comparisons % 2 else 1]
        pair.comparisons += 1
        made = {name: side(name, getattr(pair, name), name == order[0]) for name in order}
        return made["original"], made["pruned"]

    return ModelThread.run(both)


def structure_facts(pair: ModelPair) -> list[list[str]]:
    """Depth, parameters and FLOPs before and after, as table rows."""
    if not pair.ready:
        return []
    a, b = pair.original, pair.pruned
    rows = []
    for name, before, after in (
        ("depth (blocks)", a.depth, b.depth),
        ("parameters (M)", count_parameters(a) / 1e6, count_parameters(b) / 1e6),
        ("GFLOPs per forward", forward_flops(a.config) / 1e9, forward_flops(b.config) / 1e9),
    ):
        rows.append([name, _fmt(before), _fmt(after), f"{before / after:.2f}x"])
    removed = sorted(set(range(a.depth)) - set(b.kept_blocks))
    rows.append(["kept blocks (original index)", "", ", ".join(map(str, b.kept_blocks)), ""])
    rows.append(["removed blocks", "", ", ".join(map(str, removed)) or "none", ""])
    return rows


def default_sampling(family: str) -> dict[str, Any]:
    """The family's sampler, steps and cfg scale: the bundled teachers' settings."""
    return dict(SAMPLING[family])


def governed_settings(objective: Objective, sampler: str, settings: dict[str, Any]
                      ) -> dict[str, Any]:
    """Of ``settings`` (the demo's fields, all of them), those that ``sampler`` uses; no last
    step's size without a last step."""
    governs = objective.sampler_setting_samplers
    kept = {name: value for name, value in settings.items()
            if sampler in governs.get(name, ())}
    if str(kept.get("last_step")) == "None":
        kept.pop("last_step_size", None)
    return kept


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"
