"""The options of the EDM sampler, with their defaults and bounds in one place (standard
library only, so the Snakefile can read them too).

    SamplerOptions()                    the defaults: 32 steps (NFE 63), sigma 0.002..80, rho 7, no churn
    SamplerOptions(num_steps=16).nfe    31
    SAMPLER_FIELDS['num_steps'].minimum 2

The defaults are those of the EDM paper's deterministic sampler (Karras et al. 2022, arXiv
2206.00364, Sec. 3, Eq. 5 and Algorithm 2) as the official EDM2 `generate_images.py`
uses them; `edm2 generate`, `edm2 metrics gen` (through `edm2.commands.sampling.sampler_options`)
and the workflow schema take them from here.
"""

import dataclasses
import math

from edm2.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplerField:
    """How one sampler option is given on the command line and which values it accepts."""

    flag: str  # command-line option
    minimum: float | None  # lower bound (None: any value)
    open: bool  # the bound itself is excluded
    help: str


SAMPLER_FIELDS = {
    "num_steps": SamplerField("--steps", 2, False, "Number of sampling steps (NFE = 2 steps - 1)."),
    "sigma_min": SamplerField("--sigma_min", 0, True, "Lowest noise level."),
    "sigma_max": SamplerField("--sigma_max", 0, True, "Highest noise level."),
    "rho": SamplerField("--rho", 0, True, "Time step exponent."),
    "S_churn": SamplerField("--S_churn", 0, False, "Stochasticity strength."),
    "S_min": SamplerField("--S_min", 0, False, "Stochastic min noise level."),
    "S_max": SamplerField("--S_max", 0, False, "Stochastic max noise level."),
    "S_noise": SamplerField("--S_noise", None, False, "Stochastic noise inflation."),
}


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """Options of `edm_sampler` other than the networks, noise and guidance.

    Raises ConfigError (naming the command-line option) for a value outside its bounds
    (`SAMPLER_FIELDS`): fewer than 2 steps, non-positive noise levels or rho, negative churn.
    """

    num_steps: int = 32  # Heun steps; the last one is an Euler step, so NFE = 2 num_steps - 1.
    sigma_min: float = 0.002  # Lowest noise level of the schedule.
    sigma_max: float = 80.0  # Highest noise level (the initial noise is scaled by it).
    rho: float = 7.0  # Exponent of the time-step schedule.
    S_churn: float = 0.0  # Stochasticity strength (0: deterministic).
    S_min: float = 0.0  # Noise levels in [S_min, S_max] get churn.
    S_max: float = math.inf
    S_noise: float = 1.0  # Inflation of the churn noise.

    def __post_init__(self):
        for name, field in SAMPLER_FIELDS.items():
            value = getattr(self, name)
            value = int(value) if name == "num_steps" else float(value)
            object.__setattr__(self, name, value)
            low = field.minimum
            if low is not None and (value < low or (field.open and value == low)):
                bound = f"greater than {low:g}" if field.open else f"at least {low:g}"
                raise ConfigError(f"{field.flag} must be {bound}, got {value:g}")

    @property
    def nfe(self) -> int:
        """Denoiser evaluations per image (each also evaluates the guide when guiding)."""
        return 2 * self.num_steps - 1

    def kwargs(self, guidance: float = 1.0) -> dict:
        """The keyword arguments of `edm_sampler`, in its parameter order, with `guidance`."""
        return dict(
            num_steps=self.num_steps,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            rho=self.rho,
            guidance=float(guidance),
            S_churn=self.S_churn,
            S_min=self.S_min,
            S_max=self.S_max,
            S_noise=self.S_noise,
        )


DEFAULTS = SamplerOptions()
