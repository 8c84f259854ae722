"""`edm2 dataset digits`: the embedded demo dataset, scikit-learn's bundled handwritten digits
(1,797 real 8x8 scans, 10 classes, values 0..16), as a labelled PNG folder (or ZIP)."""

import io
import json

import numpy as np
import PIL.Image

from edm2.data.writer import open_dest
from edm2.errors import ConfigError


def digits_images(resolution: int = 16):
    """Return (uint8 images [N, R, R, 3], int labels [N]).

    Values 0..16 -> 0..255 (v * 255 / 16); upscaled from 8x8 with bicubic filtering on the
    float values (PIL, mode 'F'), clipped to [0, 255] and rounded; gray replicated to RGB.
    """
    if resolution < 8 or resolution & (resolution - 1):
        raise ConfigError(f"--resolution must be a power of two >= 8, got {resolution}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("the digits demo needs scikit-learn; install it with: pip install 'edm2[demo]'") from None
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32) * (255 / 16)
    out = np.empty([len(images), resolution, resolution, 3], dtype=np.uint8)
    for i, img in enumerate(images):
        if resolution != 8:
            img = np.asarray(PIL.Image.fromarray(img).resize((resolution,) * 2, PIL.Image.Resampling.BICUBIC))
        out[i] = np.rint(np.clip(img, 0, 255)).astype(np.uint8)[:, :, None]
    return out, np.asarray(digits.target, dtype=np.int64)


def write_digits(dest, resolution: int = 16) -> int:
    """Write DEST/<class>/digit-<index>.png plus dataset.json; returns the number of images.

    Both the folder names and dataset.json carry the labels, so `convert` finds them either way
    (also when DEST is a .zip).
    """
    images, labels = digits_images(resolution)
    entries = []
    with open_dest(dest) as writer:
        for i, (img, label) in enumerate(zip(images, labels)):
            name = f"{label}/digit-{i:04d}.png"
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format="png")
            writer.write(name, buf.getvalue())
            entries.append([name, int(label)])
        writer.write("dataset.json", json.dumps({"labels": entries}).encode())
    return len(images)
