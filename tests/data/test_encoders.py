"""Encoders (docs/method.md#encoders): constants, value ranges, sampling, config round trip."""

import pickle
import types

import numpy as np
import pytest
import torch

from edm2.data import StabilityVAEEncoder, StandardRGBEncoder
from edm2.data.encoders import make_encoder
from edm2.errors import ConfigError, FormatError

# ---- StandardRGBEncoder ----------------------------------------------------------------------


def test_rgb_encode_pixels_is_identity_and_keeps_uint8():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    y = StandardRGBEncoder().encode_pixels(x)
    assert y.dtype == torch.uint8 and torch.equal(y, x)


def test_rgb_encode_latents_maps_0_255_to_minus1_plus1():
    x = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 5)
    y = StandardRGBEncoder().encode_latents(x)
    assert y.dtype == torch.float32
    expected = np.array([0, 1, 127, 128, 255], dtype=np.float32) / np.float32(127.5) - np.float32(1)
    np.testing.assert_array_equal(y.numpy().ravel(), expected)


def test_rgb_decode_inverts_encode_for_every_value():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    enc = StandardRGBEncoder()
    assert torch.equal(enc.decode(enc.encode_latents(x)), x)


def test_rgb_decode_rounds_to_nearest_and_clips():
    # value v in latent space -> v*127.5 + 128, clipped, truncated: 0.4 -> 179.0 -> 179; 0.41 -> 180.275 -> 180
    x = torch.tensor([-2.0, -1.0, 0.0, 0.4, 0.41, 1.0, 3.0]).reshape(1, 1, 1, 7)
    y = StandardRGBEncoder().decode(x)
    assert y.dtype == torch.uint8
    assert y.ravel().tolist() == [0, 0, 128, 179, 180, 255, 255]


# ---- StabilityVAEEncoder constants and config -----------------------------------------------


def test_vae_scale_and_bias_match_the_spec():
    enc = StabilityVAEEncoder()
    np.testing.assert_allclose(enc.scale, [0.11990407, 0.10822511, 0.13477089, 0.15243903], rtol=1e-6)
    np.testing.assert_allclose(enc.bias, [-0.69664264, -0.3517316, -0.01617251, 0.32774392], rtol=1e-6)
    assert enc.scale.dtype == np.float32 and enc.bias.dtype == np.float32
    assert enc.batch_size == 8 and enc.vae_name == "stabilityai/sd-vae-ft-mse"


def test_config_round_trips_through_make_encoder():
    enc = StabilityVAEEncoder(vae_name="some/vae", final_std=0.7, batch_size=3)
    cfg = enc.config()
    assert cfg["class"] == "StabilityVAEEncoder"
    assert cfg["raw_mean"] == pytest.approx([5.81, 3.25, 0.12, -2.15])
    again = make_encoder(cfg)
    assert again.config() == cfg
    np.testing.assert_array_equal(again.scale, enc.scale)
    assert make_encoder({"class": "StandardRGBEncoder"}).config() == {"class": "StandardRGBEncoder"}


@pytest.mark.parametrize(
    "cfg",
    [{}, {"class": "Pickle"}, {"class": "StandardRGBEncoder", "x": 1}, {"class": "StabilityVAEEncoder", "nope": 1}],
)
def test_make_encoder_rejects_bad_configs(cfg):
    with pytest.raises(ConfigError):
        make_encoder(cfg)


def test_vae_is_not_loaded_at_construction_and_not_pickled(tiny_vae_dir):
    enc = StabilityVAEEncoder(vae_name=str(tiny_vae_dir))
    assert enc._vae is None
    enc.init("cpu")
    assert enc._vae is not None
    again = pickle.loads(pickle.dumps(enc))
    assert again._vae is None and again.config() == enc.config()


def test_folder_without_config_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="config.json"):
        StabilityVAEEncoder(vae_name=str(tmp_path)).init("cpu")


# ---- StabilityVAEEncoder with a tiny random VAE ---------------------------------------------


def test_encode_pixels_gives_8_channels_at_one_eighth_from_0_1_input(tiny_vae_dir):
    from diffusers import AutoencoderKL

    enc = StabilityVAEEncoder(vae_name=str(tiny_vae_dir), batch_size=2)
    x = torch.randint(0, 256, (5, 3, 32, 16), dtype=torch.uint8)
    y = enc.encode_pixels(x)
    assert y.shape == (5, 8, 4, 2) and y.dtype == torch.float32
    # Independent answer: the diffusers posterior of x/255 (input range [0, 1]), all at once.
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    with torch.no_grad():
        post = vae.encode(x.float() / 255).latent_dist
    torch.testing.assert_close(y[:, :4], post.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[:, 4:], torch.exp(0.5 * post.logvar), rtol=1e-4, atol=1e-5)
    assert (y[:, 4:] > 0).all()


def test_encode_latents_samples_the_posterior_and_normalises(tiny_vae_dir):
    enc = StabilityVAEEncoder(vae_name=str(tiny_vae_dir))
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1).expand(1, 4, 128, 128)
    std = torch.tensor([0.5, 2.0, 1.0, 0.1]).reshape(1, 4, 1, 1).expand(1, 4, 128, 128)
    x = torch.cat([mean, std], dim=1)
    torch.manual_seed(1)
    z = enc.encode_latents(x)
    assert z.shape == (1, 4, 128, 128) and z.dtype == torch.float32
    scale, bias = torch.tensor(enc.scale), torch.tensor(enc.bias)
    want_mean = torch.tensor([1.0, -2.0, 0.5, 3.0]) * scale + bias
    want_std = torch.tensor([0.5, 2.0, 1.0, 0.1]) * scale
    n = 128 * 128
    got_mean, got_std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    assert torch.all((got_mean - want_mean).abs() < 5 * want_std / n**0.5)  # 5 sigma of the sample mean
    torch.testing.assert_close(got_std, want_std, rtol=0.03, atol=0)
    assert not torch.equal(enc.encode_latents(x), z)  # a fresh sample every call
    torch.manual_seed(1)
    assert torch.equal(enc.encode_latents(x), z)  # drawn with randn_like from the global RNG


def test_encode_latents_with_zero_std_is_the_normalised_mean():
    enc = StabilityVAEEncoder()
    mean = torch.randn(2, 4, 3, 3)
    z = enc.encode_latents(torch.cat([mean, torch.zeros_like(mean)], dim=1))
    want = mean * torch.tensor(enc.scale).reshape(1, 4, 1, 1) + torch.tensor(enc.bias).reshape(1, 4, 1, 1)
    torch.testing.assert_close(z, want)


def test_decode_shape_dtype_and_range(tiny_vae_dir):
    enc = StabilityVAEEncoder(vae_name=str(tiny_vae_dir), batch_size=2)
    y = enc.decode(torch.randn(3, 4, 4, 4) * 5)
    assert y.shape == (3, 3, 32, 32) and y.dtype == torch.uint8


def test_decode_unnormalises_clamps_0_1_and_truncates():
    enc = StabilityVAEEncoder(batch_size=2)
    seen = []

    def fake_decode(z):  # stands in for the VAE decoder: records its input, returns fixed pixels
        seen.append(z.clone())
        values = torch.tensor([-0.5, 0.0, 0.5, 0.9999, 1.5, 254.6 / 255])
        return types.SimpleNamespace(sample=values.reshape(1, 1, 1, 6).expand(z.shape[0], 3, 1, 6))

    enc._vae = types.SimpleNamespace(decode=fake_decode, to=lambda device: None)
    final = torch.randn(3, 4, 1, 6)
    out = enc.decode(final)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 1, 6)
    # clamp [0, 1], x255, truncating cast: 0.9999*255 = 254.97 -> 254, 254.6/255*255 -> 254
    assert out[0, 0, 0].tolist() == [0, 0, 127, 254, 255, 254]
    assert [s.shape[0] for s in seen] == [2, 1]  # micro-batches of batch_size
    raw = torch.cat(seen)
    scale, bias = torch.tensor(enc.scale).reshape(1, 4, 1, 1), torch.tensor(enc.bias).reshape(1, 4, 1, 1)
    torch.testing.assert_close(raw, (final - bias) / scale)
