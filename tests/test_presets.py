"""Presets (docs/method.md#unet, #presets, #sampling): values against the paper's tables, written out here."""

import dataclasses
import re

import pytest

from edm2.errors import ConfigError
from edm2.presets import (
    GENERATION_PRESETS,
    MODEL_SIZES,
    TRAINING_PRESETS,
    GenerationPreset,
    TrainingPreset,
    get_generation_preset,
    get_training_preset,
    model_url,
    network_kwargs,
)

Mi = 2**20

# docs/method.md#presets (the EDM2 appendix's table): duration (Mi images), batch, channels, lr, decay (batches), dropout, P_mean, P_std.
SPEC_TRAINING = {
    "edm2-img512-xxs": (2048, 2048, 64, 0.0170, 70000, 0.00, -0.4, 1.0),
    "edm2-img512-xs": (2048, 2048, 128, 0.0120, 70000, 0.00, -0.4, 1.0),
    "edm2-img512-s": (2048, 2048, 192, 0.0100, 70000, 0.00, -0.4, 1.0),
    "edm2-img512-m": (2048, 2048, 256, 0.0090, 70000, 0.10, -0.4, 1.0),
    "edm2-img512-l": (1792, 2048, 320, 0.0080, 70000, 0.10, -0.4, 1.0),
    "edm2-img512-xl": (1280, 2048, 384, 0.0070, 70000, 0.10, -0.4, 1.0),
    "edm2-img512-xxl": (896, 2048, 448, 0.0065, 70000, 0.10, -0.4, 1.0),
    "edm2-img64-xs": (1024, 2048, 128, 0.0120, 35000, 0.00, -0.8, 1.6),
    "edm2-img64-s": (1024, 2048, 192, 0.0100, 35000, 0.00, -0.8, 1.6),
    "edm2-img64-m": (2048, 2048, 256, 0.0090, 35000, 0.10, -0.8, 1.6),
    "edm2-img64-l": (1024, 2048, 320, 0.0080, 35000, 0.10, -0.8, 1.6),
    "edm2-img64-xl": (640, 2048, 384, 0.0070, 35000, 0.10, -0.8, 1.6),
}
# docs/method.md#presets: duration -> final kimg as in the released file names.
SPEC_FINAL_KIMG = {2048: 2147483, 1792: 1879048, 1280: 1342177, 896: 939524, 1024: 1073741, 640: 671088}


def test_training_presets_match_the_spec_table():
    ablation = [f"edm2-img512-s-config-{c}" for c in "abcdef"]  # tests/train/test_configs.py checks their values
    assert list(TRAINING_PRESETS) == list(SPEC_TRAINING) + ablation
    for name, (dur, batch, channels, lr, decay, dropout, p_mean, p_std) in SPEC_TRAINING.items():
        preset = TRAINING_PRESETS[name]
        assert isinstance(preset, TrainingPreset)
        assert preset == TrainingPreset(dur * Mi, batch, channels, lr, decay, dropout, p_mean, p_std), name
        assert isinstance(preset.duration, int) and isinstance(preset.decay, int)
        assert preset.final_kimg == SPEC_FINAL_KIMG[dur]
    assert TRAINING_PRESETS["edm2-img512-s"].decay_nimg == 143_360_000
    assert TRAINING_PRESETS["edm2-img64-s"].decay_nimg == 71_680_000


def test_training_preset_fields_and_immutability():
    fields = [f.name for f in dataclasses.fields(TrainingPreset)]
    assert fields == [
        "duration", "batch", "channels", "lr", "decay", "dropout", "P_mean", "P_std", "loss_scaling", "config"
    ]  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        TRAINING_PRESETS["edm2-img512-s"].lr = 1.0


def test_network_kwargs_of_training_presets():
    assert network_kwargs("edm2-img512-m") == dict(
        img_resolution=64, img_channels=4, label_dim=1000, model_channels=256, dropout=0.1
    )
    assert network_kwargs("edm2-img64-xs") == dict(
        img_resolution=64, img_channels=3, label_dim=1000, model_channels=128, dropout=0.0
    )
    assert network_kwargs("edm2-img512-s-config-a") == dict(
        img_resolution=64, img_channels=4, label_dim=1000, model_channels=192, dropout=0.1, config="A"
    )
    with pytest.raises(ConfigError, match="edm2-img512-xs"):
        get_training_preset("edm2-img512-xxxl")


def test_model_size_table():
    expected = {  # docs/method.md#unet: model_channels, params img512 (M), params img64 (M)
        "xxs": (64, 31.31, None),
        "xs": (128, 124.71, 124.71),
        "s": (192, 280.21, 280.21),
        "m": (256, 497.81, 497.80),
        "l": (320, 777.50, 777.49),
        "xl": (384, 1119.28, 1119.28),
        "xxl": (448, 1523.16, None),
    }
    assert {k: dataclasses.astuple(v) for k, v in MODEL_SIZES.items()} == expected
    for name, preset in TRAINING_PRESETS.items():
        assert MODEL_SIZES[name.split("-")[2]].model_channels == preset.channels


ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"
# docs/method.md#sampling (the official generate_images.py presets): preset -> (main model, kimg, std), guide or None, guidance, metric, value.
X = "img512-xs-uncond"
SPEC_GENERATION = {
    "edm2-img512-xs-fid": (("img512-xs", 2147483, 0.135), None, 1, "fid", 3.53),
    "edm2-img512-xs-dino": (("img512-xs", 2147483, 0.200), None, 1, "fd_dinov2", 103.39),
    "edm2-img512-s-fid": (("img512-s", 2147483, 0.130), None, 1, "fid", 2.56),
    "edm2-img512-s-dino": (("img512-s", 2147483, 0.190), None, 1, "fd_dinov2", 68.64),
    "edm2-img512-m-fid": (("img512-m", 2147483, 0.100), None, 1, "fid", 2.25),
    "edm2-img512-m-dino": (("img512-m", 2147483, 0.155), None, 1, "fd_dinov2", 58.44),
    "edm2-img512-l-fid": (("img512-l", 1879048, 0.085), None, 1, "fid", 2.06),
    "edm2-img512-l-dino": (("img512-l", 1879048, 0.155), None, 1, "fd_dinov2", 52.25),
    "edm2-img512-xl-fid": (("img512-xl", 1342177, 0.085), None, 1, "fid", 1.96),
    "edm2-img512-xl-dino": (("img512-xl", 1342177, 0.155), None, 1, "fd_dinov2", 45.96),
    "edm2-img512-xxl-fid": (("img512-xxl", 939524, 0.070), None, 1, "fid", 1.91),
    "edm2-img512-xxl-dino": (("img512-xxl", 939524, 0.150), None, 1, "fd_dinov2", 42.84),
    "edm2-img64-s-fid": (("img64-s", 1073741, 0.075), None, 1, "fid", 1.58),
    "edm2-img64-m-fid": (("img64-m", 2147483, 0.060), None, 1, "fid", 1.43),
    "edm2-img64-l-fid": (("img64-l", 1073741, 0.040), None, 1, "fid", 1.33),
    "edm2-img64-xl-fid": (("img64-xl", 671088, 0.040), None, 1, "fid", 1.33),
    "edm2-img512-xs-guid-fid": (("img512-xs", 2147483, 0.045), (X, 2147483, 0.045), 1.40, "fid", 2.91),
    "edm2-img512-xs-guid-dino": (("img512-xs", 2147483, 0.150), (X, 2147483, 0.150), 1.70, "fd_dinov2", 79.94),
    "edm2-img512-s-guid-fid": (("img512-s", 2147483, 0.025), (X, 2147483, 0.025), 1.40, "fid", 2.23),
    "edm2-img512-s-guid-dino": (("img512-s", 2147483, 0.085), (X, 2147483, 0.085), 1.90, "fd_dinov2", 52.32),
    "edm2-img512-m-guid-fid": (("img512-m", 2147483, 0.030), (X, 2147483, 0.030), 1.20, "fid", 2.01),
    "edm2-img512-m-guid-dino": (("img512-m", 2147483, 0.015), (X, 2147483, 0.015), 2.00, "fd_dinov2", 41.98),
    "edm2-img512-l-guid-fid": (("img512-l", 1879048, 0.015), (X, 2147483, 0.015), 1.20, "fid", 1.88),
    "edm2-img512-l-guid-dino": (("img512-l", 1879048, 0.035), (X, 2147483, 0.035), 1.70, "fd_dinov2", 38.20),
    "edm2-img512-xl-guid-fid": (("img512-xl", 1342177, 0.020), (X, 2147483, 0.020), 1.20, "fid", 1.85),
    "edm2-img512-xl-guid-dino": (("img512-xl", 1342177, 0.030), (X, 2147483, 0.030), 1.70, "fd_dinov2", 35.67),
    "edm2-img512-xxl-guid-fid": (("img512-xxl", 939524, 0.015), (X, 2147483, 0.015), 1.20, "fid", 1.81),
    "edm2-img512-xxl-guid-dino": (("img512-xxl", 939524, 0.015), (X, 2147483, 0.015), 1.70, "fd_dinov2", 33.09),
    "edm2-img512-s-autog-fid": (("img512-s", 2147483, 0.070), ("img512-xs", 134217, 0.125), 2.10, "fid", 1.34),
    "edm2-img512-s-autog-dino": (("img512-s", 2147483, 0.120), ("img512-xs", 134217, 0.165), 2.45, "fd_dinov2", 36.67),
    "edm2-img512-xxl-autog-fid": (("img512-xxl", 939524, 0.075), ("img512-m", 268435, 0.155), 2.05, "fid", 1.25),
    "edm2-img512-xxl-autog-dino": (
        ("img512-xxl", 939524, 0.130),
        ("img512-m", 268435, 0.205),
        2.30,
        "fd_dinov2",
        24.18,
    ),
    "edm2-img512-s-uncond-autog-fid": (("img512-s-uncond", 2147483, 0.070), (X, 134217, 0.110), 2.85, "fid", 3.86),
    "edm2-img512-s-uncond-autog-dino": (
        ("img512-s-uncond", 2147483, 0.090),
        (X, 134217, 0.125),
        2.90,
        "fd_dinov2",
        90.39,
    ),
    "edm2-img64-s-autog-fid": (("img64-s", 1073741, 0.045), ("img64-xs", 134217, 0.110), 1.70, "fid", 1.01),
    "edm2-img64-s-autog-dino": (("img64-s", 1073741, 0.105), ("img64-xs", 134217, 0.175), 2.20, "fd_dinov2", 31.85),
    # Guidance interval (arXiv 2404.07724 Table 1; intervals checked in tests/sample/test_guidance_interval.py).
    "edm2-img512-s-interval-fid": (("img512-s", 2147483, 0.025), (X, 2147483, 0.025), 2.10, "fid", 1.68),
    "edm2-img512-s-interval-dino": (("img512-s", 2147483, 0.085), (X, 2147483, 0.085), 3.20, "fd_dinov2", 46.25),
    "edm2-img512-xxl-interval-fid": (("img512-xxl", 939524, 0.015), (X, 2147483, 0.015), 2.00, "fid", 1.40),
    "edm2-img512-xxl-interval-dino": (("img512-xxl", 939524, 0.015), (X, 2147483, 0.015), 2.90, "fd_dinov2", 29.16),
}


def _url(ref):
    model, kimg, std = ref
    return f"{ROOT}edm2-{model}-{kimg:07d}-{std:.3f}.pkl"


def test_generation_presets_match_the_spec_table():
    assert list(GENERATION_PRESETS) == list(SPEC_GENERATION)
    for name, (net, gnet, guidance, metric, value) in SPEC_GENERATION.items():
        preset = GENERATION_PRESETS[name]
        assert isinstance(preset, GenerationPreset)
        assert preset.net == _url(net), name
        assert preset.gnet == (_url(gnet) if gnet else None), name
        assert preset.guidance == guidance and preset.metric == metric and preset.value == value, name
    assert get_generation_preset("edm2-img512-s-autog-fid").guidance == 2.10
    with pytest.raises(ConfigError, match="unknown generation preset"):
        get_generation_preset("edm2-img512-s")


def test_every_url_is_well_formed():
    pattern = re.compile(
        r"https://nvlabs-fi-cdn\.nvidia\.com/edm2/posthoc-reconstructions/"
        r"edm2-(img512-(xxs|xs|s|m|l|xl|xxl)(-uncond)?|img64-(xs|s|m|l|xl))-(\d{7})-(0\.\d{3})\.pkl"
    )
    final_kimgs = set(SPEC_FINAL_KIMG.values()) | {134217, 268435}  # + the 128Mi / 256Mi autoguidance guides
    for name, preset in GENERATION_PRESETS.items():
        for url in (preset.net, preset.gnet):
            if url is None:
                continue
            m = pattern.fullmatch(url)
            assert m, url
            assert int(m.group(5)) in final_kimgs, url
            assert 0 < float(m.group(6)) < 0.289, (
                url
            )  # EMA stds must be below 1/sqrt(12) (docs/method.md#official-details)
        # The main net of a conditional preset is a conditional model of the preset's size.
        assert preset.net.split("/")[-1].startswith(
            name.rsplit("-", 1)[0].replace("-guid", "").replace("-autog", "").replace("-interval", "")
        )
    assert model_url("edm2-img512-xs", 134217, 0.1) == ROOT + "edm2-img512-xs-0134217-0.100.pkl"
