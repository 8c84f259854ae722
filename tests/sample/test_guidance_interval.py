"""The guidance interval (Kynkäänniemi et al. 2024, arXiv 2404.07724, Sec. 3.1, Eq. 6) in the EDM
sampler: against an independent small re-implementation of the interval logic and of the Heun
update, boundaries included; the guide's calls counted; the paper's Table 1 presets against its
text and its code's step indices; bad inputs as one-line errors."""

import math

import pytest
import torch
from click.testing import CliRunner

from edm2.cli import main
from edm2.errors import ConfigError
from edm2.presets import GENERATION_PRESETS
from edm2.sample import edm_sampler
from edm2.sample.generate import resolve_networks
from edm2.sample.options import DEFAULTS, SamplerOptions, preset_interval
from edm2.sample.sampler import describe_interval, guide_evaluations, interval_steps

N = 8  # steps of the small runs

# Gaussian data per channel: the optimal denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu).
# The "main" and the "guide" are two different Gaussians, so guidance changes every guided step.
MAIN = (torch.tensor([-0.5, 0.0, 1.0]).view(1, 3, 1, 1), torch.tensor([0.5, 1.0, 0.2]).view(1, 3, 1, 1))
GUIDE = (torch.tensor([0.3, -0.2, 0.4]).view(1, 3, 1, 1), torch.tensor([1.0, 1.5, 0.8]).view(1, 3, 1, 1))


class Gaussian:
    """The optimal denoiser of a per-channel Gaussian, recording the noise level of every call."""

    def __init__(self, mu, s):
        self.mu, self.s, self.sigmas = mu, s, []

    def __call__(self, x, sigma, labels=None):
        self.sigmas.append(float(sigma))
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


def run(guidance=2.5, num_steps=N, S_churn=0.0, seed=0, **interval):
    net, gnet = Gaussian(*MAIN), Gaussian(*GUIDE)
    noise = torch.randn([4, 3, 2, 2], generator=torch.Generator().manual_seed(seed))
    churn = torch.Generator().manual_seed(seed + 1)
    out = edm_sampler(
        net, noise, gnet=gnet, num_steps=num_steps, guidance=guidance, S_churn=S_churn,
        randn_like=lambda x: torch.randn(x.shape, generator=churn), **interval,
    )  # fmt: skip
    return out, net, gnet


def schedule(num_steps=N):
    """The noise levels t_0..t_{N-1}, read off the main net's first evaluation of each step of
    an unguided run (not from the code under test's schedule function)."""
    _, net, _ = run(guidance=1.0, num_steps=num_steps)
    return net.sigmas[0::2]  # Euler evaluation at t_i, correction at t_{i+1}, ..., last step Euler only


def reference_mask(levels, sigma_lo=0.0, sigma_hi=math.inf, start=0, stop=None):
    """Eq. 6 of the paper, w(sigma) = w on (sigma_lo, sigma_hi], decided per step by its t_i; and
    the step-index form of the paper's code (`i >= start and i <= stop`)."""
    stop = len(levels) - 1 if stop is None else stop
    return [(sigma_lo < t <= sigma_hi) and (start <= i <= stop) for i, t in enumerate(levels)]


def reference_sampler(noise, mask, guidance, num_steps=N):
    """Deterministic Heun (EDM Algorithm 1) with w = guidance on the masked steps, 1 elsewhere, in
    float64 (an independent re-implementation; the time steps from EDM Eq. 5)."""
    main, guide = Gaussian(*[t.double() for t in MAIN]), Gaussian(*[t.double() for t in GUIDE])
    i = torch.arange(num_steps, dtype=torch.float64)
    t = (80 ** (1 / 7) + i / (num_steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])

    def D(x, sigma, w):
        d = main(x, sigma)
        return d if w == 1 else guide(x, sigma) + w * (d - guide(x, sigma))

    x = noise.double() * t[0]
    for k in range(num_steps):
        w = guidance if mask[k] else 1.0
        d = (x - D(x, t[k], w)) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if k < num_steps - 1:
            x_next = x + (t[k + 1] - t[k]) * 0.5 * (d + (x_next - D(x_next, t[k + 1], w)) / t[k + 1])
        x = x_next
    return x


@pytest.mark.parametrize("S_churn", [0.0, 5.0])
def test_interval_covering_every_step_equals_the_sampler_without_one(S_churn):
    plain, _, _ = run(S_churn=S_churn)
    levels = schedule()
    for interval in [
        dict(sigma_lo=0.0, sigma_hi=math.inf),
        dict(sigma_lo=0.0, sigma_hi=levels[0]),  # t_0 itself is inside (sigma_lo, sigma_hi]
        dict(sigma_lo=levels[-1] / 2, sigma_hi=1e9),
        dict(guidance_start=0, guidance_stop=N - 1),
    ]:
        out, _, gnet = run(S_churn=S_churn, **interval)
        assert torch.equal(out, plain), interval
        assert len(gnet.sigmas) == 2 * N - 1


@pytest.mark.parametrize("S_churn", [0.0, 5.0])
def test_interval_covering_no_step_equals_the_unguided_sampler_and_never_calls_the_guide(S_churn):
    unguided, _, _ = run(guidance=1.0, S_churn=S_churn)
    levels = schedule()
    for interval in [
        dict(sigma_lo=levels[0], sigma_hi=1e9),  # t_0 = sigma_lo is outside
        dict(sigma_lo=0.0, sigma_hi=levels[-1] / 2),  # below the last step's t_{N-1}
        dict(sigma_lo=levels[3], sigma_hi=(levels[3] + levels[2]) / 2),  # between two steps' levels
    ]:
        out, _, gnet = run(S_churn=S_churn, **interval)
        assert torch.equal(out, unguided), interval
        assert gnet.sigmas == [], interval


def test_boundaries_a_step_at_sigma_hi_is_guided_a_step_at_sigma_lo_is_not():
    levels = schedule()
    out, net, gnet = run(sigma_lo=levels[5], sigma_hi=levels[2])
    expected = reference_mask(levels, levels[5], levels[2])
    assert expected == [False, False, True, True, True, False, False, False]
    # The guide ran on steps 2, 3, 4, at both evaluations of each (t_i, then t_{i+1}), nothing else.
    assert gnet.sigmas == [levels[2], levels[3], levels[3], levels[4], levels[4], levels[5]]
    assert len(net.sigmas) == 2 * N - 1  # the main net is evaluated as always


@pytest.mark.parametrize(
    "interval",
    [
        dict(sigma_lo=0.3, sigma_hi=5.0),
        dict(sigma_lo=0.0, sigma_hi=1.0),
        dict(sigma_lo=2.0),
        dict(guidance_start=3, guidance_stop=5),
        dict(guidance_start=6),
        dict(guidance_stop=0),
        dict(guidance_start=N - 1, guidance_stop=N - 1),  # the last (Euler) step alone
    ],
)
def test_sampler_equals_an_independent_implementation_of_the_interval(interval):
    levels = schedule()
    start, stop = interval.get("guidance_start", 0), interval.get("guidance_stop")
    mask = reference_mask(levels, interval.get("sigma_lo", 0.0), interval.get("sigma_hi", math.inf), start, stop)
    assert 0 < sum(mask) < N  # a proper interval: some steps in, some out
    out, _, gnet = run(**interval)
    noise = torch.randn([4, 3, 2, 2], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.double(), reference_sampler(noise, mask, 2.5), rtol=1e-5, atol=1e-5)
    # The guide is evaluated exactly on the masked steps: 2 per step, 1 on the last.
    guided = [i for i, m in enumerate(mask) if m]
    expected_sigmas = []
    for i in guided:
        expected_sigmas += [levels[i], levels[i + 1]] if i < N - 1 else [levels[i]]
    assert gnet.sigmas == expected_sigmas
    assert len(gnet.sigmas) == guide_evaluations(guided, N)
    assert interval_steps(num_steps=N, guidance=2.5, **interval) == guided


def test_paper_presets_match_table_1_and_the_papers_code():
    """Table 1 of arXiv 2404.07724 (w, (sigma_lo, sigma_hi], reported value); the step indices
    give exactly the reported interval once the 32-step levels are rounded to 2 decimals (Sec. 3.1
    snaps the interval to step boundaries: sigma_hi = t_i, sigma_lo = t_j); XXL's indices are
    those of the paper's code (generate_zip.py: FID [17, 22], FD_DINOv2 [13, 19]); XXL FID guides
    "6 of the 32 steps" (Sec. 4.1)."""
    table = {
        "edm2-img512-s-interval-fid": (2.1, (0.28, 2.90), "fid", 1.68, "edm2-img512-s-guid-fid"),
        "edm2-img512-s-interval-dino": (3.2, (0.60, 5.00), "fd_dinov2", 46.25, "edm2-img512-s-guid-dino"),
        "edm2-img512-xxl-interval-fid": (2.0, (0.19, 1.61), "fid", 1.40, "edm2-img512-xxl-guid-fid"),
        "edm2-img512-xxl-interval-dino": (2.9, (0.60, 5.00), "fd_dinov2", 29.16, "edm2-img512-xxl-guid-dino"),
    }
    assert GENERATION_PRESETS["edm2-img512-xxl-interval-fid"].guidance_steps == (17, 22)
    assert GENERATION_PRESETS["edm2-img512-xxl-interval-dino"].guidance_steps == (13, 19)
    levels = schedule(32) + [0.0]
    for name, (w, (lo, hi), metric, value, cfg) in table.items():
        p = GENERATION_PRESETS[name]
        assert (p.guidance, p.reported_interval, p.metric, p.value) == (w, (lo, hi), metric, value), name
        start, stop = p.guidance_steps
        assert (round(levels[stop + 1], 2), round(levels[start], 2)) == (lo, hi), name
        # Same networks as the CFG rows of Table 1 (the EDM2 guided presets), at the EMA lengths
        # the autoguidance paper's Table 1 gives for these rows (EMA_m = EMA_g).
        assert (p.net, p.gnet) == (GENERATION_PRESETS[cfg].net, GENERATION_PRESETS[cfg].gnet), name
        ema = {"edm2-img512-s-interval-fid": "0.025", "edm2-img512-s-interval-dino": "0.085"}.get(name, "0.015")
        assert p.net.endswith(f"-{ema}.pkl") and p.gnet.endswith(f"-{ema}.pkl"), name
        # The exact step levels as (sigma_lo, sigma_hi] select the same steps as the indices.
        by_sigma = interval_steps(guidance=w, sigma_lo=levels[stop + 1], sigma_hi=levels[start])
        assert by_sigma == list(range(start, stop + 1)) == interval_steps(guidance=w, **p.sampler), name
    assert len(interval_steps(guidance=2.0, **GENERATION_PRESETS["edm2-img512-xxl-interval-fid"].sampler)) == 6


def test_preset_fills_the_interval_unless_one_is_given():
    choice = resolve_networks(preset="edm2-img512-xxl-interval-fid")
    assert choice.guidance == 2.0 and choice.sampler == dict(guidance_start=17, guidance_stop=22)
    assert preset_interval({"num_steps": 32}, choice.sampler) == dict(num_steps=32, guidance_start=17, guidance_stop=22)
    mine = {"num_steps": 32, "sigma_lo": 0.5, "sigma_hi": 3.0, "guidance_start": 0, "guidance_stop": None}
    assert preset_interval(mine, choice.sampler) == mine
    assert resolve_networks(preset="edm2-img512-xxl-guid-fid").sampler == {}
    with pytest.raises(ConfigError, match="with --steps 64 give the interval by noise level"):
        preset_interval({"num_steps": 64}, choice.sampler)
    text = describe_interval(guidance=2.0, num_steps=32, guidance_start=17, guidance_stop=22)
    assert text == "guidance 2 on 6 of 32 steps: 17-22 (sigma in (0.189, 1.609])"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma_lo=2.0, sigma_hi=1.0), r"--sigma_lo \(2\) must be below --sigma_hi \(1\)"),
        (dict(sigma_lo=1.0, sigma_hi=1.0), r"--sigma_lo \(1\) must be below --sigma_hi \(1\)"),
        (dict(sigma_lo=-0.1), "--sigma_lo must be at least 0, got -0.1"),
        (dict(sigma_hi=-1.0), "--sigma_hi must be at least 0, got -1"),
        (dict(sigma_lo=math.nan), "--sigma_lo must be a number, got nan"),
        (dict(sigma_hi=math.nan), "--sigma_hi must be a number, got nan"),
        (dict(guidance_start=-1), "--guidance_start must be at least 0, got -1"),
        (dict(guidance_start=5, guidance_stop=4), r"--guidance_start \(5\) must be at most --guidance_stop \(4\)"),
        (dict(guidance_stop=32), "--guidance_stop 32 is past the last step 31 of --steps 32"),
        (dict(guidance_start=2.5), "--guidance_start must be a whole number, got 2.5"),
        (dict(sigma_lo=0.2, guidance_start=3), "not both"),
    ],
)
def test_bad_intervals_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        SamplerOptions(**kwargs)
    assert "\n" not in str(e.value)


def test_defaults_guide_every_step():
    assert (DEFAULTS.sigma_lo, DEFAULTS.sigma_hi, DEFAULTS.guidance_start, DEFAULTS.guidance_stop) == (
        0.0, math.inf, 0, None,
    )  # fmt: skip
    assert not DEFAULTS.interval and SamplerOptions(sigma_hi=3.0).interval
    assert interval_steps(guidance=2.0) == list(range(32)) and interval_steps(guidance=1.0) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sigma_lo", "2", "--sigma_hi", "1"], "Error: --sigma_lo (2) must be below --sigma_hi (1)"),
        (["--sigma_lo", "nan"], "Error: --sigma_lo must be a number, got nan"),
        (["--sigma_hi", "-1"], "Invalid value for '--sigma_hi': -1.0 is not in the range x>=0."),
        (["--guidance_stop", "40", "--steps", "32"], "Error: --guidance_stop 40 is past the last step 31"),
    ],
)
def test_command_line_reports_bad_intervals_in_one_line(tmp_path, args, message):
    r = CliRunner().invoke(main, ["generate", "--net", str(tmp_path / "none.safetensors"), "--outdir",
                                  str(tmp_path / "out"), *args])  # fmt: skip
    assert r.exit_code != 0 and message in r.output, r.output
    assert "Traceback" not in r.output
