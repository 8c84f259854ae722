"""The training data: the dataset checked against the options, the encoder it needs, the
infinite per-rank sampler and the batch iterators (docs/method.md#training)."""

import signal

import numpy as np
import torch

from edm2.data.dataset import ImageFolderDataset
from edm2.data.encoders import StabilityVAEEncoder, StandardRGBEncoder
from edm2.errors import DataError


def open_dataset(dataset_kwargs: dict):
    """The training dataset (ImageFolderDataset of `dataset_kwargs`: path, use_labels), checked
    against the options (docs/method.md#presets): 3 channels (pixels) or 8 (latents), and labels
    when `use_labels`; DataError naming the dataset and the fix otherwise."""
    kwargs = dict(dataset_kwargs)
    dataset = ImageFolderDataset(**kwargs)
    path = kwargs.get("path")
    if dataset.num_channels not in (3, 8):
        raise DataError(
            f"dataset {path} has {dataset.num_channels} channels; training needs RGB images (3) or "
            "Stable Diffusion VAE latents (8, from `edm2 dataset encode`)"
        )
    if kwargs.get("use_labels", True) and not dataset.has_labels:
        raise DataError(f"dataset {path} has no labels (dataset.json); train it unconditionally with --uncond")
    return dataset


def make_training_encoder(num_channels: int, encoder_kwargs: dict | None = None):
    """StandardRGBEncoder for 3-channel pixels, StabilityVAEEncoder for 8-channel latents (docs/method.md#presets)."""
    if num_channels == 3:
        return StandardRGBEncoder()
    # Micro-batch 8 in training, as the official train.py sets it (docs/method.md#official-details).
    return StabilityVAEEncoder(**{"batch_size": 8, **(encoder_kwargs or {})})


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream for one rank (docs/method.md#training, #official-details).

    A full permutation per epoch, shuffled by `RandomState(hash((seed, epoch)) mod 2^31)`; rank
    `r` of `W` yields stream positions `start_idx + r, start_idx + r + W, ...`. The global stream
    position equals the number of images consumed, so `start_idx = cur_nimg` resumes exactly.
    """

    def __init__(self, dataset_size: int, rank: int = 0, num_replicas: int = 1, seed: int = 0, start_idx: int = 0):
        if dataset_size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        self.dataset_size = int(dataset_size)
        self.rank = int(rank)
        self.num_replicas = int(num_replicas)
        self.seed = int(seed)
        self.start_idx = int(start_idx)

    def __iter__(self):
        size = self.dataset_size
        idx = self.start_idx + self.rank
        epoch = None
        order = None
        while True:
            if idx // size != epoch:
                epoch = idx // size
                order = np.arange(size)
                np.random.RandomState(hash((self.seed, epoch)) % (1 << 31)).shuffle(
                    order
                )  # docs/method.md#official-details
            yield int(order[idx % size])
            idx += self.num_replicas


class InMemoryBatches:
    """Batches `(uint8/float32 images [B,C,H,W], float32 labels [B,L])` read in this process.

    Yields exactly what a DataLoader over the same sampler would (same items, same order, same
    dtypes); with `cache=True` every item is decoded once and kept in one array, so later epochs
    cost one gather per batch instead of a decode per image.
    """

    def __init__(self, dataset, sampler, batch_size: int, cache: bool = True):
        self.dataset = dataset
        self.indices = iter(sampler)
        self.batch_size = int(batch_size)
        self.cache = cache
        self._images = None
        self._labels = None
        self._loaded = None

    def __iter__(self):
        return self

    def _fill(self, idx):
        if self._images is None:
            image, label = self.dataset[0]
            n = len(self.dataset)
            self._images = np.empty([n, *image.shape], dtype=image.dtype)
            self._labels = np.empty([n, *label.shape], dtype=np.float32)
            self._loaded = np.zeros(n, dtype=bool)
        for i in idx:
            if not self._loaded[i]:
                image, label = self.dataset[i]
                self._images[i] = image
                self._labels[i] = label
                self._loaded[i] = True

    def __next__(self):
        idx = np.fromiter((next(self.indices) for _ in range(self.batch_size)), dtype=np.int64, count=self.batch_size)
        if self.cache:
            self._fill(idx)
            return torch.from_numpy(self._images[idx]), torch.from_numpy(self._labels[idx])
        items = [self.dataset[int(i)] for i in idx]
        images = torch.from_numpy(np.stack([image for image, _ in items]))
        labels = torch.from_numpy(np.stack([label for _, label in items]).astype(np.float32))
        return images, labels


def make_batch_iterator(dataset, sampler, batch_size: int, num_workers: int, device, cache_limit_bytes=1 << 30):
    """An endless iterator of `(images, labels)` batches of size `batch_size` (docs/method.md#training).

    `num_workers == 0` reads in this process (caching small datasets in memory, up to
    `cache_limit_bytes`); otherwise a DataLoader with that many workers, prefetch factor 2,
    pinned memory on CUDA and the 'spawn' start method on CUDA as the official code.
    """
    if num_workers == 0:
        image, _ = dataset[0]
        fits = len(dataset) * image.nbytes <= cache_limit_bytes
        return InMemoryBatches(dataset, sampler, batch_size, cache=fits)
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_factor=2,
        pin_memory=(torch.device(device).type == "cuda"),
        multiprocessing_context=("spawn" if torch.device(device).type == "cuda" else None),
        worker_init_fn=ignore_sigint,
    )
    return iter(loader)


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C: the terminal sends SIGINT to the whole process group,
    and the training process stops them itself after writing its training state."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
