"""Datasets and encoders (EDM2-SPEC §9, §10).

Names are imported on first use, so `from edm2.data import make_transform` pulls in neither
torch nor diffusers (the convert workers stay light).
"""

import importlib

_EXPORTS = {
    "make_transform": "edm2.data.transforms",
    "StandardRGBEncoder": "edm2.data.encoders",
    "StabilityVAEEncoder": "edm2.data.encoders",
    "make_encoder": "edm2.data.encoders",
    "ImageFolderDataset": "edm2.data.dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edm2.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
