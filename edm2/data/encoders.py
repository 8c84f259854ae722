"""Encoders between raw pixels, raw latents (what a dataset stores) and final latents (what the
network sees), docs/method.md#encoders

    raw pixels (uint8 NCHW) --encode_pixels--> raw latents --encode_latents--> final latents
    final latents --decode--> uint8 pixels

`StandardRGBEncoder` works on pixels directly; `StabilityVAEEncoder` wraps the Stable Diffusion
VAE (diffusers `AutoencoderKL`), loaded lazily on first use from a hub id or a local folder and
never stored in a snapshot: only `config()` is, and `make_encoder(config)` rebuilds the encoder.
"""

import os
from pathlib import Path

import numpy as np
import torch

from edm2.errors import ConfigError, DownloadError, FormatError


class StandardRGBEncoder:
    """Pixel-space 'encoder': uint8 [0, 255] <-> float32 [-1, 1] (docs/method.md#encoders)."""

    def init(self, device):  # nothing to load
        pass

    def config(self) -> dict:
        return {"class": "StandardRGBEncoder"}

    def encode(self, x):
        return self.encode_latents(self.encode_pixels(x))

    def encode_pixels(self, x):  # identity, uint8 stays uint8 (docs/method.md#encoders)
        return x

    def encode_latents(self, x):  # float32(x) / 127.5 - 1 (docs/method.md#encoders)
        return x.to(torch.float32) / 127.5 - 1

    def decode(self, x):  # +128 instead of +127.5 rounds to nearest under the truncating cast (docs/method.md#encoders)
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


# Default statistics of the raw sd-vae-ft-mse latents over ImageNet-512 (docs/method.md#encoders).
RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
RAW_STD = (4.17, 4.62, 3.71, 3.28)


class StabilityVAEEncoder:
    """Latent-space encoder on top of the Stable Diffusion VAE (docs/method.md#encoders).

    Raw latents are the 8-channel concatenation of the posterior mean and std at 1/8 resolution;
    `encode_latents` draws a fresh sample from that posterior every call and normalises it with
    `scale = final_std / raw_std`, `bias = final_mean - raw_mean * scale` (float32).
    """

    def __init__(
        self,
        vae_name: str = "stabilityai/sd-vae-ft-mse",  # Hugging Face hub id or local folder of an AutoencoderKL.
        raw_mean=RAW_MEAN,  # Per-channel mean of the raw latents (4 values).
        raw_std=RAW_STD,  # Per-channel std of the raw latents (4 values).
        final_mean: float = 0.0,  # Mean of the final latents the network sees.
        final_std: float = 0.5,  # Std of the final latents the network sees.
        batch_size: int = 8,  # VAE micro-batch in images (dataset tool 1, generation 4, training 8).
    ):
        if len(raw_mean) != 4 or len(raw_std) != 4:
            raise ConfigError(f"raw_mean and raw_std need 4 values each, got {list(raw_mean)} and {list(raw_std)}")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.vae_name = str(vae_name)
        self.raw_mean = np.asarray(raw_mean, dtype=np.float32)
        self.raw_std = np.asarray(raw_std, dtype=np.float32)
        self.final_mean = np.float32(final_mean)
        self.final_std = np.float32(final_std)
        self.batch_size = int(batch_size)
        # docs/method.md#encoders: all float32.
        self.scale = self.final_std / self.raw_std
        self.bias = self.final_mean - self.raw_mean * self.scale
        self._vae = None

    def config(self) -> dict:
        return {
            "class": "StabilityVAEEncoder",
            "vae_name": self.vae_name,
            "raw_mean": [float(v) for v in self.raw_mean],
            "raw_std": [float(v) for v in self.raw_std],
            "final_mean": float(self.final_mean),
            "final_std": float(self.final_std),
            "batch_size": self.batch_size,
        }

    def __getstate__(self):  # the VAE is never pickled (docs/method.md#encoders)
        return {**self.__dict__, "_vae": None}

    def init(self, device):
        """Load the VAE on first use (fp32, eval, no grads) and move it to `device`."""
        if self._vae is None:
            self._vae = load_vae(self.vae_name, device)
        else:
            self._vae.to(device)

    def _per_channel(self, values, like):
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)

    def encode(self, x):
        return self.encode_latents(self.encode_pixels(x))

    @torch.no_grad()
    def encode_pixels(self, x):
        """uint8 [N, 3, H, W] -> float32 [N, 8, H/8, W/8] (posterior mean, then std)."""
        self.init(x.device)
        x = x.to(torch.float32) / 255  # docs/method.md#encoders: the VAE is fed [0, 1], not [-1, 1]
        out = []
        for batch in x.split(self.batch_size):
            posterior = self._vae.encode(batch).latent_dist
            out.append(torch.cat([posterior.mean, posterior.std], dim=1))
        return torch.cat(out)

    def encode_latents(self, x):
        """Raw latents [N, 8, h, w] -> a fresh posterior sample, normalised: [N, 4, h, w] (docs/method.md#encoders)."""
        mean, std = x.to(torch.float32).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * std
        return z * self._per_channel(self.scale, z) + self._per_channel(self.bias, z)

    @torch.no_grad()
    def decode(self, x):
        """Final latents [N, 4, h, w] -> uint8 [N, 3, 8h, 8w] (docs/method.md#encoders: clamp [0, 1], x255, truncate)."""
        self.init(x.device)
        x = x.to(torch.float32)
        x = (x - self._per_channel(self.bias, x)) / self._per_channel(self.scale, x)
        out = [self._vae.decode(batch).sample for batch in x.split(self.batch_size)]
        return torch.cat(out).clamp(0, 1).mul(255).to(torch.uint8)


def _cache_dir():
    """Where hub downloads go: $EDM2_CACHE_DIR/diffusers if set, else the Hugging Face default."""
    root = os.environ.get("EDM2_CACHE_DIR")
    return str(Path(root) / "diffusers") if root else None


def load_vae(vae_name: str, device="cpu"):
    """Load a diffusers AutoencoderKL from a local folder or a hub id; fp32, eval, frozen."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ConfigError(
            "the Stable Diffusion VAE needs the 'diffusers' package; install it with: pip install 'edm2[vae]'"
        ) from None
    local = Path(vae_name).expanduser()
    looks_local = local.exists() or vae_name.startswith((".", "/", "~")) or vae_name.count("/") > 1
    if looks_local and not (local / "config.json").is_file():
        raise FormatError(
            f"VAE folder {vae_name} has no config.json; point --vae at a folder written by "
            "AutoencoderKL.save_pretrained or at a hub id such as stabilityai/sd-vae-ft-mse"
        )
    try:
        if looks_local:
            vae = AutoencoderKL.from_pretrained(str(local), torch_dtype=torch.float32, low_cpu_mem_usage=False)
        else:
            vae = AutoencoderKL.from_pretrained(
                vae_name, torch_dtype=torch.float32, low_cpu_mem_usage=False, cache_dir=_cache_dir()
            )
    except (OSError, ValueError) as e:
        if looks_local:
            raise FormatError(f"cannot load the VAE from folder {vae_name}: {e}") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DownloadError(
            f"cannot load the VAE {vae_name!r}: it is not a local folder and the Hugging Face hub failed "
            f"({reason}); check the network, or download it once and pass its local folder"
        ) from None
    vae.eval().requires_grad_(False)
    return vae.to(device)


# Channels of the latents each encoder gives the network (docs/method.md#encoders). The pixel
# encoder maps each channel on its own, so it also serves grayscale (1-channel) datasets.
ENCODER_CHANNELS = {"StandardRGBEncoder": 3, "StabilityVAEEncoder": 4}


def check_encoder_config(config, where: str, img_channels: int | None = None) -> dict:
    """Check an encoder config read from a file (`where` names the file and the field): a known
    class with only its own options, of the right types (vae_name a string, raw_mean/raw_std 4
    finite numbers each, raw_std and final_std positive, batch_size an integer in [1, 4096]),
    and, given the network's `img_channels`, the 4 latent channels of the VAE encoder. Returns
    `config`; raises `FormatError`."""
    if not isinstance(config, dict):
        raise FormatError(f"{where} is a {type(config).__name__}, expected an object with a 'class'")
    cls = config.get("class")
    if cls not in ENCODER_CHANNELS:
        raise FormatError(f"{where}: class {str(cls)[:60]!r} is not one of {', '.join(ENCODER_CHANNELS)}")
    options = {k: v for k, v in config.items() if k != "class"}
    allowed = {"vae_name", "raw_mean", "raw_std", "final_mean", "final_std", "batch_size"}
    if cls == "StandardRGBEncoder":
        allowed = set()
    if set(options) - allowed:
        raise FormatError(f"{where}: {cls} has unknown options {sorted(set(options) - allowed)[:5]}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    for key in ("raw_mean", "raw_std"):
        value = options.get(key, [1.0] * 4)
        if not (isinstance(value, list) and len(value) == 4 and all(number(v) for v in value)):
            raise FormatError(
                f"{where}: {key} is {str(value)[:80]}, expected 4 finite numbers (one per latent channel)"
            )
        if key == "raw_std" and min(value) <= 0:
            raise FormatError(f"{where}: raw_std {value} has a value that is not positive")
    for key in ("final_mean", "final_std"):
        value = options.get(key, 1.0)
        if not number(value) or (key == "final_std" and value <= 0):
            raise FormatError(f"{where}: {key} is {str(value)[:40]}, expected a finite number (final_std positive)")
    batch = options.get("batch_size", 1)
    if type(batch) is not int or not 1 <= batch <= 4096:
        raise FormatError(f"{where}: batch_size is {str(batch)[:40]}, expected an integer in [1, 4096]")
    if not isinstance(options.get("vae_name", ""), str) or len(options.get("vae_name", "")) > 4096:
        raise FormatError(f"{where}: vae_name is not a string (a hub id or a folder)")
    if img_channels is not None and cls == "StabilityVAEEncoder" and img_channels != ENCODER_CHANNELS[cls]:
        raise FormatError(
            f"{where}: {cls} gives {ENCODER_CHANNELS[cls]} channels but the network has img_channels={img_channels}"
        )
    return config


def make_encoder(config: dict):
    """Rebuild an encoder from its `config()` dict (as stored in snapshot metadata)."""
    if not isinstance(config, dict) or "class" not in config:
        raise ConfigError(
            f"encoder config {config!r} has no 'class'; expected StandardRGBEncoder or StabilityVAEEncoder"
        )
    kwargs = {k: v for k, v in config.items() if k != "class"}
    if config["class"] == "StandardRGBEncoder":
        if kwargs:
            raise ConfigError(f"StandardRGBEncoder takes no options, got {sorted(kwargs)}")
        return StandardRGBEncoder()
    if config["class"] == "StabilityVAEEncoder":
        allowed = {"vae_name", "raw_mean", "raw_std", "final_mean", "final_std", "batch_size"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise ConfigError(f"unknown StabilityVAEEncoder options {sorted(unknown)}; allowed: {sorted(allowed)}")
        return StabilityVAEEncoder(**kwargs)
    raise ConfigError(f"unknown encoder class {config['class']!r}; expected StandardRGBEncoder or StabilityVAEEncoder")
