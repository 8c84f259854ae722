"""Feature statistics (docs/method.md#metrics) against NumPy, the .npz format and official files."""

import numpy as np
import pytest
import torch

from edm2.errors import FormatError
from edm2.metrics.stats import FeatureStats, load_stats, save_stats


def test_mean_and_unbiased_covariance_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal([37, 5]) * [1, 10, 100, 0.1, 3] + 50).astype(np.float32)
    acc = FeatureStats()
    for chunk in np.array_split(feats, [3, 4, 20]):  # uneven batches, one of size 1
        acc.append(torch.from_numpy(chunk))
    mu, sigma = acc.mean_cov()
    assert acc.n == 37 and mu.dtype == np.float64
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-9)


def test_accumulation_is_in_float64():
    acc = FeatureStats(1)
    acc.append(torch.tensor([[1e4], [1e4 + 1]], dtype=torch.float32))  # exact in float32
    mu, sigma = acc.mean_cov()
    assert sigma[0, 0] == pytest.approx(0.5, rel=1e-9)  # S2 - n mu^2 would lose it in float32


def test_fewer_than_two_images_is_an_error():
    acc = FeatureStats()
    acc.append(torch.ones(1, 3))
    with pytest.raises(FormatError, match="at least 2"):
        acc.mean_cov()


def test_inconsistent_feature_dimension_is_an_error():
    acc = FeatureStats()
    acc.append(torch.ones(2, 3))
    with pytest.raises(FormatError, match="dimensions"):
        acc.append(torch.ones(2, 4))


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    stats = {
        "num_images": 10,
        "fid": {"mu": rng.standard_normal(4), "sigma": np.eye(4)},
        "fd_cnn": {"mu": rng.standard_normal(2), "sigma": 2 * np.eye(2)},
    }
    save_stats(tmp_path / "ref.npz", stats)
    with np.load(tmp_path / "ref.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["fd_cnn_mu", "fd_cnn_sigma", "fid_mu", "fid_sigma", "num_images"]
    back = load_stats(tmp_path / "ref.npz")
    assert back["num_images"] == 10 and set(back) == {"num_images", "fid", "fd_cnn"}
    for m in ("fid", "fd_cnn"):
        np.testing.assert_array_equal(back[m]["mu"], stats[m]["mu"])
        np.testing.assert_array_equal(back[m]["sigma"], stats[m]["sigma"])
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # atomic: no temporary left


def test_original_edm_npz_is_read_as_fid(tmp_path):
    np.savez(tmp_path / "edm.npz", mu=np.zeros(3), sigma=np.eye(3))
    stats = load_stats(tmp_path / "edm.npz")
    assert set(stats) == {"fid"}
    np.testing.assert_array_equal(stats["fid"]["sigma"], np.eye(3))


def test_unknown_npz_and_pickled_npz_are_rejected(tmp_path):
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(FormatError, match="neither"):
        load_stats(tmp_path / "other.npz")
    np.savez(tmp_path / "obj.npz", num_images=np.array(3), fid_mu=np.array([object()], dtype=object))
    with pytest.raises(FormatError):
        load_stats(tmp_path / "obj.npz")
    with pytest.raises(FormatError, match=".npz"):
        save_stats(tmp_path / "x.pkl", {"num_images": 2, "fid": {"mu": np.zeros(1), "sigma": np.eye(1)}})


def test_official_pickle_is_read_safely(tmp_path):
    import pickle

    rng = np.random.default_rng(2)
    stats = {m: {"mu": rng.standard_normal(3), "sigma": np.eye(3)} for m in ("fid", "fd_dinov2")}
    (tmp_path / "img512.pkl").write_bytes(pickle.dumps(stats))
    back = load_stats(tmp_path / "img512.pkl")
    assert set(back) == {"fid", "fd_dinov2"}
    np.testing.assert_array_equal(back["fd_dinov2"]["mu"], stats["fd_dinov2"]["mu"])

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fid": Evil()}))
    with pytest.raises(FormatError):
        load_stats(tmp_path / "evil.pkl")


def _write(tmp_path, name, mu, sigma, n=10):
    path = tmp_path / name
    np.savez(path, num_images=np.asarray(n), fd_cnn_mu=np.asarray(mu), fd_cnn_sigma=np.asarray(sigma))
    return path


@pytest.mark.parametrize(
    "sigma, message",
    [
        (np.diag([1.0, 2.0, -3.0]), "not positive semi-definite"),  # a negative variance
        (np.array([[1.0, 2.0, 0], [2.0, 1.0, 0], [0, 0, 1.0]]), "not positive semi-definite"),  # eigenvalue -1
        (np.array([[1.0, 0.5, 0], [0.1, 1.0, 0], [0, 0, 1.0]]), "not symmetric"),
        (np.array([[1.0, 0, 0], [0, np.nan, 0], [0, 0, 1.0]]), "NaN or Inf"),
        (np.eye(2), "expected [D] and [D, D]"),
    ],
)
def test_invalid_statistics_are_refused_on_load_naming_the_file(tmp_path, sigma, message):
    path = _write(tmp_path, "bad.npz", np.zeros(3), sigma)
    with pytest.raises(FormatError) as e:
        load_stats(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_original_edm_npz_with_a_non_psd_covariance_is_refused(tmp_path):
    np.savez(tmp_path / "edm.npz", mu=np.zeros(3), sigma=np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(FormatError, match="edm.npz: fid covariance is not positive semi-definite"):
        load_stats(tmp_path / "edm.npz")


def test_singular_covariances_and_rounding_noise_are_accepted(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.standard_normal([3, 6])  # 3 images, 6 dimensions: rank 2, eigenvalues at rounding noise
    path = _write(tmp_path, "ok.npz", f.mean(0), np.cov(f, rowvar=False), n=3)
    assert load_stats(path)["fd_cnn"]["sigma"].shape == (6, 6)


def test_detector_record_and_resolution_round_trip(tmp_path):
    stats = {
        "num_images": 4,
        "resolution": [16, 16],
        "fd_cnn": {"mu": np.zeros(2), "sigma": np.eye(2), "detector": {"location": "d.safetensors", "sha256": "ab"}},
    }
    save_stats(tmp_path / "r.npz", stats)
    back = load_stats(tmp_path / "r.npz")
    assert back["resolution"] == [16, 16] and back["fd_cnn"]["detector"] == {
        "location": "d.safetensors",
        "sha256": "ab",
    }
