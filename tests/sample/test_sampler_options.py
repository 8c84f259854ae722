"""One sampler-options type: defaults and bounds in edm2.sample.options, used by the commands."""

import math

import pytest
from click.testing import CliRunner

from edm2.cli import main
from edm2.errors import ConfigError
from edm2.sample.options import DEFAULTS, SAMPLER_FIELDS, SamplerOptions
from edm2.sample.sampler import edm_sampler


def test_defaults_and_nfe():
    assert DEFAULTS.kwargs() == dict(
        num_steps=32, sigma_min=0.002, sigma_max=80.0, rho=7.0, guidance=1.0, S_churn=0.0, S_min=0.0,
        S_max=math.inf, S_noise=1.0, sigma_lo=0.0, sigma_hi=math.inf, guidance_start=0, guidance_stop=None,
    )  # fmt: skip
    assert SamplerOptions(num_steps=16).nfe == 31


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_steps=1), "--steps must be at least 2, got 1"),
        (dict(sigma_min=0), "--sigma_min must be greater than 0"),
        (dict(rho=-1), "--rho must be greater than 0"),
        (dict(S_churn=-0.5), "--S_churn must be at least 0"),
    ],
)
def test_bounds_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplerOptions(**kwargs)


def test_edm_sampler_defaults_are_the_options():
    import inspect

    params = inspect.signature(edm_sampler).parameters
    for name in SAMPLER_FIELDS:
        assert params[name].default == getattr(DEFAULTS, name), name


@pytest.mark.parametrize(
    "command, required",
    [(["generate"], ["--outdir", "x", "--net", "n"]), (["metrics", "gen"], ["--net", "n", "--ref", "r"])],
)
def test_commands_share_the_options(command, required):
    out = CliRunner().invoke(main, [*command, "--help"]).output
    for field in SAMPLER_FIELDS.values():
        assert field.flag in out
    assert "[default: 32; x>=2]" in out
    refused = CliRunner().invoke(main, [*command, "--steps", "1", *required])
    assert refused.exit_code == 2 and "Invalid value for '--steps': 1 is not in the range x>=2" in refused.output
