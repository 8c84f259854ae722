"""DINOv2 ViT-L/14 features for FD_DINOv2 through `transformers` (docs/method.md#metrics, #official-details).

The official code loads `dinov2_vitl14` from torch hub; we load the same weights as
`transformers.Dinov2Model` (`facebook/dinov2-large`, or a local folder written by
`save_pretrained`). Pre-processing as docs/method.md#metrics ('torch' mode): fp32, bicubic resize with
antialiasing to 224x224 (no clamping or re-quantisation), /255, ImageNet mean/std. Feature: the
CLS token after the final layer norm, which is `Dinov2Model(...).pooler_output` (1024-d).

One difference between the two implementations is corrected: for inputs smaller than the
518x518 training size, the torch-hub model interpolates its 37x37 position embeddings with
`scale_factor = (16 + 0.1) / 37` (bicubic, no antialias), while transformers asks for the
output size directly, which samples slightly different points. We install the hub's rule.
"""

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from edm2.errors import ConfigError, DownloadError, FormatError
from edm2.io.download import offline

DEFAULT_DINOV2 = "facebook/dinov2-large"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
HUB_INTERPOLATE_OFFSET = 0.1  # torch-hub DINOv2 `interpolate_offset`


def _hub_interpolate_pos_encoding(embeddings_module, embeddings, height, width):
    """Position embeddings for a `height` x `width` input, interpolated as the torch-hub model does."""
    pos = embeddings_module.position_embeddings
    num_patches = embeddings.shape[1] - 1
    num_positions = pos.shape[1] - 1
    if num_patches == num_positions and height == width:
        return pos
    patch = embeddings_module.patch_embeddings.patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
    h0, w0 = height // patch_h, width // patch_w
    m = int(math.sqrt(num_positions))
    dim = pos.shape[-1]
    grid = pos[:, 1:].to(torch.float32).reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = ((h0 + HUB_INTERPOLATE_OFFSET) / m, (w0 + HUB_INTERPOLATE_OFFSET) / m)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(grid.shape[-2:]) != (h0, w0):
        raise FormatError(f"DINOv2 position embedding interpolation gave {list(grid.shape[-2:])}, expected {[h0, w0]}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat([pos[:, :1], grid], dim=1)


def load_dinov2(name_or_path: str = DEFAULT_DINOV2, device="cpu"):
    """Load a `transformers.Dinov2Model` (fp32, eval, frozen) from a hub id or a local folder,
    checking that every weight of the checkpoint matches the model and none is missing."""
    try:
        from transformers import Dinov2Model
    except ImportError:
        raise ConfigError(
            "fd_dinov2 needs the 'transformers' package; install it with: pip install 'edm2[dinov2]'"
        ) from None
    local = Path(str(name_or_path)).expanduser()
    looks_local = local.exists() or str(name_or_path).startswith((".", "/", "~"))
    if looks_local and not (local / "config.json").is_file():
        raise FormatError(
            f"DINOv2 folder {name_or_path} has no config.json; point --dinov2 at a folder written by "
            "Dinov2Model.save_pretrained or at the hub id facebook/dinov2-large"
        )
    kwargs = {"torch_dtype": torch.float32, "output_loading_info": True}
    if not looks_local and os.environ.get("EDM2_CACHE_DIR"):
        kwargs["cache_dir"] = str(Path(os.environ["EDM2_CACHE_DIR"]) / "transformers")
    if not looks_local and (offline() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")):
        kwargs["local_files_only"] = True  # EDM2_OFFLINE / HF_HUB_OFFLINE: the hub cache only
    try:
        model, info = Dinov2Model.from_pretrained(str(local) if looks_local else name_or_path, **kwargs)
    except OSError as e:
        if looks_local:
            raise FormatError(f"cannot load DINOv2 from folder {name_or_path}: {e}") from None
        raise DownloadError(
            f"cannot load DINOv2 {name_or_path!r} from the Hugging Face hub ({e.__class__.__name__}); check the "
            "network, or download it once (Dinov2Model.from_pretrained(...).save_pretrained(DIR)) and pass --dinov2 DIR"
        ) from None
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise FormatError(f"DINOv2 checkpoint {name_or_path} does not match Dinov2Model: {bad}")
    model.embeddings.interpolate_pos_encoding = _hub_interpolate_pos_encoding.__get__(model.embeddings)
    return model.eval().requires_grad_(False).to(device)


class DINOv2Detector(torch.nn.Module):
    """uint8-range [N, 3, H, W] RGB -> [N, D] final-normed CLS features (D = 1024 for ViT-L/14)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.feature_dim = int(model.config.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True
            )  # docs/method.md#metrics
        x = x / 255
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.preprocess(images)).pooler_output.to(torch.float32)
