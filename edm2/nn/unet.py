"""The EDM2 U-Net, its residual blocks and the EDM preconditioning wrapper (docs/method.md#blocks, #preconditioning).

Module registration order equals the official one, so `state_dict()` keys, shapes and order
match the released networks and the construction draws random numbers in the official order
(docs/method.md#unet; the official constructor's draw order).
"""

import numpy as np
import torch

from edm2.errors import ConfigError
from edm2.nn.ablation import CONFIGS, Conv, build_logvar_head, build_unet
from edm2.nn.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor stored channels-last (and not also plain contiguous)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class Block(torch.nn.Module):
    """U-Net residual block, encoder or decoder flavour: EDM2 (arXiv 2312.02696) Fig. 22 (config G),
    magnitude-preserving residual sum Eq. 88 with t = 0.3, cosine attention (Section 2.2;
    docs/method.md#blocks)."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        emb_channels: int,  # Number of embedding channels.
        flavor: str = "enc",  # 'enc' or 'dec'.
        resample_mode: str = "keep",  # 'keep', 'up' or 'down'.
        resample_filter=(1, 1),  # Separable resampling filter.
        attention: bool = False,  # Include self-attention?
        channels_per_head: int = 64,  # Number of channels per attention head.
        dropout: float = 0,  # Dropout probability.
        res_balance: float = 0.3,  # Balance between main branch (0) and residual branch (1).
        attn_balance: float = 0.3,  # Balance between main branch (0) and attention branch (1).
        clip_act: float | None = 256,  # Clip output activations. None = do not clip.
        fused_attention: bool = False,  # Attention through scaled_dot_product_attention (not official; see below).
    ):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # Attention through scaled_dot_product_attention instead of the official einsums: a speed
        # option (edm2 train --fast), equal up to rounding. A constructor argument, so that it is
        # part of the network's recorded configuration and a snapshot evaluates as trained.
        self.fused_attention = bool(fused_attention)
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads != 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads != 0 else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [N, in_channels, H, W] (activation dtype: float32, fp16/bf16 under mixed precision,
        or float64) and emb [N or 1, emb_channels] (float32 or float64) -> [N, out_channels, H', W']
        in x's dtype, with H' = H, 2H or H/2 for resample 'keep', 'up' or 'down'. Dropout only in
        training mode; the output is clamped to +-clip_act."""
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm (docs/method.md#blocks)

        # Residual branch (docs/method.md#blocks).
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        # Self-attention; qkv channels interleaved as [head][ch][q,k,v] (docs/method.md#blocks, #official-details).
        if self.num_heads != 0:
            # .contiguous(): no-op in the default layout; a channels-last x (a speed option) would
            # otherwise give strided views that send the einsums to a slow per-sample path.
            y = self.attn_qkv(x).contiguous()
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            if self.fused_attention:  # [n, h, tokens, c] in and out; scale 1/sqrt(c) as below
                q, k, v = (t.transpose(2, 3) for t in (q, k, v))
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(2, 3)
            else:
                w = torch.einsum("nhcq,nhck->nhqk", q, k / np.sqrt(q.shape[2])).softmax(dim=3)
                y = torch.einsum("nhqk,nhck->nhcq", w, v)
            y = self.attn_proj(y.reshape(*x.shape).contiguous(memory_format=_layout(x)))
            x = mp_sum(x, y, t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x


class UNet(torch.nn.Module):
    """The EDM2 U-Net F(x): EDM2 (arXiv 2312.02696) Fig. 22, config G of Table 1 (docs/method.md#unet);
    the official `networks_edm2.UNet`."""

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
        label_balance: float = 0.5,  # Balance between noise embedding (0) and class embedding (1).
        concat_balance: float = 0.5,  # Balance between skip connections (0) and main path (1).
        **block_kwargs,  # Arguments for Block.
    ):
        super().__init__()
        cblock = [model_channels * x for x in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        # Embedding.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        # Encoder (docs/method.md#unet).
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(
                    cout, cout, cemb, flavor="enc", resample_mode="down", **block_kwargs
                )
            for idx in range(num_blocks):
                cin = cout
                cout = channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, flavor="enc", attention=(res in attn_resolutions), **block_kwargs
                )

        # Decoder (docs/method.md#unet).
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, flavor="dec", attention=(res in attn_resolutions), **block_kwargs
                )
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The raw network F: x [N, img_channels, R, R] (activation dtype), noise_labels [N] or [1]
        (c_noise = ln(sigma)/4, float32 or float64: the embedding path runs in this dtype) and
        class_labels [N or 1, label_dim] (one-hot, ignored when label_dim = 0) -> [N,
        img_channels, R, R] in x's dtype. R must be divisible by 2^(len(channel_mult) - 1)."""
        # Embedding, in the dtype of noise_labels (docs/method.md#unet).
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * np.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)

        # Encoder: every output, including the input conv and the down blocks, is a skip.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)

        # Decoder: main path first, skip second (docs/method.md#unet).
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        x = self.out_conv(x, gain=self.out_gain)
        return x


# Names of the buffers of every module class of configs A-G (the last part of their state-dict
# keys); a module class that registers a buffer lists it in its `buffer_names` (Precond.is_buffer).
BUFFER_NAMES = frozenset(MPFourier.buffer_names) | frozenset(Conv.buffer_names)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}  # Precond(amp_dtype=...)


def precision_kwargs(precision: str) -> dict:
    """The Precond arguments of a training precision: 'fp32' (no mixed precision), 'fp16' (the
    official mixed precision) or 'bf16'; raises ValueError for anything else."""
    kwargs = {
        "fp32": dict(use_fp16=False),
        "fp16": dict(use_fp16=True),
        "bf16": dict(use_fp16=True, amp_dtype="bfloat16"),
    }
    if precision not in kwargs:
        raise ValueError(f"precision must be one of {', '.join(kwargs)}, got {precision!r}")
    return kwargs[precision]


class Precond(torch.nn.Module):
    """EDM preconditioning around the U-Net plus the per-sigma uncertainty head (docs/method.md#preconditioning).

    Computes in float32 (mixed-precision main path on CUDA when `use_fp16`: fp16, or bf16 with
    `amp_dtype="bfloat16"`), or in float64 end to end when the input is float64 (the weights must
    then be float64 too, e.g. after `.double()`).

    `amp_dtype` and the blocks' `fused_attention` are constructor arguments, so they are part of
    `init_kwargs`, the configuration a snapshot records: a network trained with `--precision
    bf16` or `--fast` is rebuilt with them and evaluates as it did in training. Both are recorded
    only when they differ from the official behaviour (fp16, einsum attention), so the
    configuration of every other network reads as the official one (and official pickles, which
    have neither, load with the defaults). Raises ValueError for an `amp_dtype` other than
    'float16' or 'bfloat16'.

    `config` selects the network of one of the configs A-G of the paper's Table 1 (arXiv
    2312.02696, Section 2, Appendix B; docs/method.md#ablation-ladder): G (default) is `UNet`
    with the MP uncertainty head; A-F come from `edm2.nn.ablation` and take the same size
    arguments, with their own defaults for attention resolutions, dropout and clamping. A has
    no uncertainty head (`return_logvar` raises ConfigError); an unknown config raises
    ConfigError. Like `amp_dtype`, it is recorded only when it is not the default G.
    """

    def __init__(
        self,
        img_resolution: int,  # Image resolution.
        img_channels: int,  # Image channels.
        label_dim: int,  # Class label dimensionality. 0 = unconditional.
        use_fp16: bool = True,  # Run the model at FP16 precision (on CUDA only)?
        sigma_data: float = 0.5,  # Expected standard deviation of the training data.
        logvar_channels: int = 128,  # Intermediate dimensionality for uncertainty estimation.
        config: str = "G",  # Network of the paper's Table 1 config 'A'..'G' (docs/method.md#ablation-ladder).
        *,
        amp_dtype: str = "float16",  # Dtype of the mixed-precision main path: 'float16' or 'bfloat16'.
        **unet_kwargs,  # Keyword arguments for UNet (G; through it Block: dropout, fused_attention, ...) or the config's network (edm2.nn.ablation).
    ):
        super().__init__()
        if config not in CONFIGS:
            raise ConfigError(f"unknown network config {config!r}; use one of {', '.join(CONFIGS)}")
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {amp_dtype!r}")
        # The constructor arguments, as stored in snapshot metadata to rebuild the network. The
        # config and amp_dtype are recorded unless they are the defaults, so G's metadata is what it always was.
        self.init_kwargs = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            use_fp16=use_fp16,
            sigma_data=sigma_data,
            logvar_channels=logvar_channels,
            **({} if config == "G" else {"config": config}),
            **({"amp_dtype": amp_dtype} if amp_dtype != "float16" else {}),
            **unet_kwargs,
        )
        self.config = config
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.amp_dtype = AMP_DTYPES[amp_dtype]
        net_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        if config == "G":
            self.unet = UNet(**net_kwargs)
            self.logvar_fourier = MPFourier(logvar_channels)
            self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])
        else:
            self.unet = build_unet(config, **net_kwargs)
            self.logvar_fourier, self.logvar_linear = build_logvar_head(config, logvar_channels)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False, **unet_kwargs):
        """The denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): EDM2 (arXiv 2312.02696) Eq. 4-8, EDM (arXiv 2206.00364) Table 1.

        x: [N, img_channels, R, R] noisy images/latents, any float dtype (float64 keeps the whole
        computation in float64; anything else computes in float32). sigma: noise level(s), a
        number, a 0-dim tensor or [N] (broadcast to [N, 1, 1, 1]). class_labels: [N, label_dim]
        one-hot (or [label_dim]); None uses a zero label (embedding 0), ignored when unconditional.
        force_fp32: no fp16/bf16 main path even on CUDA. Returns D [N, img_channels, R, R] in
        float32 (float64), and with `return_logvar` also the uncertainty u(sigma) [N or 1, 1, 1, 1]
        of the loss weighting (docs/method.md#preconditioning).
        """
        base = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(base)
        # A Python/NumPy sigma is converted straight to `base` (not via float32) so that float64
        # runs keep every digit; a tensor sigma is cast like the official `sigma.to(float32)`.
        sigma = torch.as_tensor(sigma, dtype=base, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], dtype=base, device=x.device)
        else:
            class_labels = class_labels.to(base).reshape(-1, self.label_dim)
        use_amp = self.use_fp16 and not force_fp32 and x.device.type == "cuda" and base == torch.float32
        dtype = self.amp_dtype if use_amp else base

        # Preconditioning: EDM2 (arXiv 2312.02696) Eq. 4-8 (EDM arXiv 2206.00364, Table 1)
        # (docs/method.md#preconditioning).
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()
        c_in = 1 / (self.sigma_data**2 + sigma**2).sqrt()
        c_noise = sigma.flatten().log() / 4

        x_in = (c_in * x).to(dtype)
        F_x = self.unet(x_in, c_noise, class_labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(base)

        if return_logvar:
            if self.logvar_linear is None:
                raise ConfigError(
                    f"config {self.config} has no uncertainty head u(sigma); train it without return_logvar"
                )
            # The uncertainty u(sigma) of the loss weighting, EDM2 (arXiv 2312.02696) Eq. 21.
            logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
            return D_x, logvar
        return D_x

    @staticmethod
    def is_buffer(name: str) -> bool:
        """Whether the state-dict entry `name` (e.g. 'unet.emb_fourier.freqs') is a buffer, not a
        trained parameter, in the network of any config A-G: the Fourier frequencies and phases
        (`MPFourier`, and the `FourierFeatures` of C-F) and the resampling filters of A-E's
        layers (`edm2.nn.ablation.Conv`), which an EMA copies from the network instead of
        averaging (docs/method.md#official-details). Decided from the name alone, without
        building the network: every module class that registers buffers names them in its
        `buffer_names`, collected in BUFFER_NAMES."""
        return name.rpartition(".")[2] in BUFFER_NAMES
