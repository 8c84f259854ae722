"""Small datasets, networks and detector files for the metrics tests (made on the fly)."""

import json

import numpy as np
import PIL.Image
import torch
from tiny_networks import tiny_network

from edm2.io.snapshot import save_snapshot
from edm2.metrics.cnn import CNNClassifier, save_detector
from edm2.nn import Precond

TINY_NET = tiny_network(label_dim=3)


def write_image_folder(root, images, labels=None):
    """uint8 [N, C, H, W] images -> PNG folder (plus dataset.json with class labels if given)."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        name = f"img{i:05d}.png"
        hwc = img.transpose(1, 2, 0)
        PIL.Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(root / name)
        names.append(name)
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": [[n, int(c)] for n, c in zip(names, labels)]}))
    return root


def class_images(n_per_class, num_classes=3, res=8, seed=0):
    """Easy classes: class k is noise plus a bright square in corner k."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    corners = [(0, 0), (0, res // 2), (res // 2, 0), (res // 2, res // 2)]
    for k in range(num_classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, [3, res, res], dtype=np.uint8)
            y, x = corners[k]
            img[:, y : y + res // 2, x : x + res // 2] = rng.integers(200, 256, dtype=np.uint8)
            images.append(img)
            labels.append(k)
    return np.stack(images), np.array(labels)


def random_cnn_detector(path, resolution=8, in_channels=3, seed=0):
    """A CNN detector file with random weights (not trained)."""
    torch.manual_seed(seed)
    model = CNNClassifier(in_channels=in_channels, resolution=resolution, num_classes=3, width=8, feature_dim=16)
    save_detector(path, model, 0.5, {"note": "random weights for tests"})
    return path


def tiny_snapshot(path, seed=0):
    torch.manual_seed(seed)
    net = Precond(**TINY_NET)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 131072, 0.05, dtype=None)
    return path
