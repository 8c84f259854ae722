"""Fréchet distance between two Gaussians (docs/method.md#metrics).

    FD = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))

The official code takes `scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False)` and reports the real
part. SciPy deprecated `disp` (and drops it in 1.18), and a general (Schur) matrix square root
of the product of two covariances is fragile when they are singular, e.g. with fewer images
than feature dimensions. We only need its trace, and for symmetric positive semi-definite
(PSD) matrices

    tr sqrtm(sigma1 sigma2) = sum_i sqrt(lambda_i),   lambda_i = eig(A sigma2 A),  A = sqrt(sigma1),

because sigma1 sigma2 = A (A sigma2) has the same eigenvalues as (A sigma2) A, a symmetric PSD
matrix (this holds for singular sigma1 too). Both steps are symmetric eigendecompositions,
which are stable. Eigenvalues that come out slightly negative through rounding would give an
imaginary part in the official computation; the real part of their square root is 0, so we
clip them to 0. Eigenvalues within rounding noise of 0 are set to 0 as well: they are the exact
zeros of a singular covariance, and the square root would amplify their noise
(sqrt(1e-16) = 1e-8).

Inputs that are not covariances (asymmetric, or with an eigenvalue below -1e-6 x the largest)
are refused with `FormatError` (`check_covariance`, also used when statistics files are read):
the official computation returns a number for them, down to negative "distances", that means
nothing.
"""

import warnings

import numpy as np

from edm2.errors import FormatError

# Negative eigenvalues smaller than this fraction of the largest one are rounding noise; so are
# asymmetries smaller than this fraction of the largest entry.
NEGLIGIBLE = 1e-6


def check_covariance(sigma: np.ndarray, which: str) -> None:
    """Raises `FormatError` unless `sigma` [D, D] (finite, float64) is a covariance matrix:
    symmetric to `NEGLIGIBLE` x its largest entry, and positive semi-definite (no eigenvalue
    below -`NEGLIGIBLE` x the largest). `which` names it in the message (a file and metric, or
    "statistics 1"). A covariance estimated from samples always passes, singular ones included."""
    scale = float(np.abs(sigma).max(initial=0.0))
    if float(np.abs(sigma - sigma.T).max(initial=0.0)) > NEGLIGIBLE * scale:
        raise FormatError(f"{which} covariance is not symmetric; recompute the statistics")
    eigenvalues = np.linalg.eigvalsh(sigma)
    largest = max(float(eigenvalues.max(initial=0.0)), 0.0)
    if float(eigenvalues.min(initial=0.0)) < -NEGLIGIBLE * max(largest, np.finfo(np.float64).tiny):
        raise FormatError(
            f"{which} covariance is not positive semi-definite (smallest eigenvalue "
            f"{eigenvalues.min():.4g}, largest {largest:.4g}); recompute the statistics"
        )


def _as_stats(mu, sigma, which: str):
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise FormatError(
            f"statistics {which}: mu must be a vector [D] and sigma a matrix [D, D], "
            f"got shapes {list(mu.shape)} and {list(sigma.shape)}"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise FormatError(f"statistics {which} contain NaN or Inf; recompute them from valid images")
    check_covariance(sigma, f"statistics {which}")
    return mu, sigma


def _eigh_psd(matrix: np.ndarray, what: str):
    """Eigen-decomposition of a (nearly) symmetric PSD matrix; tiny negative eigenvalues -> 0."""
    matrix = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(matrix)
    scale = max(float(np.abs(values).max(initial=0.0)), np.finfo(np.float64).tiny)
    if values.min(initial=0.0) < -NEGLIGIBLE * scale:
        warnings.warn(
            f"{what} has a non-negligible negative eigenvalue ({values.min():.3g}, largest {scale:.3g}); "
            "the matrix square root would have a non-negligible imaginary part, of which the real part is used",
            RuntimeWarning,
            stacklevel=3,
        )
    # Eigenvalues within rounding noise of 0 (matrix_rank's tolerance) are exact zeros of a
    # singular covariance; taking sqrt of their noise would add O(sqrt(eps)) errors.
    tol = scale * matrix.shape[0] * np.finfo(np.float64).eps
    return np.where(values > tol, values, 0.0), vectors


def sqrtm_psd(matrix) -> np.ndarray:
    """Symmetric PSD square root [D, D] (float64) of a symmetric PSD matrix [D, D] (negative
    rounding noise clipped). Raises `FormatError` for a matrix that is not (`check_covariance`)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    check_covariance(matrix, "matrix")
    values, vectors = _eigh_psd(matrix, "matrix")
    return (vectors * np.sqrt(values)) @ vectors.T


def trace_sqrtm_product(sigma1, sigma2) -> float:
    """Real part of tr(sqrtm(sigma1 @ sigma2)) for covariance matrices [D, D] (see the module
    docstring). Raises `FormatError` when either is not a covariance (`check_covariance`)."""
    root1 = sqrtm_psd(sigma1)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    check_covariance(sigma2, "matrix 2")
    values, _ = _eigh_psd(root1 @ sigma2 @ root1, "sqrt(sigma1) sigma2 sqrt(sigma1)")
    return float(np.sqrt(values).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64): mu [D], sigma [D, D].

    The Fréchet distance of Heusel et al. (arXiv 1706.08500), the FID / FD_DINOv2 of EDM2's
    evaluation, as the official `calculate_metrics` of calculate_metrics.py computes it, up to the
    matrix square root taken in a stable way (see the module docstring; docs/method.md#metrics).
    Raises `FormatError` for shapes that differ, NaN/Inf, or a sigma that is not a covariance
    (asymmetric or not positive semi-definite: `check_covariance`)."""
    mu1, sigma1 = _as_stats(mu1, sigma1, "1")
    mu2, sigma2 = _as_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise FormatError(
            f"cannot compare statistics of {mu1.size}-d and {mu2.size}-d features; compute both with the same detector"
        )
    m = np.square(mu1 - mu2).sum()
    s = np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrtm_product(sigma1, sigma2)
    return float(m + s)
