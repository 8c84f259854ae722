"""Inception-v3 as used for FID: the TensorFlow graph `inception-2015-12-05`, in plain PyTorch
(docs/method.md#metrics, detector `fid`).

Weights: the standard FID weight file `pt_inception-2015-12-05-6726825d.pth` (the TF graph's
weights in PyTorch naming). Module and parameter names follow that file exactly
(`Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.running_mean`, `Mixed_5b.branch1x1.conv.weight`,
..., `fc.weight` [1008, 2048]) and it is loaded with strict key and shape checks.

What makes this the FID network rather than torchvision's Inception-v3:
* input: uint8-range RGB resized to 299x299 with TF's bilinear resize (the legacy
  `align_corners=False` mapping src = dst * in/out, no half-pixel offset, edges clamped),
  then `(x - 128) / 128`. (The official detector pickle computes the same mapping with
  `affine_grid`/`grid_sample`; its float32 grid coordinates round differently, by under
  0.01 of 255 at 512x512. We apply the mapping exactly, as two small matrix products.);
* BatchNorm eps 0.001, convolutions without bias;
* average pools of blocks A, C and the first E exclude the zero padding from the count
  (TF 'SAME' pooling), and the last E block (Mixed_7c) pools its branch with a max pool;
* features: the 2048-d global average pool after Mixed_7c (TF `pool_3`).
"""

import numpy as np
import torch
import torch.nn.functional as F

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's classifier (1000 ImageNet classes + 8 unused)


class BatchNorm(torch.nn.Module):
    """Inference-only batch norm with the TF graph's eps; parameters `weight`, `bias`, buffers
    `running_mean`, `running_var` (the names in the weight file)."""

    def __init__(self, channels: int, eps: float = 0.001):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ConvBN(torch.nn.Module):
    """Convolution without bias, batch norm, ReLU (`<name>.conv`, `<name>.bn`)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = BatchNorm(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x):
    # TF 'SAME' 3x3 average pool, stride 1: padded zeros are not counted.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(torch.nn.Module):
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_same(x))
        return torch.cat([a, b, c, d], dim=1)


class InceptionB(torch.nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class InceptionC(torch.nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_same(x))
        return torch.cat([a, b, c, d], dim=1)


class InceptionD(torch.nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], dim=1)


class InceptionE(torch.nn.Module):
    """Mixed_7b (average-pooled branch) and Mixed_7c (max-pooled branch, a quirk of the TF graph)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        assert pool in ("avg", "max")
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], dim=1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], dim=1)
        if self.pool == "avg":
            d = _avg_pool_same(x)
        else:
            d = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        d = self.branch_pool(d)
        return torch.cat([a, b, c, d], dim=1)


def tf_bilinear_matrix(size_in: int, size_out: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """[size_out, size_in] matrix of TF's legacy bilinear resize along one axis:
    src = dst * size_in / size_out, neighbours floor(src) and floor(src) + 1 clamped to the edge."""
    src = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    m = np.zeros([size_out, size_in], dtype=np.float64)
    np.add.at(m, (np.arange(size_out), lo), 1 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return torch.as_tensor(m, dtype=dtype, device=device)


class FIDInceptionV3(torch.nn.Module):
    """Inception-v3 of the TF `inception-2015-12-05` graph; `forward(uint8-range NCHW RGB)` ->
    2048-d pool features (float32). `logits()` gives the 1008-way classifier output."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = torch.nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range [N, 3, H, W] -> TF-resized to 299x299 and scaled by (x - 128) / 128."""
        x = images.to(torch.float32)
        _, _, h, w = x.shape
        if (h, w) != (299, 299):
            ry = tf_bilinear_matrix(h, 299, device=x.device)
            rx = tf_bilinear_matrix(w, 299, device=x.device)
            x = ry @ x @ rx.T  # separable bilinear resize
        return (x - 128) / 128

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input [N, 3, 299, 299] -> [N, 2048] pool_3 features."""
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward(images))
