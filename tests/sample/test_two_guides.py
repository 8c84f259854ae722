"""Several guides at once: classifier-free guidance and autoguidance together (Karras et al. 2024,
arXiv 2406.02507, Appendix B.2, Eq. 6: D_w = D_m + sum_i (w_i - 1)(D_m - D_i), with the paper's
w_u = (1 - alpha)(w - 1) + 1 and w_c = alpha (w - 1) + 1), checked against an independent NumPy
Heun loop on closed-form Gaussian denoisers, and against the single-guide sampler bit for bit."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edm2.cli import main
from edm2.errors import ConfigError
from edm2.sample import edm_sampler
from edm2.sample.options import guide_weights, mix_weights, total_guidance
from edm2.sample.sampler import describe_interval, guide_evaluations, interval_steps

# Per-channel Gaussian data N(mu, s^2): the optimal denoiser is mu + s^2 / (s^2 + sigma^2) (x - mu).
# The main model, an "unconditional" guide (a wider, shifted Gaussian) and a "degraded" guide
# (a slightly wrong mean and spread), as in the toy of the autoguidance paper's Sec. 3.
MAIN = (np.array([-0.5, 0.0, 1.0]), np.array([0.5, 1.0, 0.2]))
UNCOND = (np.array([0.0, 0.2, 0.4]), np.array([1.2, 1.5, 1.0]))
DEGRADED = (np.array([-0.4, 0.1, 0.9]), np.array([0.6, 1.1, 0.3]))


def torch_denoiser(params):
    mu, s = (torch.tensor(p, dtype=torch.float64).view(1, 3, 1, 1) for p in params)

    def net(x, sigma, labels=None):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    return net


def numpy_denoiser(params):
    mu, s = (p.reshape(1, 3, 1, 1) for p in params)
    return lambda x, sigma: mu + s**2 / (s**2 + sigma**2) * (x - mu)


class Counter:
    """A denoiser that counts its calls and the noise levels it saw."""

    def __init__(self, fn):
        self.fn, self.sigmas = fn, []

    def __call__(self, x, sigma, labels=None):
        self.sigmas.append(float(sigma))
        return self.fn(x, sigma, labels)


class Forbidden:
    def __call__(self, *args):
        raise AssertionError("a guide with weight 1 must not be evaluated")


def noise(seed=0):
    return torch.randn([2, 3, 2, 2], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def heun_eq6(x0, weights, num_steps=10, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """An independent float64 NumPy Heun loop (EDM Algorithm 2, deterministic) whose denoiser is
    written out from Eq. 6: D_m + sum_i (w_i - 1)(D_m - D_i), guides (UNCOND, DEGRADED)."""
    i = np.arange(num_steps, dtype=np.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = np.concatenate([t, [0.0]])
    d_m, d_u, d_c = (numpy_denoiser(p) for p in (MAIN, UNCOND, DEGRADED))

    def denoise(x, sigma):
        m = d_m(x, sigma)
        return m + (weights[0] - 1) * (m - d_u(x, sigma)) + (weights[1] - 1) * (m - d_c(x, sigma))

    x = x0 * t[0]
    for k in range(num_steps):
        d = (x - denoise(x, t[k])) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if k < num_steps - 1:
            d2 = (x_next - denoise(x_next, t[k + 1])) / t[k + 1]
            x_next = x + (t[k + 1] - t[k]) * (d + d2) / 2
        x = x_next
    return x


def sample(gnet, guidance, **kwargs):
    kwargs.setdefault("num_steps", 10)
    return edm_sampler(torch_denoiser(MAIN), noise(), gnet=gnet, guidance=guidance, dtype=torch.float64, **kwargs)


GUIDES = [torch_denoiser(UNCOND), torch_denoiser(DEGRADED)]


@pytest.mark.parametrize("weights", [(1.6, 1.5), (2.2, 0.7), (1.0 + 1e-3, 3.0)])
def test_two_guides_equal_an_independent_heun_loop_with_eq6(weights):
    out = sample(GUIDES, weights)
    ref = heun_eq6(noise().numpy(), weights)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_three_guides_add_their_differences():
    """Eq. 6 for any number of guides: a third guide equal to the main model adds nothing."""
    out = sample(GUIDES + [torch_denoiser(MAIN)], (1.6, 1.5, 2.5))
    np.testing.assert_allclose(out.numpy(), heun_eq6(noise().numpy(), (1.6, 1.5)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("w", [0.5, 2.0, 2.45])
def test_a_guide_at_weight_one_is_skipped_and_the_pair_equals_the_single_guide_bit_for_bit(w):
    single_u = sample(GUIDES[0], w)
    single_c = sample(GUIDES[1], w)
    assert torch.equal(sample([GUIDES[0], Forbidden()], (w, 1.0)), single_u)
    assert torch.equal(sample([Forbidden(), GUIDES[1]], (1.0, w)), single_c)
    assert torch.equal(sample([GUIDES[0]], [w]), single_u)  # a one-element sequence is the single guide


@pytest.mark.parametrize("w", [0.5, 1.7, 2.1, 3.0])
def test_mix_zero_and_one_are_exactly_pure_cfg_and_pure_autoguidance(w):
    """alpha = 0 gives (w, 1) and alpha = 1 gives (1, w) exactly (not w - 1 + 1, which may
    round), so the sampler drops the other guide and runs the single-guide expression."""
    assert mix_weights(w, 0) == (w, 1.0) and mix_weights(w, 1) == (1.0, w)
    assert torch.equal(sample(GUIDES, mix_weights(w, 0)), sample(GUIDES[0], w))
    assert torch.equal(sample(GUIDES, mix_weights(w, 1)), sample(GUIDES[1], w))


def test_mix_splits_the_total_guidance_as_the_paper():
    w, alpha = 2.2, 0.25
    w_u, w_c = mix_weights(w, alpha)
    assert math.isclose(w_u, (1 - alpha) * (w - 1) + 1) and math.isclose(w_c, alpha * (w - 1) + 1)
    assert math.isclose(total_guidance((w_u, w_c)), w)
    out = sample(GUIDES, (w_u, w_c))
    np.testing.assert_allclose(out.numpy(), heun_eq6(noise().numpy(), (1.9, 1.3)), rtol=1e-12, atol=1e-12)


def test_the_guidance_interval_applies_to_every_guide_and_the_cost_counts_each_guide():
    guides = [Counter(g) for g in GUIDES]
    options = dict(num_steps=6, guidance_start=2, guidance_stop=5)
    sample(guides, (1.5, 2.0), **options)
    steps = interval_steps(guidance=(1.5, 2.0), **options)
    assert steps == [2, 3, 4, 5]
    assert len(guides[0].sigmas) == len(guides[1].sigmas) == guide_evaluations(steps, 6) == 2 * 3 + 1
    assert guide_evaluations(steps, 6, guides=2) == 14
    assert interval_steps(guidance=(1.0, 1.0), **options) == []
    assert describe_interval(guidance=(1.5, 2.0), **options).startswith("guidance 2.5 (guides 1.5, 2) on 4 of 6 steps")


def test_mismatched_counts_and_a_missing_guide_are_errors():
    with pytest.raises(ValueError, match="2 guiding networks but 3 guidance weights"):
        sample(GUIDES, (1.5, 2.0, 3.0))
    with pytest.raises(ValueError, match="needs its guiding network"):
        sample([GUIDES[0], None], (1.5, 2.0))


@pytest.mark.parametrize(
    "args, message",
    [
        (((2.0,), 2, None), "need one --guidance each, or one total --guidance with --guidance-mix"),
        (((2.0, 1.5, 1.2), 2, None), "3 --guidance values for 2 --gnet; give one --guidance per --gnet"),
        (((2.0,), 1, 0.5), "--guidance-mix mixes two guides; give --gnet twice"),
        (((2.0, 1.5), 2, 0.5), "--guidance-mix splits one total --guidance"),
        (((2.0,), 2, 1.5), r"--guidance-mix must be in \[0, 1\]"),
        (((2.0,), 0, None), "--guidance 2 needs a guiding network"),
    ],
)
def test_guide_weights_errors_name_the_option(args, message):
    with pytest.raises(ConfigError, match=message):
        guide_weights(*args)


def test_guide_weights_of_the_accepted_forms():
    assert guide_weights(2.0, 1) == (2.0,) and guide_weights([1.5, 2.5], 2) == (1.5, 2.5)
    assert guide_weights(1.0, 0) == () and guide_weights(3.0, 2, 0.5) == (2.0, 2.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gnet", "u.safetensors", "--gnet", "c.safetensors", "--guidance", "2"], "need one --guidance each"),
        (["--gnet", "u.safetensors", "--guidance", "2", "--guidance", "3"], "2 --guidance values for 1 --gnet"),
        (["--gnet", "u.safetensors", "--guidance", "2", "--guidance-mix", "0.5"], "--guidance-mix mixes two guides"),
        (["--gnet", "u.safetensors", "--gnet", "c.safetensors", "--guidance", "2", "--guidance-mix", "1.5"],
         "'--guidance-mix': 1.5 is not in the range 0<=x<=1"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", [["generate", "--outdir", "out"], ["metrics", "gen", "--ref", "r.npz"]])
def test_command_line_errors_are_one_line_before_anything_is_loaded(tmp_path, monkeypatch, command, args, message):
    """No network or reference exists: the guidance options fail first, in one line."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, command + ["--net", "m.safetensors"] + args)
    assert r.exit_code != 0 and message in r.output, r.output
    assert len([line for line in r.output.splitlines() if "rror" in line]) == 1
