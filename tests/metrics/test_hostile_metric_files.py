"""Reference statistics and CNN detector files are bounded and checked field by field: an .npz
member declaring gigabytes or a .npy header claiming more than its bytes is refused before
anything is inflated or allocated; detector JSON nested too deeply, arrays of text, a detector
config that would build a huge model, tensors that do not fit it, an accuracy that is no number:
each one FormatError naming the file and the field."""

import io
import json
import struct
import zipfile

import numpy as np
import pytest
from metrics_helpers import random_cnn_detector
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edm2.errors import FormatError
from edm2.io.official import load_official_stats
from edm2.metrics.cnn import load_detector, read_detector_info
from edm2.metrics.stats import load_stats


def npz(path, **members):
    """An .npz whose members are the given bytes (raw .npy files) or arrays."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=False)
                value = buf.getvalue()
            z.writestr(name + ".npy", value)
    return path


def declare_size(path, declared: int):
    """Rewrite the first member's declared uncompressed size in both ZIP headers."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at : at + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(data))
    return path


def npy_claiming(shape) -> bytes:
    text = repr({"descr": "<f8", "fortran_order": False, "shape": tuple(shape)}).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(64)


GOOD = {"num_images": np.array(10), "fid_mu": np.zeros(2), "fid_sigma": np.eye(2)}


@pytest.mark.parametrize(
    "case, match",
    [
        ("member-declares-gigabytes", "limit of"),
        ("npy-header-claims-too-much", "claims"),
        ("detector-json-nested", "nested too deeply"),
        ("detector-json-not-an-object", "not a JSON object"),
        ("num-images-text", "wrong kind"),
        ("mu-text", "wrong kind"),
    ],
)
def test_hostile_statistics_files_are_format_errors(tmp_path, case, match):
    path = tmp_path / "ref.npz"
    if case == "member-declares-gigabytes":
        declare_size(npz(path, mu=np.zeros(2), sigma=np.eye(2)), 1 << 31)
    elif case == "npy-header-claims-too-much":
        npz(path, mu=npy_claiming([1 << 20, 1 << 20]), sigma=np.eye(2))
    elif case == "detector-json-nested":
        npz(path, **GOOD, fid_detector=np.asarray("[" * 100000 + "]" * 100000))
    elif case == "detector-json-not-an-object":
        npz(path, **GOOD, fid_detector=np.asarray("[1]"))
    elif case == "num-images-text":
        npz(path, **(GOOD | {"num_images": np.asarray("many")}))
    else:
        npz(path, mu=np.asarray(["a", "b"]), sigma=np.eye(2))
    with pytest.raises(FormatError, match=match) as e:
        load_stats(path)
    assert "ref.npz" in str(e.value) and "\n" not in str(e.value)
    if case in ("member-declares-gigabytes", "npy-header-claims-too-much"):
        with pytest.raises(FormatError, match=match):
            load_official_stats(path)


def test_good_statistics_still_load(tmp_path):
    stats = load_stats(npz(tmp_path / "ref.npz", **GOOD, fid_detector=np.asarray(json.dumps({"metric": "fid"}))))
    assert stats["num_images"] == 10 and stats["fid"]["detector"] == {"metric": "fid"}


def edit_detector(src, dest, **changes):
    tensors = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    meta.pop("sha256"), meta.pop("header_sha256")  # as an editor that drops them would
    for key, value in changes.items():
        if key == "config" and isinstance(value, dict):
            config = json.loads(meta["config"])
            config.update(value)
            value = json.dumps(config)
        meta[key] = value
    save_file(tensors, str(dest), metadata=meta)
    return dest


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(config={"width": 10**6}), "width is 1000000"),
        (dict(config={"colour": 1}), "unknown key"),
        (dict(config={"num_classes": 5}), "do not match the detector"),
        (dict(config="[1]"), "'config' is a list"),
        (dict(heldout_accuracy="nan"), "'heldout_accuracy'"),
        (dict(train="{" * 1000), "'train' is not valid JSON"),
    ],
)
def test_hostile_detector_metadata_is_refused_before_a_model_is_built(tmp_path, changes, match):
    good = random_cnn_detector(tmp_path / "good.safetensors")
    assert read_detector_info(good)["heldout_accuracy"] == 0.5
    bad = edit_detector(good, tmp_path / "bad.safetensors", **changes)
    with pytest.raises(FormatError, match=match) as e:
        load_detector(bad)
    assert str(bad) in str(e.value)


def test_an_edited_detector_is_detected_by_its_header_digest(tmp_path):
    good = random_cnn_detector(tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    meta["heldout_accuracy"] = "0.99"
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(FormatError, match="edited or damaged"):
        read_detector_info(tmp_path / "edited.safetensors")
