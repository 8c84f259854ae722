"""Resize/crop transforms of `edm2 dataset convert`, pixel-exact with the official dataset tool
(docs/method.md#datasets). `make_transform` takes and returns HWC uint8 RGB arrays (None = skip the
image); `make_pil_transform` is the same on PIL images, which the converter uses to save copies.
Cropping a PIL image gives the same pixels as slicing the array, so both agree exactly."""

import functools

import numpy as np
import PIL.Image

from edm2.errors import ConfigError

TRANSFORMS = ("none", "center-crop", "center-crop-wide", "center-crop-dhariwal")
LANCZOS = PIL.Image.Resampling.LANCZOS
BOX = PIL.Image.Resampling.BOX
BICUBIC = PIL.Image.Resampling.BICUBIC


def _scale(width, height, img):
    """none: LANCZOS resize to the given resolution if it differs, else unchanged (docs/method.md#datasets)."""
    w, h = img.size
    if (width is None or width == w) and (height is None or height == h):
        return img
    return img.resize((width or w, height or h), LANCZOS)


def _center_crop(width, height, img):
    """center-crop: central min(H, W) square, LANCZOS to (width, height) (docs/method.md#datasets)."""
    w, h = img.size
    s = min(h, w)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    return img.resize((width, height), LANCZOS)


def _center_crop_wide(width, height, img):
    """center-crop-wide: crop rows to the output aspect ratio, LANCZOS, paste into a black
    width x width canvas at row (width - height)//2; None if the image is too small (docs/method.md#datasets)."""
    w, h = img.size
    ch = int(np.round(width * h / w))  # round half to even, like the reference
    if w < width or ch < height:
        return None
    img = img.crop((0, (h - ch) // 2, w, (h + ch) // 2)).resize((width, height), LANCZOS)
    canvas = PIL.Image.new(img.mode, (width, width))  # black
    canvas.paste(img, (0, (width - height) // 2))
    return canvas


def _center_crop_dhariwal(size, img):
    """center-crop-dhariwal (ADM): BOX-halve while min side >= 2*size, BICUBIC so the short side
    is `size`, then crop size x size at ((h - size)//2, (w - size)//2) (docs/method.md#datasets)."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=BOX)
    f = size / min(img.size)
    img = img.resize(tuple(round(x * f) for x in img.size), resample=BICUBIC)
    w, h = img.size
    x, y = (w - size) // 2, (h - size) // 2
    return img.crop((x, y, x + size, y + size))


def make_pil_transform(name, width, height):
    """Return `transform(PIL image) -> PIL image or None` for `name` in TRANSFORMS (None = 'none')."""
    if name in (None, "none"):
        return functools.partial(_scale, width, height)
    if name not in TRANSFORMS:
        raise ConfigError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    if width is None or height is None:
        raise ConfigError(f"transform {name} needs an output size; pass --resolution WxH")
    if width < 1 or height < 1:
        raise ConfigError(f"output size {width}x{height} must be positive")
    if name == "center-crop":
        return functools.partial(_center_crop, width, height)
    if name == "center-crop-wide":
        if height > width:
            raise ConfigError(f"center-crop-wide letterboxes into a square of the width; {width}x{height} is taller")
        return functools.partial(_center_crop_wide, width, height)
    if width != height:
        raise ConfigError(f"center-crop-dhariwal needs a square output, got {width}x{height}")
    return functools.partial(_center_crop_dhariwal, width)


def _on_arrays(pil_transform, img):
    out = pil_transform(PIL.Image.fromarray(img))
    return None if out is None else np.array(out)


def make_transform(name, width, height):
    """Return `transform(img_hwc_uint8) -> array or None` for `name` in TRANSFORMS (None = 'none').

    `width`/`height` are the output size; 'none' also accepts None for "keep the size".
    """
    return functools.partial(_on_arrays, make_pil_transform(name, width, height))
