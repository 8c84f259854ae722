"""Magnitude-preserving building blocks (docs/method.md#mp-layers).

Every function computes in float32 (or float64 when its input is float64; the official code
would silently fall back to float32 there, we keep float64 so references compare exactly).
"""

import numpy as np
import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else computes in float32 (docs/method.md#mp-layers)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """Rescale slices of `x` along `dim` to unit RMS: the normalisation of EDM2 (arXiv 2312.02696)
    Eq. 47 and 66 and of the pixel norm (docs/method.md#mp-layers, #official-details).

    `x / (eps + ||x|| / sqrt(K))` with K the slice size; the norm is taken in fp32 (fp64 for
    fp64 input) and cast back to `x.dtype` before dividing.
    """
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=_compute_dtype(x.dtype))
    norm = torch.add(eps, norm, alpha=np.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled to unit output RMS for unit-variance input: EDM2 (arXiv 2312.02696) Eq. 81,
    `silu(x) / 0.596` (the official literal; docs/method.md#mp-layers). Shape and dtype of `x`."""
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving sum, EDM2 (arXiv 2312.02696) Eq. 88: `lerp(a, b, t) / sqrt((1-t)^2 + t^2)`
    (docs/method.md#mp-layers). `a`, `b` of one shape; result in their dtype."""
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation along `dim`, `a` first then `b`: EDM2 (arXiv 2312.02696)
    Eq. 103 (docs/method.md#mp-layers). `a` [.., Na, ..], `b` [.., Nb, ..] -> [.., Na + Nb, ..]."""
    Na = a.shape[dim]
    Nb = b.shape[dim]
    C = np.sqrt((Na + Nb) / ((1 - t) ** 2 + t**2))
    wa = C / np.sqrt(Na) * (1 - t)
    wb = C / np.sqrt(Nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


def resample(x: torch.Tensor, f=(1, 1), mode: str = "keep") -> torch.Tensor:
    """2x box downsampling or nearest upsampling with a separable filter (docs/method.md#mp-layers)."""
    if mode == "keep":
        return x
    assert mode in ("down", "up"), f"unknown resample mode {mode!r}"
    pad = (len(f) - 1) // 2
    f = _resample_filter(tuple(f), x.dtype, x.device)
    c = x.shape[1]
    if mode == "down":
        return torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    return torch.nn.functional.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))


_FILTERS: dict = {}


def _resample_filter(f: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 2D filter of `resample` [1, 1, len(f), len(f)] on `device`, made once per (filter,
    dtype, device) and then reused, as the official `misc.const_like` caches it
    (torch_utils/misc.py): building it on the host for every call would copy it to the device
    each time, and a copy from pageable host memory waits for the device's queue to drain. As in
    the official `resample`, the scaling and tiling stay per call (the FLOP counts of the paper
    include the scaling). Values: float32 NumPy arithmetic, then the cast."""
    compiling = torch.compiler.is_compiling()
    key = (f, dtype, device)
    weight = None if compiling else _FILTERS.get(key)
    if weight is None:
        g = np.float32(f)
        assert g.ndim == 1 and len(g) % 2 == 0
        g = g / g.sum()
        g = np.outer(g, g)[np.newaxis, np.newaxis, :, :]
        # A normal tensor even when first made under torch.inference_mode, so that the cached
        # filter can serve a later forward that autograd records.
        with torch.inference_mode(False):
            weight = torch.as_tensor(g, dtype=dtype, device=device)
        if not compiling:
            _FILTERS[key] = weight
    return weight


class MPFourier(torch.nn.Module):
    """Magnitude-preserving Fourier features, EDM2 (arXiv 2312.02696) Eq. 75; `freqs` and `phases`
    are buffers, drawn once and never trained (docs/method.md#mp-layers)."""

    buffer_names = ("freqs", "phases")  # its state that is not trained (see `Precond.is_buffer`)

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        # Draw order matters for RNG reproduction: freqs (randn) first, then phases (rand).
        self.register_buffer("freqs", 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * np.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`sqrt(2) cos(x f + phi)`: x [N] (any float dtype) -> [N, num_channels] in x's dtype,
        computed in float32 (float64 for float64 input)."""
        dtype = _compute_dtype(x.dtype)
        y = x.to(dtype)
        y = y.ger(self.freqs.to(dtype))
        y = y + self.phases.to(dtype)
        y = y.cos() * np.sqrt(2)
        return y.to(x.dtype)


class MPConv(torch.nn.Module):
    """Magnitude-preserving convolution (kernel [kh, kw]) or linear layer (kernel []).

    EDM2 (arXiv 2312.02696) Eq. 47 (weight normalisation and the 1/sqrt(fan_in) scaling, always)
    with forced weight normalisation, Eq. 66 (the stored weight rescaled in training mode). No
    bias (docs/method.md#mp-layers, #official-details).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain=1) -> torch.Tensor:
        """x [N, in, H, W] (convolution, 'same' padding) or [N, in] (linear) -> [N, out, H, W] or
        [N, out], in x's dtype. `gain`: a number or a 0-dim tensor (then learned through it); the
        weight is normalised in float32 (float64 for float64 weights) and cast to x's dtype. In
        training mode the stored weight is overwritten by its normalised value first."""
        # For fp32 (fp64) weights `w` aliases the parameter, so after the in-place forced
        # normalisation below the forward computes normalize(normalize(w_old)) (docs/method.md#official-details).
        w = self.weight.to(_compute_dtype(self.weight.dtype))
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced weight normalisation
        w = normalize(w)  # standard weight normalisation
        w = w * (gain / np.sqrt(w[0].numel()))  # magnitude-preserving scaling
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))
