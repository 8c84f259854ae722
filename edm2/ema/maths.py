"""Power-function EMA profile maths and the post-hoc coefficient solve (EDM2, arXiv 2312.02696,
Sec. 3 and Appendix C; docs/method.md#ema). Each function names the equation or algorithm of the
paper it implements, as the official phema.py does.

Everything here is float64: the Gram matrix of a real run has cond(A) ~ 1e6, so the solve must
never be done in float32.
"""

import numpy as np

from edm2 import utils
from edm2.utils import MAX_STD, parse_std_list  # noqa: F401 (exported here too)


def exp_to_std(exp):
    """Relative std of a power-function profile with exponent gamma (EDM2 Eq. 123; docs/method.md#ema),
    float64 (the formula is `edm2.utils.exp_to_std`, which also gives MAX_STD)."""
    return utils.exp_to_std(np.float64(exp))


def std_to_exp(std):
    """Exponent gamma for a relative std (EDM2 Eq. 126, Algorithm 2): the largest real root of the
    cubic of docs/method.md#ema.

    Accepts a scalar or an array (element-wise).
    """
    std = np.float64(std)
    tmp = std.flatten() ** -2
    exp = [np.roots([1, 7, 16 - t, 12 - t]).real.max() for t in tmp]
    exp = np.float64(exp).reshape(std.shape)
    return exp


def power_function_response(ofs, std, len, axis=0):
    """Discrete impulse response of a power-function EMA over integer times [0, len).

    `r(t) = (t/T)^gamma (gamma+1)/T` for t <= T, else 0, normalised to sum 1 (EDM2 Eqs. 121 and
    108; docs/method.md#ema).
    `ofs` (T) and `std` broadcast against each other; the time axis is inserted at `axis`.
    """
    ofs, std = np.broadcast_arrays(ofs, std)
    ofs = np.stack([np.float64(ofs)], axis=axis)
    exp = np.stack([std_to_exp(std)], axis=axis)
    shape = [1] * exp.ndim
    shape[axis] = -1
    t = np.arange(len).reshape(shape)
    resp = np.where(t <= ofs, (t / ofs) ** exp, 0) / ofs * (exp + 1)
    resp = resp / np.sum(resp, axis=axis, keepdims=True)
    return resp


def power_function_correlation(a_ofs, a_std, b_ofs, b_std):
    """Inner product <a, b> of two power-function profiles (EDM2 Eq. 151, `p_dot_p` of Algorithm 3;
    docs/method.md#ema).

    Arguments broadcast; `*_ofs` are the profile end times T, `*_std` the relative stds.
    """
    a_exp = std_to_exp(a_std)
    b_exp = std_to_exp(b_std)
    a_ofs = np.float64(a_ofs)
    b_ofs = np.float64(b_ofs)
    t_ratio = a_ofs / b_ofs
    t_exp = np.where(a_ofs < b_ofs, b_exp, -a_exp)
    t_max = np.maximum(a_ofs, b_ofs)
    num = (a_exp + 1) * (b_exp + 1) * t_ratio**t_exp
    den = (a_exp + b_exp + 1) * t_max
    return num / den


def power_function_beta(std, t_next, t_delta, exp=None):
    """Per-step EMA decay `beta = (1 - t_delta / t_next)^(gamma + 1)` (EDM2 Eq. 127; docs/method.md#ema,
    #official-details).

    `exp`: gamma = std_to_exp(std) when the caller has it already (it solves a cubic).
    """
    beta = (1 - t_delta / t_next) ** ((std_to_exp(std) if exp is None else exp) + 1)
    return beta


def solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std):
    """Coefficients X [n_in, n_out] with output_j = sum_i X[i, j] * input_i (EDM2 Algorithm 3,
    `solve_weights`; docs/method.md#ema).

    Solves A X = B in float64 with the Gram matrix A of the input profiles and B the inner
    products of inputs and targets, then normalises every column to sum to 1.
    """
    in_ofs, in_std = np.broadcast_arrays(np.float64(in_ofs), np.float64(in_std))
    out_ofs, out_std = np.broadcast_arrays(np.float64(out_ofs), np.float64(out_std))
    rv = lambda x: np.float64(x).reshape(-1, 1)  # noqa: E731
    cv = lambda x: np.float64(x).reshape(1, -1)  # noqa: E731
    A = power_function_correlation(rv(in_ofs), rv(in_std), cv(in_ofs), cv(in_std))
    B = power_function_correlation(rv(in_ofs), rv(in_std), cv(out_ofs), cv(out_std))
    X = np.linalg.solve(A, B)
    X = X / np.sum(X, axis=0)
    return X
