"""The networks of configs A-F of the paper's ablation (arXiv 2312.02696, Table 1, Section 2, Appendix B.1-B.6).

Config G is `edm2.nn.unet.UNet`; this module builds the six networks that lead to it
(docs/method.md#ablation-ladder):

* A (B.1) -- ADM as implemented in EDM (NVlabs/edm `DhariwalUNet`, arXiv 2206.00364): biases,
  group norms with learned scale and offset, positional noise embedding, attention at 32, 16
  and 8 pixels, zero-initialised last layers. Module names and state-dict keys are EDM's, so
  an EDM `DhariwalUNet` state dict of the same shape loads with `strict=True`.
* B (B.2) -- A without attention at 32x32 (the training-side changes of B are not here).
* C (B.3, Eqs. 29-36) -- no biases, a constant-1 input channel, scale-only conditioning,
  RMS group norms without parameters, cosine attention, Fourier noise features, a unit-variance
  class input and the same uniform initialisation for every layer.
* D (B.4, Eqs. 43-47) -- C with every learned layer weight-normalised (`WeightNorm.STANDARD`).
* E (B.5, Eq. 66) -- D with forced weight normalisation (`WeightNorm.FORCED`).
* F (B.6) -- E without group norms: pixel norm at the start of each encoder block, resampling
  once on the main path, the encoder's 1x1 conv at the start of the main path, no
  nonlinearity before the output conv and a one-layer noise embedding. From F on the module
  names are EDM2's (`conv_res0`, `emb_linear`, ...).

Every network takes `(x, noise_labels, class_labels)` like `UNet` and is sized by
`model_channels` (XS..XXL). The precision rules of each config follow from the dtypes: the
embedding network and the per-block conditioning run in the dtype of `noise_labels`
(float32), everything else in the dtype of `x` (fp16 under mixed precision), except that A and
B compute the attention logits and softmax in float32 (B.1, "partial" mixed precision).
"""

import enum

import numpy as np
import torch

from edm2.errors import ConfigError
from edm2.nn.layers import MPConv, MPFourier, _compute_dtype, normalize, resample

CONFIGS = ("A", "B", "C", "D", "E", "F", "G")  # Table 1's rows; G is edm2.nn.unet.UNet.

# Per-config defaults of the network arguments (Figs. 16-22 hyper-parameter boxes; D.2 for the clamp).
DEFAULT_ATTN_RESOLUTIONS = {"A": (32, 16, 8)}  # B-G: (16, 8) (B.2: no attention at 32x32)
DEFAULT_DROPOUT = 0.10  # A-F (G: 0)
DEFAULT_CLIP_ACT = {"A": None}  # B-G: 256 (D.2); A is EDM's code, which does not clamp.


class WeightNorm(enum.Enum):
    """How a learned layer turns its stored weight into the weight used in the forward."""

    RAW = "raw"  # used as stored (A-C)
    STANDARD = "standard"  # w_i / ||w_i|| per output unit, MP-scaled by 1/sqrt(fan_in) (D, Eq. 47)
    FORCED = "forced"  # STANDARD, and the stored weight overwritten by normalize(w) in training mode (E-F, Eq. 66)


def _he_uniform(shape, fan_in: int) -> torch.Tensor:
    """U(-1/sqrt(fan_in), +1/sqrt(fan_in)): EDM's `kaiming_uniform` scaled by sqrt(1/3) (the ADM init)."""
    return (torch.rand(*shape) * 2 - 1) / np.sqrt(fan_in)


def _resample_filter() -> torch.Tensor:
    """The [1, 1, 2, 2] box filter [1,1] x [1,1] / 4 of EDM's `Conv2d(resample_filter=[1,1])`, float32."""
    f = torch.ones(2, dtype=torch.float32)
    return (f.ger(f) / f.sum().square()).reshape(1, 1, 2, 2)


class Conv(torch.nn.Module):
    """A learned convolution or linear layer of configs A-E, with optional bias and resampling.

    `kernel` k > 0: a k x k convolution, weight [out, in, k, k], zero padding k // 2; `kernel`
    None: a linear layer, weight [out, in]; `kernel` 0: resampling only, no parameters. With
    `resample` 'down' or 'up' the input is first box-downsampled (2x2 average, stride 2) or
    nearest-upsampled x2 with the float32 buffer `resample_filter` [1, 1, 2, 2], as EDM's
    `Conv2d` (hence EDM's state-dict keys `weight`, `bias`, `resample_filter`).

    `init`: 'he' -- weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); 'zero' -- both zero
    (A-B's last layer of each residual branch); 'normal' -- weight N(0, 1), bias zero. `weight_norm`
    selects the forward weight (`WeightNorm`; Eqs. 43-47 and 66). Input [N, in, H, W] or [N, in]
    in any float dtype; the weight (and bias) is cast to the input's dtype, the normalisation
    computed in float32 (float64 for float64 weights) first.
    """

    buffer_names = ("resample_filter",)  # its state that is not trained (see `Precond.is_buffer`)

    def __init__(
        self,
        in_channels: int,  # Input channels (features).
        out_channels: int,  # Output channels (features).
        kernel: int | None,  # k for a k x k conv, 0 = resample only, None = linear layer.
        bias: bool = False,  # Learned per-output bias (A-B)?
        resample: str = "keep",  # 'keep', 'down' or 'up', applied to the input first.
        init: str = "he",  # 'he', 'zero' or 'normal'.
        weight_norm: WeightNorm = WeightNorm.RAW,  # Forward weight (Eqs. 47, 66).
    ):
        super().__init__()
        assert resample in ("keep", "down", "up"), resample
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resample = resample
        self.weight_norm = weight_norm
        shape = [out_channels, in_channels] if kernel is None else [out_channels, in_channels, kernel, kernel]
        fan_in = in_channels * (1 if kernel is None else kernel * kernel)
        self.weight = None
        self.bias = None
        if kernel != 0:
            if init == "he":
                self.weight = torch.nn.Parameter(_he_uniform(shape, fan_in))
                self.bias = torch.nn.Parameter(_he_uniform([out_channels], fan_in)) if bias else None
            elif init == "zero":  # drawn, then zeroed, so that later layers see EDM's random-number order
                self.weight = torch.nn.Parameter(_he_uniform(shape, fan_in) * 0)
                self.bias = torch.nn.Parameter(_he_uniform([out_channels], fan_in) * 0) if bias else None
            elif init == "normal":
                self.weight = torch.nn.Parameter(torch.randn(shape))
                self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if bias else None
            else:
                raise ValueError(f"unknown init {init!r}")
        self.register_buffer("resample_filter", _resample_filter() if resample != "keep" else None)

    def forward_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight used in the forward, cast to `dtype` (forced normalisation first, in training mode)."""
        w = self.weight
        if self.weight_norm is not WeightNorm.RAW:
            w = w.to(_compute_dtype(w.dtype))
            if self.weight_norm is WeightNorm.FORCED and self.training:
                with torch.no_grad():
                    self.weight.copy_(normalize(w))  # forced weight normalisation (Eq. 66)
            w = normalize(w) * (
                1 / np.sqrt(w[0].numel())
            )  # weight normalisation and MP scaling (Eqs. 46-47), as MPConv
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in, H, W] -> [N, out, H', W'] (H' = H, H/2 or 2H) or x [N, in] -> [N, out]; x's dtype."""
        if self.resample != "keep":
            f = self.resample_filter.to(x.dtype)
            c = x.shape[1]
            if self.resample == "down":
                x = torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2)
            else:
                x = torch.nn.functional.conv_transpose2d(x, f.mul(4).tile([c, 1, 1, 1]), groups=c, stride=2)
        if self.weight is None:
            return x
        w = self.forward_weight(x.dtype)
        if w.ndim == 2:
            x = x @ w.t()
            return x if self.bias is None else x + self.bias.to(x.dtype)
        x = torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))
        return x if self.bias is None else x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


def _num_groups(channels: int) -> int:
    """EDM's group count, min(32, channels // 4): 32 groups at every width of the paper's sizes."""
    groups = min(32, channels // 4)
    if groups < 1 or channels % groups != 0:
        raise ConfigError(
            f"{channels} channels cannot be split into min(32, C // 4) equal groups; pick model_channels a multiple of 32"
        )
    return groups


class GroupNorm(torch.nn.Module):
    """Group normalisation with learned per-channel scale and offset (A-B; EDM's `GroupNorm`).

    min(32, C // 4) groups, eps 1e-5; parameters `weight` [C] (init 1) and `bias` [C] (init 0).
    [N, C, H, W] -> same shape and dtype (the parameters are cast to the input's dtype).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups = _num_groups(num_channels)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=w, bias=b, eps=self.eps)


def rms_group_norm(x: torch.Tensor) -> torch.Tensor:
    """Simplified group normalisation of configs C-E (Eq. 29): each group of min(32, C // 4)
    channels divided by its RMS over (channels, H, W) -- no mean subtraction, no parameters; eps
    1e-4 added to the RMS as in `normalize` (docs/method.md#ablation-ladder). [N, C, H, W] -> same
    shape and dtype."""
    n, c, h, w = x.shape
    groups = _num_groups(c)
    return normalize(x.reshape(n, groups, -1), dim=2).reshape(n, c, h, w)


class PositionalEmbedding(torch.nn.Module):
    """ADM's sinusoidal noise embedding (A-B; EDM's `PositionalEmbedding`): [cos(a w_i), sin(a w_i)],
    w_i = 10000^(-i / (C/2)), i = 0 .. C/2 - 1. a [N] -> [N, C] in a's dtype. No parameters."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 as EDM's (float64 for float64 input, so float64 references compare exactly).
        freqs = torch.arange(self.num_channels // 2, dtype=_compute_dtype(x.dtype), device=x.device)
        freqs = (1 / self.max_positions) ** (freqs / (self.num_channels // 2))
        x = x.ger(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierFeatures(MPFourier):
    """Fourier noise features of configs C-F (Eqs. 35-36): cos(2 pi (f_i a + phi_i)), f_i ~ N(0, 1),
    phi_i ~ U(0, 1), buffers `freqs` = 2 pi f and `phases` = 2 pi phi drawn as `MPFourier` (G adds
    the factor sqrt(2), Eq. 75). a [N] -> [N, C] in a's dtype (computed in float32 or float64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x.dtype)
        y = x.to(dtype).ger(self.freqs.to(dtype)) + self.phases.to(dtype)
        return y.cos().to(x.dtype)


def _weight_norm(config: str) -> WeightNorm:
    return {"D": WeightNorm.STANDARD, "E": WeightNorm.FORCED, "F": WeightNorm.FORCED}.get(config, WeightNorm.RAW)


def _learned(config: str, cin: int, cout: int, kernel, resample="keep", zero_init=False, bias=None) -> Conv:
    """A learned layer in config's conventions: A-B bias + He-uniform (zero for the last layer of a
    branch), C He-uniform without bias, D-F N(0, 1) with (forced) weight normalisation."""
    if config in "AB":
        return Conv(
            cin,
            cout,
            kernel,
            bias=True if bias is None else bias,
            resample=resample,
            init="zero" if zero_init else "he",
        )
    if config == "C":
        return Conv(cin, cout, kernel, resample=resample, init="he")
    return Conv(cin, cout, kernel, resample=resample, init="normal", weight_norm=_weight_norm(config))


def _attention(qkv: torch.Tensor, num_heads: int, cosine: bool) -> torch.Tensor:
    """Multi-head self-attention on qkv [N, 3C, H, W] (channels [head][channel][q, k, v]) -> [N, C, H, W].

    cosine=False (A-B): softmax(q^T k / sqrt(c)) with logits and softmax in float32 (float64 for
    float64 input), the result cast back (EDM's `AttentionOp`). cosine=True (C-G, Eqs. 30-34): q, k and v pixel-normalised
    per head over its c channels first; everything in qkv's dtype.
    """
    n, _, h, w = qkv.shape
    y = qkv.reshape(n, num_heads, -1, 3, h * w)
    if cosine:
        q, k, v = normalize(y, dim=2).unbind(3)
        logits = torch.einsum("nhcq,nhck->nhqk", q, k / np.sqrt(q.shape[2]))
        weights = logits.softmax(dim=3)
    else:
        q, k, v = y.unbind(3)
        k = k / np.sqrt(k.shape[2])
        dtype = _compute_dtype(q.dtype)  # float32 (float64 stays float64)
        weights = torch.einsum("nhcq,nhck->nhqk", q.to(dtype), k.to(dtype)).softmax(dim=3).to(q.dtype)
    return torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(n, -1, h, w)


class LadderBlock(torch.nn.Module):
    """Residual block of configs A-E with EDM's module names (EDM's `UNetBlock`; B.1-B.5).

    Modules in registration order: `norm0` (A-B), `conv0` (3x3, in -> out, resampling its
    input), `affine` (emb -> 2 out scale and shift in A-B, -> out scale only in C-E), `norm1`
    (A-B), `conv1` (3x3, out -> out), `skip` (1x1 conv if in != out, else resample-only if
    resampling), and with attention `norm2` (A-B), `qkv` (1x1, out -> 3 out), `proj` (1x1).
    A-B normalise with `GroupNorm`, C-E with the parameter-free `rms_group_norm` (Eq. 29) and
    cosine attention (Eqs. 30-34). x [N, in, H, W] (activation dtype), emb [N or 1, emb]
    (float32) -> [N, out, H', W'] in x's dtype; clamped to +-clip_act when set (D.2).
    """

    def __init__(
        self,
        config: str,  # 'A' .. 'E'.
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        emb_channels: int,  # Number of embedding channels.
        resample_mode: str = "keep",  # 'keep', 'up' or 'down'.
        attention: bool = False,  # Include self-attention?
        channels_per_head: int = 64,  # Number of channels per attention head.
        dropout: float = DEFAULT_DROPOUT,  # Dropout probability.
        clip_act: float | None = 256,  # Clip output activations. None = do not clip.
    ):
        super().__init__()
        assert config in "ABCDE", config
        self.config = config
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.clip_act = clip_act
        adm = config in "AB"
        if adm:
            self.norm0 = GroupNorm(in_channels)
        self.conv0 = _learned(config, in_channels, out_channels, 3, resample=resample_mode)
        self.affine = _learned(config, emb_channels, out_channels * (2 if adm else 1), None)
        if adm:
            self.norm1 = GroupNorm(out_channels)
        self.conv1 = _learned(config, out_channels, out_channels, 3, zero_init=True)
        self.skip = None
        if in_channels != out_channels:
            self.skip = _learned(config, in_channels, out_channels, 1, resample=resample_mode)
        elif resample_mode != "keep":
            self.skip = Conv(in_channels, out_channels, 0, resample=resample_mode)
        if self.num_heads:
            if adm:
                self.norm2 = GroupNorm(out_channels)
            self.qkv = _learned(config, out_channels, out_channels * 3, 1)
            self.proj = _learned(config, out_channels, out_channels, 1, zero_init=True)

    def _norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(x) if self.config in "AB" else rms_group_norm(x)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(torch.nn.functional.silu(self._norm("norm0", x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.config in "AB":  # GN(h) (1 + scale) + shift (ADM's adaptive group norm)
            scale, shift = params.chunk(chunks=2, dim=1)
            x = torch.nn.functional.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:  # RMSGN(h) (1 + scale), the offset removed (B.3)
            x = torch.nn.functional.silu(rms_group_norm(x) * (params + 1))
        if self.training and self.dropout != 0:
            x = torch.nn.functional.dropout(x, p=self.dropout)
        x = self.conv1(x)
        x = x + (self.skip(orig) if self.skip is not None else orig)
        if self.num_heads:
            qkv = self.qkv(self.norm2(x) if self.config in "AB" else x)
            x = x + self.proj(_attention(qkv, self.num_heads, cosine=self.config not in "AB"))
        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x


class LadderUNet(torch.nn.Module):
    """The U-Net F(x) of configs A-E (EDM's `DhariwalUNet` layout and names; B.1-B.5).

    Top-level modules in registration order: `map_noise` (A-B `PositionalEmbedding`, C-E
    `FourierFeatures` with buffers), `map_layer0` (noise -> emb), `map_layer1` (emb -> emb),
    `map_label` (label_dim -> emb, no bias), `enc`, `dec`, `out_norm` (A-B), `out_conv`. The
    encoder/decoder sequence is `UNet`'s. Input x [N, img_channels, R, R] (A-B) -- C-E append a
    constant-1 channel -- noise_labels [N] (c_noise = ln(sigma)/4, float32/float64: the embedding
    runs in this dtype), class_labels [N or 1, label_dim] one-hot or None -> [N, img_channels, R, R]
    in x's dtype.
    """

    def __init__(
        self,
        config: str,  # 'A' .. 'E'.
        img_resolution: int,  # Image resolution.
        img_channels: int,  # Image channels.
        label_dim: int,  # Class label dimensionality. 0 = unconditional.
        model_channels: int = 192,  # Base multiplier for the number of channels.
        channel_mult=(1, 2, 3, 4),  # Per-resolution multipliers for the number of channels.
        channel_mult_noise: int | None = None,  # Multiplier for noise embedding dims. None = channel_mult[0].
        channel_mult_emb: int | None = None,  # Multiplier for final embedding dims. None = max(channel_mult).
        num_blocks: int = 3,  # Number of residual blocks per resolution.
        attn_resolutions=None,  # Resolutions with self-attention. None = the config's (A: 32, 16, 8; B-E: 16, 8).
        **block_kwargs,  # Arguments for LadderBlock (channels_per_head, dropout, clip_act).
    ):
        super().__init__()
        assert config in "ABCDE", config
        self.config = config
        adm = config in "AB"
        if attn_resolutions is None:
            attn_resolutions = DEFAULT_ATTN_RESOLUTIONS.get(config, (16, 8))
        block_kwargs.setdefault("clip_act", DEFAULT_CLIP_ACT.get(config, 256))
        cblock = [model_channels * x for x in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_dim = label_dim

        # Embedding (B.1; C-E: Eqs. 35-36, no biases, unit-variance class input).
        self.map_noise = PositionalEmbedding(cnoise) if adm else FourierFeatures(cnoise)
        self.map_layer0 = _learned(config, cnoise, cemb, None)
        self.map_layer1 = _learned(config, cemb, cemb, None)
        self.map_label = None
        if label_dim != 0:
            # A-B: N(0, 1) (EDM: kaiming_normal x sqrt(label_dim)); C: He-uniform; D-E: N(0, 1) + WN.
            init = "normal" if config != "C" else "he"
            self.map_label = Conv(label_dim, cemb, None, init=init, weight_norm=_weight_norm(config))

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + (0 if adm else 1)
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = channels
                self.enc[f"{res}x{res}_conv"] = _learned(config, cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = LadderBlock(
                    config, cout, cout, cemb, resample_mode="down", **block_kwargs
                )
            for idx in range(num_blocks):
                cin = cout
                cout = channels
                attention = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = LadderBlock(
                    config, cin, cout, cemb, attention=attention, **block_kwargs
                )

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = LadderBlock(config, cout, cout, cemb, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = LadderBlock(config, cout, cout, cemb, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = LadderBlock(config, cout, cout, cemb, resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = channels
                attention = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = LadderBlock(
                    config, cin, cout, cemb, attention=attention, **block_kwargs
                )
        if adm:
            self.out_norm = GroupNorm(cout)
        self.out_conv = _learned(config, cout, img_channels, 3, zero_init=True)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        silu = torch.nn.functional.silu
        emb = self.map_layer1(silu(self.map_layer0(self.map_noise(noise_labels))))
        if self.map_label is not None:
            if self.config not in "AB":
                class_labels = class_labels * np.sqrt(class_labels.shape[1])  # unit-variance input (B.3)
            emb = emb + self.map_label(class_labels)
        emb = silu(emb)

        if self.config not in "AB":
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # constant-1 channel (B.3)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        x = self.out_norm(x) if self.config in "AB" else rms_group_norm(x)
        return self.out_conv(silu(x))


class BlockF(torch.nn.Module):
    """Residual block of config F (B.6) with EDM2's module names: `conv_res0`, `emb_linear`,
    `conv_res1`, `conv_skip` (if in != out), `attn_qkv`, `attn_proj` (with attention), each a
    forced-weight-normalised `MPConv` without gain.

    G's `Block` with plain SiLU, a plain residual/attention sum, no `emb_gain` and dropout 10%:
    the input is resampled once on the main path; encoder blocks apply the 1x1 conv first and
    then pixel-normalise; decoder blocks apply the 1x1 conv after the residual branch.
    x [N, in, H, W] (activation dtype), emb [N or 1, emb] (float32) -> [N, out, H', W'] in x's
    dtype, clamped to +-clip_act (D.2).
    """

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        emb_channels: int,  # Number of embedding channels.
        flavor: str = "enc",  # 'enc' or 'dec'.
        resample_mode: str = "keep",  # 'keep', 'up' or 'down'.
        attention: bool = False,  # Include self-attention?
        channels_per_head: int = 64,  # Number of channels per attention head.
        dropout: float = DEFAULT_DROPOUT,  # Dropout probability.
        clip_act: float | None = 256,  # Clip output activations. None = do not clip.
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.clip_act = clip_act
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads != 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads != 0 else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        silu = torch.nn.functional.silu
        x = resample(x, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm (B.6)
        y = self.conv_res0(silu(x))
        c = self.emb_linear(emb) + 1
        y = silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = x + y
        if self.num_heads != 0:
            x = x + self.attn_proj(_attention(self.attn_qkv(x), self.num_heads, cosine=True))
        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x


class UNetF(torch.nn.Module):
    """The U-Net F(x) of config F (B.6) with EDM2's names: `emb_fourier` (`FourierFeatures`),
    `emb_noise`, `emb_label`, `enc`, `dec`, `out_conv` -- G's `UNet` without `out_gain`, with a
    plain noise + label sum, plain SiLU, plain skip concatenation and no SiLU before `out_conv`.
    Same interface as `UNet.forward`."""

    def __init__(
        self,
        img_resolution: int,  # Image resolution.
        img_channels: int,  # Image channels.
        label_dim: int,  # Class label dimensionality. 0 = unconditional.
        model_channels: int = 192,  # Base multiplier for the number of channels.
        channel_mult=(1, 2, 3, 4),  # Per-resolution multipliers for the number of channels.
        channel_mult_noise: int | None = None,  # Multiplier for noise embedding dims. None = channel_mult[0].
        channel_mult_emb: int | None = None,  # Multiplier for final embedding dims. None = max(channel_mult).
        num_blocks: int = 3,  # Number of residual blocks per resolution.
        attn_resolutions=(16, 8),  # List of resolutions with self-attention.
        **block_kwargs,  # Arguments for BlockF (channels_per_head, dropout, clip_act).
    ):
        super().__init__()
        cblock = [model_channels * x for x in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.emb_fourier = FourierFeatures(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = BlockF(cout, cout, cemb, "enc", resample_mode="down", **block_kwargs)
            for idx in range(num_blocks):
                cin = cout
                cout = channels
                attention = res in attn_resolutions
                self.enc[f"{res}x{res}_block{idx}"] = BlockF(
                    cin, cout, cemb, "enc", attention=attention, **block_kwargs
                )

        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = BlockF(cout, cout, cemb, "dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = BlockF(cout, cout, cemb, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = BlockF(cout, cout, cemb, "dec", resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = channels
                attention = res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = BlockF(
                    cin, cout, cemb, "dec", attention=attention, **block_kwargs
                )
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = emb + self.emb_label(class_labels * np.sqrt(class_labels.shape[1]))
        emb = torch.nn.functional.silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(x)


def build_unet(config: str, **unet_kwargs) -> torch.nn.Module:
    """The raw network F of `config` 'A'..'F' (G: use `edm2.nn.unet.UNet`); raises ConfigError."""
    if config in ("A", "B", "C", "D", "E"):
        return LadderUNet(config, **unet_kwargs)
    if config == "F":
        unet_kwargs.setdefault("dropout", DEFAULT_DROPOUT)
        return UNetF(**unet_kwargs)
    raise ConfigError(f"unknown network config {config!r}; use one of {', '.join(CONFIGS)}")


def build_logvar_head(config: str, channels: int) -> tuple[torch.nn.Module, torch.nn.Module] | tuple[None, None]:
    """The uncertainty head u(sigma) of `config` (Eqs. 17-28; none in A): Fourier features of
    c_noise [N] -> [N, channels], then a learned layer channels -> 1 in the config's conventions
    (B: bias, He-uniform; C: no bias; D: weight-normalised; E-F: forced weight normalisation)."""
    if config == "A":
        return None, None
    if config in "EF":
        return FourierFeatures(channels), MPConv(channels, 1, kernel=[])
    return FourierFeatures(channels), _learned(config, channels, 1, None)
