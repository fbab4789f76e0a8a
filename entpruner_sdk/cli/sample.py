"""``entpruner sample``: class-conditional samples as an image grid, from a model or an export."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from entpruner_sdk.cli import common
from entpruner_sdk.evaluation.batches import IN_PROGRESS
from entpruner_sdk.sampling import COMPILE_MODES
from entpruner_sdk.utils.progress import progress_bar

if TYPE_CHECKING:
    from entpruner_sdk.evaluation.batches import SampleBatches

# evaluate's default too: many images (--per-class N of a 1000-class model, for an --npz) must
# not be one batch of the denoiser
BATCH_SIZE = 250
GRID_MAX = 1024  # images in the grid, a preview of many samples


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``sample`` subcommand: the model, the classes, the sampler and the output grid."""
    p = common.command(
        sub, "sample", "Sample class-conditional images and save an image grid (PNG, JPEG).",
        """\
        entpruner sample --model dit-digits --per-class 8 --out digits.png
        entpruner sample --model runs/dit-d6/model --sampler dpm-solver++ --steps 20 \\
            --cfg 2 --out fast.png               # about DDIM-50's quality in 20 steps
        entpruner sample --model runs/sit/model --labels 3,3,7 --sampler euler-maruyama \\
            --steps 250 --cfg 2.0 --seed 1 --out sit.png --npz sit.npz  # reference SDE
        entpruner sample --model sit-digits --sampler heun-sde --steps 50 \\
            --diffusion-norm 0.5 --out sde.png      # half the reference's diffusion
        entpruner sample --model sit-digits --sampler euler-maruyama --steps 250 \\
            --diffusion-form SBDM --last-step Tweedie --out sbdm.png  # reference SDE flags
        entpruner sample --model sit-digits --sampler dopri5 --steps 250 --atol 1e-2 \\
            --rtol 1e-2 --out loose.png   # looser than the reference's 1e-6 and 1e-3
        entpruner sample --model SiT-XL-2-256x256.pt --family sit --labels 207 \\
            --vae ./sd-vae-ft-ema --sampler dopri5 --steps 250 --cfg 4 \\
            --reference-cfg --out sit-dog.png   # the SiT reference's ODE sampling
        entpruner sample --model dit-photos --labels coffee,rocket --out photos.png  # names
        entpruner sample --model dit-photos --labels coffee,rocket --per-class 4 \\
            --out two-rows.png                  # 4 of each, a row per class
        entpruner sample --model DiT-XL-2-256x256.pt --family dit --labels 207 \\
            --vae ./sd-vae-ft-ema --out dog.png         # latents decoded by the VAE
        entpruner sample --model exports/dit-onnx --cfg 2 --out onnx.png   # ONNX Runtime
        entpruner sample --model runs/xl-d14 --per-class 10 --vae ./sd-vae-ft-ema \\
            --batch-size 100 --out xl.jpg --npz xl.npz   # 10,000 images, 100 at a time
        entpruner sample --model runs/xl-d14 --per-class 10 --vae ./sd-vae-ft-ema \\
            --device cuda --compile reduce-overhead --npz xl.npz   # with CUDA graphs
        torchrun --nproc_per_node 8 -m entpruner_sdk sample --model runs/xl-d14 \\
            --per-class 50 --vae ./sd-vae-ft-ema --npz xl-50k.npz --out xl.jpg  # 8 GPUs
        """)
    _model(p.add_argument_group("model"))
    _classes(p.add_argument_group("classes"))
    _sampling(p.add_argument_group("sampling"))
    _output(p.add_argument_group("output"))
    run_group = p.add_argument_group("run")
    common.distributed_option(run_group, "shard the batches (with --npz)")
    common.run_options(run_group)


def _model(g: common.Options) -> None:
    g.add_argument("--model", required=True,
                   help="bundled teacher name, model path, or an export directory")
    common.released_options(g)
    common.provider_option(g)


def _classes(g: common.Options) -> None:
    g.add_argument("--labels", help="comma-separated class ids or names (names for a model "
                   "trained on named classes: class folders, an .npz's class_names)")
    g.add_argument("--per-class", type=int, default=None,
                   help="N images of every class (default 4; a model fine-tuned on a subset "
                        "of its classes samples those), or with --labels of every label "
                        "listed (default 1), each class on a row of the grid")


def _sampling(g: common.Options) -> None:
    common.sampler_options(g)
    g.add_argument("--reference-cfg", action="store_true",
                   help="guide only the first 3 channels, like the reference code")
    g.add_argument("--seed", type=int, default=0, help="seeds the initial noise")
    g.add_argument("--compile", choices=COMPILE_MODES,
                   help="sample a PyTorch model through torch.compile in this mode "
                        "(reduce-overhead: CUDA graphs on a GPU), compiled once per batch "
                        "size: it pays back over many batches (default: eager)")
    g.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="images sampled at a time; batch b is seeded SEED + b, as evaluate's "
                        "batches are, so up to this many images are one batch seeded SEED "
                        f"(default {BATCH_SIZE})")


def _output(g: common.Options) -> None:
    g.add_argument("--out", default="samples.png",
                   help="grid image path; its suffix picks the format (.png, .jpg, .webp)")
    g.add_argument("--npz", help="also save every sample to this .npz as evaluate "
                   "--save-samples and guided-diffusion's scripts do (ADM's evaluation suite "
                   "reads it): arr_0, 8-bit images [N, H, W, C], decoded when the model "
                   "samples latents; arr_1, their labels. Written a batch at a time; the "
                   f"finished batches wait in {IN_PROGRESS}/ beside it until it is written, "
                   "so after Ctrl-C or a crash the same command continues from them")
    g.add_argument("--grid-max", type=int, default=GRID_MAX,
                   help="the grid shows at most this many images, the first, in whole rows; "
                        f"--npz keeps them all (default {GRID_MAX})")
    common.vae_option(g)


def run(args: argparse.Namespace) -> int:
    """Sample the classes asked for and write them as an image grid (and an ``.npz`` with
    ``--npz``); 0 on success. Under torchrun each process makes its share of the batches
    (batch b on rank b % world) and the first writes the files."""
    from entpruner_sdk.data.latents import decoder_for, trained_vae
    from entpruner_sdk.sampling import image_format, objective_of
    from entpruner_sdk.utils import distributed

    image_format(args.out)  # a suffix Pillow cannot write fails now, not after sampling
    _check_counts(args)
    device = common.join_processes(args)
    if distributed.is_distributed() and not args.npz:
        raise ValueError("under torchrun, sample writes its samples with --npz F (a grid alone "
                         "is a preview: sample it in one process)")
    exported = common.open_export(args.model, args.provider)
    if exported is not None and args.compile:
        raise ValueError("--compile applies to PyTorch models, and an export's graphs were "
                         "fixed when it was exported: drop --compile, or sample the model the "
                         "export was made from")
    model = exported or common.released_model(args)
    # --vae, else the VAE decoder an export of a latent model may carry, else the VAE its
    # data was encoded with
    vae = (args.vae or (exported.decoder if exported is not None else None)
           or common.recorded_vae_of(model, device))
    decoder = decoder_for(model.config, vae, device,
                          trained_with=trained_vae(model.provenance))
    labels, per_row = _labels(args, model)
    objective = objective_of(model)
    sampler = objective.check_sampler(args.sampler)
    objective = objective.with_sampler_settings(sampler, **common.sampler_settings(args))
    # the family's steps and guidance where they are not given, as the server's and the demo's
    settled = objective.settle_sampling(sampler, args.steps, args.cfg)
    settings = dict(**settled, seed=args.seed, device=device, reference_cfg=args.reference_cfg,
                    clip_denoised=True, objective=objective, compile=args.compile or False)
    kept = _kept_batches(args, model, labels, decoder, objective.settings_for(sampler),
                         settled, device) if args.npz else None
    made = _BatchMaker(model, labels, args.batch_size, settings, decoder, kept,
                       progress=not args.quiet and distributed.is_main())
    try:  # the kept folder is this run's until it ends, however it ends
        _make_and_write(args, made, labels, per_row)
    finally:
        if kept is not None:
            kept.release()
    return 0


def _make_and_write(args: argparse.Namespace, made: _BatchMaker, labels: list[int],
                    per_row: int | None) -> None:
    """Every batch, then the files; under torchrun each process makes its share into the
    kept folder, and rank 0 then writes the files from it."""
    from entpruner_sdk.evaluation.batches import EvaluationBatches
    from entpruner_sdk.utils import distributed

    if not distributed.is_distributed():
        _write(args, made, labels, per_row)
        _say_resumed(made.kept.loaded if made.kept is not None else 0, made.count)
        return
    made.finish(distributed.rank(), distributed.world_size())
    resumed = EvaluationBatches.loaded_by_all(made.kept)  # every process is done past here
    _send_to_main(made.kept, made.count)
    # rank 0 writes the files, then every other rank removes its own folder: rank 0's, gone
    # already, where the machines share one; its alone where they do not
    distributed.main_first(lambda: _write(args, made, labels, per_row)
                           if distributed.is_main() else made.kept.clear())
    if distributed.is_main():
        _say_resumed(resumed, made.count)


def _send_to_main(kept: SampleBatches, count: int) -> None:
    """The batches the other processes made that rank 0 cannot read from its kept folder
    (torchrun over machines that share no folder), sent to it to keep: rank 0 would else
    make them all again. Nothing moves where they share one."""
    from entpruner_sdk.utils import distributed

    world = distributed.world_size()
    lacking = distributed.broadcast([b for b in range(count) if b % world and not kept.has(b)]
                                    if distributed.is_main() else None)
    for b in lacking:
        if distributed.is_main():
            batch = distributed.receive_from(b % world)
            if batch is not None:  # None: its maker could not read it back, so rank 0 makes it
                kept.save(b, batch)
        elif b % world == distributed.rank():
            distributed.send_to_main(kept.load(b))
    if lacking and distributed.is_main():
        print(f"the other processes sent {len(lacking)} of the {count} batches, which "
              f"{kept.directory} did not hold (their machines share no folder with this one)")


def _say_resumed(resumed: int, count: int) -> None:
    if resumed:
        print(f"{resumed} of the {count} batches were those an interrupted run had finished")


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse counts below one and an output that cannot be written, before any work."""
    from entpruner_sdk.utils.files import check_output_path

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: at least 1 image at a time")
    if args.grid_max < 1:
        raise ValueError(f"--grid-max {args.grid_max}: at least 1 image in the grid")
    for path in (args.out, args.npz):
        if path:
            check_output_path(path, folder=False)


def _labels(args: argparse.Namespace, model: Any) -> tuple[list[int], int | None]:
    """The label of every sample, and the grid's row length: a row per class asked for N of
    each (``--per-class``, or every class); labels listed one by one fill a square grid."""
    from entpruner_sdk.data.classes import offered_classes, resolve_labels

    if args.labels is not None and not args.labels.strip():
        raise ValueError("--labels is empty: name class ids or names (--labels 3,7), or leave "
                         "it out for every class")
    per_class = args.per_class if args.per_class is not None else 1 if args.labels else 4
    if per_class < 1:
        raise ValueError(f"--per-class {per_class}: at least 1 image of each class")
    classes = (resolve_labels(args.labels.split(","), model.config.num_classes,
                              model.provenance.get("class_names", ()))
               if args.labels else offered_classes(model.provenance, model.config.num_classes))
    per_row = per_class if args.per_class is not None or not args.labels else None
    return [c for c in classes for _ in range(per_class)], per_row


def _write(args: argparse.Namespace, made: _BatchMaker, labels: list[int],
           per_row: int | None) -> None:
    """The ``.npz`` first, so the samples are kept whatever happens to the grid, each batch
    written as it comes (many samples need not fit in memory); then the grid of the first."""
    import numpy as np

    from entpruner_sdk.objectives import is_adaptive
    from entpruner_sdk.sampling import save_grid
    from entpruner_sdk.utils.npz import Chunks, save_npz_streamed

    shown = _grid_count(len(labels), per_row, args.grid_max)
    preview: list[torch.Tensor] = []  # the grid's images, kept from the batches as they pass
    pixels = made.batches(preview, shown)
    if args.npz:
        save_npz_streamed(args.npz, {"arr_0": Chunks(len(labels), (
            batch.permute(0, 2, 3, 1).numpy() for batch in pixels)),
            "arr_1": np.array(labels, dtype=np.int64)})
        made.kept.clear()
        common.note_unfinished_runs(_in_progress(args), "sample --npz run")
    else:
        for _ in pixels:
            pass
    save_grid(torch.cat(preview), args.out,
              rows=shown // per_row if per_row and shown >= per_row else None)
    cut = "" if shown == len(labels) else (
        f" (the grid shows the first {shown}; " + (f"all are in {args.npz})" if args.npz else
                                                   "--npz F keeps them all)"))
    used = made.settings
    steps = (f" up to {used['steps']} steps" if is_adaptive(used["sampler"])  # a cap
             else f" x {used['steps']}")
    print(f"{len(labels)} sample{'s' if len(labels) != 1 else ''} ({used['sampler']}{steps}, "
          f"cfg {used['cfg_scale']:g}) -> {args.out}{cut}")


def _kept_batches(args: argparse.Namespace, model: Any, labels: list[int], decoder: Any,
                  governing: dict[str, Any], settled: dict[str, Any],
                  device: str | torch.device) -> SampleBatches:
    """Where ``--npz``'s finished batches wait, as 8-bit pixels, until the file is written:
    beside it, named by everything that decides the samples (evaluate's rule), so the same
    command continues after Ctrl-C or a crash and other settings never take them."""
    from entpruner_sdk.evaluation.batches import EvaluationBatches
    from entpruner_sdk.utils.device import resolve_device

    sampling = dict(**settled, device=resolve_device(device), as_eight_bit=True,
                    reference_cfg=args.reference_cfg,
                    **({"sampler_settings": governing} if governing else {}))
    return EvaluationBatches(_in_progress(args), torch.tensor(labels), args.seed,
                             args.batch_size, sampling, decoder).of(model, Path(args.npz).name)


class _BatchMaker:
    """The batches of samples as 8-bit pixels: taken from ``kept`` (an interrupted run's), or
    sampled (``sample_batch_at``), decoded (a latent model's), rounded as a saved image rounds
    and kept there."""

    def __init__(self, model: Any, labels: list[int], batch_size: int,
                 settings: dict[str, Any], decoder: Any, kept: SampleBatches | None, *,
                 progress: bool) -> None:
        self.model, self.labels, self.batch_size = model, labels, batch_size
        self.settings, self.decoder, self.kept = settings, decoder, kept
        self.count = -(-len(labels) // batch_size)
        self.progress = progress

    def batches(self, preview: list[torch.Tensor], shown: int) -> Iterator[torch.Tensor]:
        """Every batch in order; the first ``shown`` images are also copied into
        ``preview`` (a copy: a slice would keep the whole batch alive)."""
        for b in self._indices(range(self.count)):
            batch = self._batch(b)
            held = sum(len(images) for images in preview)
            if held < shown:
                preview.append(batch[:shown - held].clone())
            yield batch

    def finish(self, rank: int, world: int) -> None:
        """Make and keep the batches b with b % world == rank that are not kept yet."""
        for b in self._indices(range(rank, self.count, world)):
            self._batch(b)

    def _indices(self, indices: range) -> Iterator[int]:
        return progress_bar(indices, enabled=self.progress and self.count > 1,
                            desc="sampling batches")

    def _batch(self, b: int) -> torch.Tensor:
        from entpruner_sdk.data.datasets import eight_bit
        from entpruner_sdk.sampling import sample_batch_at

        batch = self.kept.load(b) if self.kept is not None else None
        if batch is None:
            alone = self.progress and self.count == 1  # one batch shows its steps
            batch = sample_batch_at(self.model, self.labels, self.batch_size, b,
                                    progress=alone, **self.settings)
            if self.decoder is not None:
                batch = self.decoder.decode(batch, progress=alone)
            batch = eight_bit(batch)
            if self.kept is not None:
                self.kept.save(b, batch)
        return batch


def _in_progress(args: argparse.Namespace) -> Path:
    """The folder beside ``--npz`` where its finished batches wait."""
    return Path(args.npz).parent / IN_PROGRESS


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``sample`` kept: with ``--npz``, its finished batches."""
    if not args.npz:
        return "a grid alone keeps nothing; with --npz F the finished batches are kept"
    done = len(list(_in_progress(args).glob("*/batch_*.safetensors")))
    if done:
        return (f"{_in_progress(args)} holds {done} finished sample batches: run the same "
                "command to continue from them")
    return "no sample batch was finished yet, so running it again starts over"


def _grid_count(count: int, per_row: int | None, most: int) -> int:
    """How many of ``count`` images the grid shows: all, or at most ``most``, whole rows of
    ``per_row`` where a row holds a class (a grid of 10,000 samples at 256 pixels would be
    8 GB to build and a poster to look at, where a preview is wanted)."""
    if count <= most:
        return count
    return most // per_row * per_row if per_row and per_row <= most else most
