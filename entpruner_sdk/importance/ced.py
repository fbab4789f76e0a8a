"""Conditional Entropy Deviation (CED): how far the class-conditional output entropy moves
when one block is replaced by the identity.

    CED_i = mean over timesteps t of | H(X | C)_full(t) - H(X | C)_drop i(t) |

A rise in entropy after dropping a block is drift toward noise; a fall is mode collapse; the
absolute value counts both. Blocks with the lowest CED are removed first.

Prefix caching: the blocks before i see the same input whether or not block i is dropped, so
the hidden state entering every block is computed once per batch and each candidate runs only
blocks i+1..N-1 from there (about N^2 / 2 block evaluations instead of N^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from entpruner_sdk.importance.base import BlockScores, Importance
from entpruner_sdk.importance.calibration import CalibrationSet
from entpruner_sdk.importance.entropy import ESTIMATORS, EntropyAccumulator
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.objectives import FlowMatching, NoisedBatch, Objective
from entpruner_sdk.utils.device import autocast, resolve_device

OUTPUTS = ("prediction", "denoised", "clipped", "sampler")
WEIGHTINGS = ("mean", "normalized")


class CED(Importance):
    """CED importance.

    ``output``: what X is: ``prediction`` (epsilon / velocity), ``denoised`` (the clean-sample
    estimate derived from it), ``clipped`` (that estimate clipped, per channel, to the range
    the calibration data occupies) or ``sampler`` (the result of a ``sampler_steps``-step
    deterministic sampler run from the calibration noise; no prefix caching there).

    Why ``clipped``: an epsilon-prediction model's estimate x0 = (x_t - sqrt(1 - a) eps) /
    sqrt(a) multiplies any change of eps by 1 / sqrt(a), about 80 at the noisiest calibration
    timestep of a 1000-step linear schedule, so without clipping the last timesteps outweigh
    all others in the average; clipping bounds what one timestep can contribute. The range
    is read from the data (pixels in [-1, 1], VAE latents wider), never assumed.
    ``estimator``: ``sample`` or ``diagonal`` (see ``entropy``).
    ``weighting``: how the timesteps are combined: ``mean`` (the plain average of method.md)
    or ``normalized`` (each timestep's deviations divided by their sum over the blocks, then
    averaged, so every noise level has an equal say in the ranking). Why: the denoised
    estimate's deviations at the noisiest timesteps are up to 100x those at the cleanest, so
    the plain mean ranks by the noisiest timesteps alone.
    ``reduce``: optional hook that sums the accumulators' tensors across processes in place.
    """

    name = "ced"

    def __init__(self, output: str = "denoised", estimator: str = "sample",
                 batch_size: int = 256, sampler_steps: int = 4, reduce=None,
                 weighting: str = "mean") -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown CED output {output!r}; choose one of {OUTPUTS}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown CED weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown CED estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.output, self.estimator, self.weighting = output, estimator, weighting
        self.batch_size, self.sampler_steps = batch_size, sampler_steps
        self.reduce = reduce

    @torch.no_grad()
    def score(self, model: DiffusionTransformer, objective: Objective,
              calibration: CalibrationSet, device: str | torch.device | None = None
              ) -> BlockScores:
        device = resolve_device(device)
        model = model.eval()
        if self.output == "sampler":
            full, dropped = self._sampler_statistics(model, objective, calibration, device)
        else:
            full, dropped = self._cached_statistics(model, objective, calibration, device)
        if self.reduce is not None:
            for accumulator in [*full, *(a for row in dropped for a in row)]:
                self.reduce(accumulator.tensors())
        h_full = [a.entropy() for a in full]
        h_drop = [[a.entropy() for a in row] for row in dropped]
        per_timestep = [[abs(hf - hd) for hf, hd in zip(h_full, row)] for row in h_drop]
        scores = combine_timesteps(per_timestep, self.weighting)
        return BlockScores(self.name, scores, model.kept_blocks, per_timestep, details={
            "output": self.output, "estimator": self.estimator, "weighting": self.weighting,
            "entropy_full": h_full, "entropy_dropped": h_drop,
            "times": calibration.times.tolist()})

    @torch.no_grad()
    def entropies(self, model: DiffusionTransformer, objective: Objective,
                  calibration: CalibrationSet, device: torch.device,
                  skip_blocks: Sequence[int] = ()) -> list[float]:
        """H(X | C) at each calibration timestep, for ``model`` with the blocks at positions
        ``skip_blocks`` replaced by the identity, by full forward passes (no prefix cache).
        With several blocks skipped at once, ``|H_full - H_skipped|`` is the entropy
        deviation of the whole set, which the sum of the set's per-block scores
        approximates while ignoring how the blocks interact."""
        model = model.eval()
        accumulators = self._accumulators(calibration, model, len(calibration.times))
        value_range = calibration.range_on(device)
        for ti, batch in calibration.batches(objective, device, self.batch_size):
            with autocast(device):
                output = model(batch.x_t, batch.t, batch.y, skip_blocks=skip_blocks)
            accumulators[ti].update(self._x(objective, output, batch, value_range), batch.y)
        return [a.entropy() for a in accumulators]

    def _accumulators(self, calibration: CalibrationSet, model: DiffusionTransformer,
                      count: int) -> list[EntropyAccumulator]:
        cfg = model.config
        dims = cfg.in_channels * cfg.input_size**2
        return [EntropyAccumulator(self.estimator, calibration.num_classes, dims)
                for _ in range(count)]

    def _x(self, objective: Objective, output: torch.Tensor, batch: NoisedBatch,
           value_range: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        output = output.float()
        if self.output == "prediction":
            return objective.prediction(output)
        denoised = objective.denoised(output, batch.x_t, batch.t)
        if self.output == "clipped":
            low, high = value_range
            return denoised.clamp(low, high)
        return denoised

    def _cached_statistics(self, model, objective, calibration, device):
        num_times = len(calibration.times)
        full = self._accumulators(calibration, model, num_times)
        dropped = [self._accumulators(calibration, model, num_times) for _ in model.blocks]
        value_range = calibration.range_on(device)
        for ti, batch in calibration.batches(objective, device, self.batch_size):
            with autocast(device):
                output, states, c = model.forward_with_block_inputs(batch.x_t, batch.t, batch.y)
                full[ti].update(self._x(objective, output, batch, value_range), batch.y)
                for i in range(model.depth):
                    skipped = model.head(model.run_blocks(states[i], c, start=i + 1), c)
                    x = self._x(objective, skipped, batch, value_range)
                    dropped[i][ti].update(x, batch.y)
        return full, dropped

    def _sampler_statistics(self, model, objective, calibration, device):
        full = self._accumulators(calibration, model, 1)
        dropped = [self._accumulators(calibration, model, 1) for _ in model.blocks]
        sampler = "euler" if isinstance(objective, FlowMatching) else "ddim"
        for start in range(0, len(calibration), self.batch_size):
            noise = calibration.noise[start:start + self.batch_size].to(device)
            y = calibration.labels[start:start + self.batch_size].to(device)
            for skip, accumulator in [((), full[0])] + [((i,), d[0]) for i, d in
                                                         enumerate(dropped)]:
                def fn(x, t, labels, skip=skip):
                    with autocast(device):
                        return model(x, t, labels, skip_blocks=skip).float()

                out = objective.sample(fn, noise, y, sampler=sampler, steps=self.sampler_steps)
                accumulator.update(out, y)
        return full, dropped


def combine_timesteps(per_timestep: list[list[float]], weighting: str = "mean") -> list[float]:
    """One score per block from its per-timestep deviations ``[block][timestep]``."""
    if weighting == "normalized":
        totals = [sum(column) for column in zip(*per_timestep)]
        # a timestep where no block moves the entropy carries no ranking information
        per_timestep = [[d / total if total > 0 else 0.0 for d, total in zip(row, totals)]
                        for row in per_timestep]
    return [sum(row) / len(row) for row in per_timestep]


def naive_ced(model: DiffusionTransformer, objective: Objective, calibration: CalibrationSet,
              device: torch.device, output: str = "denoised", estimator: str = "sample"
              ) -> list[float]:
    """CED by N + 1 full forward passes per batch (no caching): the reference the cached
    computation is tested against (benchmarks/compress_cost.py times the same N forwards)."""
    ced = CED(output, estimator)
    h_full = ced.entropies(model, objective, calibration, device)
    return combine_timesteps([
        [abs(hf - hd) for hf, hd in zip(h_full, ced.entropies(model, objective, calibration,
                                                                device, skip_blocks=[i]))]
        for i in range(model.depth)])
