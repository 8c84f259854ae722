"""The training data stream: InfiniteSampler (docs/method.md#training) and the in-process batch iterator."""

import numpy as np
import pytest
import torch
from train_helpers import make_dataset

from edm2.data.dataset import ImageFolderDataset
from edm2.train.data import InfiniteSampler, InMemoryBatches, make_batch_iterator


def reference_stream(size, seed, count):
    """The global index stream written out from docs/method.md#training: one permutation per epoch."""
    out = []
    for epoch in range(count // size + 1):
        order = np.arange(size)
        np.random.RandomState(hash((seed, epoch)) % (1 << 31)).shuffle(order)
        out.extend(order.tolist())
    return out[:count]


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_sampler_is_a_full_permutation_per_epoch_seeded_by_hash_of_seed_and_epoch():
    stream = take(iter(InfiniteSampler(7, seed=3)), 30)
    assert stream == reference_stream(7, 3, 30)
    for epoch in range(4):
        assert sorted(stream[epoch * 7 : epoch * 7 + 7]) == list(range(7))


def test_ranks_read_disjoint_strided_slices_of_the_global_stream():
    size, world, n = 10, 3, 12
    glob = reference_stream(size, 0, world * n)
    for rank in range(world):
        mine = take(iter(InfiniteSampler(size, rank=rank, num_replicas=world, seed=0)), n)
        assert mine == glob[rank::world]


def test_start_idx_resumes_the_same_stream():
    full = take(iter(InfiniteSampler(9, rank=1, num_replicas=2, seed=5)), 20)
    resumed = take(iter(InfiniteSampler(9, rank=1, num_replicas=2, seed=5, start_idx=10)), 15)
    assert resumed == full[5:20]


def test_in_memory_batches_equal_a_dataloader_over_the_same_sampler(tmp_path):
    ds = ImageFolderDataset(make_dataset(tmp_path / "ds", num_images=12, num_classes=3))
    sampler = InfiniteSampler(len(ds), seed=1)
    loader = iter(torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=5, num_workers=0))
    for cache in (True, False):
        mine = InMemoryBatches(ds, sampler, 5, cache=cache)
        for _ in range(4):
            (x, y), (x_ref, y_ref) = next(mine), next(loader)
            assert x.dtype == x_ref.dtype == torch.uint8 and y.dtype == y_ref.dtype == torch.float32
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
        loader = iter(torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=5, num_workers=0))


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_iterator_shapes_for_latent_datasets(tmp_path, workers):
    ds = ImageFolderDataset(make_dataset(tmp_path / "ds", num_images=6, channels=8), use_labels=False)
    x, y = next(make_batch_iterator(ds, InfiniteSampler(len(ds)), 4, workers, "cpu"))
    assert x.shape == (4, 8, 8, 8) and x.dtype == torch.float32
    assert y.shape == (4, 0)
