"""Fréchet distance (docs/method.md#metrics) against closed forms for Gaussians."""

import warnings

import numpy as np
import pytest
import scipy.linalg

from edm2.errors import FormatError
from edm2.metrics import frechet_distance
from edm2.metrics.frechet import sqrtm_psd, trace_sqrtm_product


def commuting_closed_form(mu1, a, mu2, b):
    """FD for covariances Q diag(a) Q^T and Q diag(b) Q^T: |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal([d, d]))
    return q * np.sign(np.diag(r))


def test_one_dimensional_gaussians():
    # FD(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)


def test_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    fd = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert fd == pytest.approx(commuting_closed_form(mu1, a, mu2, b), rel=1e-12)


def test_commuting_full_covariances():
    rng = np.random.default_rng(1)
    d = 12
    q = random_orthogonal(d, rng)
    a, b = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    fd = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert fd == pytest.approx(commuting_closed_form(mu1, a, mu2, b), rel=1e-10)


def test_singular_covariances_keep_the_closed_form():
    rng = np.random.default_rng(2)
    d = 10
    q = random_orthogonal(d, rng)
    a = np.r_[rng.uniform(0.5, 2, 4), np.zeros(6)]  # rank 4
    b = np.r_[rng.uniform(0.5, 2, 7), np.zeros(3)]  # rank 7
    mu = rng.standard_normal(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spurious imaginary-part warning for singular PSD input
        fd = frechet_distance(mu, q @ np.diag(a) @ q.T, mu, q @ np.diag(b) @ q.T)
    assert fd == pytest.approx(commuting_closed_form(mu, a, mu, b), rel=1e-9)


def test_fewer_samples_than_dimensions_gives_zero_against_itself():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal([20, 64]) @ rng.standard_normal([64, 64])  # 20 images, 64 dims
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert np.linalg.matrix_rank(sigma) == 19
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(4)
    d = 16
    x, y = rng.standard_normal([d, 3 * d]), rng.standard_normal([d, 3 * d])
    s1, s2 = x @ x.T / d, y @ y.T / d
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert trace_sqrtm_product(s1, s2) == pytest.approx(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real, rel=1e-10)


def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(5)
    x = rng.standard_normal([8, 5])
    s = x @ x.T  # rank 5
    r = sqrtm_psd(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-10)
    np.testing.assert_allclose(r, r.T, atol=1e-12)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal([6, 9]), rng.standard_normal([6, 4])
    s1, s2 = x @ x.T, y @ y.T
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-10)


@pytest.mark.parametrize(
    "bad",
    [
        np.diag([1.0, -1.0]),  # indefinite: the official computation gives a "distance" of -4
        -np.eye(2),  # negative definite
        np.array([[1.0, 2.0], [2.0, 1.0]]),  # symmetric, eigenvalues 3 and -1
        np.array([[1.0, 0.5], [0.0, 1.0]]),  # not symmetric
    ],
)
def test_a_sigma_that_is_not_a_covariance_is_refused(bad):
    for args in (([0.0, 0.0], bad, [0.0, 0.0], np.eye(2)), ([0.0, 0.0], np.eye(2), [0.0, 0.0], bad)):
        with pytest.raises(FormatError, match="statistics [12] covariance is not (positive semi-definite|symmetric)"):
            frechet_distance(*args)
    with pytest.raises(FormatError, match="covariance is not"):
        sqrtm_psd(bad)


def test_rounding_noise_below_the_tolerance_is_accepted():
    """A covariance of 3 samples in 5 dimensions (rank 2) with asymmetry and negative eigenvalues
    at rounding level is a covariance; its distance to itself is 0."""
    x = np.random.default_rng(3).standard_normal([3, 5])
    sigma = np.cov(x, rowvar=False)
    noisy = sigma + 1e-12 * np.random.default_rng(4).standard_normal(sigma.shape)
    assert np.linalg.eigvalsh((noisy + noisy.T) / 2).min() < 0
    assert frechet_distance(x.mean(0), noisy, x.mean(0), noisy) == pytest.approx(0.0, abs=1e-5)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(FormatError, match="same detector"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(FormatError, match="matrix"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(FormatError, match="NaN"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))
