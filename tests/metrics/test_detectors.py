"""Feature detectors (docs/method.md#metrics) built from small or random weight files made here:
strict loading, parameter names and shapes of the published weight files, feature shapes,
and the pre-processing each detector expects."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import random_cnn_detector

from edm2.errors import ConfigError, DataError, FormatError
from edm2.metrics.detectors import clear_cache, load_detector, parse_metrics
from edm2.metrics.inception import FIDInceptionV3, _avg_pool_same, tf_bilinear_matrix


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small inputs: thread synchronisation costs more than it saves on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ---- Inception (fid) --------------------------------------------------------------------------


def fid_inception_layout():
    """{key: shape} of pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception):
    torchvision Inception3 names, 1008 classes, no aux head; every conv is `<name>.conv` without
    bias followed by `<name>.bn` (weight, bias, running_mean, running_var)."""
    convs = [
        ("Conv2d_1a_3x3", 3, 32, 3, 3),
        ("Conv2d_2a_3x3", 32, 32, 3, 3),
        ("Conv2d_2b_3x3", 32, 64, 3, 3),
        ("Conv2d_3b_1x1", 64, 80, 1, 1),
        ("Conv2d_4a_3x3", 80, 192, 3, 3),
    ]
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs += [
            (f"{name}.branch1x1", cin, 64, 1, 1),
            (f"{name}.branch5x5_1", cin, 48, 1, 1),
            (f"{name}.branch5x5_2", 48, 64, 5, 5),
            (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
            (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
            (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", cin, pool, 1, 1),
        ]
    convs += [
        ("Mixed_6a.branch3x3", 288, 384, 3, 3),
        ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
        ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3),
        ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
    ]
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs += [
            (f"{name}.branch1x1", 768, 192, 1, 1),
            (f"{name}.branch7x7_1", 768, c7, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7),
            (f"{name}.branch7x7_3", c7, 192, 7, 1),
            (f"{name}.branch7x7dbl_1", 768, c7, 1, 1),
            (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
            (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
            (f"{name}.branch_pool", 768, 192, 1, 1),
        ]
    convs += [
        ("Mixed_7a.branch3x3_1", 768, 192, 1, 1),
        ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
        ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1),
        ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
        ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
        ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
    ]
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs += [
            (f"{name}.branch1x1", cin, 320, 1, 1),
            (f"{name}.branch3x3_1", cin, 384, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3),
            (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
            (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
            (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{name}.branch_pool", cin, 192, 1, 1),
        ]
    layout = {}
    for name, cin, cout, kh, kw in convs:
        layout[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for p in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{name}.bn.{p}"] = (cout,)
    layout["fc.weight"] = (1008, 2048)
    layout["fc.bias"] = (1008,)
    return layout


def random_inception_state(seed=0):
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 2)
        elif k.endswith("running_mean") or k.endswith("bn.bias"):
            v.normal_(0, 0.1)
    return state


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state(), path)
    return path


def test_inception_has_exactly_the_fid_weight_file_layout():
    model = FIDInceptionV3()
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert layout == fid_inception_layout()
    # torchvision's Inception-v3 has 27,161,264 parameters with its aux head (3,326,696) and
    # 1000 classes; the FID file has no aux head and 1008 classes (+8 x 2049).
    assert sum(p.numel() for p in model.parameters()) == 27161264 - 3326696 + 8 * 2049
    bn = model.Conv2d_1a_3x3.bn
    assert bn.eps == 0.001 and model.Conv2d_1a_3x3.conv.bias is None


def test_inception_file_loads_strictly_and_gives_2048_features(inception_file):
    det = load_detector("fid", inception_file)
    assert det.feature_dim == 2048
    images = torch.randint(0, 256, [2, 3, 16, 16], dtype=torch.uint8)
    with torch.no_grad():
        feats = det(images)
        assert feats.shape == (2, 2048) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
        assert (feats >= 0).all()  # average of ReLU outputs
        # grayscale input is repeated to RGB (as the official metrics do)
        np.testing.assert_array_equal(det(images[:, :1]).numpy(), det(images[:, :1].repeat(1, 3, 1, 1)).numpy())


def test_inception_file_with_batchnorm_counters_still_loads(tmp_path):
    state = random_inception_state()
    for k in [k for k in state if k.endswith("running_var")]:
        state[k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    torch.save(state, tmp_path / "w.pth")
    assert load_detector("fid", tmp_path / "w.pth").feature_dim == 2048


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_inception_loading_is_strict(tmp_path, damage):
    state = random_inception_state()
    if damage == "missing":
        del state["Mixed_7c.branch_pool.bn.running_var"]
    elif damage == "unexpected":
        state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    else:
        state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(FormatError, match="not the FID Inception weight file"):
        load_detector("fid", tmp_path / "w.pth")


def test_missing_inception_file_is_a_clear_error(tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        load_detector("fid", tmp_path / "nope.pth")


def test_tf_bilinear_resize_uses_the_legacy_mapping():
    # TF resize_bilinear (align_corners=False, no half-pixel centres): src = dst * in / out,
    # the upper neighbour clamped to the last pixel.
    up = tf_bilinear_matrix(2, 4).numpy()
    np.testing.assert_allclose(up, [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    down = tf_bilinear_matrix(4, 2).numpy()
    np.testing.assert_allclose(down, [[1, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_allclose(tf_bilinear_matrix(299, 299).numpy(), np.eye(299))
    third = tf_bilinear_matrix(3, 299).numpy()
    j = 100
    src = j * 3 / 299
    expected = np.zeros(3)
    expected[int(src)] += 1 - (src - int(src))
    expected[int(src) + 1] += src - int(src)
    np.testing.assert_allclose(third[j], expected, atol=1e-7)


@pytest.mark.parametrize("size", [(16, 16), (64, 48), (512, 512)])
def test_tf_resize_equals_the_grid_sample_form_of_the_official_port(size):
    # The StyleGAN3 metrics port of the TF graph resamples with affine_grid/grid_sample
    # (bilinear, border padding) after shifting the grid by 1/in - 1/out, which is the same
    # legacy mapping; check both give the same 299x299 image, up to the float32 rounding of the
    # normalised grid coordinates there (about 1e-7 * size pixels).
    h, w = size
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
    grid = F.affine_grid(theta[None], [1, 3, 299, 299], align_corners=False)
    expected = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    ours = tf_bilinear_matrix(h, 299) @ img @ tf_bilinear_matrix(w, 299).T
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=255 * 1e-7 * max(h, w) * 4)


def test_inception_preprocessing_scales_to_minus_one_one():
    model = FIDInceptionV3()
    x = torch.tensor([0.0, 128.0, 255.0]).reshape(1, 3, 1, 1).expand(1, 3, 5, 5)
    y = model.preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    np.testing.assert_allclose(y[0, :, 150, 150].numpy(), [-1, 0, 127 / 128], rtol=1e-6)


def test_same_average_pool_does_not_count_the_padding():
    x = torch.ones(1, 2, 5, 5)
    np.testing.assert_allclose(_avg_pool_same(x).numpy(), 1.0)


# ---- DINOv2 (fd_dinov2) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=56
    )
    path = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    Dinov2Model(config).save_pretrained(path)
    return path


def test_dinov2_folder_loads_and_gives_final_normed_cls_features(dinov2_dir):
    det = load_detector("fd_dinov2", dinov2_dir)
    assert det.feature_dim == 32
    images = torch.randint(0, 256, [3, 3, 16, 16], dtype=torch.uint8)
    feats = det(images)
    assert feats.shape == (3, 32) and torch.isfinite(feats).all()
    with torch.no_grad():
        out = det.model.model(pixel_values=det.model.preprocess(images))
        cls = out.last_hidden_state[:, 0]
    np.testing.assert_allclose(feats.numpy(), cls.numpy(), rtol=1e-6, atol=1e-6)
    # final layer norm: each feature vector has ~zero mean before the affine part (weights 1, bias 0 here)
    np.testing.assert_allclose(feats.mean(dim=1).numpy(), 0, atol=1e-5)


def test_dinov2_preprocessing_is_bicubic_224_then_imagenet_normalisation(dinov2_dir):
    det = load_detector("fd_dinov2", dinov2_dir)
    colour = torch.tensor([10.0, 128.0, 250.0]).reshape(1, 3, 1, 1)
    x = det.model.preprocess(colour.expand(1, 3, 20, 20).to(torch.uint8))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    expected = (np.array([10, 128, 250]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0, :, 100, 7].numpy(), expected, rtol=1e-5)
    ramp = torch.arange(32.0).reshape(1, 1, 1, 32).expand(1, 3, 32, 32)
    resized = (det.model.preprocess(ramp) * torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
               + torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) * 255  # fmt: skip
    direct = F.interpolate(ramp, size=(224, 224), mode="bicubic", antialias=True)
    np.testing.assert_allclose(resized.numpy(), direct.numpy(), atol=1e-3)  # no clamping or rounding


def test_dinov2_position_embeddings_follow_the_torch_hub_rule(dinov2_dir):
    det = load_detector("fd_dinov2", dinov2_dir)
    emb = det.model.model.embeddings
    pos = emb.position_embeddings  # 4x4 grid (+ CLS) for image_size 56
    tokens = torch.zeros(1, 1 + 16 * 16, 32)
    out = emb.interpolate_pos_encoding(tokens, 224, 224)
    assert out.shape == (1, 257, 32)
    torch.testing.assert_close(out[:, :1], pos[:, :1])
    # hub rule: sample the 4x4 grid at (i + 0.5) * 4 / 16.1 - 0.5, not (i + 0.5) * 4 / 16 - 0.5
    grid = pos[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    hub = F.interpolate(grid, scale_factor=16.1 / 4, mode="bicubic", align_corners=False)
    sized = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], hub.permute(0, 2, 3, 1).reshape(1, 256, 32))
    assert not torch.allclose(hub, sized)
    same = emb.interpolate_pos_encoding(torch.zeros(1, 17, 32), 56, 56)  # native size: untouched
    assert same is pos


def test_dinov2_loading_is_strict(dinov2_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dinov2_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="does not match"):
        load_detector("fd_dinov2", broken)
    with pytest.raises(FormatError, match="config.json"):
        load_detector("fd_dinov2", tmp_path / "empty-folder/")


def test_dinov2_hub_offline_is_a_download_error(monkeypatch, tmp_path):
    from edm2.errors import DownloadError

    monkeypatch.setenv("EDM2_OFFLINE", "1")
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError, match="facebook/dinov2-large"):
        load_detector("fd_dinov2")


# ---- small CNN (fd_cnn) -----------------------------------------------------------------------


def test_cnn_detector_file_gives_penultimate_features(tmp_path):
    path = random_cnn_detector(tmp_path / "cnn.safetensors")
    det = load_detector("fd_cnn", path)
    assert det.feature_dim == 16
    images = torch.randint(0, 256, [5, 3, 8, 8], dtype=torch.uint8)
    feats = det(images)
    assert feats.shape == (5, 16)
    logits = det.model.classifier(feats)
    torch.testing.assert_close(logits, det.model.logits(images))
    assert det(torch.randint(0, 256, [2, 3, 16, 16], dtype=torch.uint8)).shape == (2, 16)  # resized
    with pytest.raises(DataError, match="3-channel"):
        det(images[:, :1])


def test_cnn_detector_errors(tmp_path):
    with pytest.raises(ConfigError, match="train-detector"):
        load_detector("fd_cnn")
    with pytest.raises(FormatError):
        load_detector("fd_cnn", tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FormatError, match="not an edm2 CNN detector"):
        load_detector("fd_cnn", tmp_path / "other.safetensors")


def test_metric_names_are_validated():
    assert parse_metrics("fid, fd_dinov2,fid") == ["fid", "fd_dinov2"]
    with pytest.raises(ConfigError, match="unknown metric"):
        parse_metrics("kid")
