"""The 2-D tree-shaped Gaussian mixture of the autoguidance paper's toy example (Karras et al.
2024, arXiv 2406.02507, Sec. 3 and Fig. 1-2; NVIDIA's `toy_example.py`, `gt`), with its exact
density and score at every noise level.

    gt = tree_mixture("A")                         # class A: 127 branches x 8 components
    gt.logp(x, sigma)                              # log p(x; sigma), x [..., 2] -> [...]
    gt.score(x, sigma)                             # grad_x log p(x; sigma) -> [..., 2]
    gt.sample(1000, sigma=5, generator=g)          # [1000, 2]

p(x; sigma) is the data density convolved with N(0, sigma^2 I) (EDM, arXiv 2206.00364 Sec. 2):
for a Gaussian mixture, every component's covariance grows by sigma^2 I.
"""

import math

import numpy as np
import torch

# The tree: a branch of depth d (0..6) has length 0.292 * 0.8^d * (1 + 0.2 n) for a standard
# normal draw n, thickness 0.2 * 0.8^d / length (relative), is drawn as 8 Gaussians at
# t = 0.07 .. 0.93 along it, each of weight length * 0.5^d, and forks into two children turned
# by +-0.7^d * (1 + 0.2 n). Class A grows from the origin at 45 degrees, class B at 225 degrees,
# from one NumPy RandomState(2) stream (A's draws first, depth first, child +1 before -1).
TREE_DEPTH = 7
TREE_SEED = 2
TREE_ORIGIN = (0.0030, 0.0325)
TREE_SCALE = (1.3136, 1.3844)
CLASS_ANGLES = {"A": 0.25 * math.pi, "B": 1.25 * math.pi}


def tree_components(seed: int = TREE_SEED) -> list[dict]:
    """Every component of both classes: dicts with `cls` ('A'/'B'), `phi` (unnormalised weight),
    `mu` [2] and `Sigma` [2, 2] (float64 NumPy), in the order the tree is grown."""
    rnd = np.random.RandomState(seed)
    origin, scale = np.array(TREE_ORIGIN), np.array(TREE_SCALE)
    comps = []

    def grow(cls, depth, pos, angle):
        if depth >= TREE_DEPTH:
            return
        direction = np.array([np.cos(angle), np.sin(angle)])
        length = 0.292 * 0.8**depth * (1 + 0.2 * rnd.randn())
        thickness = 0.2 * 0.8**depth / length
        size = scale * length * 0.06
        along = np.outer(direction, direction)
        Sigma = (along + (np.eye(2) - along) * thickness**2) * np.outer(size, size)
        for t in np.linspace(0.07, 0.93, num=8):
            mu = (pos + direction * length * t) * scale
            comps.append(dict(cls=cls, phi=length * 0.5**depth, mu=mu, Sigma=Sigma))
        for sign in (1, -1):
            turn = sign * 0.7**depth * (1 + 0.2 * rnd.randn())
            grow(cls, depth + 1, pos + direction * length, angle + turn)

    for cls, angle in CLASS_ANGLES.items():
        grow(cls, 0, origin, angle)
    return comps


def tree_mixture(classes: str = "A", seed: int = TREE_SEED, dtype=torch.float32, device=None) -> "GaussianMixture":
    """The toy distribution of `classes` ('A', 'B' or 'AB'; 'AB' is the unconditional one)."""
    chosen = [c for c in tree_components(seed) if c["cls"] in classes]
    if not chosen:
        raise ValueError(f"classes must be A, B or AB, got {classes!r}")
    return GaussianMixture(
        np.array([c["phi"] for c in chosen]),
        np.stack([c["mu"] for c in chosen]),
        np.stack([c["Sigma"] for c in chosen]),
        dtype=dtype,
        device=device,
    )


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions, smoothed by N(0, sigma^2 I) on request.

    phi [K] (normalised here), mu [K, D], Sigma [K, D, D] symmetric positive definite. Methods
    take x [..., D] and sigma (a number or a tensor broadcastable to x.shape[:-1]) in the
    mixture's dtype; the covariances are diagonalised once, Sigma = Q diag(L) Q^T, so that
    Sigma + sigma^2 I = Q diag(L + sigma^2) Q^T.
    """

    def __init__(self, phi, mu, Sigma, dtype=torch.float32, device=None):
        phi = np.asarray(phi, dtype=np.float64)
        self.dtype = dtype
        self.phi = torch.as_tensor(phi / phi.sum(), dtype=dtype, device=device)
        self.mu = torch.as_tensor(np.asarray(mu), dtype=dtype, device=device)
        self.Sigma = torch.as_tensor(np.asarray(Sigma), dtype=dtype, device=device)
        self.L, self.Q = torch.linalg.eigh(self.Sigma)  # L [K, D], Q [K, D, D]
        K, D = self.mu.shape
        # Every component's rotation side by side, R [D, K D] with R[i, k D + j] = Q_k[i, j], so
        # that one matrix product rotates x into every component's eigenbasis.
        self._R = self.Q.permute(1, 0, 2).reshape(D, K * D)
        self._mu_rotated = torch.einsum("kij,ki->kj", self.Q, self.mu).reshape(K * D)  # Q_k^T mu_k

    def _components(self, x, sigma):
        """log(phi_k N(x; mu_k, Sigma_k + sigma^2 I)) [N, K] and, in each component's eigenbasis,
        diag(L_k + sigma^2)^-1 Q_k^T (mu_k - x) [N, K, D], for x flattened to [N, D]."""
        K, D = self.mu.shape
        x = x.reshape(-1, D)
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x.device).broadcast_to(x.shape[:1])
        L = self.L.reshape(K * D) + sigma[:, None] ** 2  # [N, K D]
        rotated = self._mu_rotated - x @ self._R  # Q_k^T (mu_k - x): [N, K D]
        scaled = rotated / L
        log_norm = -0.5 * (rotated * scaled + L.log()).reshape(-1, K, D).sum(-1) - 0.5 * D * math.log(2 * math.pi)
        return self.phi.log() + log_norm, scaled.reshape(-1, K, D)

    def logp(self, x, sigma=0.0):
        """log p(x; sigma): x [..., D] -> [...]."""
        log_w, _ = self._components(x, sigma)
        return torch.logsumexp(log_w, dim=-1).reshape(x.shape[:-1])

    def score(self, x, sigma=0.0):
        """grad_x log p(x; sigma) = sum_k w_k(x) (Sigma_k + sigma^2 I)^-1 (mu_k - x), with w the
        posterior component weights: x [..., D] -> [..., D]."""
        log_w, scaled = self._components(x, sigma)
        weighted = (torch.softmax(log_w, dim=-1)[..., None] * scaled).flatten(1)  # [N, K D]
        return (weighted @ self._R.t()).reshape(x.shape)  # sum_k Q_k (...)

    def denoise(self, x, sigma):
        """The ideal denoiser D(x; sigma) = x + sigma^2 score (Tweedie; EDM Eq. 3)."""
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x.device)
        return x + sigma.reshape(sigma.shape + (1,)) ** 2 * self.score(x, sigma)

    def sample(self, n: int, sigma=0.0, generator=None):
        """n draws from p(x; sigma): [n, D] (a component by its weight, then its Gaussian)."""
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=self.mu.device).broadcast_to([n])
        k = torch.multinomial(self.phi, n, replacement=True, generator=generator)
        std = (self.L[k] + sigma[:, None] ** 2).sqrt()  # [n, D]
        noise = torch.randn(std.shape, dtype=self.dtype, device=self.mu.device, generator=generator)
        return self.mu[k] + torch.einsum("nij,nj->ni", self.Q[k], std * noise)
