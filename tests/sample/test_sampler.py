"""EDM Heun sampler and per-seed generators (docs/method.md#sampling, #official-details-25), checked against
Appendix B, an independent re-implementation of the update, and a Gaussian dataset whose
optimal denoiser and probability-flow ODE are known in closed form."""

import math

import numpy as np
import pytest
import torch

from edm2.sample import StackedRandomGenerator, edm_sampler

# Gaussian data N(mu, s^2) per channel; optimal denoiser D(x, sigma) = mu + s^2/(s^2+sigma^2) (x - mu).
MU = torch.tensor([-0.5, 0.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
S = torch.tensor([0.5, 1.0, 0.2], dtype=torch.float64).view(1, 3, 1, 1)


def gaussian_denoiser(mu=MU, s=S):
    def net(x, sigma, labels=None):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    return net


class Recorder:
    """A denoiser wrapper that records every call."""

    def __init__(self, fn):
        self.fn = fn
        self.sigmas, self.inputs, self.labels = [], [], []

    def __call__(self, x, sigma, labels=None):
        self.sigmas.append(sigma)
        self.inputs.append(x.clone())
        self.labels.append(labels)
        return self.fn(x, sigma, labels)


def zero_net(x, sigma, labels=None):
    return torch.zeros_like(x)


def reference_grid(num_steps=32, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    i = np.arange(num_steps, dtype=np.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.concatenate([t, [0.0]])


def noise(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- time grid and call counts ----------------------------------------------------------------


def test_time_grid_is_the_fp32_rho_schedule_of_appendix_b():
    net = Recorder(zero_net)
    edm_sampler(net, noise([1, 1, 2, 2], dtype=torch.float32))
    assert len(net.sigmas) == 63
    assert all(torch.is_tensor(t) and t.ndim == 0 and t.dtype == torch.float32 for t in net.sigmas)
    # Call order: t_0, then (t_{i+1} for the correction, t_{i+1} for the next Euler step) ...
    expected_order = [0] + [k for i in range(1, 32) for k in (i, i)]
    grid = [net.sigmas[2 * i].item() for i in range(32)]
    assert [net.sigmas[j].item() for j in range(63)] == [grid[k] for k in expected_order]

    assert grid[0] == pytest.approx(80, abs=1e-4)  # fp32: a few ulps off 80
    appendix_b = {1: 66.93087, 2: 55.736195, 3: 46.186382, 29: 0.00845305, 30: 0.00426683, 31: 0.002}
    for i, value in appendix_b.items():
        assert grid[i] == pytest.approx(value, rel=2e-6)
    np.testing.assert_allclose(grid, reference_grid()[:32], rtol=5e-6)


def test_last_step_goes_to_sigma_zero_and_returns_the_denoised_image():
    # For a constant denoiser c the ODE is linear in t: x(t) = c + (x(t0) - c) t/t0, which
    # both Euler and Heun follow exactly; with t_N = 0 the result is c.
    c = torch.tensor([0.25, -1.5]).view(1, 2, 1, 1).expand(3, 2, 4, 4)
    out = edm_sampler(
        lambda x, t, labels=None: c.to(x.dtype), noise([3, 2, 4, 4], dtype=torch.float64), dtype=torch.float64
    )
    torch.testing.assert_close(out, c.double(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_steps", [2, 5, 32])
def test_number_of_denoiser_calls_is_two_n_minus_one(num_steps):
    net, gnet = Recorder(zero_net), Recorder(zero_net)
    edm_sampler(net, noise([2, 1, 2, 2]), num_steps=num_steps)
    assert len(net.sigmas) == 2 * num_steps - 1
    net = Recorder(zero_net)
    edm_sampler(net, noise([2, 1, 2, 2]), gnet=gnet, guidance=2.0, num_steps=num_steps)
    assert len(net.sigmas) == len(gnet.sigmas) == 2 * num_steps - 1


def test_output_is_in_the_requested_dtype_and_labels_reach_both_nets():
    labels = torch.eye(5)[[1, 3]]
    net, gnet = Recorder(gaussian_denoiser()), Recorder(gaussian_denoiser())
    out = edm_sampler(
        net, noise([2, 3, 2, 2], dtype=torch.float32), labels=labels, gnet=gnet, guidance=1.5, dtype=torch.float64
    )
    assert out.dtype == torch.float64
    assert all(lab is labels for lab in net.labels + gnet.labels)


# --- stochasticity (churn) --------------------------------------------------------------------


class CountingRandn:
    def __init__(self, value=None):
        self.calls, self.value = 0, value

    def __call__(self, x):
        self.calls += 1
        return torch.full_like(x, self.value) if self.value is not None else torch.randn_like(x)


def test_no_churn_never_draws_noise():
    randn = CountingRandn()
    edm_sampler(zero_net, noise([1, 1, 2, 2]), num_steps=8, randn_like=randn)
    assert randn.calls == 0


def test_randn_like_is_called_once_per_churned_step():
    randn = CountingRandn()
    S_min, S_max = 0.05, 10.0  # not near any grid point
    edm_sampler(zero_net, noise([1, 1, 2, 2]), num_steps=32, S_churn=10, S_min=S_min, S_max=S_max, randn_like=randn)
    grid = reference_grid()[:32]
    assert randn.calls == int(np.sum((grid >= S_min) & (grid <= S_max))) == 15
    randn = CountingRandn()
    edm_sampler(zero_net, noise([1, 1, 2, 2]), num_steps=32, S_churn=10, randn_like=randn)
    assert randn.calls == 32  # S_min = 0, S_max = inf: every step


@pytest.mark.parametrize("S_churn, gamma", [(0.8, 0.1), (100.0, math.sqrt(2) - 1)])
def test_churn_raises_the_noise_level_by_gamma_capped_at_sqrt2_minus_1(S_churn, gamma):
    num_steps, S_noise = 8, 0.5
    net = Recorder(zero_net)
    x0 = noise([1, 1, 2, 2], dtype=torch.float64)
    edm_sampler(
        net,
        x0,
        num_steps=num_steps,
        S_churn=S_churn,
        S_noise=S_noise,
        randn_like=CountingRandn(1.0),
        dtype=torch.float64,
    )
    grid = reference_grid(num_steps)
    t_hats = [net.sigmas[2 * i].item() for i in range(num_steps)]
    np.testing.assert_allclose(t_hats, (1 + gamma) * grid[:num_steps], rtol=1e-13)
    # x_hat = x + sqrt(t_hat^2 - t^2) * S_noise * eps with eps = 1 here.
    t0 = grid[0]
    expected_x_hat = x0 * t0 + math.sqrt(((1 + gamma) * t0) ** 2 - t0**2) * S_noise
    torch.testing.assert_close(net.inputs[0], expected_x_hat, rtol=1e-13, atol=1e-12)


# --- guidance ---------------------------------------------------------------------------------


class Forbidden:
    def __call__(self, *args, **kwargs):
        raise AssertionError("the guiding net must not be evaluated when guidance == 1")


def test_guidance_one_never_evaluates_the_guiding_net():
    out = edm_sampler(gaussian_denoiser(), noise([2, 3, 2, 2]), gnet=Forbidden(), guidance=1, dtype=torch.float64)
    ref = edm_sampler(gaussian_denoiser(), noise([2, 3, 2, 2]), dtype=torch.float64)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("guidance", [0.3, 2.5])
def test_guiding_with_the_net_itself_equals_no_guidance(guidance):
    net = gaussian_denoiser()
    out = edm_sampler(net, noise([2, 3, 2, 2]), gnet=net, guidance=guidance, dtype=torch.float64)
    ref = edm_sampler(net, noise([2, 3, 2, 2]), dtype=torch.float64)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("guidance", [0.0, 0.4, 1.7, 3.0])
def test_guided_denoiser_is_guide_plus_w_times_main_minus_guide(guidance):
    main = gaussian_denoiser()
    guide = gaussian_denoiser(mu=MU + 0.3, s=S * 1.5)

    def combined(x, t, labels=None):
        return guide(x, t) + guidance * (main(x, t) - guide(x, t))

    out = edm_sampler(main, noise([2, 3, 2, 2]), gnet=guide, guidance=guidance, dtype=torch.float64)
    ref = edm_sampler(combined, noise([2, 3, 2, 2]), dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# --- against an independent implementation and the Gaussian closed form ------------------------


def heun_by_hand(denoise, x0, num_steps, S_churn, S_noise, eps_list):
    """Independent float64 NumPy implementation of the sampler of docs/method.md#sampling (S_min=0, S_max=inf)."""
    t = reference_grid(num_steps)
    x = x0 * t[0]
    eps = iter(eps_list)
    for i in range(num_steps):
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_churn > 0 else 0.0
        t_hat = t[i] * (1 + gamma)
        x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * S_noise * next(eps) if S_churn > 0 else x
        d = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x = x_hat + (t[i + 1] - t_hat) * d
        if i < num_steps - 1:
            d2 = (x - denoise(x, t[i + 1])) / t[i + 1]
            x = x_hat + (t[i + 1] - t_hat) * (d + d2) / 2
    return x


@pytest.mark.parametrize("S_churn", [0.0, 3.0])
def test_sampler_equals_an_independent_heun_implementation(S_churn):
    # A nonlinear denoiser, so that the order of the operations matters.
    def denoise_np(x, t):
        return np.tanh(x) * 0.7 / (1 + t) + 0.1 * t / (1 + t**2)

    def net(x, t, labels=None):
        return torch.tanh(x) * 0.7 / (1 + t) + 0.1 * t / (1 + t**2)

    drawn = []

    def randn_like(x):
        drawn.append(noise(x.shape, seed=100 + len(drawn)))
        return drawn[-1]

    x0 = noise([2, 1, 3, 3], seed=5)
    out = edm_sampler(net, x0, num_steps=12, S_churn=S_churn, S_noise=1.007, randn_like=randn_like, dtype=torch.float64)
    ref = heun_by_hand(denoise_np, x0.numpy(), 12, S_churn, 1.007, [d.numpy() for d in drawn])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def exact_flow(x0, t0=80.0, t_end=0.002):
    """Probability-flow ODE for Gaussian data, in closed form: x(t) = mu + (x(t0) - mu) sqrt((s^2+t^2)/(s^2+t0^2)),
    followed by the sampler's final step to t = 0, which returns D(x(t_end), t_end)."""
    x_end = MU + (x0 * t0 - MU) * torch.sqrt((S**2 + t_end**2) / (S**2 + t0**2))
    return gaussian_denoiser()(x_end, torch.tensor(t_end, dtype=torch.float64))


def test_deterministic_trajectory_matches_the_closed_form_flow_and_converges_at_second_order():
    x0 = noise([4, 3, 2, 2], seed=1)
    ref = exact_flow(x0)
    scale = (ref - MU).abs().max()
    errors = []
    for num_steps in [32, 64, 128, 256]:
        out = edm_sampler(gaussian_denoiser(), x0, num_steps=num_steps, dtype=torch.float64)
        errors.append(((out - ref).abs().max() / scale).item())
    assert errors[0] < 0.03  # 32 steps: close
    ratios = [a / b for a, b in zip(errors[:-1], errors[1:])]
    assert all(3.0 < r < 6.0 for r in ratios), (errors, ratios)  # halving the step: error / 4
    assert errors[-1] < 2e-4


@pytest.mark.parametrize("S_churn", [0.0, 6.4])
def test_gaussian_dataset_samples_have_the_data_mean_and_variance(S_churn):
    # Heun's discretisation bias (~3% in variance at 32 steps here, shrinking as 1/N^2) is
    # checked above; 128 steps keep it well below the sampling noise tolerated here.
    num_steps = 128
    gen = torch.Generator().manual_seed(2024)
    x0 = torch.randn([1024, 3, 4, 4], dtype=torch.float64, generator=gen)
    randn_like = lambda x: torch.randn(x.shape, dtype=x.dtype, generator=gen)  # noqa: E731
    out = edm_sampler(
        gaussian_denoiser(), x0, num_steps=num_steps, S_churn=S_churn, randn_like=randn_like, dtype=torch.float64
    )
    n = 1024 * 4 * 4  # samples per channel
    t0 = 80.0
    # The sampler starts from N(0, t0^2) rather than N(mu, s^2 + t0^2); through the flow above this
    # leaves a known, tiny offset: mean mu (1 - s/sqrt(s^2+t0^2)), variance s^2 t0^2/(s^2+t0^2).
    mean = (MU * (1 - S / torch.sqrt(S**2 + t0**2))).flatten()
    var = (S**2 * t0**2 / (S**2 + t0**2)).flatten()
    got_mean, got_var = out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3))
    assert torch.all((got_mean - mean).abs() < 5 * torch.sqrt(var / n)), (got_mean, mean)
    assert torch.all((got_var - var).abs() < 5 * var * math.sqrt(2 / (n - 1))), (got_var, var)


# --- StackedRandomGenerator ----------------------------------------------------------------------


def per_seed_draws(seed, shape):
    gen = torch.Generator().manual_seed(seed % 2**32)
    first = torch.randn(shape, generator=gen)
    label = torch.randint(10, size=[1], generator=gen)
    second = torch.randn(shape, generator=gen, dtype=torch.float64)
    return first, label, second


def test_stacked_generator_draws_each_row_from_its_own_seed():
    seeds = [5, 9, 13]
    rnd = StackedRandomGenerator("cpu", seeds)
    first = rnd.randn([3, 2, 4, 4])
    label = rnd.randint(10, size=[3, 1])
    second = rnd.randn_like(torch.empty([3, 2, 4, 4], dtype=torch.float64))
    assert first.shape == (3, 2, 4, 4) and label.shape == (3, 1) and second.dtype == torch.float64
    for row, seed in enumerate(seeds):
        f, lab, s = per_seed_draws(seed, [2, 4, 4])
        assert torch.equal(first[row], f) and torch.equal(label[row], lab) and torch.equal(second[row], s)


def test_stacked_generator_is_independent_of_batch_composition_and_reduces_seeds_mod_2_32():
    a = StackedRandomGenerator("cpu", [13, 5, 9]).randn([3, 6])
    b = StackedRandomGenerator("cpu", [9, 13]).randn([2, 6])
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    c = StackedRandomGenerator("cpu", [5 + 2**32, 2**32 - 1]).randn([2, 6])
    d = StackedRandomGenerator("cpu", [5, -1]).randn([2, 6])
    assert torch.equal(c[0], a[1]) and torch.equal(c, d)


def test_stochastic_samples_do_not_depend_on_the_batch_they_are_in():
    def sample(seeds):
        rnd = StackedRandomGenerator("cpu", seeds)
        x0 = rnd.randn([len(seeds), 3, 2, 2])
        return edm_sampler(
            gaussian_denoiser(), x0, num_steps=6, S_churn=2, randn_like=rnd.randn_like, dtype=torch.float64
        )

    both = sample([7, 11])
    alone = sample([11])
    assert torch.equal(both[1], alone[0])
