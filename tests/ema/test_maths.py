"""Power-function EMA maths (docs/method.md#ema) checked against independent answers:
closed forms derived here, numerical integrals (scipy.integrate.quad), root bracketing and
a 40-digit mpmath solve."""

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq

from edm2.ema import (
    exp_to_std,
    parse_std_list,
    power_function_beta,
    power_function_correlation,
    power_function_response,
    solve_posthoc_coefficients,
    std_to_exp,
)
from edm2.errors import EDM2Error


def density(t, T, gamma):
    """Power-function profile p(t) = (gamma+1)/T (t/T)^gamma on [0, T] (docs/method.md#ema)."""
    return np.where((t >= 0) & (t <= T), (gamma + 1) / T * (np.clip(t, 0, None) / T) ** gamma, 0.0)


def std_by_moments(gamma):
    """Relative std of the profile from its first two moments, by numerical integration."""
    m1 = quad(lambda u: u * (gamma + 1) * u**gamma, 0, 1, epsabs=0, epsrel=1e-13)[0]
    m2 = quad(lambda u: u * u * (gamma + 1) * u**gamma, 0, 1, epsabs=0, epsrel=1e-13)[0]
    return np.sqrt(m2 - m1 * m1)


# --- exp_to_std / std_to_exp -----------------------------------------------------------------


@pytest.mark.parametrize(
    "std, gamma, rtol",
    [
        (0.050, 16.972198602, 1e-10),  # docs/method.md#ema
        (0.100, 6.937203938, 1e-9),
        (0.010, 96.9949, 1e-6),
        (0.200, 1.82621, 1e-5),
        (0.130, 4.6036, 1e-5),  # Appendix B
        (0.250, 0.7198, 1e-4),
    ],
)
def test_std_to_exp_matches_reference_values(std, gamma, rtol):
    assert float(std_to_exp(std)) == pytest.approx(gamma, rel=rtol)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 6.937, 16.97, 96.99])
def test_exp_to_std_equals_std_of_the_profile_computed_by_integration(gamma):
    assert float(exp_to_std(gamma)) == pytest.approx(std_by_moments(gamma), rel=1e-10)


@pytest.mark.parametrize("std", [0.005, 0.01, 0.05, 0.1, 0.13, 0.2, 0.25, 0.28])
def test_std_to_exp_equals_the_root_found_by_bracketing(std):
    # Independent of the cubic: invert the moment-based std by bracketing on gamma >= 0.
    gamma = brentq(lambda g: np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) - std, 0.0, 1e5, xtol=1e-14, rtol=1e-14)
    assert float(std_to_exp(std)) == pytest.approx(gamma, rel=1e-10)


def test_round_trips_in_both_directions():
    stds = np.array([0.001, 0.01, 0.05, 0.1, 0.2, 0.25, 0.2886])
    np.testing.assert_allclose(exp_to_std(std_to_exp(stds)), stds, rtol=1e-11)
    gammas = np.array([0.0, 0.1, 1.0, 7.0, 17.0, 100.0, 1e4])
    np.testing.assert_allclose(std_to_exp(exp_to_std(gammas)), gammas, rtol=1e-8, atol=1e-9)


def test_conversions_accept_arrays_element_wise_and_return_float64():
    stds = np.array([[0.05, 0.10, 0.20], [0.01, 0.13, 0.25]])
    gammas = std_to_exp(stds)
    assert gammas.shape == stds.shape and gammas.dtype == np.float64
    for idx in np.ndindex(stds.shape):
        assert gammas[idx] == pytest.approx(float(std_to_exp(float(stds[idx]))), rel=1e-14)
    gammas_list = std_to_exp([0.05, 0.1])
    assert gammas_list.shape == (2,)
    stds_back = exp_to_std(gammas)
    assert stds_back.shape == stds.shape and stds_back.dtype == np.float64
    assert np.ndim(std_to_exp(0.05)) == 0 and np.ndim(exp_to_std(3.0)) == 0


def test_largest_std_is_sqrt_one_twelfth_at_gamma_zero_below_the_0_289_bound():
    assert float(exp_to_std(0)) == pytest.approx(np.sqrt(1 / 12), rel=1e-15)
    assert np.sqrt(1 / 12) < 0.289
    gammas = np.linspace(0, 50, 5001)
    assert np.all(exp_to_std(gammas) <= np.sqrt(1 / 12) + 1e-15)
    assert np.all(np.diff(exp_to_std(gammas)) < 0)  # decreasing for gamma >= 0
    # Just below sqrt(1/12) the exponent is ~0; between sqrt(1/12) and 0.289 it is slightly
    # negative but still > -1 (an integrable profile) and still round-trips.
    assert float(std_to_exp(np.sqrt(1 / 12) - 1e-12)) == pytest.approx(0, abs=1e-9)
    gamma = float(std_to_exp(0.2889))
    assert -1 < gamma < 0 and float(exp_to_std(gamma)) == pytest.approx(0.2889, rel=1e-12)


# --- power_function_response -----------------------------------------------------------------


@pytest.mark.parametrize("ofs, std, length", [(100, 0.05, 150), (37.5, 0.10, 40), (1000, 0.2, 1000), (10, 0.25, 11)])
def test_response_is_the_density_at_integer_times_normalised_to_sum_one(ofs, std, length):
    resp = power_function_response(ofs=ofs, std=std, len=length)
    assert resp.shape == (length,) and resp.dtype == np.float64
    assert resp.sum() == pytest.approx(1, abs=1e-14)
    t = np.arange(length, dtype=np.float64)
    expected = density(t, ofs, float(std_to_exp(std)))
    np.testing.assert_allclose(resp, expected / expected.sum(), rtol=1e-12, atol=1e-300)
    assert np.all(resp[t > ofs] == 0) and resp[0] == 0  # zero after T, and t^gamma = 0 at t = 0


def test_response_of_a_long_profile_approximates_the_continuous_density():
    T = 5000
    resp = power_function_response(ofs=T, std=0.1, len=T + 1)
    t = np.arange(T + 1)
    # Sum-to-one discrete weights ~ p(t) dt with dt = 1.
    np.testing.assert_allclose(resp, density(t, T, float(std_to_exp(0.1))), rtol=2e-3, atol=1e-9)


def test_response_broadcasts_ofs_and_std_and_puts_time_on_the_requested_axis():
    ofs = np.array([50.0, 80.0, 120.0])
    stds = np.array([0.05, 0.10, 0.20])
    length = 130
    per_column = np.stack([power_function_response(o, s, length) for o, s in zip(ofs, stds)])  # [3, len]
    np.testing.assert_allclose(power_function_response(ofs, stds, length, axis=0), per_column.T, rtol=1e-14)
    np.testing.assert_allclose(power_function_response(ofs, stds, length, axis=1), per_column, rtol=1e-14)
    np.testing.assert_allclose(power_function_response(ofs, stds, length, axis=-1), per_column, rtol=1e-14)
    grid = power_function_response(ofs.reshape(3, 1), np.array([0.05, 0.1]).reshape(1, 2), length, axis=0)
    assert grid.shape == (length, 3, 2)
    np.testing.assert_allclose(grid[:, 2, 1], power_function_response(120.0, 0.1, length), rtol=1e-14)
    np.testing.assert_allclose(grid.sum(axis=0), np.ones((3, 2)), rtol=1e-14)


# --- power_function_correlation --------------------------------------------------------------


def correlation_by_quadrature(a_ofs, a_std, b_ofs, b_std):
    a_exp, b_exp = float(std_to_exp(a_std)), float(std_to_exp(b_std))
    end = min(a_ofs, b_ofs)  # both densities vanish beyond their own T
    # Integrate over u = t / end in [0, 1] so quad sees the sharp peak near u = 1 at unit scale.
    f = lambda u: density(u * end, a_ofs, a_exp) * density(u * end, b_ofs, b_exp) * end  # noqa: E731
    return quad(f, 0, 1, epsabs=0, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize(
    "a_ofs, a_std, b_ofs, b_std",
    [
        (100.0, 0.05, 100.0, 0.05),
        (100.0, 0.05, 250.0, 0.10),
        (250.0, 0.10, 100.0, 0.05),
        (8388608.0, 0.05, 16777216.0, 0.05),
        (16777216.0, 0.10, 8388608.0, 0.01),
        (3.0, 0.25, 7.0, 0.2),
        (7.0, 0.01, 3.0, 0.25),
        (1000.0, 0.13, 999.0, 0.13),
    ],
)
def test_correlation_equals_the_integral_of_the_product_of_the_densities(a_ofs, a_std, b_ofs, b_std):
    expected = correlation_by_quadrature(a_ofs, a_std, b_ofs, b_std)
    assert float(power_function_correlation(a_ofs, a_std, b_ofs, b_std)) == pytest.approx(expected, rel=1e-9)
    assert float(power_function_correlation(b_ofs, b_std, a_ofs, a_std)) == pytest.approx(expected, rel=1e-9)


def test_correlation_of_a_profile_with_itself_is_its_squared_norm_in_closed_form():
    # int_0^T ((g+1)/T)^2 (t/T)^(2g) dt = (g+1)^2 / ((2g+1) T)
    for std in [0.01, 0.05, 0.1, 0.25]:
        g = float(std_to_exp(std))
        for T in [1.0, 1234.5, 2.0**30]:
            assert float(power_function_correlation(T, std, T, std)) == pytest.approx(
                (g + 1) ** 2 / ((2 * g + 1) * T), rel=1e-13
            )


def test_correlation_broadcasts_to_a_gram_matrix():
    ofs = np.array([100.0, 200.0, 300.0])
    stds = np.array([0.05, 0.1, 0.05])
    gram = power_function_correlation(ofs[:, None], stds[:, None], ofs[None, :], stds[None, :])
    assert gram.shape == (3, 3)
    np.testing.assert_allclose(gram, gram.T, rtol=1e-14)
    for i in range(3):
        for j in range(3):
            assert gram[i, j] == pytest.approx(
                float(power_function_correlation(ofs[i], stds[i], ofs[j], stds[j])), rel=1e-15
            )


# --- power_function_beta ---------------------------------------------------------------------


def test_beta_is_zero_on_the_first_step_and_follows_the_formula():
    for std in [0.05, 0.1]:
        assert power_function_beta(std=std, t_next=2048, t_delta=2048) == 0
    g = float(std_to_exp(0.05))
    for t_next, t_delta in [(4096, 2048), (10 * 2048, 2048), (1e9, 2048), (3.0, 1.0)]:
        expected = np.exp((g + 1) * np.log1p(-t_delta / t_next))
        assert float(power_function_beta(std=0.05, t_next=t_next, t_delta=t_delta)) == pytest.approx(
            expected, rel=1e-12
        )


def test_products_of_betas_telescope_into_a_power_function():
    # prod_{k=m+1..K} (1 - 1/k)^(g+1) = (m/K)^(g+1): the weight left on the EMA at step m.
    g = float(std_to_exp(0.1))
    K, m = 400, 37
    prod = np.prod([power_function_beta(std=0.1, t_next=k * 64, t_delta=64) for k in range(m + 1, K + 1)])
    assert prod == pytest.approx((m / K) ** (g + 1), rel=1e-11)


# --- solve_posthoc_coefficients --------------------------------------------------------------


def snapshot_profiles(num, interval, stds=(0.05, 0.10)):
    """Snapshots at times interval*1..num, each saved for every std (as training does)."""
    ofs = np.repeat(np.arange(1, num + 1) * float(interval), len(stds))
    std = np.tile(np.float64(stds), num)
    return ofs, std


def test_coefficient_columns_sum_to_one_and_have_the_right_shape():
    in_ofs, in_std = snapshot_profiles(8, 100)
    X = solve_posthoc_coefficients(in_ofs, in_std, [800, 800, 500], [0.03, 0.07, 0.15])
    assert X.shape == (16, 3) and X.dtype == np.float64
    np.testing.assert_allclose(X.sum(axis=0), 1, rtol=1e-13)


@pytest.mark.parametrize("target_std", [0.03, 0.07, 0.15, 0.2])
def test_coefficients_reconstruct_a_target_profile_from_snapshot_profiles(target_std):
    num, interval = 16, 100
    in_ofs, in_std = snapshot_profiles(num, interval)
    length = num * interval + 1
    inputs = power_function_response(in_ofs, in_std, length, axis=0)  # [len, n_in]
    target = power_function_response(num * interval, target_std, length)
    X = solve_posthoc_coefficients(in_ofs, in_std, num * interval, target_std)
    recon = inputs @ X[:, 0]
    err = np.linalg.norm(recon - target) / np.linalg.norm(target)
    best_single = min(np.linalg.norm(inputs[:, i] - target) for i in range(inputs.shape[1])) / np.linalg.norm(target)
    assert err < 0.05
    assert err < best_single / 5


def test_coefficients_equal_a_least_squares_fit_with_gram_matrix_from_quadrature():
    # Independent answer: the normal equations built from numerically integrated inner products.
    in_ofs, in_std = snapshot_profiles(4, 1000)
    out_ofs, out_std = np.array([4000.0, 3000.0]), np.array([0.08, 0.12])
    A = np.array(
        [[correlation_by_quadrature(a, sa, b, sb) for b, sb in zip(in_ofs, in_std)] for a, sa in zip(in_ofs, in_std)]
    )
    B = np.array(
        [[correlation_by_quadrature(a, sa, b, sb) for b, sb in zip(out_ofs, out_std)] for a, sa in zip(in_ofs, in_std)]
    )
    X_ref = np.linalg.lstsq(A, B, rcond=None)[0]
    X_ref /= X_ref.sum(axis=0)
    X = solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std)
    np.testing.assert_allclose(X, X_ref, rtol=1e-7, atol=1e-9 * np.abs(X_ref).max())


def test_coefficients_are_one_hot_when_the_target_is_one_of_the_inputs():
    in_ofs, in_std = snapshot_profiles(8, 100)
    for k in [0, 5, 10, 15]:
        X = solve_posthoc_coefficients(in_ofs, in_std, in_ofs[k], in_std[k])
        np.testing.assert_allclose(X[:, 0], np.eye(16)[k], atol=1e-9)


def mp_correlation(a_ofs, a_exp, b_ofs, b_exp):
    """<a,b> in closed form, derived here by integrating the product of the two densities:
    (ga+1)(gb+1) m^(ga+gb+1) / (Ta^(ga+1) Tb^(gb+1) (ga+gb+1)) with m = min(Ta, Tb)."""
    m = min(a_ofs, b_ofs)
    return (
        (a_exp + 1)
        * (b_exp + 1)
        * m ** (a_exp + b_exp + 1)
        / (a_ofs ** (a_exp + 1) * b_ofs ** (b_exp + 1) * (a_exp + b_exp + 1))
    )


def test_ill_conditioned_solve_is_accurate_in_float64():
    mpmath = pytest.importorskip("mpmath")
    # 12 snapshots every 8Mi images, three stds each: cond(A) ~ 2e6, like a real run's Gram
    # matrix (~1.6e6 for 64 snapshots of 0.050/0.100), but small enough for a 40-digit solve.
    in_ofs, in_std = snapshot_profiles(12, 8 * 2**20, stds=(0.05, 0.06, 0.10))
    out_ofs = np.array([12, 12, 9]) * 8 * 2.0**20
    out_std = np.array([0.07, 0.18, 0.03])
    A64 = power_function_correlation(in_ofs[:, None], in_std[:, None], in_ofs[None, :], in_std[None, :])
    B64 = power_function_correlation(in_ofs[:, None], in_std[:, None], out_ofs[None, :], out_std[None, :])
    assert np.linalg.cond(A64) > 1e6
    X = solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std)

    with mpmath.workdps(40):
        # Exponents: root of (g+2)^2 (g+3) = (g+1)/std^2 (the variance formula), refined to 40 digits.
        def mp_exp(std):
            return mpmath.findroot(
                lambda g: (g + 2) ** 2 * (g + 3) - (g + 1) / mpmath.mpf(std) ** 2, float(std_to_exp(std))
            )

        exps = {s: mp_exp(s) for s in {*map(float, in_std), *map(float, out_std)}}
        ins = [(mpmath.mpf(o), exps[float(s)]) for o, s in zip(in_ofs, in_std)]
        outs = [(mpmath.mpf(o), exps[float(s)]) for o, s in zip(out_ofs, out_std)]
        A = mpmath.matrix([[mp_correlation(*a, *b) for b in ins] for a in ins])
        X_ref = np.empty(X.shape)
        for j, out in enumerate(outs):
            col = mpmath.lu_solve(A, mpmath.matrix([mp_correlation(*a, *out) for a in ins]))
            total = mpmath.fsum(col)
            X_ref[:, j] = [float(c / total) for c in col]

    err = np.abs(X - X_ref).max(axis=0) / np.abs(X_ref).max(axis=0)  # per output, relative
    assert np.all(err < 1e-8), err
    # The same solve in float32 is far off, which is why float64 is required.
    X32 = np.linalg.solve(A64.astype(np.float32), B64.astype(np.float32))
    X32 = X32 / X32.sum(axis=0)
    assert np.abs(X32 - X_ref).max() > 1e3 * np.abs(X - X_ref).max()


# --- parse_std_list --------------------------------------------------------------------------


def test_readme_example_expands_to_49_accumulated_floats():
    values = parse_std_list("0.010,0.015,...,0.250")
    assert len(values) == 49
    step = 0.015 - 0.010
    expected = sorted({0.010, 0.015, 0.250, *(0.015 + step * m for m in range(1, 47))})
    assert values == expected  # exact float equality: accumulated, not rounded
    assert 0.049999999999999996 in values and 0.05 not in values
    assert values[0] == 0.010 and values[-1] == 0.250


def test_plain_lists_are_sorted_and_made_unique():
    assert parse_std_list("0.1,0.05,0.1,0.2") == [0.05, 0.1, 0.2]
    assert parse_std_list("0.05") == [0.05]


def test_expansion_inserts_round_k_values_between():
    assert parse_std_list("0.01,0.02,...,0.04") == [0.01, 0.02, 0.02 + 0.01 * 1, 0.04]  # k = 1
    assert parse_std_list("0.2,0.15,...,0.05") == sorted([0.2, 0.15, 0.15 + (0.15 - 0.2), 0.05])  # negative step
    # |k - round(k)| <= 1e-4 is accepted: here k = 2.00004.
    got = parse_std_list("0.01,0.02,...,0.0500004")
    step = 0.02 - 0.01
    assert got == [0.01, 0.02, 0.02 + step, 0.02 + 2 * step, 0.0500004]
    # Tokens after the expansion continue the list.
    assert parse_std_list("0.01,0.02,...,0.04,0.2") == [0.01, 0.02, 0.02 + 0.01, 0.04, 0.2]


@pytest.mark.parametrize(
    "text",
    [
        "0",  # std must be > 0
        "-0.05",
        "0.289",  # std must be < sqrt(1/12)
        "0.2887",  # std must be < sqrt(1/12) = 0.288675 (gamma >= 0)
        "0.3",
        "0.05,0.29",
        "0.01,0.02,...,0.30",  # expansion runs past the bound
        "0.05,...,0.1",  # '...' needs two floats before
        "...,0.05,0.1",
        "0.05,0.1,...",  # and one after
        "0.05,0.1,...,...,0.2",
        "0.05,0.05,...,0.1",  # zero step
        "0.01,0.02,...,0.03",  # k = 0 < 1
        "0.05,0.1,...,0.12",  # k < 0
        "0.01,0.02,...,0.035",  # k = 0.5 not an integer
        "0.01,0.02,...,0.050002",  # |k - round| = 2e-4 > 1e-4
        "0.01,abc",
    ],
)
def test_invalid_lists_raise_a_package_error(text):
    with pytest.raises(EDM2Error):
        parse_std_list(text)


def test_two_floats_must_precede_each_ellipsis_even_after_an_expansion():
    # docs/method.md#ema: '...' requires two *floats* before it; here the token two places back is '...'.
    with pytest.raises(EDM2Error):
        parse_std_list("0.01,0.02,...,0.05,...,0.09")
