"""The options of the EDM sampler, with their defaults and bounds in one place (standard
library only, so the Snakefile can read them too).

    SamplerOptions()                    the defaults: 32 steps (NFE 63), sigma 0.002..80, rho 7, no churn
    SamplerOptions(num_steps=16).nfe    31
    SAMPLER_FIELDS['num_steps'].minimum 2
    SamplerOptions(sigma_lo=0.19, sigma_hi=1.61)                  guidance on steps 17..22 only (of 32)
    SamplerOptions(guidance_start=17, guidance_stop=22)           the same, by step index

The defaults are those of the EDM paper's deterministic sampler (Karras et al. 2022, arXiv
2206.00364, Sec. 3, Eq. 5 and Algorithm 2) as the official EDM2 `generate_images.py`
uses them. The guidance interval (sigma_lo, sigma_hi], or [guidance_start, guidance_stop] by
step index, is that of Kynkäänniemi et al. 2024 (arXiv 2404.07724, Sec. 3.1, Eq. 6; their
code's `guidance_interval`); the default covers every step (plain guidance, Eq. 4).
`edm2 generate`, `edm2 metrics gen` (through `edm2.commands.sampling.sampler_options`)
and the workflow schema take them from here.
"""

import dataclasses
import math
import shlex

from edm2.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplerField:
    """How one sampler option is given on the command line and which values it accepts."""

    flag: str  # command-line option
    minimum: float | None  # lower bound (None: any value)
    open: bool  # the bound itself is excluded
    help: str
    type: type = float  # int or float; the value may also be None where the default is None


SAMPLER_FIELDS = {
    "num_steps": SamplerField("--steps", 2, False, "Number of sampling steps (NFE = 2 steps - 1).", int),
    "sigma_min": SamplerField("--sigma_min", 0, True, "Lowest noise level."),
    "sigma_max": SamplerField("--sigma_max", 0, True, "Highest noise level."),
    "rho": SamplerField("--rho", 0, True, "Time step exponent."),
    "S_churn": SamplerField("--S_churn", 0, False, "Stochasticity strength."),
    "S_min": SamplerField("--S_min", 0, False, "Stochastic min noise level."),
    "S_max": SamplerField("--S_max", 0, False, "Stochastic max noise level."),
    "S_noise": SamplerField("--S_noise", None, False, "Stochastic noise inflation."),
    "sigma_lo": SamplerField(
        "--sigma_lo",
        0,
        False,
        "Guidance interval (sigma_lo, sigma_hi]: guide only the steps whose noise level lies in it.",
    ),
    "sigma_hi": SamplerField("--sigma_hi", 0, False, "Upper end of the guidance interval (inf: from the first step)."),
    "guidance_start": SamplerField(
        "--guidance_start", 0, False, "Guidance interval by step index: first guided step (0 = the first step).", int
    ),
    "guidance_stop": SamplerField(
        "--guidance_stop", 0, False, "Last guided step, inclusive (steps - 1 = the last)  [default: the last]", int
    ),
}
INTERVAL_FIELDS = ("sigma_lo", "sigma_hi", "guidance_start", "guidance_stop")  # the guidance interval


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """Options of `edm_sampler` other than the networks, noise and guidance.

    Raises ConfigError (naming the command-line option) for a value outside its bounds
    (`SAMPLER_FIELDS`): fewer than 2 steps, non-positive noise levels or rho, negative churn, NaN;
    and for a guidance interval that is empty by construction (sigma_lo >= sigma_hi,
    guidance_start > guidance_stop, guidance_stop past the last step) or given both by noise
    level and by step index.

    The guidance interval (arXiv 2404.07724 Eq. 6): step i (0-based, from sigma_max down) is
    guided iff sigma_lo < t_i <= sigma_hi and guidance_start <= i <= guidance_stop, where t_i is
    the step's noise level before churn (`t_cur` of `edm_sampler`). Both evaluations of a Heun
    step use the same decision, so w stays constant within each step (the paper's Sec. 3.1
    snapping to whole steps) and the guiding network is not evaluated on unguided steps.
    """

    num_steps: int = 32  # Heun steps; the last one is an Euler step, so NFE = 2 num_steps - 1.
    sigma_min: float = 0.002  # Lowest noise level of the schedule.
    sigma_max: float = 80.0  # Highest noise level (the initial noise is scaled by it).
    rho: float = 7.0  # Exponent of the time-step schedule.
    S_churn: float = 0.0  # Stochasticity strength (0: deterministic).
    S_min: float = 0.0  # Noise levels in [S_min, S_max] get churn.
    S_max: float = math.inf
    S_noise: float = 1.0  # Inflation of the churn noise.
    sigma_lo: float = 0.0  # Guidance interval (sigma_lo, sigma_hi] of noise levels (arXiv 2404.07724 Eq. 6).
    sigma_hi: float = math.inf
    guidance_start: int = 0  # Guidance interval by step index, both ends included (the paper's code).
    guidance_stop: int | None = None  # None: the last step.

    def __post_init__(self):
        open_ended = {f.name for f in dataclasses.fields(self) if f.default is None}  # None: "to the end"
        for name, field in SAMPLER_FIELDS.items():
            value = getattr(self, name)
            if value is None and name in open_ended:
                continue
            value = _number(field, value)
            object.__setattr__(self, name, value)
            low = field.minimum
            if low is not None and (value < low or (field.open and value == low)):
                bound = f"greater than {low:g}" if field.open else f"at least {low:g}"
                raise ConfigError(f"{field.flag} must be {bound}, got {value:g}")
        self._check_interval()

    def _check_interval(self):
        if not self.sigma_lo < self.sigma_hi:
            raise ConfigError(
                f"--sigma_lo ({self.sigma_lo:g}) must be below --sigma_hi ({self.sigma_hi:g}); "
                "the guidance interval is (sigma_lo, sigma_hi]"
            )
        stop = self.guidance_stop
        if stop is not None and stop > self.num_steps - 1:
            raise ConfigError(
                f"--guidance_stop {stop} is past the last step {self.num_steps - 1} of --steps {self.num_steps}"
            )
        if stop is not None and self.guidance_start > stop:
            raise ConfigError(f"--guidance_start ({self.guidance_start}) must be at most --guidance_stop ({stop})")
        if self.guidance_start > self.num_steps - 1:
            raise ConfigError(
                f"--guidance_start {self.guidance_start} is past the last step {self.num_steps - 1} of --steps {self.num_steps}"
            )
        by_sigma = (self.sigma_lo, self.sigma_hi) != (0.0, math.inf)
        by_step = (self.guidance_start, stop) != (0, None)
        if by_sigma and by_step:
            raise ConfigError(
                "give the guidance interval by noise level (--sigma_lo/--sigma_hi) or by step "
                "(--guidance_start/--guidance_stop), not both"
            )

    @property
    def nfe(self) -> int:
        """Denoiser evaluations per image (each also evaluates the guide when guiding)."""
        return 2 * self.num_steps - 1

    def kwargs(self, guidance: float | tuple = 1.0) -> dict:
        """The keyword arguments of `edm_sampler`, in its parameter order, with `guidance` (one
        weight, or a tuple of one weight per guide: `guide_weights`)."""
        return dict(
            num_steps=self.num_steps,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            rho=self.rho,
            guidance=tuple(map(float, guidance)) if isinstance(guidance, (tuple, list)) else float(guidance),
            S_churn=self.S_churn,
            S_min=self.S_min,
            S_max=self.S_max,
            S_noise=self.S_noise,
            sigma_lo=self.sigma_lo,
            sigma_hi=self.sigma_hi,
            guidance_start=self.guidance_start,
            guidance_stop=self.guidance_stop,
        )

    @property
    def interval(self) -> bool:
        """Whether a guidance-interval option differs from its default (which guides every step)."""
        return (self.sigma_lo, self.sigma_hi, self.guidance_start, self.guidance_stop) != (0.0, math.inf, 0, None)


def _number(field: SamplerField, value):
    """`value` as the field's type; ConfigError naming the option for NaN, a non-number or a fractional int."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field.flag} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ConfigError(f"{field.flag} must be a number, got nan")
    if field.type is int:
        if not math.isfinite(number) or number != int(number):
            raise ConfigError(f"{field.flag} must be a whole number, got {value!r}")
        return int(number)
    return number


DEFAULTS = SamplerOptions()


def preset_interval(options: dict, preset_sampler: dict) -> dict:
    """`options` (SamplerOptions fields) with a preset's guidance interval filled in where the
    options leave every interval field at its default (an explicit interval wins). A preset's
    step indices refer to the default 32 steps: ConfigError with another --steps."""
    if any(options.get(name, getattr(DEFAULTS, name)) != getattr(DEFAULTS, name) for name in INTERVAL_FIELDS):
        return dict(options)
    interval = {k: v for k, v in preset_sampler.items() if k in INTERVAL_FIELDS}
    steps = options.get("num_steps", DEFAULTS.num_steps)
    if "guidance_start" in interval and steps != DEFAULTS.num_steps:
        raise ConfigError(
            f"the preset's guidance interval is steps {interval['guidance_start']}-{interval['guidance_stop']} "
            f"of {DEFAULTS.num_steps}; with --steps {steps} give the interval by noise level (--sigma_lo, --sigma_hi)"
        )
    return {**options, **interval}


def interval_options(entry: dict, num_steps: int = DEFAULTS.num_steps) -> dict:
    """The guidance-interval fields set in `entry` (e.g. a workflow config entry), checked with
    `SamplerOptions` at `num_steps` (ConfigError naming the option)."""
    chosen = {name: entry[name] for name in INTERVAL_FIELDS if entry.get(name) is not None}
    SamplerOptions(num_steps=num_steps, **chosen)
    return chosen


def command_line(options: dict) -> list[str]:
    """`options` (SamplerOptions fields) as command-line arguments of `edm2 generate` / `metrics gen`."""
    return [f"{SAMPLER_FIELDS[name].flag} {value:g}" for name, value in options.items() if value is not None]


# ---- several guides (autoguidance, arXiv 2406.02507, Appendix B.2, Eq. 6) ---------------------

GNET_FLAG = "--gnet"  # a guiding network (repeated: several guides)
GUIDANCE_FLAG = "--guidance"  # a guidance weight (one, the total with MIX_FLAG, or one per guide)
MIX_FLAG = "--guidance-mix"  # the interpolation factor alpha between two guides
_GUIDANCE_FIELD = SamplerField(GUIDANCE_FLAG, None, False, "Guidance weight (1 = none).")  # checked by _number


def mix_weights(guidance: float, mix: float) -> tuple[float, float]:
    """The weights (w_1, w_2) of two guides from the total guidance weight w and the mix alpha in
    [0, 1]: w_1 = (1 - alpha)(w - 1) + 1 and w_2 = alpha (w - 1) + 1 (Karras et al. 2024, arXiv
    2406.02507, Appendix B.2, with guide 1 the unconditional model of classifier-free guidance,
    w_u, and guide 2 the degraded model of autoguidance, w_c), so (w_1 - 1) + (w_2 - 1) = w - 1.
    alpha = 0 gives exactly (w, 1) and alpha = 1 exactly (1, w): pure classifier-free guidance and
    pure autoguidance, the second guide (the first) never evaluated. ConfigError naming
    --guidance-mix for alpha outside [0, 1]."""
    mix, guidance = float(mix), float(guidance)
    if not 0 <= mix <= 1:  # NaN fails too
        raise ConfigError(f"{MIX_FLAG} must be in [0, 1] (0: the first guide only, 1: the second), got {mix:g}")
    if mix == 0:
        return guidance, 1.0
    if mix == 1:
        return 1.0, guidance
    return (1 - mix) * (guidance - 1) + 1, mix * (guidance - 1) + 1


def guide_weights(guidance, num_guides: int, mix: float | None = None) -> tuple[float, ...]:
    """The weight w_i of each of `num_guides` guides in Eq. 6 of arXiv 2406.02507 (App. B.2),
    D_w = D_m + sum_i (w_i - 1)(D_m - D_i).

    guidance: one number (the weight of the one guide, or with `mix` the total weight w of two
    guides, split by `mix_weights`) or a sequence of one weight per guide. A single number with
    no guide must be 1. ConfigError naming --guidance, --guidance-mix or --gnet for a count that
    does not match, a mix without exactly two guides or with per-guide weights, or NaN."""
    values = list(guidance) if isinstance(guidance, (list, tuple)) else [guidance]
    weights = [_number(_GUIDANCE_FIELD, w) for w in values]
    if mix is not None:
        if num_guides != 2:
            raise ConfigError(f"{MIX_FLAG} mixes two guides; give {GNET_FLAG} twice (got {num_guides})")
        if len(weights) != 1:
            raise ConfigError(
                f"{MIX_FLAG} splits one total {GUIDANCE_FLAG}; give one {GUIDANCE_FLAG}, not {len(weights)}"
            )
        return mix_weights(weights[0], mix)
    if len(weights) == num_guides:
        return tuple(weights)
    if num_guides == 0 and len(weights) == 1:
        if weights[0] != 1:
            raise ConfigError(
                f"{GUIDANCE_FLAG} {weights[0]:g} needs a guiding network; pass {GNET_FLAG} FILE|URL|PRESET"
            )
        return ()
    if num_guides > 1 and len(weights) == 1:
        raise ConfigError(
            f"{num_guides} guides ({GNET_FLAG}) need one {GUIDANCE_FLAG} each, or one total {GUIDANCE_FLAG} with {MIX_FLAG} ALPHA"
        )
    raise ConfigError(
        f"{len(weights)} {GUIDANCE_FLAG} values for {num_guides} {GNET_FLAG}; give one {GUIDANCE_FLAG} per {GNET_FLAG}"
    )


def total_guidance(weights) -> float:
    """The total amount of guidance w = 1 + sum_i (w_i - 1) of per-guide weights (1: none); the
    weight itself for one guide."""
    weights = tuple(weights)
    if len(weights) == 1:
        return float(weights[0])
    return 1.0 + sum(float(w) - 1 for w in weights)


def guidance_command_line(gnets, guidance: float, mix: float | None = None) -> list[str]:
    """The guides and weights as arguments of `edm2 generate` / `edm2 metrics gen` (paths
    shell-quoted), leaving out what is not evaluated: none at weight 1 or without guides; with
    two guides and `mix`, only the guide(s) whose weight `mix_weights` makes other than 1 (a
    single one with its weight: bit for bit the same images as --guidance-mix at 0 or 1)."""
    gnets = list(gnets)
    if not gnets or (float(guidance) == 1 and mix is None):
        return []
    if mix is None:
        return [f"{GNET_FLAG} {shlex.quote(str(g))}" for g in gnets] + [f"{GUIDANCE_FLAG} {float(guidance):g}"]
    weights = guide_weights(guidance, len(gnets), mix)
    kept = [(g, w) for g, w in zip(gnets, weights) if w != 1]
    if len(kept) == 1:
        return [f"{GNET_FLAG} {shlex.quote(str(kept[0][0]))}", f"{GUIDANCE_FLAG} {kept[0][1]:g}"]
    if not kept:
        return []
    args = [f"{GNET_FLAG} {shlex.quote(str(g))}" for g in gnets]
    return args + [f"{GUIDANCE_FLAG} {float(guidance):g}", f"{MIX_FLAG} {float(mix):g}"]
