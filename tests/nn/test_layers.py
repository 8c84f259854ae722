"""Magnitude-preserving building blocks (docs/method.md#mp-layers) against closed forms and hand values."""

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import torch

from edm2.nn import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- normalize (docs/method.md#mp-layers, #official-details) ----------------------------------------------------------------


def test_normalize_gives_unit_rms_per_slice():
    x = (
        torch.randn(5, 3, 4, 6, generator=_gen(), dtype=torch.float64)
        * torch.tensor([0.1, 1, 10, 100, 1000.0])[:, None, None, None].double()
    )
    y = normalize(x)
    rms = y.square().mean(dim=[1, 2, 3]).sqrt()
    # Each slice: ||x||/sqrt(K) = r  ->  y RMS = r / (eps + r).
    r = x.square().mean(dim=[1, 2, 3]).sqrt()
    torch.testing.assert_close(rms, r / (1e-4 + r), rtol=1e-14, atol=0)


def test_normalize_eps_is_added_to_the_rms_not_the_l2_norm():
    # A constant slice c * ones(K): ||x|| = |c| sqrt(K), so normalize(x) = c / (eps + |c|).
    K, c, eps = 400, 0.003, 1e-4
    x = torch.full([1, K], c, dtype=torch.float64)
    expected = c / (eps + c)
    torch.testing.assert_close(normalize(x), torch.full_like(x, expected), rtol=1e-15, atol=0)
    eps_on_l2_norm = c / ((eps + c * np.sqrt(K)) / np.sqrt(K))  # the placement the official normalize() does not use
    assert abs(expected - eps_on_l2_norm) > 1e-2
    # A custom eps and a zero slice (0 / eps = 0, no NaN).
    torch.testing.assert_close(normalize(x, eps=0.5), torch.full_like(x, c / (0.5 + c)), rtol=1e-15, atol=0)
    assert normalize(torch.zeros(2, 3)).eq(0).all()


def test_normalize_dim_argument_normalizes_along_that_axis_only():
    x = torch.randn(2, 8, 3, 3, generator=_gen(1), dtype=torch.float64)
    y = normalize(x, dim=1)  # pixel norm
    r = x.square().mean(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(y, x / (1e-4 + r), rtol=1e-14, atol=0)


def test_normalize_reduces_fp16_input_in_fp32_and_divides_by_an_fp16_denominator():
    # ||x|| = 1000 * sqrt(16384) = 128000 overflows fp16 (max 65504): an fp16 norm would be inf
    # and the output 0; the fp32 norm gives RMS 1000 and an output of 1.
    x = torch.full([1, 16384], 1000.0, dtype=torch.float16)
    y = normalize(x)
    assert y.dtype == torch.float16
    d = torch.tensor(1e-4 + 1000.0, dtype=torch.float32).to(torch.float16)  # denominator rounded to fp16
    assert torch.equal(y, x / d)
    assert (y - 1).abs().max() < 1e-2


def test_normalize_keeps_float64():
    x = torch.randn(3, 7, generator=_gen(2), dtype=torch.float64)
    y = normalize(x)
    assert y.dtype == torch.float64
    expected = x.numpy() / (1e-4 + np.sqrt((x.numpy() ** 2).mean(axis=1, keepdims=True)))
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-15)


# --- mp_silu, mp_sum, mp_cat (docs/method.md#mp-layers) ----------------------------------------------------


def test_mp_silu_uses_the_literal_0596_and_preserves_unit_magnitude():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(mp_silu(x), x * torch.sigmoid(x) / 0.596, rtol=1e-15, atol=0)
    # E[silu(z)^2], z ~ N(0, 1), by quadrature: RMS 0.59647 (the often-quoted "0.59634" is slightly
    # off; the code uses the literal 0.596 either way), so mp_silu has RMS 1.0008 on N(0, 1).
    second_moment = scipy.integrate.quad(
        lambda z: (z * scipy.special.expit(z)) ** 2 * np.exp(-(z**2) / 2) / np.sqrt(2 * np.pi), -np.inf, np.inf
    )[0]
    assert abs(np.sqrt(second_moment) - 0.59647) < 1e-5
    z = torch.randn(1_000_000, generator=_gen(3), dtype=torch.float64)
    rms = mp_silu(z).square().mean().sqrt().item()
    assert abs(rms - np.sqrt(second_moment) / 0.596) < 2e-3


@pytest.mark.parametrize("t, divisor", [(0.5, 0.70710678), (0.3, 0.76157731), (0.8, np.sqrt(0.68))])
def test_mp_sum_matches_hand_values_and_preserves_unit_variance(t, divisor):
    a = torch.randn(400_000, generator=_gen(4), dtype=torch.float64)
    b = torch.randn(400_000, generator=_gen(5), dtype=torch.float64)
    y = mp_sum(a, b, t)
    torch.testing.assert_close(y, ((1 - t) * a + t * b) / divisor, rtol=1e-7, atol=1e-7)
    assert abs(y.var().item() - 1) < 1e-2
    assert mp_sum(torch.ones(3), torch.ones(3), 0.5).sub(np.sqrt(2)).abs().max() < 1e-6


def test_mp_cat_weights_match_the_spec_example_and_preserve_magnitude():
    a = torch.ones(2, 768, 3, dtype=torch.float64)
    b = torch.ones(2, 576, 3, dtype=torch.float64)
    y = mp_cat(a, b, t=0.5)
    assert y.shape == (2, 768 + 576, 3)
    np.testing.assert_allclose(y[0, 0, 0].item(), 0.935414, atol=1e-6)  # a first ...
    np.testing.assert_allclose(y[0, 768, 0].item(), 1.080123, atol=1e-6)  # ... then b
    # Unit-RMS inputs give a unit-RMS output for any t (mean square = C^2((1-t)^2+t^2)/(Na+Nb) = 1).
    for t in (0.2, 0.5, 0.7):
        torch.testing.assert_close(mp_cat(a, b, t=t).square().mean(), torch.tensor(1.0, dtype=torch.float64))
    # Equal widths at t = 0.5: both weights exactly 1.
    c = torch.randn(1, 4, 2, generator=_gen(6))
    assert torch.equal(mp_cat(c, 2 * c), torch.cat([c, 2 * c], dim=1))
    assert torch.equal(mp_cat(c, c, dim=2), torch.cat([c, c], dim=2))


# --- MPFourier (docs/method.md#mp-layers) ---------------------------------------------------------------------


def test_mp_fourier_buffers_are_drawn_freqs_then_phases():
    torch.manual_seed(123)
    layer = MPFourier(16, bandwidth=2)
    torch.manual_seed(123)
    freqs = 2 * np.pi * torch.randn(16) * 2
    phases = 2 * np.pi * torch.rand(16)
    assert torch.equal(layer.freqs, freqs) and torch.equal(layer.phases, phases)
    assert [n for n, _ in layer.named_buffers()] == ["freqs", "phases"]
    assert list(layer.parameters()) == []


def test_mp_fourier_output_is_sqrt2_cos_and_unit_rms():
    layer = MPFourier(4096)
    x = torch.tensor([-1.5, 0.0, 0.25, 2.0])
    y = layer(x)
    expected = np.sqrt(2) * np.cos(np.outer(x.numpy(), layer.freqs.numpy()) + layer.phases.numpy())
    np.testing.assert_allclose(y.numpy(), expected, rtol=2e-4, atol=2e-4)
    assert abs(y.square().mean().item() - 1) < 0.05  # sqrt(2) cos of a uniform phase has unit RMS
    y16 = layer(x.half())
    assert y16.dtype == torch.float16
    assert torch.equal(y16, y.half())  # computed in fp32, cast back


# --- MPConv (docs/method.md#mp-layers, #official-details-14.4) ------------------------------------------------------------


def _reference_weight(w, gain, times=1, eps=1e-4):
    """normalize() applied `times` times per output channel, then MP scaling, in float64 numpy."""
    w = w.detach().double().numpy().reshape(w.shape[0], -1)
    for _ in range(times):
        w = w / (eps + np.sqrt((w**2).mean(axis=1, keepdims=True)))
    return w * gain / np.sqrt(w.shape[1])


def test_mpconv_weight_shapes_no_bias_and_standard_normal_init():
    torch.manual_seed(7)
    conv = MPConv(3, 5, kernel=[3, 3])
    torch.manual_seed(7)
    assert torch.equal(conv.weight, torch.randn(5, 3, 3, 3))
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    assert MPConv(3, 5, kernel=[]).weight.shape == (5, 3)
    assert MPConv(3, 5, kernel=[1, 1]).weight.shape == (5, 3, 1, 1)


def test_mpconv_eval_is_a_conv_with_normalized_scaled_weights_and_leaves_weights_alone():
    conv = MPConv(3, 4, kernel=[3, 3]).double().eval()
    before = conv.weight.detach().clone()
    x = torch.randn(2, 3, 5, 5, generator=_gen(8), dtype=torch.float64)
    y = conv(x, gain=0.7)
    w = torch.from_numpy(_reference_weight(before, 0.7)).reshape(4, 3, 3, 3)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-13, atol=1e-13)
    assert torch.equal(conv.weight, before)
    # 1x1 kernel: zero padding; linear: x @ w^T.
    conv1 = MPConv(3, 4, kernel=[1, 1]).double().eval()
    w1 = torch.from_numpy(_reference_weight(conv1.weight, 1)).reshape(4, 3, 1, 1)
    torch.testing.assert_close(conv1(x), torch.nn.functional.conv2d(x, w1), rtol=1e-13, atol=1e-13)
    lin = MPConv(6, 2, kernel=[]).double().eval()
    v = torch.randn(4, 6, generator=_gen(9), dtype=torch.float64)
    torch.testing.assert_close(lin(v), v @ torch.from_numpy(_reference_weight(lin.weight, 1)).T, rtol=1e-13, atol=0)


def test_mpconv_preserves_unit_magnitude_and_scales_by_gain():
    lin = MPConv(512, 256, kernel=[]).eval()
    x = torch.randn(8192, 512, generator=_gen(10))
    with torch.no_grad():
        assert abs(lin(x).var().item() - 1) < 0.02
        assert abs(lin(x, gain=3.0).var().item() - 9) < 0.2
        assert lin(x, gain=0).eq(0).all()


def test_forced_weight_normalisation_rewrites_weights_only_in_training_and_normalizes_twice():
    torch.manual_seed(11)
    conv = MPConv(3, 4, kernel=[3, 3]).double()
    w_old = conv.weight.detach().clone()
    x = torch.randn(1, 3, 4, 4, generator=_gen(12), dtype=torch.float64)

    conv.eval()
    conv(x)
    assert torch.equal(conv.weight, w_old)  # eval: untouched

    conv.train()
    y = conv(x, gain=1.5)
    once = torch.from_numpy(_reference_weight(w_old, np.sqrt(w_old[0].numel()), times=1)).reshape(w_old.shape)
    torch.testing.assert_close(conv.weight.detach(), once, rtol=1e-14, atol=0)  # rewritten in place
    twice = torch.from_numpy(_reference_weight(w_old, 1.5, times=2)).reshape(w_old.shape)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, twice, padding=1), rtol=1e-13, atol=1e-13)
    # normalize(normalize(w)) is not normalize(w): every row shrinks by another (1 - eps)-ish factor.
    once_scaled = torch.from_numpy(_reference_weight(w_old, 1.5, times=1)).reshape(w_old.shape)
    assert not torch.allclose(y, torch.nn.functional.conv2d(x, once_scaled, padding=1), rtol=1e-6, atol=0)


def test_forced_weight_normalisation_with_fp16_weights_computes_on_the_old_copy():
    torch.manual_seed(13)
    conv = MPConv(4, 3, kernel=[]).half().train()
    w_old = conv.weight.detach().clone()
    x = torch.randn(2, 4, generator=_gen(14))
    y = conv(x)  # fp16 weight: the fp32 view is a copy, so the forward normalises only once
    expected = x.double() @ torch.from_numpy(_reference_weight(w_old.float(), 1)).T
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)
    rewritten = torch.from_numpy(_reference_weight(w_old.float(), 2.0)).half()  # sqrt(fan_in) = 2
    torch.testing.assert_close(conv.weight.detach(), rewritten, rtol=1e-3, atol=1e-3)


def test_training_gradient_is_projected_orthogonal_to_the_weight():
    # d/dw normalize(w) is a projection: the gradient of each row is (nearly) orthogonal to it.
    conv = MPConv(8, 5, kernel=[]).double().train()
    x = torch.randn(16, 8, generator=_gen(15), dtype=torch.float64)
    conv(x).pow(3).sum().backward()
    w, g = conv.weight.detach(), conv.weight.grad
    cosine = (w * g).sum(dim=1) / (w.norm(dim=1) * g.norm(dim=1))
    assert cosine.abs().max() < 1e-3


def test_mpconv_gain_tensor_is_differentiable():
    lin = MPConv(4, 2, kernel=[]).double().eval()
    gain = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, generator=_gen(16), dtype=torch.float64)
    y = lin(x, gain=gain)
    y.sum().backward()
    torch.testing.assert_close(gain.grad, (y / 0.5).sum().detach())


# --- resample (docs/method.md#mp-layers) ------------------------------------------------------------------------


def test_resample_down_is_2x2_average_and_up_is_nearest():
    x = torch.randn(2, 3, 6, 8, generator=_gen(17), dtype=torch.float64)
    assert resample(x, mode="keep") is x
    torch.testing.assert_close(resample(x, mode="down"), torch.nn.functional.avg_pool2d(x, 2), rtol=1e-15, atol=0)
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(resample(x, mode="up"), up, rtol=1e-15, atol=0)
    assert resample(x.float(), mode="down").dtype == torch.float32


def test_resample_filters_made_under_inference_mode_serve_autograd_later():
    from edm2.nn.layers import _FILTERS, resample

    _FILTERS.clear()
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        resample(x, (1, 1), "down")  # the filter is made and cached here
    y = x.clone().requires_grad_(True)
    resample(y, (1, 1), "down").sum().backward()  # and used by a forward that autograd records
    assert torch.allclose(y.grad, torch.full_like(y, 0.25))
