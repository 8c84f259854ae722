"""Helpers of the data tests: tiny images and datasets written directly with PIL/zipfile."""

import io
import json
import zipfile

import numpy as np
import PIL.Image


def png_bytes(arr, **kwargs) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format="png", **kwargs)
    return buf.getvalue()


def random_rgb(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_tree(root, files: dict):
    """files: relative name -> bytes | ndarray (saved as PNG) | dict (saved as JSON)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, np.ndarray):
            content = png_bytes(content)
        elif isinstance(content, dict):
            content = json.dumps(content).encode()
        path.write_bytes(content)
    return root


def write_zip(path, files: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, content in files.items():
            if isinstance(content, np.ndarray):
                content = png_bytes(content)
            elif isinstance(content, dict):
                content = json.dumps(content).encode()
            z.writestr(name, content)
    return path
