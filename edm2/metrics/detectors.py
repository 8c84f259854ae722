"""Feature detectors by metric name (docs/method.md#metrics): `fid` (Inception-v3 of TF 2015-12-05),
`fd_dinov2` (DINOv2 ViT-L/14) and `fd_cnn` (a small dataset-trained CNN, see `edm2.metrics.cnn`).

Every detector maps uint8-range RGB images [N, C, H, W] to float32 features [N, D]. Grayscale
images are repeated to 3 channels for `fid` and `fd_dinov2`, as the official code does.
Detectors are cached per (metric, location, device) within a process.
"""

import dataclasses
import hashlib
import zipfile

import torch

from edm2.data.limits import check_zip_member
from edm2.errors import ConfigError, DataError, FormatError, one_line
from edm2.io.download import resolve_path
from edm2.io.files import open_regular
from edm2.metrics.cnn import load_detector as load_cnn
from edm2.metrics.dinov2 import DEFAULT_DINOV2, DINOv2Detector, load_dinov2
from edm2.metrics.inception import FEATURE_DIM, FID_WEIGHTS_URL, FIDInceptionV3

METRICS = ("fid", "fd_dinov2", "fd_cnn")


def default_location(metric: str):
    """Where a detector's weights come from unless told otherwise."""
    return {"fid": FID_WEIGHTS_URL, "fd_dinov2": DEFAULT_DINOV2, "fd_cnn": None}[check_metric(metric)]


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return metric


def parse_metrics(text) -> list[str]:
    """'fid,fd_dinov2' -> ['fid', 'fd_dinov2'] (validated, duplicates removed)."""
    names = text if isinstance(text, (list, tuple)) else [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ConfigError("no metric given; choose from " + ", ".join(METRICS))
    return list(dict.fromkeys(check_metric(n) for n in names))


@dataclasses.dataclass
class Detector:
    """A loaded detector: `detector(images) -> features` (float32, on the detector's device)."""

    metric: str
    location: str  # path, URL or hub id it was loaded from
    feature_dim: int
    model: torch.nn.Module
    device: torch.device
    rgb: bool  # expects 3 channels (grayscale is repeated)

    _sha256: str | None = dataclasses.field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """SHA-256 of the weights (every parameter and buffer, by name, as little-endian bytes):
        the same digest for the same weights, wherever they were loaded from."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{name}:{t.dtype}:{list(tensor.shape)};".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._sha256 = digest.hexdigest()
        return self._sha256

    def record(self) -> dict:
        """What statistics store about the detector that made them."""
        return {
            "metric": self.metric,
            "location": self.location,
            "sha256": self.sha256,
            "feature_dim": self.feature_dim,
        }

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images).to(self.device)
        if images.ndim != 4:
            raise FormatError(f"detector {self.metric} needs images [N, C, H, W], got shape {list(images.shape)}")
        if self.rgb and images.shape[1] == 1:
            images = images.repeat([1, 3, 1, 1])
        if self.rgb and images.shape[1] != 3:
            raise FormatError(f"detector {self.metric} needs RGB (or grayscale) images, got {images.shape[1]} channels")
        return self.model(images).to(torch.float32)


def load_inception(path_or_url, device="cpu"):
    """The FID Inception-v3 with the weights of `pt_inception-2015-12-05-6726825d.pth` (local path
    or URL), checked strictly: every parameter and buffer present, none extra, shapes equal.
    `num_batches_tracked` counters, if the file has them, are ignored (unused at inference)."""
    path = resolve_path(path_or_url, what="Inception weights", check_prefix=True)
    with open_regular(path) as f:
        if zipfile.is_zipfile(f):  # torch.save's format: every record bounded before it is inflated
            try:
                for info in zipfile.ZipFile(f).infolist():
                    check_zip_member(info, f"{path}:{info.filename}")
            except DataError as e:
                raise FormatError(str(e)) from None
        f.seek(0)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FormatError(f"{path}: not a readable PyTorch weight file ({one_line(str(e))})") from None
    if not isinstance(state, dict):
        raise FormatError(f"{path}: expected a state dict, found a {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = FIDInceptionV3()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise FormatError(
            f"{path} is not the FID Inception weight file pt_inception-2015-12-05-6726825d.pth: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of wrong shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False).to(device)


_CACHE: dict = {}


def load_detector(metric: str, location=None, device="cpu") -> Detector:
    """Load (or take from the cache) the detector of `metric`.

    `location`: fid -> path or URL of the Inception weights; fd_dinov2 -> hub id or folder;
    fd_cnn -> path of a detector file from `edm2 metrics train-detector` (required).
    """
    check_metric(metric)
    location = default_location(metric) if location is None else str(location)
    if location is None:
        raise ConfigError(
            "fd_cnn needs a detector file; train one with `edm2 metrics train-detector` and pass --cnn-detector"
        )
    device = torch.device(device)
    key = (metric, location, str(device))
    if key not in _CACHE:
        if metric == "fid":
            model = load_inception(location, device)
            _CACHE[key] = Detector(metric, location, FEATURE_DIM, model, device, rgb=True)
        elif metric == "fd_dinov2":
            model = DINOv2Detector(load_dinov2(location, device)).to(device)
            _CACHE[key] = Detector(metric, location, model.feature_dim, model, device, rgb=True)
        else:
            path = resolve_path(location, what="CNN detector")
            model = load_cnn(path, device)
            _CACHE[key] = Detector(metric, location, model.feature_dim, model, device, rgb=False)
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()
