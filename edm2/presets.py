"""The paper's presets as typed data: training presets (docs/method.md#presets), model sizes (docs/method.md#unet) and
generation presets with the released post-hoc EMA reconstructions (docs/method.md#sampling).

    TRAINING_PRESETS['edm2-img512-s'].lr          -> 0.0100
    TRAINING_PRESETS['edm2-img512-s'].final_kimg  -> 2147483
    MODEL_SIZES['xl'].model_channels              -> 384
    GENERATION_PRESETS['edm2-img512-s-autog-fid'] -> net/gnet URLs, guidance 2.10, fid 1.34
    GENERATION_PRESETS['edm2-img512-xxl-interval-fid'].sampler -> {'guidance_start': 17, 'guidance_stop': 22}
"""

import dataclasses

from edm2.errors import ConfigError
from edm2.naming import snapshot_name

Mi = 1 << 20  # binary mega (2^20 images)


# --- Training presets (docs/method.md#presets) -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingPreset:
    """One row of the training-preset table (docs/method.md#presets)."""

    duration: int  # Train for a total of this many training images.
    batch: int  # Total batch size (images per optimizer step).
    channels: int  # Base channel count of the network (`model_channels`).
    lr: float  # Reference learning rate (`ref_lr`).
    decay: int  # Learning-rate decay starts after this many *batches* (`ref_batches`).
    dropout: float  # Dropout probability inside the residual blocks.
    P_mean: float  # Mean of the training noise level distribution ln(sigma) ~ N(P_mean, P_std^2).
    P_std: float  # Standard deviation of ln(sigma).
    loss_scaling: float = 1.0  # Loss scaling (100 for the raw-weight configs A-C, EDM2 Figs. 16-18).
    config: str = "G"  # Network and training config of the paper's Table 1 (edm2.train.configs).

    @property
    def final_kimg(self) -> int:
        """kimg of the last snapshot, as in the released file names (`nimg // 1000`, docs/method.md#presets)."""
        return self.duration // 1000

    @property
    def decay_nimg(self) -> int:
        """Training images after which the learning rate decays (`decay * batch`, docs/method.md#presets)."""
        return self.decay * self.batch


def _img512(duration_mi, channels, lr, dropout):
    return TrainingPreset(duration_mi * Mi, 2048, channels, lr, 70000, dropout, -0.4, 1.0)


def _img64(duration_mi, channels, lr, dropout):
    return TrainingPreset(duration_mi * Mi, 2048, channels, lr, 35000, dropout, -0.8, 1.6)


TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "edm2-img512-xxs": _img512(2048, 64, 0.0170, 0.00),
    "edm2-img512-xs": _img512(2048, 128, 0.0120, 0.00),
    "edm2-img512-s": _img512(2048, 192, 0.0100, 0.00),
    "edm2-img512-m": _img512(2048, 256, 0.0090, 0.10),
    "edm2-img512-l": _img512(1792, 320, 0.0080, 0.10),
    "edm2-img512-xl": _img512(1280, 384, 0.0070, 0.10),
    "edm2-img512-xxl": _img512(896, 448, 0.0065, 0.10),
    "edm2-img64-xs": _img64(1024, 128, 0.0120, 0.00),
    "edm2-img64-s": _img64(1024, 192, 0.0100, 0.00),
    "edm2-img64-m": _img64(2048, 256, 0.0090, 0.10),
    "edm2-img64-l": _img64(1024, 320, 0.0080, 0.10),
    "edm2-img64-xl": _img64(640, 384, 0.0070, 0.10),
}


# The paper's ablation ladder at its exploration size S (Table 1; the boxes of Figs. 16-21):
# 2^31 images (2147.5 Mimg, = 2048Mi) in every config; A has batch 4096 (2^19 iterations), B-F
# 2048 (2^20). decay 0 = no learning-rate decay (t_ref = infinity, A-D); dropout 10% in A-F.
def _ablation(config, batch, lr, decay, P_mean, P_std, loss_scaling):
    return TrainingPreset(2048 * Mi, batch, 192, lr, decay, 0.10, P_mean, P_std, loss_scaling, config)


TRAINING_PRESETS.update(
    {
        "edm2-img512-s-config-a": _ablation("A", 4096, 0.0001, 0, -1.2, 1.2, 100.0),
        "edm2-img512-s-config-b": _ablation("B", 2048, 0.0002, 0, -0.4, 1.0, 100.0),
        "edm2-img512-s-config-c": _ablation("C", 2048, 0.0002, 0, -0.4, 1.0, 100.0),
        "edm2-img512-s-config-d": _ablation("D", 2048, 0.0100, 0, -0.4, 1.0, 1.0),
        "edm2-img512-s-config-e": _ablation("E", 2048, 0.0100, 70000, -0.4, 1.0, 1.0),
        "edm2-img512-s-config-f": _ablation("F", 2048, 0.0100, 70000, -0.4, 1.0, 1.0),
    }
)
DEFAULT_TRAINING_PRESET = "edm2-img512-s"

# Network interface of each dataset family (docs/method.md#presets: sizes come from one encoded sample).
# img512: 64x64x4 Stable Diffusion VAE latents; img64: 64x64 RGB pixels; ImageNet's 1000 classes.
DATASET_SHAPES = {
    "img512": dict(img_resolution=64, img_channels=4, label_dim=1000),
    "img64": dict(img_resolution=64, img_channels=3, label_dim=1000),
}


def get_training_preset(name: str) -> TrainingPreset:
    """Look up a training preset by name, with an error listing the valid names."""
    try:
        return TRAINING_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown training preset {name!r}; choose one of {', '.join(TRAINING_PRESETS)}") from None


def network_kwargs(name: str) -> dict:
    """`Precond` constructor arguments of a training preset (docs/method.md#presets: only `model_channels`
    and `dropout` differ from the defaults; interface sizes from the dataset family)."""
    preset = get_training_preset(name)
    family = name.split("-")[1]
    config = {} if preset.config == "G" else {"config": preset.config}
    return dict(**DATASET_SHAPES[family], model_channels=preset.channels, dropout=preset.dropout, **config)


# --- Model sizes (docs/method.md#unet) ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """One row of the model-size table (docs/method.md#unet; counts with label_dim 1000, resolution 64)."""

    model_channels: int  # Base channel count; cblock = model_channels * [1, 2, 3, 4].
    params_img512: float | None  # Trainable parameters in millions, 4-channel latents (None: not trained).
    params_img64: float | None  # Trainable parameters in millions, RGB pixels (None: not trained).


MODEL_SIZES: dict[str, ModelSize] = {
    "xxs": ModelSize(64, 31.31, None),
    "xs": ModelSize(128, 124.71, 124.71),
    "s": ModelSize(192, 280.21, 280.21),
    "m": ModelSize(256, 497.81, 497.80),
    "l": ModelSize(320, 777.50, 777.49),
    "xl": ModelSize(384, 1119.28, 1119.28),
    "xxl": ModelSize(448, 1523.16, None),
}


# --- Generation presets (docs/method.md#sampling) ---------------------------------------------------------

MODEL_ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"


def model_url(model: str, kimg: int, std: float) -> str:
    """URL of a released post-hoc EMA reconstruction, e.g.
    `model_url('edm2-img512-xs', 2147483, 0.135)` -> `.../edm2-img512-xs-2147483-0.135.pkl`."""
    return f"{MODEL_ROOT}/{snapshot_name(model, kimg, std, ext='pkl')}"


@dataclasses.dataclass(frozen=True)
class GenerationPreset:
    """One row of the generation-preset table (docs/method.md#sampling); names follow the official generate.py."""

    net: str  # URL of the main network.
    gnet: str | None  # URL of the guiding network; None = no guidance.
    guidance: float  # Guidance strength; 1 = no guidance (the guide is then never evaluated).
    metric: str  # Metric the preset was tuned for: 'fid' or 'fd_dinov2'.
    value: float  # Value of that metric reported by the paper.
    # Guidance interval by step index, both ends included, at the paper's 32 steps (the
    # `guidance_interval` of the interval paper's code); None = guidance on every step.
    guidance_steps: tuple[int, int] | None = None
    # The interval (sigma_lo, sigma_hi] as the paper reports it (rounded step noise levels).
    reported_interval: tuple[float, float] | None = None

    @property
    def sampler(self) -> dict:
        """Sampler options the preset sets (`edm2.sample.options.SamplerOptions` fields)."""
        if self.guidance_steps is None:
            return {}
        return dict(guidance_start=self.guidance_steps[0], guidance_stop=self.guidance_steps[1])


def _gen(net, gnet=None, guidance=1.0, metric="fid", value=0.0, **interval):
    """`net`/`gnet` are (model suffix, kimg, std); the suffix is appended to `edm2-`."""
    net_url = model_url(f"edm2-{net[0]}", net[1], net[2])
    gnet_url = model_url(f"edm2-{gnet[0]}", gnet[1], gnet[2]) if gnet is not None else None
    return GenerationPreset(net=net_url, gnet=gnet_url, guidance=guidance, metric=metric, value=value, **interval)


_FULL = 2147483  # 2048Mi images


def _interval(start, stop, sigma_lo, sigma_hi):
    return dict(guidance_steps=(start, stop), reported_interval=(sigma_lo, sigma_hi))


_XS_UNCOND = "img512-xs-uncond"

GENERATION_PRESETS: dict[str, GenerationPreset] = {
    # EDM2 paper, no guidance.
    "edm2-img512-xs-fid": _gen(("img512-xs", _FULL, 0.135), value=3.53),
    "edm2-img512-xs-dino": _gen(("img512-xs", _FULL, 0.200), metric="fd_dinov2", value=103.39),
    "edm2-img512-s-fid": _gen(("img512-s", _FULL, 0.130), value=2.56),
    "edm2-img512-s-dino": _gen(("img512-s", _FULL, 0.190), metric="fd_dinov2", value=68.64),
    "edm2-img512-m-fid": _gen(("img512-m", _FULL, 0.100), value=2.25),
    "edm2-img512-m-dino": _gen(("img512-m", _FULL, 0.155), metric="fd_dinov2", value=58.44),
    "edm2-img512-l-fid": _gen(("img512-l", 1879048, 0.085), value=2.06),
    "edm2-img512-l-dino": _gen(("img512-l", 1879048, 0.155), metric="fd_dinov2", value=52.25),
    "edm2-img512-xl-fid": _gen(("img512-xl", 1342177, 0.085), value=1.96),
    "edm2-img512-xl-dino": _gen(("img512-xl", 1342177, 0.155), metric="fd_dinov2", value=45.96),
    "edm2-img512-xxl-fid": _gen(("img512-xxl", 939524, 0.070), value=1.91),
    "edm2-img512-xxl-dino": _gen(("img512-xxl", 939524, 0.150), metric="fd_dinov2", value=42.84),
    "edm2-img64-s-fid": _gen(("img64-s", 1073741, 0.075), value=1.58),
    "edm2-img64-m-fid": _gen(("img64-m", _FULL, 0.060), value=1.43),
    "edm2-img64-l-fid": _gen(("img64-l", 1073741, 0.040), value=1.33),
    "edm2-img64-xl-fid": _gen(("img64-xl", 671088, 0.040), value=1.33),
    # Classifier-free guidance with a separately trained unconditional XS guide (docs/method.md#official-details).
    "edm2-img512-xs-guid-fid": _gen(("img512-xs", _FULL, 0.045), (_XS_UNCOND, _FULL, 0.045), 1.40, "fid", 2.91),
    "edm2-img512-xs-guid-dino": _gen(("img512-xs", _FULL, 0.150), (_XS_UNCOND, _FULL, 0.150), 1.70, "fd_dinov2", 79.94),
    "edm2-img512-s-guid-fid": _gen(("img512-s", _FULL, 0.025), (_XS_UNCOND, _FULL, 0.025), 1.40, "fid", 2.23),
    "edm2-img512-s-guid-dino": _gen(("img512-s", _FULL, 0.085), (_XS_UNCOND, _FULL, 0.085), 1.90, "fd_dinov2", 52.32),
    "edm2-img512-m-guid-fid": _gen(("img512-m", _FULL, 0.030), (_XS_UNCOND, _FULL, 0.030), 1.20, "fid", 2.01),
    "edm2-img512-m-guid-dino": _gen(("img512-m", _FULL, 0.015), (_XS_UNCOND, _FULL, 0.015), 2.00, "fd_dinov2", 41.98),
    "edm2-img512-l-guid-fid": _gen(("img512-l", 1879048, 0.015), (_XS_UNCOND, _FULL, 0.015), 1.20, "fid", 1.88),
    "edm2-img512-l-guid-dino": _gen(("img512-l", 1879048, 0.035), (_XS_UNCOND, _FULL, 0.035), 1.70, "fd_dinov2", 38.20),
    "edm2-img512-xl-guid-fid": _gen(("img512-xl", 1342177, 0.020), (_XS_UNCOND, _FULL, 0.020), 1.20, "fid", 1.85),
    "edm2-img512-xl-guid-dino": _gen(
        ("img512-xl", 1342177, 0.030), (_XS_UNCOND, _FULL, 0.030), 1.70, "fd_dinov2", 35.67
    ),
    "edm2-img512-xxl-guid-fid": _gen(("img512-xxl", 939524, 0.015), (_XS_UNCOND, _FULL, 0.015), 1.20, "fid", 1.81),
    "edm2-img512-xxl-guid-dino": _gen(
        ("img512-xxl", 939524, 0.015), (_XS_UNCOND, _FULL, 0.015), 1.70, "fd_dinov2", 33.09
    ),
    # Autoguidance: a smaller, shorter-trained conditional guide (docs/method.md#official-details).
    "edm2-img512-s-autog-fid": _gen(("img512-s", _FULL, 0.070), ("img512-xs", 134217, 0.125), 2.10, "fid", 1.34),
    "edm2-img512-s-autog-dino": _gen(
        ("img512-s", _FULL, 0.120), ("img512-xs", 134217, 0.165), 2.45, "fd_dinov2", 36.67
    ),
    "edm2-img512-xxl-autog-fid": _gen(("img512-xxl", 939524, 0.075), ("img512-m", 268435, 0.155), 2.05, "fid", 1.25),
    "edm2-img512-xxl-autog-dino": _gen(
        ("img512-xxl", 939524, 0.130), ("img512-m", 268435, 0.205), 2.30, "fd_dinov2", 24.18
    ),
    "edm2-img512-s-uncond-autog-fid": _gen(
        ("img512-s-uncond", _FULL, 0.070), (_XS_UNCOND, 134217, 0.110), 2.85, "fid", 3.86
    ),
    "edm2-img512-s-uncond-autog-dino": _gen(
        ("img512-s-uncond", _FULL, 0.090), (_XS_UNCOND, 134217, 0.125), 2.90, "fd_dinov2", 90.39
    ),
    "edm2-img64-s-autog-fid": _gen(("img64-s", 1073741, 0.045), ("img64-xs", 134217, 0.110), 1.70, "fid", 1.01),
    "edm2-img64-s-autog-dino": _gen(("img64-s", 1073741, 0.105), ("img64-xs", 134217, 0.175), 2.20, "fd_dinov2", 31.85),
    # Guidance interval (Kynkäänniemi et al. 2024, arXiv 2404.07724, Table 1): classifier-free
    # guidance with the unconditional XS, on the 32-step schedule's steps whose t_i lies in the
    # reported (sigma_lo, sigma_hi] = (t_{stop+1}, t_start] rounded to 2 decimals (Sec. 3.1;
    # XXL's [17, 22] and [13, 19] are those of the paper's code). The interval paper does not name
    # the EMA lengths; the autoguidance paper's Table 1 lists these runs with EMA_m = EMA_g =
    # 0.025 / 0.085 (S, FID / FD_DINOv2) and 0.015 / 0.015 (XXL): the nets of the guided presets.
    "edm2-img512-s-interval-fid": _gen(
        ("img512-s", _FULL, 0.025), (_XS_UNCOND, _FULL, 0.025), 2.10, "fid", 1.68, **_interval(15, 21, 0.28, 2.90)
    ),
    "edm2-img512-s-interval-dino": _gen(
        ("img512-s", _FULL, 0.085),
        (_XS_UNCOND, _FULL, 0.085),
        3.20,
        "fd_dinov2",
        46.25,
        **_interval(13, 19, 0.60, 5.00),
    ),
    "edm2-img512-xxl-interval-fid": _gen(
        ("img512-xxl", 939524, 0.015), (_XS_UNCOND, _FULL, 0.015), 2.00, "fid", 1.40, **_interval(17, 22, 0.19, 1.61)
    ),
    "edm2-img512-xxl-interval-dino": _gen(
        ("img512-xxl", 939524, 0.015),
        (_XS_UNCOND, _FULL, 0.015),
        2.90,
        "fd_dinov2",
        29.16,
        **_interval(13, 19, 0.60, 5.00),
    ),
}


def get_generation_preset(name: str) -> GenerationPreset:
    """Look up a generation preset by name, with an error listing the valid names."""
    try:
        return GENERATION_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown generation preset {name!r}; choose one of {', '.join(GENERATION_PRESETS)}"
        ) from None
