"""Activation and weight magnitudes of a network, pooled per U-Net bucket (EDM2, arXiv 2312.02696,
Appendix A.6, Eq. 3; Figs. 3 and 15; docs/method.md#magnitudes).

    measure_weights(net)                      {bucket: {"max", "mean", "tensors", "features"}}, per tensor
    ActivationProbe(net) as probe: net(...)   the same for the activations of the forwards it saw
    measure_network(path, data=...)           one JSON-able record of a snapshot or an official pickle

The magnitude of one feature of a tensor reshaped to h [N, M] (N features, M elements each) is
its RMS, `M[h_i] = sqrt(mean_j h_ij^2)` (Eq. 3), so unit-normal data has magnitude 1 whatever M.
The measured tensors are every learned convolution or linear weight inside the U-Net's encoder
and decoder blocks (configs A-E: conv0, affine, conv1, skip, qkv, proj; F-G: conv_res0,
emb_linear, conv_res1, conv_skip, attn_qkv, attn_proj), as stored, reshaped to [N_out, fan_in];
and the outputs of those layers, per sample [N_out, H*W] (the embedding layer [N_out, 1]), with
A-B's biases added, D-G's normalised weights used and G's embedding gain applied (its `+1` not).
A tensor's bucket is its block's: encoder or decoder, and the resolution the block's name
starts with (`enc.32x32_down` is Enc-32x32, `dec.8x8_in0` Dec-8x8). The input conv
(`enc.RxR_conv`), the output conv, the embedding network and the uncertainty head are in no
bucket. An activation magnitude is the mean over samples of the per-sample Eq. 3 value
("expectation over 4096 training samples"); a bucket's max and mean pool every feature of its
tensors, each counted once.
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from edm2.analysis import DEFAULT_NUM_SAMPLES, DEFAULT_SEED
from edm2.errors import ConfigError, DataError, FormatError

# ln(sigma) ~ N(P_mean, P_std^2) of each config's training (EDM2 Eq. 16; Figs. 16-22): A is EDM's.
NOISE_DISTRIBUTION = {"A": (-1.2, 1.2)}
DEFAULT_NOISE_DISTRIBUTION = (-0.4, 1.0)  # B-G


def feature_magnitudes(h: torch.Tensor) -> torch.Tensor:
    """Eq. 3 of EDM2 (arXiv 2312.02696) Appendix A.6: h [N, ...] -> [N], the RMS of each of the N
    features over its other dimensions, computed in float32 (float64 for float64 input)."""
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    h = h.reshape(h.shape[0], -1).to(dtype)
    return h.square().mean(dim=1).sqrt()


def bucket_name(flavor: str, resolution: int) -> str:
    """'Enc-64x64', 'Dec-8x8', ... (the legend of Figs. 3 and 15)."""
    return f"{flavor.capitalize()}-{resolution}x{resolution}"


def bucket_of(name: str) -> str | None:
    """The bucket of the layer `name` of a Precond (e.g. 'unet.enc.32x32_down.conv0' ->
    'Enc-32x32', 'unet.dec.8x8_in1.emb_linear' -> 'Dec-8x8'), or None for a layer outside the
    encoder/decoder blocks (input conv, output conv, embedding, uncertainty head)."""
    parts = name.split(".")
    if len(parts) < 4 or parts[0] != "unet" or parts[1] not in ("enc", "dec"):
        return None
    block = parts[2]
    if block.endswith("_conv"):  # the In conv: no bucket (the paper's "within the blocks")
        return None
    res = block.split("_")[0]
    side = res.split("x")
    if len(side) != 2 or side[0] != side[1] or not side[0].isdigit():
        return None
    return bucket_name(parts[1], int(side[0]))


def buckets(net) -> list[str]:
    """The buckets of `net` (a Precond) in the legend order of Figs. 3 and 15: Enc and Dec of the
    highest resolution first ('Enc-64x64', 'Dec-64x64', 'Enc-32x32', ... at 512x512 latents)."""
    res = sorted({int(b.split("-")[1].split("x")[0]) for b in (bucket_of(n) for n in measured_layers(net)) if b})
    return [bucket_name(flavor, r) for r in reversed(res) for flavor in ("enc", "dec")]


def measured_layers(net) -> dict:
    """{layer name: module} of the layers whose weights and outputs are measured: every module
    inside an encoder/decoder block that holds a learned weight of a convolution or linear layer
    (`MPConv`, or A-E's `Conv` unless it only resamples), in registration order."""
    from edm2.nn.ablation import Conv
    from edm2.nn.layers import MPConv

    layers = {}
    for name, module in net.named_modules():
        if isinstance(module, (MPConv, Conv)) and getattr(module, "weight", None) is not None and bucket_of(name):
            layers[name] = module
    return layers


def _pool(per_tensor: dict, layer_buckets: dict, order: list) -> dict:
    """{bucket: {"max", "mean", "tensors", "features"}} of per-feature values {layer: [N] tensor}."""
    pooled = {}
    for bucket in order:
        values = [per_tensor[name] for name, b in layer_buckets.items() if b == bucket and name in per_tensor]
        if not values:
            continue
        flat = torch.cat([v.reshape(-1).to(torch.float64) for v in values])
        pooled[bucket] = dict(
            max=float(flat.max()), mean=float(flat.mean()), tensors=len(values), features=int(flat.numel())
        )
    return pooled


def _per_tensor_summary(per_tensor: dict) -> dict:
    return {
        name: dict(max=float(v.max()), mean=float(v.to(torch.float64).mean()), features=int(v.numel()))
        for name, v in per_tensor.items()
    }


@torch.no_grad()
def weight_feature_magnitudes(net) -> dict:
    """{layer: [N_out] float32 tensor}: Eq. 3 on each row of every measured weight as stored
    (raw parameters; D-G's are not normalised here), reshaped to [N_out, fan_in]."""
    return {name: feature_magnitudes(module.weight.detach()) for name, module in measured_layers(net).items()}


def measure_weights(net) -> dict:
    """Weight magnitudes of `net` (a Precond): {"buckets": {bucket: {"max", "mean", "tensors",
    "features"}}, "tensors": {layer: {"bucket", "max", "mean", "features"}}} (Appendix A.6)."""
    layers = measured_layers(net)
    per = weight_feature_magnitudes(net)
    layer_buckets = {name: bucket_of(name) for name in layers}
    tensors = _per_tensor_summary(per)
    for name in tensors:
        tensors[name]["bucket"] = layer_buckets[name]
    return {"buckets": _pool(per, layer_buckets, buckets(net)), "tensors": tensors}


class ActivationProbe:
    """Forward hooks on the measured layers of `net` that accumulate, per feature, the sum over
    samples of the per-sample Eq. 3 magnitude of the layer's output (conv [N, C, H, W] -> C
    features of H*W elements; linear [N, C] -> C features of one element).

    Use as a context manager around forwards of `net` (the hooks are removed on exit; nothing
    of the network changes), then `result()`. A layer whose output has batch 1 while the
    forward has N samples (a broadcast embedding) counts it for every sample of the forward.
    `layers` ({name: module}, default `measured_layers(net)`) chooses other layers to watch.
    """

    def __init__(self, net, layers: dict | None = None):
        self.net = net
        self.layers = measured_layers(net) if layers is None else dict(layers)  # {name: module}
        self.layer_buckets = {name: bucket_of(name) for name in self.layers}
        self._sums = {}
        self._counts = {}
        self._handles = []
        self._batch = 1

    def _hook(self, name):
        def fn(_module, _inputs, out):
            out = out.detach()
            n = out.shape[0]
            per_sample = feature_magnitudes(out.reshape(n * out.shape[1], -1)).reshape(n, out.shape[1])
            total = per_sample.to(torch.float64).sum(dim=0)
            weight = self._batch if n == 1 else n
            if n == 1:
                total = total * self._batch
            if name in self._sums:
                self._sums[name] += total
                self._counts[name] += weight
            else:
                self._sums[name] = total
                self._counts[name] = weight

        return fn

    def _pre_hook(self, _module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, torch.Tensor):
            self._batch = x.shape[0]

    def __enter__(self):
        self._handles.append(self.net.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self._handles += [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def per_feature(self) -> dict:
        """{layer: [N_out] float64 tensor}: the mean over samples of each feature's magnitude."""
        return {name: (self._sums[name] / self._counts[name]) for name in self.layers if name in self._sums}

    def result(self) -> dict:
        """{"buckets": {bucket: {"max", "mean", "tensors", "features"}}, "tensors": {...}} as `measure_weights`."""
        per = self.per_feature()
        tensors = _per_tensor_summary(per)
        for name in tensors:
            tensors[name]["bucket"] = self.layer_buckets[name]
        return {"buckets": _pool(per, self.layer_buckets, buckets(self.net)), "tensors": tensors}


# ---- inputs ---------------------------------------------------------------------------------------


def noise_distribution(config: str, loss_kwargs: dict | None = None) -> tuple[float, float]:
    """(P_mean, P_std) of the training noise levels ln(sigma) ~ N(P_mean, P_std^2) (EDM2 Eq. 16):
    the recorded loss arguments when there are any, else the config's (A: -1.2, 1.2; B-G: -0.4, 1.0)."""
    if loss_kwargs and "P_mean" in loss_kwargs and "P_std" in loss_kwargs:
        return float(loss_kwargs["P_mean"]), float(loss_kwargs["P_std"])
    return NOISE_DISTRIBUTION.get(config, DEFAULT_NOISE_DISTRIBUTION)


@dataclasses.dataclass
class ProbeInputs:
    """Fixed network inputs: clean images/latents y [N, C, R, R] (float32), one-hot labels [N, L]
    (or None), noise levels sigma [N] and noise n [N, C, R, R] ~ N(0, sigma^2 I)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    sigma: torch.Tensor
    noise: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def sample_indices(dataset_size: int, num: int, seed: int) -> np.ndarray:
    """`num` dataset indices drawn with seed `seed`: distinct when the dataset has that many
    items, else with replacement."""
    rng = np.random.RandomState(seed)
    if num <= dataset_size:
        return rng.permutation(dataset_size)[:num]
    return rng.randint(dataset_size, size=num)


def make_probe_inputs(dataset, encoder, num: int, seed: int, P_mean: float, P_std: float, label_dim: int):
    """`ProbeInputs` of `num` items of `dataset` (ImageFolderDataset) drawn with `seed`: each item
    encoded by `encoder.encode_latents` (a fresh posterior draw for VAE latents), a noise level
    ln(sigma) ~ N(P_mean, P_std^2) (EDM2 Eq. 16) and noise n ~ N(0, sigma^2 I). Every random draw
    of item i comes from its own generator seeded from (seed, i), and the global RNG state is left
    as it was, so the inputs depend only on (dataset, num, seed, P_mean, P_std)."""
    indices = sample_indices(len(dataset), num, seed)
    item_seeds = np.random.RandomState(seed + 1).randint(1 << 31, size=num)
    images, labels, sigmas, noises = [], [], [], []
    with torch.random.fork_rng(devices=[]):
        for idx, item_seed in zip(indices, item_seeds):
            raw, label = dataset[int(idx)]
            torch.manual_seed(int(item_seed))
            y = encoder.encode_latents(torch.as_tensor(np.asarray(raw)).unsqueeze(0)).to(torch.float32)
            gen = torch.Generator().manual_seed(int(item_seed))
            sigma = (torch.randn([], generator=gen) * P_std + P_mean).exp()
            images.append(y[0])
            labels.append(torch.as_tensor(np.asarray(label), dtype=torch.float32))
            sigmas.append(sigma)
            noises.append(torch.randn(y.shape[1:], generator=gen) * sigma)
    lab = torch.stack(labels) if label_dim else None
    if lab is not None and lab.shape[1] != label_dim:
        raise DataError(f"the dataset's labels have {lab.shape[1]} classes, the network {label_dim}")
    return ProbeInputs(torch.stack(images), lab, torch.stack(sigmas), torch.stack(noises))


@torch.no_grad()
def measure_activations(net, inputs: ProbeInputs, batch: int = 64, progress=None) -> dict:
    """Activation magnitudes of `net` (a Precond, evaluated in eval mode in float32 without
    mixed precision, its mode restored after) on `inputs`, `batch` items per forward: the
    denoiser D(y + n; sigma, label) with the usual preconditioning (EDM2 Eq. 4-8), as `ActivationProbe.result`.
    `progress`: a callable given the number of items done after each forward."""
    was_training = net.training
    device = next(net.parameters()).device
    net.eval()
    try:
        with ActivationProbe(net) as probe:
            for start in range(0, len(inputs), batch):
                sl = slice(start, start + batch)
                x = (inputs.images[sl] + inputs.noise[sl]).to(device)
                labels = inputs.labels[sl].to(device) if inputs.labels is not None else None
                net(x, inputs.sigma[sl].to(device), labels, force_fp32=True)
                if progress is not None:
                    progress(x.shape[0])
    finally:
        net.train(was_training)
    return probe.result()


# ---- one network file ----------------------------------------------------------------------------


def load_for_analysis(path, device="cpu"):
    """(net in eval mode, float32, on `device`; info dict) of an edm2 `.safetensors` snapshot or an
    official EDM2 `.pkl` (a release network, a post-hoc reconstruction or a raw training snapshot,
    read safely). info: network_kwargs, encoder config, nimg and ema_std (None when unknown),
    loss_kwargs (None when not recorded). FormatError for anything else."""
    from edm2.io.official import load_official_pickle, parse_official_name
    from edm2.io.snapshot import load_snapshot
    from edm2.utils import kimg_to_nimg

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such network file")
    if path.suffix == ".safetensors":
        net, info = load_snapshot(path, device=device, dtype=torch.float32)
        extra = info.extra or {}
        meta = dict(
            network_kwargs=info.network_kwargs,
            encoder=info.encoder,
            nimg=info.nimg,
            ema_std=info.ema_std,
            loss_kwargs=extra.get("loss_kwargs"),
        )
        return net, meta
    if path.suffix == ".pkl":
        data = load_official_pickle(path, dtype=torch.float32)
        parsed = parse_official_name(path.name)
        meta = dict(
            network_kwargs=data["network_kwargs"],
            encoder=data["encoder"] or {"class": "StandardRGBEncoder"},
            nimg=kimg_to_nimg(parsed[0]) if parsed else None,
            ema_std=parsed[1] if parsed else None,
            loss_kwargs=data["loss_fn"],
        )
        return data["ema"].to(device), meta
    raise FormatError(f"{path}: expected an edm2 .safetensors snapshot or an official EDM2 .pkl")


def measure_network(
    path,  # edm2 .safetensors snapshot or official EDM2 .pkl
    data=None,  # Dataset (ZIP or folder) for the activations; None = weights only.
    num: int = DEFAULT_NUM_SAMPLES,  # Samples of the activation measurement.
    seed: int = DEFAULT_SEED,  # Seed of their draws (items, latents, sigma, noise).
    P_mean: float | None = None,  # ln(sigma) mean; None = the recorded loss's, else the config's.
    P_std: float | None = None,  # ln(sigma) std; as P_mean.
    batch: int = 64,  # Items per forward.
    device=None,  # 'cuda' or 'cpu'; None = CUDA when available.
    progress: bool = False,  # tqdm bar over the samples.
) -> dict:
    """Magnitudes of one network (EDM2 Appendix A.6, Eq. 3) as a JSON-able dict:

        {"network": path, "config": "G", "nimg": .., "kimg": .., "ema_std": ..,
         "buckets": ["Enc-64x64", "Dec-64x64", ...],
         "weights": {bucket: {"max", "mean", "tensors", "features"}},
         "activations": {bucket: {...}} or None (no data),
         "tensors": {layer: {"bucket", "weights": {"max", "mean", "features"}, "activations": {...}}},
         "inputs": {"data", "num", "seed", "P_mean", "P_std"} or None}

    Raises ConfigError/DataError/FormatError (missing or unreadable files, a dataset that does
    not fit the network) before the measurement."""
    from edm2.data.dataset import ImageFolderDataset
    from edm2.data.encoders import make_encoder

    if num < 1 or batch < 1:
        raise ConfigError(f"--num and --batch must be at least 1, got {num} and {batch}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = None
    if data is not None:
        if not Path(data).exists():
            raise DataError(f"--data {data}: no such dataset (a ZIP or folder from `edm2 dataset convert`)")
        dataset = ImageFolderDataset(path=str(data), use_labels=True)
    net, meta = load_for_analysis(path, device=device)
    config = getattr(net, "config", "G")
    record = dict(
        network=str(path),
        config=config,
        nimg=meta["nimg"],
        kimg=None if meta["nimg"] is None else meta["nimg"] // 1000,
        ema_std=meta["ema_std"],
        buckets=buckets(net),
    )
    weights = measure_weights(net)
    record["weights"] = weights["buckets"]
    tensors = {name: dict(bucket=t.pop("bucket"), weights=t) for name, t in weights["tensors"].items()}
    record["activations"] = None
    record["inputs"] = None
    if dataset is not None:
        if dataset.num_channels != (8 if meta["encoder"]["class"] == "StabilityVAEEncoder" else 3):
            raise DataError(f"--data {data}: {dataset.num_channels} channels do not fit the network's encoder")
        if net.label_dim and dataset.label_dim != net.label_dim:
            raise DataError(f"--data {data}: {dataset.label_dim} classes, the network has {net.label_dim}")
        mean, std = noise_distribution(config, meta["loss_kwargs"])
        mean = mean if P_mean is None else float(P_mean)
        std = std if P_std is None else float(P_std)
        encoder = make_encoder(meta["encoder"])
        inputs = make_probe_inputs(dataset, encoder, num, seed, mean, std, net.label_dim)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=num, unit="img", desc=Path(path).name, leave=False)
        try:
            acts = measure_activations(net, inputs, batch=batch, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        record["activations"] = acts["buckets"]
        for name, t in acts["tensors"].items():
            t.pop("bucket")
            tensors[name]["activations"] = t
        record["inputs"] = dict(data=str(data), num=num, seed=seed, P_mean=mean, P_std=std)
    record["tensors"] = tensors
    return record
