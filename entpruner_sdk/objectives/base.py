"""The interface every objective (diffusion, flow) offers, so pruning and training code can
treat DiT and SiT alike."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# model_fn(x_t, model_time, labels) -> raw model output
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# a count of timesteps spread evenly over the schedule, or explicit noise levels
TimeGrid = int | Sequence[float]


def noise_levels(grid: TimeGrid) -> torch.Tensor:
    """The grid as noise levels, float64 fractions of the schedule from 0 (clean data) to 1
    (pure noise): ``n`` spread evenly (the midpoints of n equal intervals, cleanest first), or
    the levels given. Raises ``ValueError`` for an empty grid or a level outside [0, 1]."""
    unreadable = ValueError(f"timestep grid {grid!r}: give a number of timesteps (e.g. 8) or "
                            "a sequence of noise levels (e.g. 0.1,0.5,0.9)")
    if isinstance(grid, bool | str) or not isinstance(grid, int | Sequence):
        raise unreadable
    if isinstance(grid, int):
        if grid < 1:
            raise ValueError(f"a timestep grid needs at least 1 timestep, got {grid}")
        return (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    try:
        levels = torch.tensor([float(v) for v in grid], dtype=torch.float64)
    except (TypeError, ValueError):
        raise unreadable from None
    if len(levels) == 0 or not ((levels >= 0) & (levels <= 1)).all():
        raise ValueError(f"timestep grid {list(grid)}: give noise levels in [0, 1] "
                         "(0 = clean data, 1 = pure noise), e.g. 0.1,0.5,0.9")
    return levels


@dataclass
class NoisedBatch:
    """A training or calibration batch after the forward (noising) process."""

    x_start: torch.Tensor  # clean data
    noise: torch.Tensor
    x_t: torch.Tensor  # model input
    t: torch.Tensor  # model time (int64 0..999 for DiT, float [0, 1] for SiT)
    y: torch.Tensor

    def split(self, parts: int) -> list[NoisedBatch]:
        """``parts`` equal consecutive slices (one per process, or per micro-batch of a
        gradient-accumulation step); the size must divide evenly, so every slice's mean loss
        weighs the same."""
        size, rest = divmod(self.x_start.shape[0], parts)
        if rest or not size:
            raise ValueError(f"a batch of {self.x_start.shape[0]} does not split into {parts} "
                             "equal parts")
        fields = [f.name for f in dataclasses.fields(self)]
        return [NoisedBatch(**{name: getattr(self, name)[i * size:(i + 1) * size]
                               for name in fields}) for i in range(parts)]


class Objective(ABC):
    """Forward process, training loss, and samplers of one model family."""

    family: str
    samplers: tuple[str, ...]
    # Samplers whose step sizes follow the error of the whole batch: an image depends, within
    # the tolerances, on the others drawn with it.
    adaptive_samplers: tuple[str, ...] = ()
    # Samplers of a stochastic differential equation: they do not solve the probability-flow
    # ODE, so they do not approach its solution as their steps grow.
    sde_samplers: tuple[str, ...] = ()
    # What a family samples with when the caller names nothing: the settings the bundled
    # teachers are evaluated with, and those of every verb that samples (sample, evaluate,
    # the compress report, the server, the demo), so their figures and images agree.
    default_sampler: str
    default_steps: int
    default_cfg_scale: float = 2.0
    # The sampler settings this family's objective takes as keyword arguments, each with the
    # samplers it governs: plain numbers or names, so a CLI flag, a report or a cache key
    # carries them.
    sampler_setting_samplers: dict[str, tuple[str, ...]] = {}

    def __init__(self, in_channels: int) -> None:
        self.in_channels = in_channels

    @abstractmethod
    def sample_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random model times for training."""

    @abstractmethod
    def add_noise(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                  ) -> torch.Tensor:
        """x_t for the given model time and noise."""

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
        """Per-sample training loss [N] for the raw model output."""

    @abstractmethod
    def denoised(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's estimate of the clean sample (x0-hat for DiT, x1-hat for SiT)."""

    def calibration_times(self, grid: TimeGrid) -> torch.Tensor:
        """Model times of a fixed grid (for CED): ``grid`` timesteps spread over the whole
        schedule, or the noise levels given; either way cleanest first for every family."""
        return self.times_at(noise_levels(grid))

    @abstractmethod
    def times_at(self, levels: torch.Tensor) -> torch.Tensor:
        """Model times at these noise levels (0 = clean data, 1 = pure noise)."""

    @abstractmethod
    def sample(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        y: torch.Tensor,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """Integrate from ``noise`` to data in ``steps`` (None: the family's default).
        ``generator`` drives any per-step noise."""

    @abstractmethod
    def bits_per_dim(self, model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, *,
                     generator: torch.Generator | SplitGenerator | None = None,
                     progress: bool = False) -> torch.Tensor:
        """The model's negative log-likelihood of each image ``x`` (in [-1, 1], 8-bit data)
        in bits per dimension [N], as its family's reference computes it, unguided."""

    @abstractmethod
    def likelihood_steps(self, steps: int | None = None) -> int:
        """The steps :meth:`bits_per_dim` takes when asked for ``steps`` (None: its default)."""

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """The raw prediction (epsilon or velocity): the first ``in_channels`` channels."""
        return output[:, : self.in_channels]

    def noise_batch(
        self, x_start: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> NoisedBatch:
        """Draw time and noise (on the generator's device, then moved) and noise the batch."""
        n = x_start.shape[0]
        t = self.sample_time(n, generator).to(x_start.device)
        noise = randn_like(x_start, generator)
        return NoisedBatch(x_start, noise, self.add_noise(x_start, noise, t), t, y)

    @property
    def sampler_settings(self) -> dict[str, float | str]:
        """The current value of every sampler setting (none for DiT)."""
        return {name: getattr(self, name) for name in self.sampler_setting_samplers}

    def settings_for(self, sampler: str | None) -> dict[str, float | str]:
        """The settings that govern ``sampler`` (None: the default), with their values: what a
        report must state beside the sampler's name."""
        sampler = self.check_sampler(sampler)
        return {name: value for name, value in self.sampler_settings.items()
                if sampler in self.sampler_setting_samplers[name]}

    def with_sampler_settings(self, sampler: str | None = None, **settings: float | str
                              ) -> Objective:
        """This objective with ``settings`` changed (SiT: ``atol`` and ``rtol`` for dopri5;
        ``diffusion_form``, ``diffusion_norm``, ``last_step`` and ``last_step_size`` for the
        SDE samplers), checked as the constructor checks them. With ``sampler``, a setting that
        does not govern it is refused rather than silently ignored."""
        governs = self.sampler_setting_samplers
        unknown = sorted(set(settings) - set(governs))
        if unknown:
            takes = (", ".join(governs) if governs else
                     "none (atol and rtol set SiT's dopri5; diffusion_form, diffusion_norm, "
                     "last_step and last_step_size its SDE samplers)")
            raise ValueError(f"{self.family.upper()} sampling has no setting "
                             f"{', '.join(unknown)}; it takes {takes}")
        if sampler is not None:
            sampler = self.check_sampler(sampler)
            idle = [f"{name} sets only {' and '.join(governs[name])}"
                    for name in settings if sampler not in governs[name]]
            if idle:
                raise ValueError(f"{'; '.join(idle)}, not {sampler}: drop it or change the "
                                 "sampler")
        if not settings:
            return self
        return self._with_settings({**self.sampler_settings, **settings})

    def _with_settings(self, settings: dict[str, float | str]) -> Objective:
        raise NotImplementedError  # only reached by a family that has settings

    def min_steps(self, sampler: str) -> int:
        """The fewest ``steps`` the sampler accepts."""
        return 1

    def check_steps(self, sampler: str | None, steps: int) -> None:
        """A ``ValueError`` that says why when ``sampler`` (None: the family's default) takes
        more than ``steps``: what sampling, an evaluation or a server request asks for is
        refused before any work."""
        sampler = self.check_sampler(sampler)
        if steps < (fewest := self.min_steps(sampler)):
            why = self._why_min_steps(sampler)
            raise ValueError(f"sampler {sampler!r} needs at least {fewest} "
                             f"step{'s' if fewest > 1 else ''}, got {steps}"
                             + (f": {why}" if why else ""))

    def _why_min_steps(self, sampler: str) -> str:
        return ""  # a family whose samplers need more than one step says why

    @classmethod
    def sampling_defaults(cls) -> dict[str, Any]:
        """The family's sampler, steps and guidance scale, as plain data."""
        return {"sampler": cls.default_sampler, "steps": cls.default_steps,
                "cfg_scale": cls.default_cfg_scale}

    def settle_sampling(self, sampler: str | None = None, steps: int | None = None,
                        cfg_scale: float | None = None) -> dict[str, Any]:
        """``sampler``, ``steps`` and ``cfg_scale``, each one not given (None) the family's
        default (:meth:`sampling_defaults`), the sampler checked: what a call samples with."""
        return {"sampler": self.check_sampler(sampler),
                "steps": self.default_steps if steps is None else steps,
                "cfg_scale": self.default_cfg_scale if cfg_scale is None else cfg_scale}

    def check_sampler(self, sampler: str | None) -> str:
        """``sampler`` (None: the family's default) if this family has it, else a
        ``ValueError`` that lists the ones it has."""
        sampler = sampler or self.default_sampler
        if sampler not in self.samplers:
            raise ValueError(
                f"unknown sampler {sampler!r} for {self.family.upper()}; choose one of "
                f"{', '.join(self.samplers)}"
            )
        return sampler


# 8-bit pixels scaled to [-1, 1] (x / 127.5 - 1) lie 2 / 255 apart: a density p(x) gives each
# pixel value a probability of about p(x) * 2 / 255 per dimension
BIN_BITS = math.log2(127.5)


def randn_like(x: torch.Tensor, generator: torch.Generator | SplitGenerator | None
               ) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (CPU by default) so a seed gives the same
    numbers whatever device the model runs on."""
    return normal(tuple(x.shape), generator).to(x.device, x.dtype)


def normal(shape: tuple[int, ...], generator: torch.Generator | SplitGenerator | None
           ) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` from ``generator`` (on its device)."""
    if isinstance(generator, SplitGenerator):
        return generator.randn(shape)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


class SplitGenerator:
    """One seeded CPU generator per slice of the batch: rows ``[sum(counts[:i]),
    sum(counts[:i+1]))`` draw from ``seeds[i]``.

    A server batching several requests passes one of these, so every request gets exactly the
    noise it would get alone with its own seed, however it was batched.
    """

    device = torch.device("cpu")

    def __init__(self, seeds: list[int], counts: list[int]) -> None:
        if len(seeds) != len(counts) or min(counts, default=1) < 1:
            raise ValueError("need one seed per slice and a positive size for every slice")
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.counts = list(counts)

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape[0] != sum(self.counts):
            raise ValueError(f"batch of {shape[0]} does not match the slices {self.counts}")
        return torch.cat([torch.randn((n, *shape[1:]), generator=g, dtype=torch.float32)
                          for g, n in zip(self.generators, self.counts)])
