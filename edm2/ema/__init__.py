"""Power-function EMA tracking and post-hoc EMA reconstruction (docs/method.md#ema)."""

from edm2.ema.maths import (
    MAX_STD,
    exp_to_std,
    parse_std_list,
    power_function_beta,
    power_function_correlation,
    power_function_response,
    solve_posthoc_coefficients,
    std_to_exp,
)
from edm2.ema.tracking import HalfLifeEMA, PowerFunctionEMA, TraditionalEMA

__all__ = [
    "MAX_STD",
    "exp_to_std",
    "std_to_exp",
    "power_function_response",
    "power_function_correlation",
    "power_function_beta",
    "solve_posthoc_coefficients",
    "parse_std_list",
    "PowerFunctionEMA",
    "TraditionalEMA",
    "HalfLifeEMA",
]
