"""Power-function EMA tracking and post-hoc EMA reconstruction (docs/method.md#ema).

Names import on first use (`edm2.utils.lazy_exports`), so that torch-free modules of the
package (`edm2.ema.per_tensor`, which the Snakefile reads) load without torch.
"""

from edm2.utils import lazy_exports

_EXPORTS = {
    "MAX_STD": "edm2.ema.maths",
    "exp_to_std": "edm2.ema.maths",
    "std_to_exp": "edm2.ema.maths",
    "power_function_response": "edm2.ema.maths",
    "power_function_correlation": "edm2.ema.maths",
    "power_function_beta": "edm2.ema.maths",
    "solve_posthoc_coefficients": "edm2.ema.maths",
    "parse_std_list": "edm2.ema.maths",
    "PowerFunctionEMA": "edm2.ema.tracking",
    "TraditionalEMA": "edm2.ema.tracking",
    "HalfLifeEMA": "edm2.ema.tracking",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
