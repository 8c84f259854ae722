"""File names of the official dataset format (EDM2-SPEC §10): which files are images, and how
output files are named. Light on imports, so convert workers stay small."""

import os

import PIL.Image


def file_ext(name) -> str:
    """Lower-cased extension with the dot, '' if none."""
    return os.path.splitext(str(name))[1].lower()


def pil_extensions() -> set:
    """Every extension PIL can open (after registering all its plugins)."""
    PIL.Image.init()
    return set(PIL.Image.EXTENSION)


def is_image_name(name) -> bool:
    """§10.2: an input image of `convert` is a file whose lower-cased extension PIL knows."""
    return file_ext(name) in pil_extensions()


def out_name(idx: int, pattern: str) -> str:
    """§10.2 naming: s = f'{idx:08d}', file s[:5]/<pattern with s> (1000 files per folder)."""
    s = f"{idx:08d}"
    return f"{s[:5]}/{pattern.format(s)}"
