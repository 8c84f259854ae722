"""`edm2 dataset encode` (docs/method.md#datasets, with a tiny random VAE) and `edm2 dataset digits`."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from data_helpers import random_rgb, write_zip

from edm2.cli import main
from edm2.data import ImageFolderDataset, StabilityVAEEncoder
from edm2.data.convert import convert_dataset
from edm2.data.digits import digits_images, write_digits
from edm2.data.encode import encode_dataset
from edm2.errors import ConfigError, DataError


@pytest.fixture
def pixel_zip(tmp_path):
    rng = np.random.default_rng(0)
    files = {f"00000/img{i:08d}.png": random_rgb(rng, 16, 16) for i in range(5)}
    files["dataset.json"] = {"labels": [[f"00000/img{i:08d}.png", i % 2] for i in range(5)]}
    return write_zip(tmp_path / "px.zip", files), files


def test_encode_writes_mean_std_npy_with_labels(pixel_zip, tmp_path, tiny_vae_dir):
    src, files = pixel_zip
    report = encode_dataset(src, tmp_path / "lat.zip", vae=str(tiny_vae_dir), batch=2, device="cpu", progress=False)
    assert report.num_written == 5 and report.latent_shape == (8, 2, 2) and report.labelled
    with zipfile.ZipFile(tmp_path / "lat.zip") as z:
        names = sorted(z.namelist())
        assert names == sorted([f"00000/img-mean-std-{i:08d}.npy" for i in range(5)] + ["dataset.json"])
        meta = json.loads(z.read("dataset.json"))
        arr = np.load(io.BytesIO(z.read("00000/img-mean-std-00000003.npy")))
    assert meta["labels"] == [[f"00000/img-mean-std-{i:08d}.npy", i % 2] for i in range(5)]
    assert arr.dtype == np.float32 and arr.shape == (8, 2, 2)
    # Independent answer: the encoder on that one image (batch of 1, like the reference tool).
    x = torch.from_numpy(files["00000/img00000003.png"]).permute(2, 0, 1)[None]
    want = StabilityVAEEncoder(vae_name=str(tiny_vae_dir), batch_size=1).encode_pixels(x)[0].numpy()
    np.testing.assert_allclose(arr, want, rtol=1e-4, atol=1e-5)
    ds = ImageFolderDataset(tmp_path / "lat.zip")
    assert ds.num_channels == 8 and ds.resolution == 2 and ds.label_dim == 2 and ds[0][0].dtype == np.float32


def test_encode_refuses_bad_sizes_and_leaves_nothing(tmp_path, tiny_vae_dir):
    src = write_zip(tmp_path / "odd.zip", {"a.png": random_rgb(np.random.default_rng(1), 12, 12)})
    with pytest.raises(DataError, match="a.png is 12x12; the VAE needs sides divisible by 8"):
        encode_dataset(src, tmp_path / "lat.zip", vae=str(tiny_vae_dir), device="cpu", progress=False)
    assert not (tmp_path / "lat.zip").exists()
    with pytest.raises(ConfigError):
        encode_dataset(src, tmp_path / "lat.zip", vae=str(tiny_vae_dir), device="tpu")


def test_cli_encode(pixel_zip, tmp_path, tiny_vae_dir):
    src, _ = pixel_zip
    args = ["dataset", "encode", "--source", str(src), "--dest", str(tmp_path / "l"), "--vae", str(tiny_vae_dir)]
    r = CliRunner().invoke(main, [*args, "--device", "cpu", "--quiet", "--max-images", "3"])
    assert r.exit_code == 0, r.output
    assert "wrote 3 latents of shape [8, 2, 2]" in r.output
    args[5] = str(tmp_path / "l2")
    r = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "novae")])
    assert r.exit_code == 1 and "Error:" in r.output and "novae" in r.output


def test_digits_images_are_the_sklearn_scans():
    from sklearn.datasets import load_digits

    raw = load_digits()
    imgs8, labels = digits_images(8)
    assert imgs8.shape == (1797, 8, 8, 3) and imgs8.dtype == np.uint8
    np.testing.assert_array_equal(labels, raw.target)
    np.testing.assert_array_equal(imgs8[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    assert (imgs8[..., 0] == imgs8[..., 2]).all()
    imgs16, _ = digits_images(16)
    assert imgs16.shape == (1797, 16, 16, 3)
    # Upscaling keeps each image's overall brightness (bicubic preserves the mean up to edge effects).
    m8, m16 = imgs8[..., 0].mean(axis=(1, 2)), imgs16[..., 0].mean(axis=(1, 2))
    assert np.abs(m16 - m8).max() < 10
    with pytest.raises(ConfigError):
        digits_images(12)


def test_digits_folder_converts_with_labels(tmp_path):
    r = CliRunner().invoke(main, ["dataset", "digits", "--dest", str(tmp_path / "dg"), "--resolution", "8"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "dg").iterdir()) == [*map(str, range(10)), "dataset.json"]
    convert_dataset(tmp_path / "dg", tmp_path / "dg.zip", workers=1, progress=False)
    ds = ImageFolderDataset(tmp_path / "dg.zip")
    assert len(ds) == 1797 and ds.resolution == 8 and ds.label_dim == 10
    from sklearn.datasets import load_digits

    target = load_digits().target
    # Output order: sorted by class folder, then by scan index within a class.
    order = np.argsort(target, kind="stable")
    got = np.array([ds.get_label(i).argmax() for i in range(len(ds))])
    np.testing.assert_array_equal(got, target[order])
    np.testing.assert_array_equal(ds[0][0][0], np.rint(load_digits().images[order[0]] * 255 / 16))
    # Labels also come from folder names alone.
    (tmp_path / "dg" / "dataset.json").unlink()
    convert_dataset(tmp_path / "dg", tmp_path / "dg2.zip", workers=1, progress=False)
    assert ImageFolderDataset(tmp_path / "dg2.zip").label_dim == 10


def test_digits_refuses_non_empty_destination(tmp_path):
    write_digits(tmp_path / "a", 8)
    r = CliRunner().invoke(main, ["dataset", "digits", "--dest", str(tmp_path / "a")])
    assert r.exit_code == 1 and "not empty" in r.output
