"""The sampler options shared by `edm2 generate` and `edm2 metrics gen`: one click decorator
built from `edm2.sample.options` (defaults, bounds and help in one place), the guides and their
weights (--gnet, --guidance, --guidance-mix), and --fast/--eager."""

import click

from edm2.sample.options import DEFAULTS, GNET_FLAG, GUIDANCE_FLAG, MIX_FLAG, SAMPLER_FIELDS


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


def guidance_options(default: str):
    """Add --gnet, --guidance and --guidance-mix (keywords `gnet` and `guidance`, tuples, and
    `guidance_mix`, a float or None); `default` is --guidance's default in words.

    One guide: --gnet G --guidance W (lerp(D_G, D_main, W), classifier-free guidance or
    autoguidance). Two or more (arXiv 2406.02507, App. B.2, Eq. 6): --gnet repeated, with one
    --guidance per --gnet (w_i), or with two guides one total --guidance W and --guidance-mix
    ALPHA: w_1 = (1 - ALPHA)(W - 1) + 1 for the first (e.g. the unconditional net of
    classifier-free guidance), w_2 = ALPHA (W - 1) + 1 for the second (e.g. autoguidance's guide).
    The counts are checked by `edm2.sample.options.guide_weights` (one line naming the option)."""

    def decorate(command):
        command = click.option(
            MIX_FLAG,
            "guidance_mix",
            type=click.FloatRange(0, 1),
            metavar="ALPHA",
            help="With two --gnet and one total --guidance W: the second guide's share ALPHA in [0, 1] "
            "(weights (1-ALPHA)(W-1)+1 and ALPHA(W-1)+1; 0: the first guide only, 1: the second only).",
        )(command)
        command = click.option(
            GUIDANCE_FLAG,
            "guidance",
            type=float,
            multiple=True,
            metavar="FLOAT",
            help=f"Guidance strength; repeat it for one weight per --gnet  [default: {default}]",
        )(command)
        return click.option(
            GNET_FLAG,
            "gnet",
            multiple=True,
            metavar="FILE|URL|PRESET",
            help="Guiding network (used only when its weight != 1); repeat it for several guides "
            "(D_main + sum_i (w_i - 1)(D_main - D_i), docs/evaluation.md#guidance).",
        )(command)

    return decorate
