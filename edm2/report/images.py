"""Sample grids: a folder of generated PNGs (as `edm2 generate` writes them) -> one image."""

import math
from pathlib import Path

import numpy as np
from PIL import Image

from edm2.data.limits import open_image, read_file
from edm2.errors import DataError
from edm2.io.atomic import atomic_path


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of images; generate the samples first")
    files = sorted(p for p in folder.rglob("*.png") if p.is_file())
    if not files:
        raise DataError(f"{folder}: no PNG images in it")
    return files


def make_grid(images: list[np.ndarray], columns: int | None = None, min_size: int = 64, pad: int = 2) -> np.ndarray:
    """HWC uint8 images of one size -> a grid (near-square unless `columns` is given), each image
    upscaled by an integer factor (nearest neighbour) to at least `min_size` pixels, separated by
    `pad` white pixels."""
    if not images:
        raise DataError("no images to put in a grid")
    h, w = images[0].shape[:2]
    images = [img[:, :, None] if img.ndim == 2 else img for img in images]
    channels = max(img.shape[2] for img in images)
    for img in images:
        if img.shape[:2] != (h, w):
            raise DataError(f"images of different sizes ({img.shape[1]}x{img.shape[0]} vs {w}x{h}) cannot share a grid")
    images = [np.repeat(img, channels, axis=2) if img.shape[2] == 1 else img[:, :, :channels] for img in images]
    scale = max(1, math.ceil(min_size / max(h, w)))
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    sh, sw = h * scale, w * scale
    grid = np.full((rows * sh + (rows + 1) * pad, columns * sw + (columns + 1) * pad, channels), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        big = img.repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = pad + r * (sh + pad), pad + c * (sw + pad)
        grid[y : y + sh, x : x + sw] = big
    return grid


def save_grid(folder, out, columns: int | None = None, min_size: int = 64) -> Path:
    """Read every PNG under `folder` (sorted by name) and write their grid to `out` (PNG)."""
    images = []
    for path in list_images(folder):
        try:  # bounded: a regular file, its header's size checked before decoding
            with open_image(read_file(path, str(path)), str(path)) as im:
                images.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
        except OSError as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
    grid = make_grid(images, columns=columns, min_size=min_size)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(grid.squeeze(2) if grid.shape[2] == 1 else grid).save(tmp, format="PNG")
    return out
