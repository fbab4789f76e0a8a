"""Objectives and samplers checked against data whose exact answers are known: for Gaussian
data N(mu, s^2) the optimal epsilon / velocity predictors are closed-form."""

import math
import warnings

import numpy as np
import pytest
import torch

from entpruner_sdk.objectives import (
    FlowMatching,
    GaussianDiffusion,
    NoisedBatch,
    StepLimitExceeded,
    guided,
    noise_levels,
    objective_for,
)
from entpruner_sdk.objectives.diffusion import space_timesteps, trailing_timesteps
from entpruner_sdk.sampling import sample
from entpruner_sdk.utils import progress
from entpruner_sdk.utils.timing import CallCounter

MU, S = 0.5, 0.3


def gaussian_eps_model(diffusion: GaussianDiffusion):
    acp = torch.from_numpy(diffusion.alphas_cumprod).float()

    def model(x, t, y):
        a, b = acp[t].sqrt().view(-1, 1, 1, 1), (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        return b * (x - a * MU) / (a**2 * S**2 + b**2)

    return model


def gaussian_velocity_model(x, t, y):
    t = t.view(-1, 1, 1, 1)
    var = t**2 * S**2 + (1 - t) ** 2
    x1 = MU + t * S**2 * (x - t * MU) / var
    x0 = (1 - t) * (x - t * MU) / var
    return x1 - x0


def test_respacing_keeps_alpha_bar():
    full = GaussianDiffusion(1, learn_sigma=False)
    assert full.respace(1000).timestep_map == list(range(1000))
    spaced = full.respace(25)
    assert spaced.num_timesteps == 25 and spaced.timestep_map == space_timesteps(1000, 25)
    assert np.allclose(spaced.alphas_cumprod, full.alphas_cumprod[spaced.timestep_map])
    assert spaced.timestep_map[0] == 0 and spaced.timestep_map[-1] == 999
    with pytest.raises(ValueError, match="1..1000"):
        full.respace(0)


def test_linear_schedule_matches_the_facts():
    betas = GaussianDiffusion(1).betas
    assert len(betas) == 1000 and betas[0] == pytest.approx(1e-4) and betas[-1] == 0.02


@pytest.mark.parametrize("steps", [250])
def test_ddim_with_many_steps_is_close_to_ddpm(steps):
    diffusion = GaussianDiffusion(1, learn_sigma=False)
    model = gaussian_eps_model(diffusion)
    noise = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4000, dtype=torch.long)
    ddpm = diffusion.sample(model, noise, y, sampler="ddpm", steps=steps,
                            generator=torch.Generator().manual_seed(1))
    ddim = diffusion.sample(model, noise, y, sampler="ddim", steps=steps)
    for samples in (ddpm, ddim):
        assert abs(samples.mean() - MU) < 0.02 and abs(samples.std() - S) < 0.02
    assert abs(ddpm.std() - ddim.std()) < 0.02 and abs(ddpm.mean() - ddim.mean()) < 0.02


def test_ddim_at_eta_1_is_ddpm_with_the_posterior_variance():
    """DDIM's eta = 1 step is the DDPM posterior (Song et al., eq. 16): with a learned variance
    at its lower bound, the posterior's own, both draw the same trajectory from one noise."""
    diffusion = GaussianDiffusion(1, learn_sigma=True)
    eps = gaussian_eps_model(diffusion)

    def model(x, t, y):  # the variance output -1 selects the lower bound (learned range)
        return torch.cat([eps(x, t, y), -torch.ones_like(x)], dim=1)

    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(64, dtype=torch.long)
    ddpm, ddim = (diffusion.sample(model, noise, y, sampler=sampler, steps=20, eta=1.0,
                                   generator=torch.Generator().manual_seed(1))
                  for sampler in ("ddpm", "ddim"))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)
    deterministic = diffusion.sample(model, noise, y, sampler="ddim", steps=20,
                                     generator=torch.Generator().manual_seed(1))
    assert (deterministic - ddpm).abs().max() > 0.01  # eta = 0 draws no noise


def gaussian_flow_map(diffusion: GaussianDiffusion, noise: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE takes noise at t = 999 for data N(MU, S^2): every
    marginal is Gaussian, so the map keeps each value's standard score."""
    a2 = diffusion.alphas_cumprod[-1]
    return MU + S * (noise - a2**0.5 * MU) / (a2 * S**2 + 1 - a2) ** 0.5


def test_dpm_solver_converges_at_second_order_where_ddim_converges_at_first():
    diffusion = GaussianDiffusion(1, learn_sigma=False)
    model = gaussian_eps_model(diffusion)
    noise = torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(512, dtype=torch.long)
    exact = gaussian_flow_map(diffusion, noise)
    error = {(sampler, steps): (diffusion.sample(model, noise, y, sampler=sampler, steps=steps)
                                - exact).abs().max().item()
             for sampler in ("ddim", "dpm-solver++") for steps in (40, 80)}
    # doubling the steps halves DDIM's error, and cuts DPM-Solver++'s by 4x or more
    assert error["ddim", 80] > error["ddim", 40] / 2.5
    assert error["dpm-solver++", 80] < error["dpm-solver++", 40] / 4
    assert error["dpm-solver++", 40] < error["ddim", 40] / 3
    assert error["dpm-solver++", 80] < 0.01


def test_dpm_solver_is_diffusers_multistep_solver_on_trailing_timesteps():
    diffusers = pytest.importorskip("diffusers")
    assert trailing_timesteps(1000, 10) == list(range(999, 0, -100))
    assert trailing_timesteps(1000, 7) == [999, 856, 713, 570, 428, 285, 142]
    assert trailing_timesteps(1000, 1) == [999]
    diffusion = GaussianDiffusion(1, learn_sigma=True)
    eps = gaussian_eps_model(diffusion)

    def model(x, t, y):  # a learned variance rides along; the ODE solver ignores it
        return torch.cat([eps(x, t, y), torch.full_like(x, 0.3)], dim=1)

    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(64, dtype=torch.long)
    for steps in (1, 2, 7, 20):
        scheduler = diffusers.DPMSolverMultistepScheduler(
            beta_schedule="linear", beta_start=1e-4, beta_end=0.02, solver_order=2,
            algorithm_type="dpmsolver++", timestep_spacing="trailing", final_sigmas_type="zero")
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == trailing_timesteps(1000, steps)
        x = noise
        for t in scheduler.timesteps:
            x = scheduler.step(eps(x, t.repeat(64), y), t, x).prev_sample
        ours = diffusion.sample(model, noise, y, sampler="dpm-solver++", steps=steps)
        torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_ddpm_and_ddim_need_two_steps_where_dpm_solver_takes_one():
    """One respaced step is t = 0 alone (the reference's spacing), where the reference fails on
    an index: a clear error instead; DPM-Solver++'s one step starts at the noisiest timestep."""
    diffusion = GaussianDiffusion(1, learn_sigma=False)
    model = gaussian_eps_model(diffusion)
    noise = torch.randn(2000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(len(noise), dtype=torch.long)
    for sampler in ("ddpm", "ddim"):
        assert diffusion.min_steps(sampler) == 2
        with pytest.raises(ValueError, match=rf"sampler '{sampler}' needs at least 2 steps, got "
                                             r"1: one would be taken at t = 0 .*dpm-solver\+\+ "
                                             r"takes 1 step"):
            diffusion.sample(model, noise, y, sampler=sampler, steps=1)
        two = diffusion.sample(model, noise, y, sampler=sampler, steps=2,
                               generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(two).all()
    one = diffusion.sample(model, noise, y, sampler="dpm-solver++", steps=1)
    assert diffusion.min_steps("dpm-solver++") == 1
    assert abs(one.mean() - MU) < 0.05  # the exact model's one jump lands on the data's mean
    with pytest.raises(ValueError, match="a respaced schedule needs at least 2 timesteps"):
        diffusion.bits_per_dim(model, noise[:4], y[:4], steps=1)
    with pytest.raises(ValueError, match=r"sampler 'dpm-solver\+\+' needs at least 1 step, "
                                         r"got 0$"):
        diffusion.sample(model, noise, y, sampler="dpm-solver++", steps=0)


def test_learned_range_variance_interpolates_between_the_bounds():
    diffusion = GaussianDiffusion(1, learn_sigma=True)
    t = torch.tensor([10, 500])
    eps, ones = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    high = diffusion.log_variance(torch.cat([eps, ones], 1), t)
    low = diffusion.log_variance(torch.cat([eps, -ones], 1), t)
    betas = torch.tensor(diffusion.betas[[10, 500]])
    assert torch.allclose(high[:, 0, 0, 0], torch.log(betas).float())
    clipped = diffusion.posterior_log_variance_clipped[[10, 500]]
    assert torch.allclose(low[:, 0, 0, 0], torch.tensor(clipped).float())


def test_diffusion_loss_is_mse_plus_vb_and_vb_trains_only_the_variance():
    diffusion = GaussianDiffusion(1, learn_sigma=True)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 400, 999])
    batch = NoisedBatch(x0, noise, diffusion.add_noise(x0, noise, t), t, torch.zeros(4).long())
    output = torch.cat([noise, torch.zeros_like(x0)], 1).requires_grad_(True)
    loss = diffusion.loss(output, batch)
    assert loss.shape == (4,) and torch.isfinite(loss).all() and (loss >= 0).all()
    assert loss[0] > 0.1  # t = 0: the discretised decoder NLL
    loss.sum().backward()
    assert torch.count_nonzero(output.grad[:, :1]) == 0  # eps exact: MSE gradient is zero
    assert torch.count_nonzero(output.grad[:, 1:]) > 0  # the VB term trains the variance
    fixed = GaussianDiffusion(1, learn_sigma=False)
    assert torch.allclose(fixed.loss(noise + 0.1, batch), torch.full((4,), 0.01))


def test_heun_beats_euler_at_equal_steps_on_a_known_flow():
    flow = FlowMatching(1)
    noise = torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = MU + S * noise  # the probability-flow map of Gaussian -> Gaussian is affine
    y = torch.zeros(512, dtype=torch.long)
    errors = {name: (flow.sample(gaussian_velocity_model, noise, y, sampler=name, steps=8)
                     - exact).abs().max().item() for name in ("euler", "heun")}
    assert errors["heun"] < errors["euler"] / 5
    fine = flow.sample(gaussian_velocity_model, noise, y, sampler="heun", steps=64)
    assert torch.allclose(fine, exact, atol=1e-3)


def test_dopri5_solves_a_known_flow_to_its_tolerance_in_few_calls():
    noise = torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    exact, y = MU + S * noise, torch.zeros(512, dtype=torch.long)
    errors, calls = {}, {}
    counted = []

    def model(x, t, y):
        counted.append(1)
        return gaussian_velocity_model(x, t, y)

    for rtol in (1e-3, 1e-6):
        counted.clear()
        flow = FlowMatching(1, atol=rtol * 1e-3, rtol=rtol)  # the reference's 1e-6 / 1e-3
        out = flow.sample(model, noise, y, sampler="dopri5", steps=100)
        errors[rtol], calls[rtol] = (out - exact).abs().max().item(), len(counted)
    # At the reference's tolerances: closer than Heun with as many model calls (2 a step).
    heun = FlowMatching(1).sample(gaussian_velocity_model, noise, y, sampler="heun",
                                  steps=calls[1e-3] // 2)
    assert calls[1e-3] < 64 and errors[1e-3] < (heun - exact).abs().max().item()
    assert errors[1e-6] < 1e-5 < errors[1e-3] and calls[1e-6] > calls[1e-3]
    # steps caps its step attempts, 6 model calls each after 2 to choose the first step
    steps = (calls[1e-3] - 2) // 6 - 1
    with pytest.raises(StepLimitExceeded, match=f"more than {steps} steps .* loosen the"):
        FlowMatching(1).sample(gaussian_velocity_model, noise, y, sampler="dopri5", steps=steps)
    with pytest.raises(ValueError, match="tolerances must be positive"):
        FlowMatching(1, rtol=0)


def test_dopri5_progress_follows_t_to_1_and_counts_the_model_calls(monkeypatch, capsys):
    monkeypatch.delenv("ENTPRUNER_QUIET")
    monkeypatch.setattr(progress, "LOG_REDRAW_S", 0.0)  # every call drawn, the last one too
    noise = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    counted = []

    def model(x, t, y):
        counted.append(1)
        return gaussian_velocity_model(x, t, y)

    FlowMatching(1).sample(model, noise, torch.zeros(8, dtype=torch.long), sampler="dopri5",
                           steps=100, progress=True)
    shown = capsys.readouterr().err
    # not the cap's 602 calls: the bar ends at t = 1 with the calls the solver made
    assert "| t 1.000/1 [" in shown and f", {len(counted)} model calls]" in shown
    assert len(counted) < 100 and "/602" not in shown


@pytest.mark.parametrize("sampler", ["euler-maruyama", "heun-sde"])
def test_sde_warns_when_its_steps_are_too_long_for_its_drift(sampler):
    """Checked against what sit-digits measured (FD-domain, 200 samples, cfg 2; Heun x 25:
    0.81): the constant form with the Mean last step at 250 steps 25.1, with Tweedie 0.82;
    SBDM x 10 1.07-1.09 and the default form's heun-sde x 10 1.02, x 5 14.2; heun-sde x 50
    without a last step 0.75."""
    noise, y = torch.randn(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)

    def sample(steps, **settings):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            FlowMatching(1, **settings).sample(lambda x, t, y: -x, noise, y, sampler=sampler,
                                               steps=steps)
        assert all(w.category is RuntimeWarning for w in caught)
        return " ".join(str(w.message) for w in caught)

    for steps in (10, 50, 250):  # the default form
        assert sample(steps) == ""
    assert sample(50, last_step=None) == ""
    assert sample(10, diffusion_form="SBDM") == ""
    assert sample(250, diffusion_form="constant", last_step="Tweedie") == ""
    # more steps do not shorten the Mean last step: from t = 0.96 its pull is 26 / 0.04
    last = sample(250, diffusion_form="constant")
    assert f"{sampler} x 250 with diffusion_form constant (diffusion_norm 1) is unstable" in last
    assert ("its last step (Mean, 0.04 long from t = 0.96, where the pull is 650) multiplies "
            "the noise left by 25: take last_step Tweedie or Euler") in last
    assert "more than" not in last and "or take diffusion_form sigma (the default)" in last
    steps = sample(50, diffusion_form="constant", last_step="Tweedie")
    assert "its stochastic steps of 0.0196 multiply the noise" in steps
    assert "take more than 50 steps" in steps and "last step" not in steps
    # the default form, pushed tenfold: both, and no advice to take the form it has
    both = sample(50, diffusion_norm=10)
    assert "take more than 50 steps" in both and "take last_step Tweedie" in both
    assert both.endswith("or lower diffusion_norm") and "take diffusion_form" not in both
    if sampler == "heun-sde":  # Heun's second slope, from t = 0.72 at 5 steps, at t = 0.96
        assert "take more than 5 steps" in sample(5)


def reference_sde(model, x, sampler, steps, generator, form="sigma", norm=1.0, last="Mean",
                  size=0.04):
    """The SiT reference's ``sample_sde`` for the linear path, written in its own terms: the
    score from the velocity, the diffusion in ``compute_diffusion``'s forms, the interval of
    ``check_interval`` (sample_eps 1e-3), noise sqrt(2 w) dW and its four last steps."""
    def score(x, t):
        v = model(x, torch.full((x.shape[0],), t), None)
        return (t * v - x) / ((1 - t) ** 2 + t * (1 - t))  # alpha / alpha' = t, sigma' = -1

    def diffusion(t):
        return {"constant": lambda: norm, "SBDM": lambda: norm * ((1 - t) ** 2 / t + (1 - t)),
                "sigma": lambda: norm * (1 - t), "linear": lambda: norm * (1 - t),
                "decreasing": lambda: 0.25 * (norm * math.cos(math.pi * t) + 1) ** 2,
                "increasing-decreasing": lambda: norm * math.sin(math.pi * t) ** 2}[form]()

    def velocity(x, t):
        return model(x, torch.full((x.shape[0],), t), None)

    def drift(x, t):
        return velocity(x, t) + diffusion(t) * score(x, t)

    size = 0.0 if last is None else size
    t0 = 1e-3 if form == "SBDM" else 0.0
    t1 = 1 - 1e-3 if size == 0 else 1 - size
    ts = torch.linspace(t0, t1, steps, dtype=torch.float64).tolist()
    dt = ts[1] - ts[0]
    for t in ts[:-1]:
        dw = torch.randn(x.shape, generator=generator) * dt**0.5
        noise = (2 * diffusion(t)) ** 0.5 * dw
        if sampler == "euler-maruyama":
            x = x + drift(x, t) * dt + noise
        else:
            x_hat = x + noise
            k1 = drift(x_hat, t)
            x = x_hat + 0.5 * dt * (k1 + drift(x_hat + dt * k1, t + dt))
    if last == "Mean":
        return x + drift(x, t1) * size
    if last == "Euler":
        return x + velocity(x, t1) * size
    if last == "Tweedie":  # alpha = t, sigma = 1 - t
        return x / t1 + (1 - t1) ** 2 / t1 * score(x, t1)
    return x


@pytest.mark.parametrize("sampler", ["euler-maruyama", "heun-sde"])
def test_sde_samplers_follow_the_reference_recurrence(sampler):
    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(64, dtype=torch.long)
    for norm, last in [(1.0, 0.04), (0.5, 0.1)]:
        ours = FlowMatching(1, diffusion_norm=norm, last_step_size=last).sample(
            gaussian_velocity_model, noise, y, sampler=sampler, steps=7,
            generator=torch.Generator().manual_seed(5))
        theirs = reference_sde(gaussian_velocity_model, noise, sampler, 7,
                               torch.Generator().manual_seed(5), norm=norm, size=last)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.* is unstable:RuntimeWarning")  # 12 steps, some forms
@pytest.mark.parametrize("form", ["constant", "SBDM", "sigma", "linear", "decreasing",
                                  "increasing-decreasing"])
@pytest.mark.parametrize("last", ["Mean", "Tweedie", "Euler", None])
def test_every_reference_diffusion_form_and_last_step(form, last):
    """``sample.py SDE --diffusion-form F --last-step L``: each pair gives the reference's
    samples, and each form and each last step gives other samples than the default."""
    noise = torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(32, dtype=torch.long)
    flow = FlowMatching(1).with_sampler_settings("heun-sde", diffusion_form=form.upper(),
                                                 diffusion_norm=0.8, last_step=last)
    assert (flow.diffusion_form, flow.last_step) == (form, last or "None")  # any case
    for sampler in ("euler-maruyama", "heun-sde"):
        ours = flow.sample(gaussian_velocity_model, noise, y, sampler=sampler, steps=12,
                           generator=torch.Generator().manual_seed(5))
        theirs = reference_sde(gaussian_velocity_model, noise, sampler, 12,
                               torch.Generator().manual_seed(5), form, 0.8, last)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    default = FlowMatching(1, diffusion_norm=0.8).sample(
        gaussian_velocity_model, noise, y, sampler="heun-sde", steps=12,
        generator=torch.Generator().manual_seed(5))
    if (form, last) not in {("sigma", "Mean"), ("linear", "Mean")}:  # linear is sigma here
        assert not torch.allclose(ours, default, atol=1e-3)
    # the model calls: one a step (two for heun-sde), and the last step's unless it is None
    counter = CallCounter()
    flow.sample(counter.wrap(gaussian_velocity_model), noise, y, sampler="euler-maruyama",
                steps=12, generator=torch.Generator().manual_seed(5))
    assert counter.calls == 11 + (last is not None)


def test_sde_without_diffusion_is_the_ode_on_its_grid():
    # 24 steps of 0.04 to t = 0.96 and the last step of 0.04: Euler's 25 uniform steps
    noise = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(16, dtype=torch.long)
    sde = FlowMatching(1, diffusion_norm=0).sample(gaussian_velocity_model, noise, y,
                                                    sampler="euler-maruyama", steps=25)
    ode = FlowMatching(1).sample(gaussian_velocity_model, noise, y, sampler="euler", steps=25)
    torch.testing.assert_close(sde, ode, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["euler-maruyama", "heun-sde"])
def test_sde_samplers_reach_the_data_distribution(sampler):
    flow = FlowMatching(1)
    noise = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = flow.sample(gaussian_velocity_model, noise, torch.zeros(4000).long(),
                      sampler=sampler, steps=250, generator=torch.Generator().manual_seed(3))
    assert abs(out.mean() - MU) < 0.02 and abs(out.std() - S) < 0.02
    assert not torch.allclose(out, MU + S * noise, atol=1e-2)  # it really is stochastic


def test_sde_settings_are_checked():
    noise, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 2 steps"):
        FlowMatching(1).sample(gaussian_velocity_model, noise, y, sampler="heun-sde", steps=1)
    with pytest.raises(ValueError, match="diffusion_norm must be >= 0"):
        FlowMatching(1, diffusion_norm=-1)
    with pytest.raises(ValueError, match=r"last_step_size must be in \(0, 1\)"):
        FlowMatching(1, last_step_size=0)


@pytest.mark.parametrize("ours,theirs", [("euler", "euler"), ("heun", "heun2")])
def test_fixed_step_odes_are_the_reference_ode_on_its_grid(ours, theirs):
    """The reference's ``sample.py ODE --sampling-method euler|heun2 --num-sampling-steps N``
    runs torchdiffeq's fixed-grid solver on linspace(0, 1, N): N - 1 steps, ours at
    ``steps=N - 1``."""
    from torchdiffeq import odeint

    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)
    num_sampling_steps = 8

    def drift(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return gaussian_velocity_model(x, torch.ones(len(x)) * t, y)

    reference = odeint(drift, noise, torch.linspace(0, 1, num_sampling_steps), method=theirs)[-1]
    got = FlowMatching(1).sample(gaussian_velocity_model, noise, y, sampler=ours,
                                 steps=num_sampling_steps - 1)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, FlowMatching(1).sample(  # one step more is another grid
        gaussian_velocity_model, noise, y, sampler=ours, steps=num_sampling_steps), atol=1e-5)


def test_sampler_settings_change_only_what_is_named_and_only_where_they_apply():
    flow = FlowMatching(1, path="gvp")
    tuned = flow.with_sampler_settings("heun-sde", diffusion_norm=0.5)
    assert tuned.path == "gvp" and flow.diffusion_norm == 1.0  # a new objective, same path
    assert tuned.sampler_settings == {**flow.sampler_settings, "diffusion_norm": 0.5}
    assert tuned.settings_for("heun-sde") == {"diffusion_form": "sigma", "diffusion_norm": 0.5,
                                              "last_step": "Mean", "last_step_size": 0.04}
    # without a last step its size governs nothing, so it is neither stated nor taken
    assert "last_step_size" not in tuned.with_sampler_settings(
        "heun-sde", last_step=None).settings_for("heun-sde")
    with pytest.raises(ValueError, match="last_step None takes none: drop one"):
        flow.with_sampler_settings("heun-sde", last_step="none", last_step_size=0.1)
    assert tuned.settings_for("dopri5") == {"atol": 1e-6, "rtol": 1e-3}
    assert tuned.settings_for(None) == {} == GaussianDiffusion(1).settings_for("ddim")
    assert flow.with_sampler_settings("heun") is flow
    # the samples follow the new setting: no diffusion is the ODE on the SDE's grid
    noise, y = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(
        4, dtype=torch.long)
    ode = FlowMatching(1).with_sampler_settings("euler-maruyama", diffusion_norm=0.0)
    with_noise = [ode.sample(gaussian_velocity_model, noise, y, sampler="euler-maruyama",
                             steps=10, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(*with_noise)  # the seed drives no noise
    assert not torch.equal(*[flow.sample(gaussian_velocity_model, noise, y,
                                         sampler="euler-maruyama", steps=10,
                                         generator=torch.Generator().manual_seed(s))
                             for s in (1, 2)])
    with pytest.raises(ValueError, match="atol sets only dopri5; diffusion_norm sets only "
                                         "euler-maruyama and heun-sde, not heun"):
        flow.with_sampler_settings("heun", atol=1e-3, diffusion_norm=0.5)
    with pytest.raises(ValueError, match="no setting tolerance; it takes atol, rtol, "
                                         "diffusion_form, diffusion_norm, last_step, "
                                         "last_step_size"):
        flow.with_sampler_settings(tolerance=1e-3)
    with pytest.raises(ValueError, match="diffusion_norm must be >= 0"):
        flow.with_sampler_settings(diffusion_norm=-1)
    with pytest.raises(ValueError, match="unknown SDE diffusion_form 'vp'; choose one of "
                                         "constant, SBDM, sigma, linear, decreasing"):
        flow.with_sampler_settings(diffusion_form="vp")
    with pytest.raises(ValueError, match="unknown SDE last_step 'Heun'; choose one of Mean, "
                                         "Tweedie, Euler, None"):
        flow.with_sampler_settings(last_step="Heun")
    with pytest.raises(ValueError, match="must be finite numbers, got atol='1e-3'"):
        flow.with_sampler_settings("dopri5", atol="1e-3")
    with pytest.raises(ValueError, match="DIT sampling has no setting atol; it takes none"):
        GaussianDiffusion(1).with_sampler_settings(atol=1e-3)


@pytest.mark.parametrize("path", ["linear", "gvp"])
def test_flow_paths_velocity_and_denoised_estimate(path):
    flow = FlowMatching(1, path=path)
    x1, x0 = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t = torch.tensor([0.1, 0.5, 0.9])
    batch = NoisedBatch(x1, x0, flow.add_noise(x1, x0, t), t, torch.zeros(3).long())
    target = flow.velocity_target(batch)
    h = 1e-3
    numeric = (flow.add_noise(x1, x0, t + h) - flow.add_noise(x1, x0, t - h)) / (2 * h)
    assert torch.allclose(target, numeric, atol=1e-2)
    assert torch.allclose(flow.denoised(target, batch.x_t, t), x1, atol=1e-5)
    assert torch.allclose(flow.loss(target, batch), torch.zeros(3), atol=1e-10)
    with pytest.raises(ValueError, match="linear, gvp"):
        FlowMatching(1, path="cosine")


def test_diffusion_denoised_recovers_x0_from_the_true_noise():
    diffusion = GaussianDiffusion(1, learn_sigma=False)
    x0, noise, t = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2), torch.tensor([5, 300, 900])
    assert torch.allclose(diffusion.denoised(noise, diffusion.add_noise(x0, noise, t), t), x0,
                          atol=1e-3)


def test_calibration_times_span_the_schedule_cleanest_first():
    times = GaussianDiffusion(1).calibration_times(8)
    assert times.dtype == torch.long and times.tolist() == sorted(times.tolist())
    assert times.min() < 100 and times.max() > 900
    flow_times = FlowMatching(1).calibration_times(4)  # SiT's t = 1 is data
    assert torch.allclose(flow_times, torch.tensor([0.875, 0.625, 0.375, 0.125]))


def test_calibration_times_at_given_noise_levels():
    assert GaussianDiffusion(1).calibration_times([0.0, 0.5, 1.0]).tolist() == [0, 500, 999]
    assert FlowMatching(1).calibration_times((0.0, 0.25, 1.0)).tolist() == [1.0, 0.75, 0.0]
    for grid, problem in [(0, "at least 1 timestep"), ([], "noise levels in"),
                          ([0.2, 1.5], "noise levels in"), ("0.5", "a number of timesteps"),
                          (0.5, "a number of timesteps"), (["x"], "a number of timesteps")]:
        with pytest.raises(ValueError, match=problem):
            noise_levels(grid)


def test_guidance_mixes_the_prediction_and_passes_the_rest():
    def model(x, t, y):  # channel c = label + c, so cond/uncond differ per channel
        base = y.float().view(-1, 1, 1, 1)
        return torch.cat([base + c for c in range(5)], dim=1).expand(-1, -1, 2, 2)

    x, t, y = torch.zeros(2, 1, 2, 2), torch.zeros(2), torch.tensor([2, 3])
    out = guided(model, 3.0, null_class=10, guided_channels=4)(x, t, y)
    cond, uncond = model(x, t, y), model(x, t, torch.tensor([10, 10]))
    assert torch.allclose(out[:, :4], uncond[:, :4] + 3 * (cond[:, :4] - uncond[:, :4]))
    assert torch.equal(out[:, 4:], cond[:, 4:])
    quirk = guided(model, 3.0, null_class=10, guided_channels=4, reference_quirk=True)(x, t, y)
    assert torch.equal(quirk[:, :3], out[:, :3]) and torch.equal(quirk[:, 3:], cond[:, 3:])
    assert guided(model, 1.0, 10, 4) is model


@pytest.mark.parametrize("family,sampler", [("dit", "ddpm"), ("dit", "ddim"),
                                            ("dit", "dpm-solver++"), ("sit", "heun"),
                                            ("sit", "euler-maruyama"), ("sit", "heun-sde"),
                                            ("sit", "dopri5")])
def test_seeded_sampling_is_reproducible(family, sampler, tiny_dit, tiny_sit):
    model = tiny_dit if family == "dit" else tiny_sit
    steps = 20 if sampler == "dopri5" else 5  # dopri5's cap; it takes about 8 here
    kwargs = dict(sampler=sampler, steps=steps, cfg_scale=2.0, device="cpu")
    a = sample(model, [1, 2, 3], seed=11, **kwargs)
    b = sample(model, [1, 2, 3], seed=11, **kwargs)
    c = sample(model, [1, 2, 3], seed=12, **kwargs)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_sampling_defaults_are_the_familys_evaluation_settings(family, tiny_dit, tiny_sit,
                                                               capsys):
    from entpruner_sdk.objectives import OBJECTIVES
    from entpruner_sdk.teachers import SAMPLING

    model = tiny_dit if family == "dit" else tiny_sit
    defaults = OBJECTIVES[family].sampling_defaults()
    # one set of defaults: what the teachers are evaluated with, and the server's and demo's
    assert defaults == SAMPLING[family] == {
        "dit": {"sampler": "ddim", "steps": 50, "cfg_scale": 2.0},
        "sit": {"sampler": "heun", "steps": 25, "cfg_scale": 2.0}}[family]
    counter = CallCounter()
    left_out = sample(model, [1, 2], seed=3, device="cpu", counter=counter)
    assert torch.equal(left_out, sample(model, [1, 2], seed=3, device="cpu", **defaults))
    assert not torch.equal(left_out, sample(model, [1, 2], seed=3, device="cpu", cfg_scale=1.0))
    assert counter.calls == 50  # DDIM x 50, or Heun x 25 at 2 calls a step
    # what is given is kept, the rest filled in
    objective = objective_for(model)
    assert objective.settle_sampling(steps=7) == {**defaults, "steps": 7}
    assert objective.settle_sampling(cfg_scale=0.0)["cfg_scale"] == 0.0
    # the command line's help, written out so --help imports no torch, says the same
    from entpruner_sdk.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert (f"{defaults['steps']} for {dict(dit='DiT', sit='SiT')[family]}" in said
            and f"(default {defaults['cfg_scale']:g};" in said
            and f"(default {defaults['sampler']};" in said)
    other = "heun" if family == "dit" else "ddim"  # the other family's
    with pytest.raises(ValueError, match=f"unknown sampler '{other}' for {family.upper()}"):
        objective.settle_sampling(other)


def test_sampling_in_batches_seeds_batch_b_with_seed_plus_b(tiny_sit):
    run = dict(sampler="euler-maruyama", steps=4, cfg_scale=2.0, device="cpu")  # noisy steps
    batched = sample(tiny_sit, [1, 2, 3, 4, 5], seed=7, batch_size=2, **run)
    assert torch.equal(batched, torch.cat([sample(tiny_sit, [1, 2], seed=7, **run),
                                           sample(tiny_sit, [3, 4], seed=8, **run),
                                           sample(tiny_sit, [5], seed=9, **run)]))
    # as many labels as a batch, or fewer: the one call seeded with seed, as without batches
    assert torch.equal(sample(tiny_sit, [1, 2], seed=7, batch_size=2, **run),
                       sample(tiny_sit, [1, 2], seed=7, **run))
    # noise given: each batch takes its own rows of it
    noise, ode = torch.randn(3, 1, 8, 8), dict(sampler="euler", steps=3)
    assert torch.equal(sample(tiny_sit, [1, 2, 3], noise=noise, batch_size=2, **ode),
                       torch.cat([sample(tiny_sit, [1, 2], noise=noise[:2], **ode),
                                  sample(tiny_sit, [3], noise=noise[2:], **ode)]))
    with pytest.raises(ValueError, match="batch_size=0: at least 1 image at a time"):
        sample(tiny_sit, [1], batch_size=0)


def test_sample_batches_makes_each_batch_only_when_it_is_asked_for(tiny_sit):
    from entpruner_sdk.sampling import sample_batches

    run = dict(sampler="euler", steps=3, device="cpu")
    with CallCounter(tiny_sit) as calls:
        batches = sample_batches(tiny_sit, [1, 2, 3, 4, 5], 2, seed=7, **run)
        first = next(batches)
        assert calls.calls == 3  # the first batch's three steps, not the others'
        rest = list(batches)
    assert calls.calls == 9 and [len(b) for b in [first, *rest]] == [2, 2, 1]
    assert torch.equal(torch.cat([first, *rest]),
                       sample(tiny_sit, [1, 2, 3, 4, 5], seed=7, batch_size=2, **run))
    with pytest.raises(ValueError, match="batch_size=0: at least 1 image at a time"):
        sample_batches(tiny_sit, [1], 0)  # at the call, before any batch is asked for


@pytest.mark.parametrize("family,sampler,calls", [
    ("dit", "ddim", 5), ("dit", "dpm-solver++", 5), ("sit", "euler", 5), ("sit", "heun", 10),
    ("sit", "euler-maruyama", 5), ("sit", "heun-sde", 9), ("sit", "dopri5", None)])
def test_a_counter_counts_the_model_calls_a_sampler_makes(family, sampler, calls, tiny_dit,
                                                          tiny_sit):
    model = tiny_dit if family == "dit" else tiny_sit
    counter = CallCounter()
    with CallCounter(model) as forward_calls:  # the module's own forwards, for comparison
        sample(model, [1, 2], sampler=sampler, steps=5 if calls else 20, cfg_scale=2.0,
               counter=counter)
    assert counter.calls == forward_calls.calls  # guided halves in one call: one each
    if calls is None:  # dopri5: 2 to pick the first step, then 6 a step
        assert counter.calls > 8 and (counter.calls - 2) % 6 == 0
    else:
        assert counter.calls == calls


def test_sampling_rejects_unknown_labels_samplers_and_guidance_scales(tiny_dit):
    with pytest.raises(ValueError, match="unknown class label 10"):
        sample(tiny_dit, [0, 10], steps=2)
    with pytest.raises(ValueError, match="ddpm, ddim"):
        sample(tiny_dit, [0], sampler="heun", steps=2)
    for scale in (-1.0, float("nan"), float("inf")):  # refused as the server refuses them
        with pytest.raises(ValueError, match=rf"cfg_scale must be a finite number >= 0, got "
                                             rf"{scale}"):
            sample(tiny_dit, [0], steps=2, cfg_scale=scale)
    # 0 is the unconditional model: DDIM's images no longer depend on the label
    unconditional = sample(tiny_dit, [0], steps=2, cfg_scale=0.0, seed=3)
    assert torch.equal(unconditional, sample(tiny_dit, [1], steps=2, cfg_scale=0.0, seed=3))
    assert not torch.equal(unconditional, sample(tiny_dit, [0], steps=2, seed=3))


@pytest.mark.slow
def test_compiled_sampling_matches_eager_and_the_model_still_copies(tiny_dit):
    import copy

    eager = sample(tiny_dit, [0, 1], steps=2)
    compiled = sample(tiny_dit, [0, 1], steps=2, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item())
    # compress's student, train's EMA and export copy the model: the compiled forward, which
    # wraps this instance, stays behind, and the copy computes the same
    copied = copy.deepcopy(tiny_dit)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(copied(x, t, y), tiny_dit(x, t, y))


def gaussian_bits_per_dim(x: torch.Tensor, mu: float = MU, s: float = S) -> torch.Tensor:
    """The exact -log2 density per dimension of N(mu, s^2) data, plus the 8-bit bin width's
    log2(127.5): what a perfect model's likelihood must give."""
    log_density = -0.5 * ((x - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    return -log_density.flatten(1).sum(1) / (x[0].numel() * math.log(2)) + math.log2(127.5)


def gaussian_images(n: int) -> torch.Tensor:
    """Images of N(MU, S^2) pixels that lie in [-1, 1], as 8-bit data does."""
    x = MU + S * torch.randn(4 * n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return x[(x.flatten(1).abs() < 1).all(1)][:n]


def test_ode_likelihood_is_the_exact_density_for_the_exact_velocity():
    x = gaussian_images(32)
    y = torch.zeros(len(x), dtype=torch.long)
    exact = gaussian_bits_per_dim(x)

    def bits(model, steps):
        return FlowMatching(1).bits_per_dim(model, x, y, steps=steps,
                                            generator=torch.Generator().manual_seed(1))

    assert (bits(gaussian_velocity_model, 50) - exact).abs().max() < 5e-3
    assert (bits(gaussian_velocity_model, 10) - exact).abs().max() > 1e-2  # coarser steps
    # the exact velocity of N(MU + 0.1, S^2): that density, a worse one for this data
    def shifted(x, t, y):
        return gaussian_velocity_model(x - 0.1 * t.view(-1, 1, 1, 1), t, y) + 0.1

    wrong = bits(shifted, 50)
    assert (wrong - gaussian_bits_per_dim(x, MU + 0.1)).abs().max() < 5e-3
    assert wrong.mean() > exact.mean() + 0.05


def test_variational_bound_bounds_the_exact_likelihood():
    """The DiT reference's bound, for the exact epsilon of Gaussian data: above the density's
    bits per dimension, within the bound's gap, and above that for a worse model."""
    x = gaussian_images(32)
    y = torch.zeros(len(x), dtype=torch.long)
    diffusion = GaussianDiffusion(1, learn_sigma=False)
    exact = gaussian_bits_per_dim(x).mean()
    exact_eps = gaussian_eps_model(diffusion)

    def bound(model, steps=None):
        return diffusion.bits_per_dim(model, x, y, steps=steps,
                                      generator=torch.Generator().manual_seed(1)).mean()

    full = bound(exact_eps)
    assert exact < full < exact + 0.4
    assert bound(lambda x, t, y: 1.2 * exact_eps(x, t, y)) > full + 0.05
    # 100 respaced steps: another chain's bound, still above the density (with this fixed
    # variance, not looser than the full chain's: the gap is the variance's, not the steps')
    assert exact < bound(exact_eps, steps=100) < exact + 0.4
