"""The sampler options shared by `edm2 generate` and `edm2 metrics gen`: one click decorator
built from `edm2.sample.options` (defaults, bounds and help in one place), and --fast/--eager."""

import click

from edm2.sample.options import DEFAULTS, SAMPLER_FIELDS


def _click_type(field):
    if field.minimum is None:
        return field.type
    if field.type is int:
        return click.IntRange(min=field.minimum)
    return click.FloatRange(min=field.minimum, min_open=field.open)


def sampler_options(command):
    """Add --steps, --sigma_min, --sigma_max, --rho, --S_churn, --S_min, --S_max, --S_noise and
    the guidance interval (--sigma_lo, --sigma_hi, --guidance_start, --guidance_stop); the
    command receives them as keyword arguments named like SamplerOptions' fields."""
    for name in reversed(list(SAMPLER_FIELDS)):
        field = SAMPLER_FIELDS[name]
        default = getattr(DEFAULTS, name)
        command = click.option(
            field.flag,
            name,
            type=_click_type(field),
            default=default,
            show_default=default is not None,
            help=field.help,
        )(command)
    return command


def fast_option(command):
    """Add --fast/--eager (keyword `fast`: True, False, or None when neither is given, which means
    the fast path on CUDA and eager elsewhere; edm2.sample.fast)."""
    return click.option(
        "--fast/--eager",
        "fast",
        default=None,
        help="Run the networks as compiled CUDA graphs (equal to eager up to float rounding) or eagerly "
        "[default: --fast on CUDA, --eager on CPU].",
    )(command)
