"""DiT's Gaussian diffusion: linear betas, epsilon prediction, learned-range variance, and
its samplers: DDPM, DDIM and DPM-Solver++(2M).

Everything is computed from float64 schedule arrays and gathered per timestep, as in the
reference implementation, so losses and samples match it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.objectives.base import (
    ModelFn,
    NoisedBatch,
    Objective,
    SplitGenerator,
    randn_like,
)
from entpruner_sdk.utils.progress import progress_bar


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """Linear schedule from 1e-4 to 0.02 (for 1000 steps; scaled for other lengths)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps evenly spread over 0..num_timesteps-1 (reference respacing)."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"steps must lie in 1..{num_timesteps}, got {count}")
    if count == 1:
        return [0]
    stride = (num_timesteps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def _check_respacing(steps: int) -> None:
    if steps == 1:  # the reference fails on an index building that process
        raise ValueError("a respaced schedule needs at least 2 timesteps: 1 would be t = 0 "
                         "alone (the reference's spacing), where nothing is left to denoise")


def trailing_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps from the last down to one stride above 0, in sampling order.

    "Trailing" spacing (Lin et al., 2024) starts at the noisiest timestep and leaves the last
    stride to a final jump to the data, as diffusers' ``timestep_spacing="trailing"`` does.
    DPM-Solver++ lands 1-8 dB closer to the ODE's solution this way (bundled teachers, 5 to 50
    steps) than on the respaced grid, whose short last stride to t = 0 makes its extrapolation
    overshoot.
    """
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"steps must lie in 1..{num_timesteps}, got {count}")
    stride = num_timesteps / count
    return [round(num_timesteps - k * stride) - 1 for k in range(count)]


class GaussianDiffusion(Objective):
    """Epsilon-prediction diffusion over ``len(betas)`` steps.

    ``learn_sigma``: the model's second C channels interpolate (in log space) between the
    posterior variance and beta_t, and the loss adds the variational-bound term. Otherwise the
    variance is fixed to the reference's "fixed large" choice.
    ``timestep_map`` maps a respaced schedule's indices back to the model's 0..999.
    """

    family = "dit"
    samplers = ("ddpm", "ddim", "dpm-solver++")
    default_sampler = "ddim"
    default_steps = 50

    def __init__(
        self,
        in_channels: int,
        learn_sigma: bool = True,
        betas: np.ndarray | None = None,
        timestep_map: list[int] | None = None,
    ) -> None:
        super().__init__(in_channels)
        self.learn_sigma = learn_sigma
        self.betas = linear_betas() if betas is None else np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        self.timestep_map = timestep_map or list(range(self.num_timesteps))
        alphas = 1.0 - self.betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = acp, acp_prev
        self.posterior_variance = self.betas * (1.0 - acp_prev) / (1.0 - acp)
        # log(0) at t=0 is avoided by borrowing t=1's value, as the reference does.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = self.betas * np.sqrt(acp_prev) / (1.0 - acp)
        self.posterior_mean_coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
        self.fixed_large_log_variance = np.log(
            np.append(self.posterior_variance[1], self.betas[1:])
        )

    @classmethod
    def for_model(cls, config: TransformerConfig) -> GaussianDiffusion:
        """The process a DiT with ``config`` was trained with (DiT's: linear betas)."""
        return cls(config.in_channels, learn_sigma=config.learn_sigma)

    def respace(self, steps: int) -> GaussianDiffusion:
        """The same process restricted to ``steps`` timesteps (new betas from alpha-bar)."""
        _check_respacing(steps)
        keep = space_timesteps(self.num_timesteps, steps)
        betas, last = [], 1.0
        for i in keep:
            betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        mapped = [self.timestep_map[i] for i in keep]
        return GaussianDiffusion(self.in_channels, self.learn_sigma, np.array(betas), mapped)

    # ------------------------------------------------------------------ forward process
    def sample_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device=device)

    def add_noise(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                  ) -> torch.Tensor:
        return (_gather(np.sqrt(self.alphas_cumprod), t, x_start) * x_start
                + _gather(np.sqrt(1.0 - self.alphas_cumprod), t, x_start) * noise)

    def times_at(self, levels: torch.Tensor) -> torch.Tensor:
        # t = 0 is the cleanest of the discrete timesteps, num_timesteps - 1 the noisiest
        return (levels * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)

    # ------------------------------------------------------------------ model output
    def denoised(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.prediction(output)
        return (_gather(np.sqrt(1.0 / self.alphas_cumprod), t, x_t) * x_t
                - _gather(np.sqrt(1.0 / self.alphas_cumprod - 1), t, x_t) * eps)

    def _eps_from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ((_gather(np.sqrt(1.0 / self.alphas_cumprod), t, x_t) * x_t - x0)
                / _gather(np.sqrt(1.0 / self.alphas_cumprod - 1), t, x_t))

    def log_variance(self, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-element log variance of p(x_{t-1} | x_t)."""
        if not self.learn_sigma:
            return _gather(self.fixed_large_log_variance, t, output[:, : self.in_channels])
        values = output[:, self.in_channels:]
        min_log = _gather(self.posterior_log_variance_clipped, t, values)
        max_log = _gather(np.log(self.betas), t, values)
        frac = (values + 1) / 2  # model output in [-1, 1] -> interpolation weight
        return frac * max_log + (1 - frac) * min_log

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                       ) -> torch.Tensor:
        return (_gather(self.posterior_mean_coef1, t, x_t) * x0
                + _gather(self.posterior_mean_coef2, t, x_t) * x_t)

    # ------------------------------------------------------------------ training loss
    def loss(self, output: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
        """MSE on epsilon, plus the variational bound for the learned variance (in bits).

        The VB term sees a detached mean so it trains only the variance, as in the reference.
        ``batch.t`` must index this object's own schedule.
        """
        eps = self.prediction(output)
        mse = ((eps - batch.noise) ** 2).mean(dim=(1, 2, 3))
        if not self.learn_sigma:
            return mse
        frozen = torch.cat([eps.detach(), output[:, self.in_channels:]], dim=1)
        return mse + self._vb_terms(frozen, batch)

    def _vb_terms(self, output: torch.Tensor, batch: NoisedBatch, clip: bool = False
                  ) -> torch.Tensor:
        """The bound's term at each sample's timestep in bits per dimension: KL(q(x_{t-1} |
        x_t, x_0) || p(x_{t-1} | x_t)), or at t = 0 the discretized decoder's NLL."""
        t, x_t, x_start = batch.t, batch.x_t, batch.x_start
        true_mean = self.posterior_mean(x_start, x_t, t)
        true_log_var = _gather(self.posterior_log_variance_clipped, t, x_t)
        log_var = self.log_variance(output, t)
        mean = self.posterior_mean(self._x0(output, x_t, t, clip), x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=(1, 2, 3)) / math.log(2)
        nll = -discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2)
        return torch.where(t == 0, nll, kl)

    # ------------------------------------------------------------------ likelihood
    def likelihood_steps(self, steps: int | None = None) -> int:
        steps = steps or self.num_timesteps
        _check_respacing(steps)
        return steps

    def bits_per_dim(self, model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, *,
                     generator: torch.Generator | SplitGenerator | None = None,
                     progress: bool = False, steps: int | None = None) -> torch.Tensor:
        """The variational bound of the DiT (ADM) reference's ``calc_bpd_loop``, in bits per
        dimension: the prior's KL, KL(q(x_T | x_0) || N(0, I)), plus one term a timestep
        (:meth:`_vb_terms`, x0-hat clipped to [-1, 1] as there). One model call a timestep:
        all 1000, or the ``steps`` of a respaced schedule: that chain's bound, which compares
        only with bounds over as many steps."""
        spaced = self.respace(steps) if steps else self
        n, last = x.shape[0], spaced.num_timesteps - 1
        noisiest = torch.full((n,), last, device=x.device, dtype=torch.long)
        prior_mean = _gather(np.sqrt(spaced.alphas_cumprod), noisiest, x) * x
        prior_log_var = _gather(np.log(1.0 - spaced.alphas_cumprod), noisiest, x)
        zero = torch.zeros_like(x)
        total = normal_kl(prior_mean, prior_log_var, zero, zero).mean(dim=(1, 2, 3)) / math.log(2)
        for i in progress_bar(range(last, -1, -1), enabled=progress, desc="variational bound",
                              leave=False):
            t = torch.full((n,), i, device=x.device, dtype=torch.long)
            noise = randn_like(x, generator)
            x_t = spaced.add_noise(x, noise, t)
            output = model_fn(x_t, torch.full_like(t, spaced.timestep_map[i]), y).float()
            total = total + spaced._vb_terms(output, NoisedBatch(x, noise, x_t, t, y), clip=True)
        return total

    # ------------------------------------------------------------------ sampling
    def min_steps(self, sampler: str) -> int:
        # DDPM's and DDIM's respaced grid of one step is t = 0 alone; DPM-Solver++'s trailing
        # grid starts at the noisiest timestep
        return 1 if sampler == "dpm-solver++" else 2

    def _why_min_steps(self, sampler: str) -> str:
        if sampler == "dpm-solver++":
            return ""
        return ("one would be taken at t = 0 (the reference's respacing), where nothing is "
                "left to denoise; dpm-solver++ takes 1 step, from the noisiest timestep")

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
        eta: float = 0.0,
    ) -> torch.Tensor:
        """DDPM (ancestral, learned variance) or DDIM (``eta`` = 0: deterministic) over
        ``steps`` respaced timesteps, or DPM-Solver++(2M) (deterministic, second order) over
        ``steps`` trailing timesteps."""
        sampler = self.check_sampler(sampler)
        steps = self.default_steps if steps is None else steps
        self.check_steps(sampler, steps)
        if sampler == "dpm-solver++":
            return self._sample_dpm_solver(model_fn, noise, y, steps, clip_denoised, progress)
        spaced = self.respace(steps)
        x = noise
        indices = range(spaced.num_timesteps - 1, -1, -1)
        for i in progress_bar(indices, enabled=progress, desc=f"{sampler} sampling", leave=False):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            model_t = torch.full_like(t, spaced.timestep_map[i])
            output = model_fn(x, model_t, y).float()
            step = spaced._ddpm_step if sampler == "ddpm" else spaced._ddim_step
            x = step(output, x, t, generator, clip_denoised, eta)
        return x

    def _x0(self, output, x, t, clip):
        x0 = self.denoised(output, x, t)
        return x0.clamp(-1, 1) if clip else x0

    def _ddpm_step(self, output, x, t, generator, clip, eta):
        mean = self.posterior_mean(self._x0(output, x, t, clip), x, t)
        noise = randn_like(x, generator) if t[0] > 0 else torch.zeros_like(x)
        return mean + torch.exp(0.5 * self.log_variance(output, t)) * noise

    def _ddim_step(self, output, x, t, generator, clip, eta):
        x0 = self._x0(output, x, t, clip)
        eps = self._eps_from_x0(x0, x, t)
        acp, acp_prev = _gather(self.alphas_cumprod, t, x), _gather(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - acp_prev) / (1 - acp)) * torch.sqrt(1 - acp / acp_prev)
        x = torch.sqrt(acp_prev) * x0 + torch.sqrt(1 - acp_prev - sigma**2) * eps
        if eta > 0 and t[0] > 0:
            x = x + sigma * randn_like(x, generator)
        return x

    def _sample_dpm_solver(self, model_fn, x, y, steps, clip, progress):
        """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2): the probability-flow ODE solved in
        lambda = log(alpha / sigma) for the data prediction x0, which is smooth in lambda.

        Each step is DDIM's first-order step with x0 replaced by a linear extrapolation from
        the previous step's x0, so the error falls as 1 / steps^2. The timesteps trail (see
        ``trailing_timesteps``), and the last step jumps from the last one to the data
        (sigma = 0), where the step returns x0 itself.
        """
        timesteps = trailing_timesteps(self.num_timesteps, steps)
        acp = [float(self.alphas_cumprod[t]) for t in timesteps]
        lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in acp]
        previous_x0, previous_h = None, None
        for k in progress_bar(range(len(timesteps)), enabled=progress,
                              desc="dpm-solver++ sampling", leave=False):
            t = torch.full((x.shape[0],), timesteps[k], device=x.device, dtype=torch.long)
            model_t = torch.full_like(t, self.timestep_map[timesteps[k]])
            x0 = self._x0(model_fn(x, model_t, y).float(), x, t, clip)
            if k == len(timesteps) - 1:
                break  # the jump to sigma = 0 lands on x0
            h = lam[k + 1] - lam[k]
            estimate = x0 if previous_x0 is None else x0 + (x0 - previous_x0) * h / (2 * previous_h)
            # x_next = sigma_next / sigma * x - alpha_next * (exp(-h) - 1) * x0 estimate
            sigma_ratio = math.sqrt((1 - acp[k + 1]) / (1 - acp[k]))
            x = sigma_ratio * x - math.sqrt(acp[k + 1]) * math.expm1(-h) * estimate
            previous_x0, previous_h = x0, h
        return x0


def _gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] as a float tensor broadcastable against ``like`` ([N, 1, 1, 1])."""
    out = torch.from_numpy(values).to(device=t.device)[t.long()].float()
    return out.reshape(-1, *([1] * (like.dim() - 1))).to(like.device)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under a Gaussian."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min,
                    torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs
