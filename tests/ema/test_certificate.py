"""The reconstruction certificate (edm2.ema.certificate, docs/phema.md#certificate), checked
against an independent computation of the profile error: the exponent from Eq. 123 by root
bracketing, the profiles written out here, and the L2 integrals by scipy's adaptive quadrature."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq

from edm2.ema.certificate import ERROR_THRESHOLD, certificates, profile_errors, supported_band, warning_line
from edm2.ema.maths import power_function_correlation, solve_posthoc_coefficients
from edm2.utils import MAX_STD


def gamma_of(std):
    """gamma >= 0 with sqrt((g+1)/((g+2)^2 (g+3))) = std (EDM2 Eq. 123), by bracketing."""
    return brentq(lambda g: np.sqrt((g + 1) / (g + 2) ** 2 / (g + 3)) - std, 0.0, 1e6, xtol=1e-14, rtol=1e-15)


def independent_error(in_nimg, in_std, x, out_nimg, out_std):
    """||r - sum_i x_i r_i|| / ||r|| over [0, out_nimg], by scipy.integrate.quad piece by piece."""
    gammas = [gamma_of(s) for s in in_std]
    g_out = gamma_of(out_std)

    def r(t, T, g):
        return (g + 1) / T * (t / T) ** g if t <= T else 0.0

    def diff2(t):
        rec = sum(xi * r(t, T, g) for xi, T, g in zip(x, in_nimg, gammas))
        return (r(t, out_nimg, g_out) - rec) ** 2

    breaks = sorted({0.0, *map(float, in_nimg), float(out_nimg)})
    num = sum(quad(diff2, a, b, epsabs=0, epsrel=1e-11, limit=200)[0] for a, b in zip(breaks[:-1], breaks[1:]))
    den = quad(lambda t: r(t, out_nimg, g_out) ** 2, 0, out_nimg, epsabs=0, epsrel=1e-12)[0]
    return np.sqrt(num / den)


# Snapshots every 2048 images up to 32768, at the two stds the paper stores.
IN_NIMG = [2048 * k for k in range(1, 17) for _ in range(2)]
IN_STD = [s for _ in range(1, 17) for s in (0.050, 0.100)]
USED = [SimpleNamespace(nimg=n, std=s) for n, s in zip(IN_NIMG, IN_STD)]
# Inside the band (0.070, 0.120), one of the stored profiles (0.100), and outside it (0.010, 0.280).
OUT_STD = [0.010, 0.070, 0.100, 0.120, 0.280]


@pytest.fixture(scope="module")
def cert():
    X = solve_posthoc_coefficients(IN_NIMG, IN_STD, np.full(len(OUT_STD), 32768), OUT_STD)
    return X, certificates(USED, X, OUT_STD, 32768)


def test_profile_error_equals_independent_quadrature_inside_and_outside_the_band(cert):
    X, (common, per_output) = cert
    for j, c in enumerate(per_output):
        assert c["coefficients"] == [float(v) for v in X[:, j]]
        want = independent_error(IN_NIMG, IN_STD, c["coefficients"], 32768, c["ema_std"])
        if want < 1e-9:  # the stored profile itself: the error is rounding only
            assert c["profile_error"] < 1e-9, c
        else:
            assert c["profile_error"] == pytest.approx(want, rel=1e-6), c
    errors = {c["ema_std"]: c["profile_error"] for c in per_output}
    assert errors[0.070] < ERROR_THRESHOLD and errors[0.120] < ERROR_THRESHOLD
    assert errors[0.010] > ERROR_THRESHOLD and errors[0.280] > ERROR_THRESHOLD


def test_profile_error_agrees_with_the_closed_form_of_eq_151(cert):
    # ||r - R x||^2 = <r,r> - 2 x.b + x.A.x with the inner products of Eq. 151 (large errors only:
    # the difference cancels for small ones, which is why the certificate uses a grid).
    X, (_, per_output) = cert
    rv = lambda v: np.float64(v).reshape(-1, 1)  # noqa: E731
    A = power_function_correlation(rv(IN_NIMG), rv(IN_STD), rv(IN_NIMG).T, rv(IN_STD).T)
    for j, c in enumerate(per_output):
        if c["profile_error"] < 1e-3:
            continue
        b = power_function_correlation(rv(IN_NIMG), rv(IN_STD), 32768, c["ema_std"])[:, 0]
        rr = power_function_correlation(32768, c["ema_std"], 32768, c["ema_std"])
        x = X[:, j]
        assert c["profile_error"] == pytest.approx(np.sqrt((rr - 2 * x @ b + x @ A @ x) / rr), rel=1e-7)


def test_band_weak_flags_and_warning(cert):
    _, (common, per_output) = cert
    lo, hi = common["band"]
    assert 0.010 < lo < 0.070 and 0.120 < hi < 0.280, (lo, hi)
    # The band edges are where the error crosses the threshold (on the 0.001 grid).
    e = profile_errors(
        IN_NIMG, IN_STD, solve_posthoc_coefficients(IN_NIMG, IN_STD, 32768, [lo - 0.001, lo, hi, hi + 0.001]),
        32768, [lo - 0.001, lo, hi, hi + 0.001],
    )  # fmt: skip
    assert e[1] <= ERROR_THRESHOLD < e[0] and e[2] <= ERROR_THRESHOLD < e[3]
    assert common["input_nimg"] == [2048, 32768] and common["input_std"] == [0.05, 0.1] and common["num_inputs"] == 32
    assert [c["weak"] for c in per_output] == [True, False, False, False, True]
    records = [{**common, **c, "out_nimg": 32768} for c in per_output]
    line = warning_line(records)
    assert "\n" not in line and "EMA length 0.010,0.280 " in line and f"{lo:.3f}..{hi:.3f}" in line
    assert warning_line([r for r in records if not r["weak"]]) is None


def test_few_snapshots_support_no_band_and_the_bound_is_gamma_zero():
    assert supported_band([4096], [0.05], 4096) == (0.05, 0.05)  # one profile reconstructs only itself
    assert supported_band([4096], [0.05], 8192) is None  # nothing ends at 8192 to build it from
    assert MAX_STD == pytest.approx(np.sqrt(1 / 12), rel=1e-15) and gamma_of(MAX_STD - 1e-9) < 1e-6
