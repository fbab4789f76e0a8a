"""SiT's flow matching: x_t = alpha_t * x1 + sigma_t * x0 (x0 noise, x1 data, t=1 is data),
velocity prediction, and the SiT reference's samplers: fixed-step ODE, SDE and adaptive
dopri5."""

from __future__ import annotations

import math
import warnings

import torch

from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.objectives.base import (
    BIN_BITS,
    ModelFn,
    NoisedBatch,
    Objective,
    SplitGenerator,
    normal,
    randn_like,
)
from entpruner_sdk.utils.progress import progress_bar, show_postfix

PATHS = ("linear", "gvp")
# The SiT reference's SDE choices (``sample.py SDE --diffusion-form / --last-step``), spelled as
# there and matched without regard to case.
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("Mean", "Tweedie", "Euler", "None")
# The reference's --sample-eps: where the SBDM diffusion, infinite at t = 0, starts its grid, and
# where an SDE without a last step stops short of t = 1, where the score is singular.
SAMPLE_EPS = 1e-3
# How much an SDE's steps may multiply what they are given before the sampler warns: a stable
# chain contracts toward the data (a product below 1).
UNSTABLE_GROWTH = 2.0
# Below this sigma the stability check stops following the ideal denoiser's 1 / sigma gain: the
# sit-digits teacher's velocity moves with x by about -11 at sigma = 0.04 (ideal -25) and -44 at
# 0.001 (ideal -1000), and heun-sde without a last step, which the ideal gain would call
# unstable, scores better than Heun (FD-domain 0.75 against 0.81 at 50 steps).
RESOLVED_SIGMA = 0.04


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(-1, *([1] * (like.dim() - 1))).to(like.device)


def _choice(value: str | None, choices: tuple[str, ...], what: str) -> str:
    """``value`` in its reference spelling; None is the reference's ``--last-step None``."""
    spelled = {choice.lower(): choice for choice in choices}
    name = "None" if value is None else value
    if not isinstance(name, str) or name.lower() not in spelled:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return spelled[name.lower()]


class StepLimitExceeded(RuntimeError):
    """dopri5 met its step cap before its tolerances: the caller's settings, not a fault, so
    the server answers it as a bad request (422) and the CLI as a usage error."""

    def __init__(self, max_steps: int, model_calls: int, atol: float, rtol: float) -> None:
        self.max_steps, self.model_calls, self.atol, self.rtol = max_steps, model_calls, atol, rtol
        super().__init__(
            f"dopri5 needs more than {max_steps} steps ({model_calls} model calls) to meet "
            f"atol={atol:g}, rtol={rtol:g}: allow more steps, or loosen the tolerances "
            "(--atol / --rtol, or with_sampler_settings(atol=, rtol=))")


class FlowMatching(Objective):
    """Interpolant objective of SiT with a linear (alpha = t, sigma = 1 - t) or GVP
    (alpha = sin(pi t / 2), sigma = cos(pi t / 2)) path."""

    family = "sit"
    samplers = ("euler", "heun", "euler-maruyama", "heun-sde", "dopri5")
    adaptive_samplers = ("dopri5",)
    sde_samplers = ("euler-maruyama", "heun-sde")
    default_sampler = "heun"
    default_steps = 25  # 50 model calls (2 a step), as many as DDIM x 50 makes
    sampler_setting_samplers = {
        "atol": adaptive_samplers, "rtol": adaptive_samplers,
        "diffusion_form": sde_samplers, "diffusion_norm": sde_samplers,
        "last_step": sde_samplers, "last_step_size": sde_samplers,
    }

    def __init__(self, in_channels: int, path: str = "linear", *, atol: float = 1e-6,
                 rtol: float = 1e-3, diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
                 last_step: str | None = "Mean", last_step_size: float = 0.04) -> None:
        """``atol`` / ``rtol``: the ``dopri5`` sampler's error tolerances. The SDE samplers'
        diffusion w(t) has the form ``diffusion_form`` scaled by ``diffusion_norm`` (``sigma``:
        w = diffusion_norm * sigma_t); they end with the step ``last_step`` (``Mean``: an
        Euler step of the SDE's drift without noise, ``Euler``: of the ODE's velocity,
        ``Tweedie``: the denoised estimate, ``None``: none) from t = 1 - ``last_step_size``.
        All default to the SiT reference's ``sample.py`` (1e-6, 1e-3, ``sigma``, 1, ``Mean``,
        0.04), and the names of forms and steps are its own."""
        super().__init__(in_channels)
        if path not in PATHS:
            raise ValueError(f"unknown flow path {path!r}; choose one of {', '.join(PATHS)}")
        numbers = dict(atol=atol, rtol=rtol, diffusion_norm=diffusion_norm,
                       last_step_size=last_step_size)
        bad = [f"{name}={value!r}" for name, value in numbers.items()
               if isinstance(value, bool) or not isinstance(value, (int, float))
               or not math.isfinite(value)]
        if bad:
            raise ValueError(f"sampler settings must be finite numbers, got {', '.join(bad)}")
        if not (atol > 0 and rtol > 0):
            raise ValueError(f"dopri5 tolerances must be positive, got atol={atol}, rtol={rtol}")
        if not diffusion_norm >= 0:
            raise ValueError(f"the SDE's diffusion_norm must be >= 0 (0 gives the ODE), got "
                             f"{diffusion_norm}")
        if not 0 < last_step_size < 1:
            raise ValueError(f"the SDE's last_step_size must be in (0, 1) (the reference uses "
                             f"0.04), got {last_step_size}")
        self.path = path
        self.atol, self.rtol = float(atol), float(rtol)
        self.diffusion_form = _choice(diffusion_form, DIFFUSION_FORMS, "SDE diffusion_form")
        self.diffusion_norm = float(diffusion_norm)
        self.last_step = _choice(last_step, LAST_STEPS, "SDE last_step")
        self.last_step_size = float(last_step_size)

    @classmethod
    def for_model(cls, config: TransformerConfig, path: str = "linear") -> FlowMatching:
        """The flow a SiT with ``config`` was trained on, along ``path``."""
        return cls(config.in_channels, path)

    def _with_settings(self, settings: dict[str, float | str]) -> FlowMatching:
        return FlowMatching(self.in_channels, self.path, **settings)

    def with_sampler_settings(self, sampler: str | None = None, **settings: float | str
                              ) -> FlowMatching:
        tuned = super().with_sampler_settings(sampler, **settings)
        if "last_step_size" in settings and tuned.last_step == "None":
            raise ValueError("last_step_size sets the length of the SDE's last step, and "
                             "last_step None takes none: drop one of them")
        return tuned

    def settings_for(self, sampler: str | None) -> dict[str, float | str]:
        settings = super().settings_for(sampler)
        if self.last_step == "None":  # no last step: its size changes nothing
            settings.pop("last_step_size", None)
        return settings

    # ------------------------------------------------------------------ path
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """alpha_t, sigma_t and their time derivatives."""
        if self.path == "linear":
            return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)
        half_pi = math.pi / 2
        return (torch.sin(half_pi * t), torch.cos(half_pi * t),
                half_pi * torch.cos(half_pi * t), -half_pi * torch.sin(half_pi * t))

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.rand(n, generator=generator, device=device)

    def add_noise(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                  ) -> torch.Tensor:
        alpha, sigma, _, _ = self.coefficients(_expand(t, x_start))
        return alpha * x_start + sigma * noise

    def velocity_target(self, batch: NoisedBatch) -> torch.Tensor:
        _, _, d_alpha, d_sigma = self.coefficients(_expand(batch.t, batch.x_start))
        return d_alpha * batch.x_start + d_sigma * batch.noise

    def times_at(self, levels: torch.Tensor) -> torch.Tensor:
        return (1 - levels).float()  # t = 1 is data, t = 0 pure noise

    # ------------------------------------------------------------------ model output
    def loss(self, output: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
        return ((self.prediction(output) - self.velocity_target(batch)) ** 2).mean(dim=(1, 2, 3))

    def _solve(self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(data estimate x1-hat, noise estimate x0-hat) from x_t and the velocity.

        Solves alpha x1 + sigma x0 = x_t and alpha' x1 + sigma' x0 = v; the determinant
        alpha' sigma - alpha sigma' is 1 (linear) or pi/2 (GVP), never zero.
        """
        alpha, sigma, d_alpha, d_sigma = self.coefficients(_expand(t, x_t))
        det = d_alpha * sigma - alpha * d_sigma
        x1 = (sigma * velocity - d_sigma * x_t) / det
        x0 = (d_alpha * x_t - alpha * velocity) / det
        return x1, x0

    def denoised(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._solve(self.prediction(output), x_t, t)[0]

    # ------------------------------------------------------------------ likelihood
    def bits_per_dim(self, model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, *,
                     generator: torch.Generator | SplitGenerator | None = None,
                     progress: bool = False, steps: int | None = None) -> torch.Tensor:
        """The SiT reference's likelihood (``sample.py ODE --likelihood``), in bits per
        dimension: each image taken back to noise z along the probability-flow ODE, and
        log p(x) = log N(z; 0, I) - the integral over t of div v, the divergence estimated
        by Hutchinson's trace with a Rademacher probe.

        Heun's method in ``steps`` uniform steps (default 50; 2 model calls and 2 backward
        passes each).
        One probe per image for the whole path, drawn from ``generator``: the reference draws
        one per call, which hands its adaptive solver a noisy field. No dequantization noise
        is added, as there.
        """
        probe = normal(tuple(x.shape), generator).sign().to(x.device)

        def field(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
            """v and the estimate probe^T (dv/dx) probe of its divergence."""
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                tt = torch.full((x.shape[0],), t, device=x.device)
                v = self.prediction(model_fn(x, tt, y).float())
                (grad,) = torch.autograd.grad((v * probe).sum(), x)
            return v.detach(), (grad * probe).flatten(1).sum(1)

        steps = self.likelihood_steps(steps)
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        change = torch.zeros(x.shape[0], device=x.device)  # the integral of div v from t = 1
        for t0, t1 in progress_bar(list(zip(times[:-1], times[1:])), enabled=progress,
                                   desc="ODE likelihood", leave=False):
            h = t1 - t0  # negative: from data back to noise
            v0, div0 = field(x, t0)
            v1, div1 = field(x + h * v0, t1)
            x = x + 0.5 * h * (v0 + v1)
            change = change + 0.5 * h * (div0 + div1)
        dims = x[0].numel()
        prior = -0.5 * (x.flatten(1) ** 2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
        log_p = prior + change  # the integral from 1 down to 0 is minus the one from 0 to 1
        return -log_p / (dims * math.log(2)) + BIN_BITS

    def likelihood_steps(self, steps: int | None = None) -> int:
        return steps or 50

    # ------------------------------------------------------------------ sampling
    def min_steps(self, sampler: str) -> int:
        # an SDE sampler's last step is noiseless: one more makes it stochastic at all
        return 2 if sampler in self.sde_samplers else 1

    def _why_min_steps(self, sampler: str) -> str:
        if sampler not in self.sde_samplers:
            return ""
        return "one stochastic step and the last, noiseless one"

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
        """Integrate t: 0 -> 1.

        ``euler`` / ``heun``: the probability-flow ODE dx = v dt in ``steps`` uniform steps
        (Heun: 2 model calls a step). ``euler-maruyama`` / ``heun-sde``: the SiT reference's
        SDE samplers (see :meth:`_sde`); ``steps`` counts their steps as the reference's
        ``--num-sampling-steps`` does, the last one included. ``dopri5``: the ODE by adaptive
        Dormand-Prince 5(4), the SiT reference's default, to the tolerances ``atol`` /
        ``rtol``. It chooses its own steps; ``steps`` caps them (each takes 6 model calls), so
        a bound on steps bounds its cost. Its step sizes follow the error of the whole batch,
        as in the reference, so an image depends, within the tolerances, on the batch it is
        drawn with.
        """
        sampler = self.check_sampler(sampler)
        steps = self.default_steps if steps is None else steps
        self.check_steps(sampler, steps)

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
            return self.prediction(model_fn(x, tt, y).float())

        if sampler == "dopri5":
            x = self._adaptive_ode(velocity, noise, steps, progress)
        elif sampler in self.sde_samplers:
            x = self._sde(velocity, noise, sampler, steps, generator, progress)
        else:
            x = self._ode_fixed_steps(velocity, noise, sampler, steps, progress)
        if clip_denoised:
            x = x.clamp(-1, 1)
        return x

    def _ode_fixed_steps(self, velocity, x, sampler, steps, progress) -> torch.Tensor:
        times = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        pairs = list(zip(times[:-1], times[1:]))
        for t0, t1 in progress_bar(pairs, enabled=progress, desc=f"{sampler} sampling",
                                   leave=False):
            h, v = t1 - t0, velocity(x, t0)
            if sampler == "euler":
                x = x + h * v
            else:
                guess = x + h * v
                x = x + 0.5 * h * (v + velocity(guess, t1))
        return x

    def _adaptive_ode(self, velocity, x, max_steps, progress) -> torch.Tensor:
        """x at t = 1 by torchdiffeq's dopri5, in at most ``max_steps`` step attempts. The bar
        follows t, since the model calls' count is the solver's to decide."""
        try:
            from torchdiffeq import odeint
        except ImportError as error:
            raise ImportError("the dopri5 sampler needs torchdiffeq: pip install torchdiffeq"
                              ) from error
        # 2 calls choose the first step; each attempt makes 6 (its 7th stage is the next
        # step's first).
        budget, calls = 2 + 6 * max_steps, 0
        with progress_bar(total=1, enabled=progress, desc="dopri5 sampling", leave=False,
                          bar_format="{l_bar}{bar}| t {n:.3f}/1 [{elapsed}{postfix}]") as bar:
            def drift(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                nonlocal calls
                if calls == budget:
                    raise StepLimitExceeded(max_steps, budget, self.atol, self.rtol)
                calls += 1
                # the furthest t asked for: a rejected step's stages may reach past the next
                # accepted one's, and the last step past 1 (torchdiffeq interpolates back)
                bar.n = min(max(bar.n, float(t)), 1.0)
                show_postfix(bar, f"{calls} model calls")
                return velocity(x, float(t))

            ends = torch.tensor([0.0, 1.0], device=x.device)
            return odeint(drift, x, ends, method="dopri5", atol=self.atol, rtol=self.rtol)[-1]

    def _sde(self, velocity, x, sampler, steps, generator, progress) -> torch.Tensor:
        """The SiT reference's SDE sampler (``sample.py SDE``).

        dx = (v + w * score) dt + sqrt(2 w) dW keeps the path's marginals for any diffusion
        w(t) >= 0 (see :meth:`diffusion`). The score of x_t = alpha x1 + sigma x0 is
        -x0-hat / sigma, so the drift is v - (w / sigma) x0-hat. The score is singular at
        t = 1, so ``steps - 1`` uniform steps, each with fresh noise, run from t = 0 (SBDM:
        ``SAMPLE_EPS``, where its w is finite) to 1 - ``last_step_size``, and the last step
        (:meth:`_last_step`) ends at t = 1; without one (``None``) they stop at 1 -
        ``SAMPLE_EPS``. ``euler-maruyama`` makes 1 model call a step; ``heun-sde`` adds the
        noise first and then takes a Heun step of the drift (2 calls).
        """
        start = SAMPLE_EPS if self.diffusion_form == "SBDM" else 0.0
        end = 1.0 - (SAMPLE_EPS if self.last_step == "None" else self.last_step_size)
        times = torch.linspace(start, end, steps, dtype=torch.float64).tolist()
        h = times[1] - times[0]
        self._warn_if_unstable(sampler, times[:-1], h)

        def drift(x: torch.Tensor, t: float) -> torch.Tensor:
            v = velocity(x, t)
            tt = torch.full((x.shape[0],), t, device=x.device)
            return v - self._score_weight(t) * self._solve(v, x, tt)[1]

        for t in progress_bar(times[:-1], enabled=progress, desc=f"{sampler} sampling",
                              leave=False):
            kick = math.sqrt(2 * self.diffusion(t) * h) * randn_like(x, generator)
            if sampler == "euler-maruyama":
                x = x + h * drift(x, t) + kick
            else:
                x = x + kick
                slope = drift(x, t)
                x = x + 0.5 * h * (slope + drift(x + h * slope, t + h))
        return self._last_step(velocity, drift, x, end)

    def _warn_if_unstable(self, sampler: str, times: list[float], h: float) -> None:
        """Warn when the SDE's steps are too long for its drift, which the reference does
        not: the ``constant`` form (w = 1 as sigma goes to 0) at 50 steps gave 66-104x
        Heun's FD-domain on both SiT teachers (:meth:`_noise_growth`). The ``Mean`` last
        step is checked on its own, since more steps do not shorten it: from t = 0.96 the
        default form's multiplies the noise left by -1, the ``constant`` form's by -25."""
        growth, start, pull, at = self._noise_growth(sampler, times, h)
        problems = []
        if growth > UNSTABLE_GROWTH:
            problems.append(
                f"its drift pulls x toward the data at up to {pull:.0f} a unit of t (at t = "
                f"{at:.3g}), and its stochastic steps of {h:.3g} multiply the noise added at "
                f"t = {start:.3g} by {growth:.0f} where they should shrink it: take more than "
                f"{len(times) + 1} steps")
        if self.last_step == "Mean":
            t = times[-1] + h
            pull = self._pull(t)
            growth = abs(1 - self.last_step_size * pull)
            if growth > UNSTABLE_GROWTH:
                problems.append(
                    f"its last step (Mean, {self.last_step_size:g} long from t = {t:.2f}, where "
                    f"the pull is {pull:.0f}) multiplies the noise left by {growth:.0f}: take "
                    "last_step Tweedie or Euler")
        if problems:
            default = self.diffusion_form == "sigma"
            other = "" if default else " or take diffusion_form sigma (the default),"
            warnings.warn(
                f"{sampler} x {len(times) + 1} with diffusion_form {self.diffusion_form} "
                f"(diffusion_norm {self.diffusion_norm:g}) is unstable: {'; and '.join(problems)}"
                f";{other} or lower diffusion_norm", RuntimeWarning, stacklevel=4)

    def _noise_growth(self, sampler: str, times: list[float], h: float
                      ) -> tuple[float, float, float, float]:
        """How much the stochastic steps from ``times`` multiply the noise added at one of
        them by the last: the most over the steps, where it is added, and the strongest pull
        k (:meth:`_pull`) on the way, with its t.

        Off the data the drift pulls x back at the rate k, and a step of length h
        from t multiplies what is left by |1 - h k(t)| (Euler-Maruyama), or by
        |1 - h (k(t) + k(t + h)) / 2 + h^2 k(t) k(t + h) / 2| (Heun, whose second slope is at
        t + h). A stable chain's product of the later steps' factors stays below 1.
        """
        growth, worst, strongest = 1.0, (0.0, 0.0), (0.0, 0.0)
        for t in reversed(times):
            pulls = [(self._pull(t), t)]
            if sampler == "heun-sde":
                pulls.append((self._pull(t + h), t + h))
                (k, _), (k_end, _) = pulls
                growth *= abs(1 - h * (k + k_end) / 2 + h * h * k * k_end / 2)
            else:
                growth *= abs(1 - h * pulls[0][0])
            worst, strongest = max(worst, (growth, t)), max(strongest, *pulls)
        return (*worst, *strongest)

    def _pull(self, t: float) -> float:
        """The rate (w / sigma - sigma') / sigma at which the SDE's drift pulls x back toward
        the data, for a denoiser whose x0-hat moves with x / sigma off the data: the score's
        share and the velocity's (which an Euler step takes exactly on the linear path).
        Below ``RESOLVED_SIGMA`` a trained network's gain falls short of 1 / sigma, so the
        rate is taken there."""
        _, sigma, _, d_sigma = (c.item() for c in self.coefficients(
            torch.tensor(t, dtype=torch.float64)))
        return (self._score_weight(t) - d_sigma) / max(sigma, RESOLVED_SIGMA)

    def _last_step(self, velocity, drift, x: torch.Tensor, t: float) -> torch.Tensor:
        """From t to 1 without noise: ``Mean`` steps along the SDE's drift, ``Euler`` along
        the ODE's velocity, ``Tweedie`` jumps to the data estimate x1-hat, ``None`` stays."""
        if self.last_step == "None":
            return x
        if self.last_step == "Mean":
            return x + self.last_step_size * drift(x, t)
        v = velocity(x, t)
        if self.last_step == "Euler":
            return x + self.last_step_size * v
        return self._solve(v, x, torch.full((x.shape[0],), t, device=x.device))[0]  # Tweedie

    def diffusion(self, t: float) -> float:
        """The SDE's diffusion w(t) in the reference's ``diffusion_form``, scaled by
        ``diffusion_norm`` (``decreasing`` takes the norm inside, as the reference does)."""
        alpha, sigma, d_alpha, d_sigma = (
            c.item() for c in self.coefficients(torch.tensor(t, dtype=torch.float64)))
        norm, form = self.diffusion_norm, self.diffusion_form
        if form == "constant":
            return norm
        if form == "SBDM":  # the score model's SDE: the coefficient of the score in v
            return norm * (d_alpha / alpha * sigma**2 - sigma * d_sigma)
        if form == "sigma":
            return norm * sigma
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * math.cos(math.pi * t) + 1) ** 2
        return norm * math.sin(math.pi * t) ** 2  # increasing-decreasing

    def _score_weight(self, t: float) -> float:
        """w / sigma, the weight of -x0-hat in the drift; exact for the default form, where
        it is the norm at every t."""
        if self.diffusion_form == "sigma":
            return self.diffusion_norm
        sigma = self.coefficients(torch.tensor(t, dtype=torch.float64))[1].item()
        return self.diffusion(t) / sigma
