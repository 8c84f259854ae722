"""Convert transforms (docs/method.md#datasets) against hand-computed crops and step-by-step PIL calls."""

import numpy as np
import PIL.Image
import pytest

from edm2.data import make_transform
from edm2.errors import ConfigError

L, BOX, BIC = PIL.Image.Resampling.LANCZOS, PIL.Image.Resampling.BOX, PIL.Image.Resampling.BICUBIC


def img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pil_resize(a, size, resample):
    return np.array(PIL.Image.fromarray(a).resize(size, resample))


# ---- none ------------------------------------------------------------------------------------


def test_none_keeps_image_without_resolution_or_at_same_size():
    a = img(7, 9)
    np.testing.assert_array_equal(make_transform(None, None, None)(a), a)
    np.testing.assert_array_equal(make_transform("none", 9, 7)(a), a)


def test_none_resizes_with_lanczos():
    a = img(7, 9)
    out = make_transform(None, 4, 5)(a)
    assert out.shape == (5, 4, 3)
    np.testing.assert_array_equal(out, pil_resize(a, (4, 5), L))


# ---- center-crop -----------------------------------------------------------------------------


def test_center_crop_offsets_on_odd_sizes():
    # Output = crop size, so the LANCZOS resize is the identity and we see the crop itself.
    a = img(5, 8)  # s = 5: cols [(8-5)//2, (8+5)//2) = [1, 6)
    np.testing.assert_array_equal(make_transform("center-crop", 5, 5)(a), a[:, 1:6])
    b = img(10, 7)  # s = 7: rows [(10-7)//2, (10+7)//2) = [1, 8)
    np.testing.assert_array_equal(make_transform("center-crop", 7, 7)(b), b[1:8])
    c = img(9, 4)  # s = 4: rows [2, 6)
    np.testing.assert_array_equal(make_transform("center-crop", 4, 4)(c), c[2:6])


@pytest.mark.parametrize("h,w", [(37, 23), (23, 37), (64, 101), (33, 33)])
def test_center_crop_resizes_the_crop_with_lanczos(h, w):
    a = img(h, w, seed=h * w)
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    want = pil_resize(a[y : y + s, x : x + s], (16, 16), L)
    np.testing.assert_array_equal(make_transform("center-crop", 16, 16)(a), want)


def test_center_crop_to_non_square_output():
    a = img(30, 40)
    want = pil_resize(a[:, 5:35], (12, 8), L)
    np.testing.assert_array_equal(make_transform("center-crop", 12, 8)(a), want)


# ---- center-crop-wide ------------------------------------------------------------------------


def test_center_crop_wide_letterboxes_into_a_square():
    a = img(9, 10)  # out 10x6: ch = round(10*9/10) = 9 rows [0, 9), resized to 10x6, rows [2, 8) of 10x10
    out = make_transform("center-crop-wide", 10, 6)(a)
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[2:8], pil_resize(a[0:9], (10, 6), L))
    assert not out[:2].any() and not out[8:].any()


def test_center_crop_wide_rounds_half_to_even():
    a = img(5, 8)  # out 4x2: ch = round(4*5/8) = round(2.5) = 2 (not 3): rows [(5-2)//2, (5+2)//2) = [1, 3)
    out = make_transform("center-crop-wide", 4, 2)(a)
    np.testing.assert_array_equal(out[1:3], pil_resize(a[1:3], (4, 2), L))
    assert not out[0].any() and not out[3].any()


def test_center_crop_wide_odd_margin():
    a = img(21, 31)  # out 7x4: ch = round(7*21/31) = round(4.74) = 5 rows [8, 13); canvas rows [(7-4)//2, +4) = [1, 5)
    out = make_transform("center-crop-wide", 7, 4)(a)
    assert out.shape == (7, 7, 3)
    np.testing.assert_array_equal(out[1:5], pil_resize(a[8:13], (7, 4), L))
    assert not out[0].any() and not out[5:].any()


def test_center_crop_wide_skips_small_images():
    t = make_transform("center-crop-wide", 16, 8)
    assert t(img(20, 15)) is None  # narrower than the output
    assert t(img(7, 16)) is None  # ch = round(16*7/16) = 7 < 8
    assert t(img(8, 16)) is not None


# ---- center-crop-dhariwal --------------------------------------------------------------------


def test_dhariwal_halves_with_box_then_bicubic_then_crops():
    a = img(375, 500)  # min 375 >= 128: 250x187; 187 >= 128: 125x93; 93 < 128 stop
    step = pil_resize(pil_resize(a, (250, 187), BOX), (125, 93), BOX)
    step = pil_resize(step, (86, 64), BIC)  # f = 64/93: round(125*64/93) = round(86.02) = 86
    want = step[0:64, 11:75]  # x offset (86-64)//2 = 11
    np.testing.assert_array_equal(make_transform("center-crop-dhariwal", 64, 64)(a), want)


def test_dhariwal_odd_sizes():
    a = img(131, 129)  # min 129 >= 128: halve to 64x65 (w x h); 64 < 128 stop; f = 1 -> (64, 65) bicubic
    step = pil_resize(a, (64, 65), BOX)
    step = pil_resize(step, (64, 65), BIC)
    np.testing.assert_array_equal(make_transform("center-crop-dhariwal", 64, 64)(a), step[0:64, 0:64])
    b = img(41, 77)  # 41 >= 32: BOX to 38x20; f = 16/20: (round(30.4), 16) = (30, 16); x offset 7
    want = pil_resize(pil_resize(b, (38, 20), BOX), (30, 16), BIC)[:, 7:23]
    np.testing.assert_array_equal(make_transform("center-crop-dhariwal", 16, 16)(b), want)


def test_dhariwal_upscales_small_images():
    a = img(10, 12)  # f = 16/10: (round(19.2), 16) = (19, 16); x offset 1
    want = pil_resize(a, (19, 16), BIC)[:, 1:17]
    np.testing.assert_array_equal(make_transform("center-crop-dhariwal", 16, 16)(a), want)


# ---- option errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,w,h",
    [
        ("bogus", 8, 8),
        ("center-crop", None, None),
        ("center-crop-dhariwal", 16, 8),
        ("center-crop-wide", 8, 16),
        ("center-crop-wide", None, 8),
    ],
)
def test_bad_options_are_config_errors(name, w, h):
    with pytest.raises(ConfigError):
        make_transform(name, w, h)
