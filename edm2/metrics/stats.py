"""Feature statistics: float64 accumulation, all-reduce across ranks, and the stats files
(docs/method.md#metrics).

In memory a stats dict is `{'num_images': n, '<metric>': {'mu': [D], 'sigma': [D, D]}, ...}`
(NumPy float64), optionally with `'resolution': [H, W]` (of the images) and, per metric,
`'detector': {'location', 'sha256', 'feature_dim'}` (what made the features). On disk we write
`.npz` with the arrays `num_images`, `<metric>_mu`, `<metric>_sigma`, `resolution` and
`<metric>_detector` (a JSON string; no pickle). Reading also accepts the official files: the
EDM2 `.pkl` and the original EDM `.npz` (`mu`, `sigma` -> `fid`), both through the safe loader of
`edm2.io.official`; they record no detector.

Every file is checked on load (`validate_stats`): finite values, matching shapes, and symmetric
positive semi-definite covariances, so a broken reference is refused before any image is made
instead of giving a meaningless (even negative) Fréchet distance.
"""

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from edm2.data.limits import load_npz
from edm2.errors import DataError, FormatError
from edm2.io.atomic import atomic_path
from edm2.io.download import resolve_path
from edm2.metrics.frechet import check_covariance

METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")


class FeatureStats:
    """Running sums of features for one metric: S1 = sum f, S2 = sum f f^T, n (docs/method.md#metrics).

    Accumulates in float64 on the features' device; `all_reduce()` sums across ranks.
    """

    def __init__(self, dim: int | None = None, device="cpu"):
        self.dim = dim
        self.device = torch.device(device)
        self.n = 0
        self.s1 = None
        self.s2 = None
        if dim is not None:
            self._allocate(dim, self.device)

    def _allocate(self, dim, device):
        self.dim = int(dim)
        self.device = torch.device(device)
        self.s1 = torch.zeros([self.dim], dtype=torch.float64, device=self.device)
        self.s2 = torch.zeros([self.dim, self.dim], dtype=torch.float64, device=self.device)

    def append(self, features) -> None:
        """Add a batch of features [N, D] (any float dtype; converted to float64)."""
        features = torch.as_tensor(features)
        if features.ndim != 2:
            raise FormatError(f"features must be a [N, D] matrix, got shape {list(features.shape)}")
        if self.s1 is None:
            self._allocate(features.shape[1], features.device)
        if features.shape[1] != self.dim:
            raise FormatError(f"features have {features.shape[1]} dimensions, earlier batches had {self.dim}")
        f = features.to(device=self.device, dtype=torch.float64)
        self.n += f.shape[0]
        self.s1 += f.sum(dim=0)
        self.s2 += f.T @ f

    def all_reduce(self) -> None:
        """Sum counts and sums over all ranks (no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        dims = torch.tensor([-1 if self.dim is None else self.dim], dtype=torch.int64, device=device)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)  # ranks that saw no images learn the dimension
        if self.s1 is None:
            if int(dims) < 0:
                return
            self._allocate(int(dims), self.device)
        packed = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64), self.s1.cpu(), self.s2.cpu().flatten()])
        packed = packed.to(device)
        dist.all_reduce(packed)
        self.n = int(round(float(packed[0])))
        self.s1 = packed[1 : 1 + self.dim].to(self.device)
        self.s2 = packed[1 + self.dim :].reshape(self.dim, self.dim).to(self.device)

    def mean_cov(self):
        """mu = S1/n, sigma = (S2 - n mu mu^T)/(n - 1), unbiased (docs/method.md#metrics); NumPy float64."""
        if self.n < 2:
            raise FormatError(f"feature statistics need at least 2 images, got {self.n}")
        s1 = self.s1.cpu().numpy()
        s2 = self.s2.cpu().numpy()
        mu = s1 / self.n
        sigma = (s2 - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


def save_stats(path, stats: dict) -> None:
    """Write a stats dict as .npz (`num_images`, `<metric>_mu`, `<metric>_sigma`), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise FormatError(f"statistics file {path} must end in .npz")
    arrays = {"num_images": np.asarray(int(stats["num_images"]), dtype=np.int64)}
    for name, value in stats.items():
        if name == "num_images":
            continue
        if not METRIC_NAME.fullmatch(name):
            raise FormatError(f"metric name {name!r} must be lower-case letters, digits and underscores")
        if name == "resolution":
            if value is not None:
                arrays["resolution"] = np.asarray(value, dtype=np.int64)
            continue
        arrays[f"{name}_mu"] = np.asarray(value["mu"], dtype=np.float64)
        arrays[f"{name}_sigma"] = np.asarray(value["sigma"], dtype=np.float64)
        if value.get("detector") is not None:
            arrays[f"{name}_detector"] = np.asarray(json.dumps(value["detector"], sort_keys=True))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_stats(path) -> dict:
    """Read statistics: our .npz, the original EDM .npz (`mu`, `sigma` -> fid) or the official
    EDM2 .pkl (read without executing it). Local path or URL (downloaded into the cache)."""
    path = resolve_path(path, what="reference statistics")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            arrays = load_npz(path)  # bounded: members, their declared sizes and .npy headers
        except DataError as e:
            raise FormatError(f"not a readable .npz statistics file: {e}") from None
        try:
            if "num_images" in arrays:
                return validate_stats(_stats_from_arrays(arrays, path), path)
            if "mu" in arrays and "sigma" in arrays:  # original EDM reference (Inception only), docs/method.md#metrics
                stats = {"fid": {"mu": arrays["mu"].astype(np.float64), "sigma": arrays["sigma"].astype(np.float64)}}
                return validate_stats(stats, path)
        except (TypeError, ValueError) as e:  # e.g. text where numbers belong
            raise FormatError(f"{path}: statistics arrays of the wrong kind ({e})") from None
        raise FormatError(f"{path}: neither edm2 statistics (num_images, <metric>_mu, ...) nor EDM's (mu, sigma)")
    if suffix != ".pkl":
        raise FormatError(f"statistics file {path} must be .npz (ours or EDM's) or .pkl (official EDM2)")
    try:
        from edm2.io.official import load_official_stats
    except ImportError:
        raise FormatError(f"{path}: reading official .pkl statistics needs edm2.io.official, not installed") from None
    stats = dict(load_official_stats(path))
    for name, value in stats.items():
        if name != "num_images":
            stats[name] = {"mu": np.asarray(value["mu"], np.float64), "sigma": np.asarray(value["sigma"], np.float64)}
    return validate_stats(stats, path)


def _stats_from_arrays(arrays: dict, path) -> dict:
    stats = {"num_images": int(arrays["num_images"])}
    if "resolution" in arrays:
        stats["resolution"] = [int(v) for v in np.asarray(arrays["resolution"]).reshape(-1)]
    for key in sorted(arrays):
        if key.endswith("_mu"):
            name = key[: -len("_mu")]
            if f"{name}_sigma" not in arrays:
                raise FormatError(f"{path}: has {key} but no {name}_sigma")
            stats[name] = {"mu": arrays[key].astype(np.float64), "sigma": arrays[f"{name}_sigma"].astype(np.float64)}
            if f"{name}_detector" in arrays:
                try:
                    stats[name]["detector"] = json.loads(str(arrays[f"{name}_detector"]))
                except (ValueError, RecursionError):
                    raise FormatError(f"{path}: {name}_detector is not valid JSON (or nested too deeply)") from None
                if not isinstance(stats[name]["detector"], dict):
                    raise FormatError(f"{path}: {name}_detector is not a JSON object")
    if not any(isinstance(v, dict) for v in stats.values()):
        raise FormatError(f"{path}: contains no <metric>_mu/<metric>_sigma arrays")
    return stats


def validate_stats(stats: dict, path) -> dict:
    """Check every metric of a stats dict; return it unchanged or raise `FormatError` naming `path`.

    Per metric: `mu` a finite vector [D], `sigma` a finite [D, D] matrix, symmetric (to 1e-6
    relative) and positive semi-definite (no eigenvalue below -1e-6 x the largest). A covariance
    estimated from images always is; a file that is not gives Fréchet distances that mean
    nothing, down to negative ones.
    """
    if "num_images" in stats and int(stats["num_images"]) < 2:
        raise FormatError(f"{path}: statistics of {stats['num_images']} image(s); a covariance needs at least 2")
    for name, value in stats.items():
        if not isinstance(value, dict) or "mu" not in value:
            continue
        mu, sigma = np.asarray(value["mu"]), np.asarray(value["sigma"])
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise FormatError(
                f"{path}: {name} statistics have mu of shape {list(mu.shape)} and sigma of shape "
                f"{list(sigma.shape)}; expected [D] and [D, D]"
            )
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise FormatError(f"{path}: {name} statistics contain NaN or Inf; recompute them from valid images")
        check_covariance(sigma.astype(np.float64), f"{path}: {name}")
    return stats
