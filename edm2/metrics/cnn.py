"""A compact CNN classifier trained on a labelled dataset; its penultimate-layer features give a
Fréchet distance (`fd_cnn`) for small datasets where Inception and DINOv2 features mean little,
such as the embedded 16x16 digits. Not part of the paper: a stand-in detector for the demo.

File format (`edm2 metrics train-detector --dest detector.safetensors`): safetensors with the
state dict of `CNNClassifier` and metadata
    format            "edm2-cnn-detector/1"
    config            JSON of the constructor arguments
    heldout_accuracy  accuracy on the held-out split (string float)
    train             JSON of how it was trained (dataset, split sizes, epochs, seed, ...)
"""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from edm2.data.dataset import ImageFolderDataset
from edm2.errors import ConfigError, DataError, FormatError
from edm2.io.snapshot import json_field, read_header, verify_safetensors, write_safetensors

FORMAT = "edm2-cnn-detector/1"
GRID = 4  # the last feature map is average-pooled to GRID x GRID before the hidden layer


class CNNClassifier(torch.nn.Module):
    """Three conv stages (3x3 conv, batch norm, ReLU; 2x2 max pool between stages), average
    pooling to a 4x4 grid, a hidden fully connected layer (the features), a linear classifier.

    Input: uint8-range images [N, C, H, W]; resized (bilinear, antialiased) to `resolution`
    when needed and scaled to [-1, 1].
    """

    def __init__(
        self,
        in_channels: int = 3,  # Image channels the detector was trained on.
        resolution: int = 16,  # Image resolution it works at.
        num_classes: int = 10,  # Classes of the training labels.
        width: int = 32,  # Channels of the first stage (doubled per stage).
        feature_dim: int = 128,  # Dimension of the penultimate features used for the FD.
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            resolution=resolution,
            num_classes=num_classes,
            width=width,
            feature_dim=feature_dim,
        )
        self.in_channels = in_channels
        self.resolution = resolution
        self.feature_dim = feature_dim
        c = [width, width * 2, width * 4]
        pairs = [(in_channels, c[0]), (c[0], c[0]), (c[0], c[1]), (c[1], c[1]), (c[1], c[2])]
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(a, b, 3, padding=1) for a, b in pairs])
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm2d(b) for _, b in pairs])
        self.fc = torch.nn.Linear(c[2] * GRID * GRID, feature_dim)
        self.classifier = torch.nn.Linear(feature_dim, num_classes)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise DataError(
                f"the CNN detector was trained on {self.in_channels}-channel images, got shape {list(images.shape)}"
            )
        x = images.to(torch.float32)
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        return x / 127.5 - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> [N, feature_dim] penultimate features."""
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i in (1, 3) and min(x.shape[-2:]) >= 2 * GRID:
                x = F.max_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(x, GRID).flatten(1)
        return F.relu(self.fc(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range images -> features (what the metrics use)."""
        return self.features(self.preprocess(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward(images))


def save_detector(path, model: CNNClassifier, heldout_accuracy: float, train_info: dict) -> None:
    """Write the detector file atomically (safetensors + metadata)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config),
        "heldout_accuracy": repr(float(heldout_accuracy)),
        "train": json.dumps(train_info),
    }
    write_safetensors(path, tensors, metadata)


_CONFIG_LIMITS = {  # bounds on the stored configuration, checked before a model is built from it
    "in_channels": (1, 64),
    "resolution": (1, 4096),
    "num_classes": (1, 1 << 20),
    "width": (1, 4096),
    "feature_dim": (1, 1 << 16),
}


def read_detector_info(path) -> dict:
    """Metadata of a detector file: {'config': ..., 'heldout_accuracy': ..., 'train': ...}, every
    field checked (the header digest when recorded, the config's keys and bounds, the tensors'
    names and shapes against the model the config builds, the accuracy in [0, 1]). Raises
    `FormatError` naming the file and the field."""
    missing = f"CNN detector {path} does not exist; train one with `edm2 metrics train-detector`"
    entries, meta = read_header(path, FORMAT, "edm2 CNN detector", missing)
    config = json_field(path, meta, "config", dict)
    for key, value in config.items():
        lo, hi = _CONFIG_LIMITS.get(key, (None, None))
        if lo is None:
            raise FormatError(f"{path}: metadata field 'config' has an unknown key {str(key)[:40]!r}")
        if type(value) is not int or not lo <= value <= hi:
            raise FormatError(
                f"{path}: metadata field 'config': {key} is {str(value)[:40]}, expected an integer in [{lo}, {hi}]"
            )
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in CNNClassifier(**config).state_dict().items()}
    found = {name: entry["shape"] for name, entry in entries.items()}
    if found != expected:
        raise FormatError(f"{path}: the tensors do not match the detector that metadata field 'config' describes")
    try:
        accuracy = float(meta.get("heldout_accuracy", ""))
    except ValueError:
        accuracy = math.nan
    if not 0 <= accuracy <= 1:
        raise FormatError(
            f"{path}: metadata field 'heldout_accuracy' is {meta.get('heldout_accuracy')!r}, expected a number in [0, 1]"
        )
    return {"config": config, "heldout_accuracy": accuracy, "train": json_field(path, meta, "train", dict, default={})}


def load_detector(path, device="cpu") -> CNNClassifier:
    """Load a detector file (strict: every tensor must match the stored configuration)."""
    info = read_detector_info(path)
    verify_safetensors(path)
    model = CNNClassifier(**info["config"])
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:
        raise FormatError(f"{path}: weights do not match the stored detector config: {e}") from None
    model.heldout_accuracy = info["heldout_accuracy"]
    return model.eval().requires_grad_(False).to(device)


@dataclasses.dataclass
class TrainResult:
    heldout_accuracy: float
    train_accuracy: float
    num_train: int
    num_heldout: int


def train_detector(
    data,  # Labelled dataset (ZIP or folder, edm2 dataset format).
    dest,  # Output .safetensors file.
    epochs: int = 10,  # Passes over the training split.
    seed: int = 0,  # Seed of the split, the initialisation and the batch order.
    batch: int = 128,  # Minibatch size.
    lr: float = 2e-3,  # Adam learning rate (cosine decay to 0).
    heldout: float = 0.1,  # Fraction of the images held out to measure the accuracy.
    width: int = 32,  # Channels of the first conv stage.
    feature_dim: int = 128,  # Feature dimension.
    progress: bool = True,
) -> TrainResult:
    """Train `CNNClassifier` on a labelled dataset, measure it on a held-out split, write `dest`."""
    dataset = ImageFolderDataset(data, use_labels=True)
    if not dataset.has_labels or dataset.label_dim < 2:
        raise DataError(f"dataset {data} has no class labels (dataset.json); train-detector needs a labelled dataset")
    n = len(dataset)
    num_heldout = int(round(n * heldout))
    if num_heldout < 1 or n - num_heldout < 1:
        raise ConfigError(f"dataset {data} has {n} images, too few to hold out {heldout:.0%} for measuring accuracy")
    images = np.stack([dataset[i][0] for i in range(n)])
    if images.dtype != np.uint8:
        raise DataError(f"dataset {data} holds latents ({images.dtype}); train the detector on pixel images")
    labels = np.stack([dataset.get_label(i) for i in range(n)]).argmax(axis=1)
    images = torch.from_numpy(images)
    labels = torch.from_numpy(labels).to(torch.int64)

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    test_idx, train_idx = order[:num_heldout], order[num_heldout:]
    torch.manual_seed(seed)
    model = CNNClassifier(
        in_channels=dataset.num_channels,
        resolution=dataset.resolution,
        num_classes=dataset.label_dim,
        width=width,
        feature_dim=feature_dim,
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = max(1, -(-train_idx.numel() // batch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    bar = tqdm(range(epochs), desc="train-detector", unit="epoch", disable=not progress)
    model.train()
    for _epoch in bar:
        perm = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
        losses = []
        for idx in perm.split(batch):
            loss = F.cross_entropy(model.logits(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    bar.close()
    model.eval()
    train_acc = _accuracy(model, images[train_idx], labels[train_idx], batch)
    test_acc = _accuracy(model, images[test_idx], labels[test_idx], batch)
    info = dict(
        dataset=str(data),
        num_images=n,
        num_train=int(train_idx.numel()),
        num_heldout=num_heldout,
        train_accuracy=train_acc,
        epochs=epochs,
        seed=seed,
        batch=batch,
        lr=lr,
    )
    save_detector(Path(dest), model, test_acc, info)
    return TrainResult(test_acc, train_acc, int(train_idx.numel()), num_heldout)


@torch.no_grad()
def _accuracy(model, images, labels, batch) -> float:
    correct = 0
    for x, y in zip(images.split(batch), labels.split(batch)):
        correct += int((model.logits(x).argmax(dim=1) == y).sum())
    return correct / max(1, labels.numel())
