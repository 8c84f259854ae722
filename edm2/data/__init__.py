"""Datasets and encoders (docs/method.md#encoders, #datasets).

Names are imported on first use, so `from edm2.data import make_transform` pulls in neither
torch nor diffusers (the convert workers stay light).
"""

from edm2.utils import lazy_exports

_EXPORTS = {
    "make_transform": "edm2.data.transforms",
    "StandardRGBEncoder": "edm2.data.encoders",
    "StabilityVAEEncoder": "edm2.data.encoders",
    "make_encoder": "edm2.data.encoders",
    "ImageFolderDataset": "edm2.data.dataset",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
