"""ImageFolderDataset (docs/method.md#datasets): files, shapes, labels, subsets, flips, processes."""

import io
import pickle

import numpy as np
import pytest
import torch
from data_helpers import png_bytes, random_rgb, write_tree, write_zip

from edm2.data import ImageFolderDataset
from edm2.errors import DataError


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return {f"{c}/{name}.png": random_rgb(rng, 8, 8) for c, name in [("b", "x"), ("a", "z"), ("a", "y"), ("c", "w")]}


@pytest.fixture(params=["dir", "zip"])
def make_ds(request, tmp_path):
    def make(files, **kwargs):
        if request.param == "dir":
            path = write_tree(tmp_path / "ds", files)
        else:
            path = write_zip(tmp_path / "ds.zip", files)
        return ImageFolderDataset(path, **kwargs)

    return make


def test_reads_sorted_chw_uint8_images(make_ds, images):
    ds = make_ds(images)
    order = sorted(images)  # a/y, a/z, b/x, c/w
    assert len(ds) == 4 and ds.raw_shape == [4, 3, 8, 8]
    assert ds.resolution == 8 and ds.num_channels == 3 and ds.name == "ds"
    for i, name in enumerate(order):
        img, label = ds[i]
        assert img.dtype == np.uint8 and img.shape == (3, 8, 8)
        np.testing.assert_array_equal(img, images[name].transpose(2, 0, 1))
        assert label.dtype == np.float32 and label.shape == (0,)
    assert ds.label_dim == 0 and not ds.has_labels


def test_integer_labels_become_one_hot_of_length_max_plus_one(make_ds, images):
    labels = {"a/y.png": 4, "a/z.png": 0, "b/x.png": 2, "c/w.png": 4}
    ds = make_ds({**images, "dataset.json": {"labels": [[k, v] for k, v in labels.items()]}})
    assert ds.label_dim == 5 and ds.has_labels
    for i, name in enumerate(sorted(images)):
        np.testing.assert_array_equal(ds[i][1], np.eye(5, dtype=np.float32)[labels[name]])
    no = make_ds({**images, "dataset.json": {"labels": [[k, v] for k, v in labels.items()]}}, use_labels=False)
    assert no.label_dim == 0 and no[0][1].shape == (0,)


def test_vector_labels_are_float32_as_is(make_ds, images):
    labels = [[k, [i, 0.5]] for i, k in enumerate(sorted(images))]
    ds = make_ds({**images, "dataset.json": {"labels": labels}})
    assert ds.label_dim == 2
    np.testing.assert_array_equal(ds[3][1], np.float32([3, 0.5]))


def test_null_labels_give_label_dim_zero(make_ds, images):
    ds = make_ds({**images, "dataset.json": {"labels": None}})
    assert ds.label_dim == 0


def test_grayscale_png_has_one_channel(make_ds):
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ds = make_ds({"g.png": img})
    assert ds.raw_shape == [1, 1, 8, 8]
    np.testing.assert_array_equal(ds[0][0][0], img)


def test_npy_latents_keep_dtype_and_are_reshaped_to_chw(make_ds):
    arrays = [np.random.default_rng(i).standard_normal((8, 4, 4)).astype(np.float32) for i in range(2)]
    files = {}
    for i, a in enumerate(arrays):
        buf = io.BytesIO()
        np.save(buf, a)
        files[f"00000/img-mean-std-{i:08d}.npy"] = buf.getvalue()
    ds = make_ds(files)
    assert ds.raw_shape == [2, 8, 4, 4] and ds.num_channels == 8 and ds.resolution == 4
    assert ds[1][0].dtype == np.float32
    np.testing.assert_array_equal(ds[1][0], arrays[1])


def test_max_size_keeps_a_sorted_random_subset(make_ds):
    rng = np.random.default_rng(1)
    files = {f"{i:02d}.png": np.full((4, 4, 3), i, dtype=np.uint8) for i in range(20)}
    ds = make_ds(files, max_size=6, random_seed=7)
    # Independent answer: shuffle 0..19 with RandomState(7), keep 6, sort.
    idx = np.arange(20)
    np.random.RandomState(7).shuffle(idx)
    want = sorted(idx[:6])
    assert len(ds) == 6
    assert [int(ds[i][0][0, 0, 0]) for i in range(6)] == want
    assert len(make_ds(files, max_size=50)) == 20
    del rng


def test_xflip_appends_mirrored_copies(make_ds, images):
    ds = make_ds(images, xflip=True, max_size=3)
    assert len(ds) == 6
    for i in range(3):
        np.testing.assert_array_equal(ds[i + 3][0], ds[i][0][:, :, ::-1])


def test_cache_returns_copies(make_ds, images):
    ds = make_ds(images, cache=True)
    a = ds[0][0]
    a[:] = 0
    np.testing.assert_array_equal(ds[0][0], images["a/y.png"].transpose(2, 0, 1))


def test_resolution_mismatch_is_an_error(make_ds, images):
    with pytest.raises(DataError, match="not 16x16"):
        make_ds(images, resolution=16)


def test_missing_label_names_the_file(make_ds, images):
    with pytest.raises(DataError, match="no label for c/w.png"):
        labels = [[k, 1] for k in ["a/y.png", "a/z.png", "b/x.png"]]
        _ = make_ds({**images, "dataset.json": {"labels": labels}}).label_dim


def test_mixed_label_types_are_an_error(make_ds, images):
    labels = [[k, 1] for k in sorted(images)[:3]] + [[sorted(images)[3], [1, 2]]]
    with pytest.raises(DataError, match="mixes"):
        _ = make_ds({**images, "dataset.json": {"labels": labels}}).label_dim


def test_file_of_another_size_names_the_file(make_ds, images):
    ds = make_ds({**images, "d/big.png": np.zeros((9, 9, 3), np.uint8)})
    with pytest.raises(DataError, match="d/big.png"):
        ds[len(ds) - 1]


def test_empty_or_wrong_paths_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no image"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.zip"):
        ImageFolderDataset(tmp_path / "bad.zip")
    (tmp_path / "x.tar").write_bytes(b"")
    with pytest.raises(DataError, match="neither"):
        ImageFolderDataset(tmp_path / "x.tar")


def test_pickles_without_zip_handle(tmp_path, images):
    ds = ImageFolderDataset(write_zip(tmp_path / "ds.zip", images))
    first = ds[0][0]
    assert ds._zipfile is not None
    again = pickle.loads(pickle.dumps(ds))
    assert again._zipfile is None
    np.testing.assert_array_equal(again[0][0], first)


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_read_the_zip(tmp_path, context):
    files = {f"{i:03d}.png": np.full((4, 4, 3), i, dtype=np.uint8) for i in range(24)}
    files["dataset.json"] = {"labels": [[f"{i:03d}.png", i % 3] for i in range(24)]}
    ds = ImageFolderDataset(write_zip(tmp_path / "ds.zip", files))
    ds[0]  # the parent has a ZIP handle open before the workers start
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context=context)
    images, labels = zip(*loader)
    images, labels = torch.cat(images), torch.cat(labels)
    assert images[:, 0, 0, 0].tolist() == list(range(24))
    assert labels.argmax(dim=1).tolist() == [i % 3 for i in range(24)]


def test_one_handle_per_process_after_fork(tmp_path, images):
    """A handle inherited through fork is not reused: the child opens its own."""
    ds = ImageFolderDataset(write_zip(tmp_path / "ds.zip", images))
    parent_handle = ds._get_zipfile()
    ds._zip_pid = -1  # as seen from a forked child
    assert ds._get_zipfile() is not parent_handle


def test_png_reader_matches_pil_for_written_bytes(make_ds):
    img = np.random.default_rng(3).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    assert png_bytes(img)[:8] == b"\x89PNG\r\n\x1a\n"
    ds = make_ds({"x.png": img})
    np.testing.assert_array_equal(ds[0][0], img.transpose(2, 0, 1))
