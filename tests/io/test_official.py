"""Safe loading of official EDM2 pickles (edm2.io.official)."""

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edm2.errors import FormatError
from edm2.io.official import (
    OfficialLayouts,
    convert_official_pickle,
    load_official_pickle,
    load_official_stats,
    official_pickle_layout,
    parse_official_name,
)

_spec = importlib.util.spec_from_file_location("official_pickles", Path(__file__).with_name("official_pickles.py"))
official_pickles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official_pickles)
TINY = official_pickles.TINY_NETWORK


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    specs = [
        dict(path=root / "network-snapshot-0000524-0.100.pkl", network_kwargs=TINY, seed=1, encoder="rgb", probe=True),
        dict(
            path=root / "vae-proto2-0000065-0.050.pkl",
            network_kwargs=dict(TINY, img_channels=4, label_dim=0),
            seed=2,
            encoder="vae",
            protocol=2,
        ),
        dict(
            path=root / "vae-custom.pkl",
            network_kwargs=dict(TINY, img_channels=4),
            seed=3,
            encoder="vae",
            encoder_kwargs=dict(raw_mean=[1.5, -2.25, 0.5, 3.0], raw_std=[2.0, 4.0, 1.25, 0.5]),
        ),
    ]
    official_pickles.make_official_pickles(root, specs)
    return root


def _unrelated_modules_loaded():
    return [m for m in ("torch_utils", "dnnlib", "training") if m in sys.modules]


def test_rebuilt_precond_has_the_pickled_weights_and_outputs(pickles):
    path = pickles / "network-snapshot-0000524-0.100.pkl"
    data = load_official_pickle(path, dtype=None)
    ref = load_file(str(path) + ".ref.safetensors")
    state = data["ema"].state_dict()
    assert sorted(state) == sorted(ref)
    for name, value in ref.items():
        assert state[name].dtype == torch.float16
        assert torch.equal(state[name], value), name
    assert data["network_kwargs"]["model_channels"] == TINY["model_channels"]
    assert data["network_kwargs"]["channel_mult"] == [1, 2]

    probe = load_file(str(path) + ".out.safetensors")
    net = load_official_pickle(path)["ema"]  # float32 by default
    out, logvar = net(probe["x"], probe["sigma"], torch.eye(TINY["label_dim"])[:2], return_logvar=True)
    torch.testing.assert_close(out, probe["out"], rtol=0, atol=1e-6)
    torch.testing.assert_close(logvar, probe["logvar"], rtol=0, atol=1e-6)
    assert not _unrelated_modules_loaded()
    with open(path, "rb") as f:  # a file object works too
        assert torch.equal(load_official_pickle(f)["ema"].unet.out_gain, net.unet.out_gain)


def test_auxiliary_objects_become_plain_configs(pickles):
    data = load_official_pickle(pickles / "network-snapshot-0000524-0.100.pkl")
    assert data["encoder"] == {"class": "StandardRGBEncoder"}
    assert data["loss_fn"] == {"P_mean": -0.8, "P_std": 1.6, "sigma_data": 0.5}
    assert data["dataset_kwargs"] == {
        "class_name": "training.dataset.ImageFolderDataset",
        "path": "datasets/demo.zip",
        "use_labels": True,
    }
    assert type(data["dataset_kwargs"]) is dict


def test_vae_encoder_config_and_protocol_2(pickles):
    data = load_official_pickle(pickles / "vae-proto2-0000065-0.050.pkl")
    assert data["ema"].label_dim == 0 and data["ema"].img_channels == 4
    assert data["encoder"] == {
        "class": "StabilityVAEEncoder",
        "vae_name": "stabilityai/sd-vae-ft-mse",
        "raw_mean": [5.81, 3.25, 0.12, -2.15],
        "raw_std": [4.17, 4.62, 3.71, 3.28],
        "final_mean": 0.0,
        "final_std": 0.5,
        "batch_size": 8,
    }


def test_vae_encoder_arguments_are_recorded(pickles):
    enc = load_official_pickle(pickles / "vae-custom.pkl")["encoder"]
    assert enc["raw_mean"] == [1.5, -2.25, 0.5, 3.0]
    assert enc["raw_std"] == [2.0, 4.0, 1.25, 0.5]


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious file would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _naive_load_in_subprocess(path, root):
    code = f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
    return official_pickles.run_with_packages(root, code, check=False)


@pytest.mark.parametrize("where", ["top", "nested"])
def test_shell_command_payload_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = _Payload(os.system, f"touch {marker}")
    obj = payload if where == "top" else {"ema": {"_parameters": [payload]}, "encoder": None}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(FormatError, match=r"refusing to load global '(os|posix)\.system'"):
        load_official_pickle(path)
    assert not marker.exists()
    # The payload is real: a naive load runs the command.
    _naive_load_in_subprocess(path, tmp_path)
    assert marker.exists()


@pytest.mark.parametrize(
    "func,args",
    [(eval, ("1+1",)), (subprocess.call, (["true"],)), (getattr, ("abc", "upper")), (importlib.import_module, ("os",))],
)
def test_other_dangerous_globals_are_refused(tmp_path, func, args):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(func, *args)))
    with pytest.raises(FormatError, match="refusing to load global"):
        load_official_pickle(path)


EVIL_MODULE = """
open({marker!r}, "w").write("pwned")
from torch_utils import persistence

@persistence.persistent_class
class {name}:
    def __init__(self):
        self.value = 1
"""


@pytest.mark.parametrize("class_name", ["Evil", "Precond"])
def test_module_source_payload_is_never_executed(tmp_path, class_name):
    """A persistent class whose stored source writes a file when executed."""
    marker = tmp_path / "pwned"
    pkgs = official_pickles.write_official_packages(tmp_path)
    (pkgs / "evil_module.py").write_text(EVIL_MODULE.format(marker=str(marker), name=class_name))
    path = tmp_path / "evil.pkl"
    code = (
        f"import pickle, evil_module, dnnlib; "
        f"pickle.dump(dnnlib.EasyDict(ema=evil_module.{class_name}()), open({str(path)!r}, 'wb'))"
    )
    official_pickles.run_with_packages(tmp_path, code)
    marker.unlink()  # written when the producer imported the module
    with pytest.raises(FormatError) as info:
        load_official_pickle(path)
    if class_name == "Evil":
        assert "'Evil' is not one of the known EDM2 classes" in str(info.value)
    assert not marker.exists()
    assert not _unrelated_modules_loaded()
    # The payload is real: a naive load executes the stored source.
    _naive_load_in_subprocess(path, tmp_path)
    assert marker.exists()


def test_truncated_and_non_pickle_files_are_format_errors(pickles, tmp_path):
    data = (pickles / "network-snapshot-0000524-0.100.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.pkl"):
        load_official_pickle(tmp_path / "cut.pkl")
    torch.save({"a": torch.zeros(2)}, tmp_path / "t.pkl")
    with pytest.raises(FormatError, match="ZIP archive"):
        load_official_pickle(tmp_path / "t.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FormatError, match="expected a dict with key 'ema'"):
        load_official_pickle(tmp_path / "list.pkl")
    with pytest.raises(FormatError, match="no such file"):
        load_official_pickle(tmp_path / "missing.pkl")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_dataset_ref_statistics_pickle(tmp_path, protocol):
    rng = np.random.default_rng(0)
    stats = {
        "num_images": 1000,
        "fid": {"mu": rng.normal(size=8), "sigma": rng.normal(size=(8, 8))},
        "fd_dinov2": {"mu": rng.normal(size=4).astype(np.float32), "sigma": np.eye(4)},
    }
    path = tmp_path / "img64.pkl"
    path.write_bytes(pickle.dumps(stats, protocol=protocol))
    loaded = load_official_stats(path)
    assert loaded["num_images"] == 1000
    for metric in ("fid", "fd_dinov2"):
        for key in ("mu", "sigma"):
            np.testing.assert_array_equal(loaded[metric][key], stats[metric][key])
            assert loaded[metric][key].dtype == stats[metric][key].dtype


def test_dataset_ref_statistics_npz_and_refusals(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.arange(3.0), sigma=np.eye(3))
    loaded = load_official_stats(tmp_path / "ref.npz")
    assert set(loaded) == {"fid"}
    np.testing.assert_array_equal(loaded["fid"]["sigma"], np.eye(3))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fid": _Payload(os.system, "true")}))
    with pytest.raises(FormatError, match="system"):
        load_official_stats(tmp_path / "evil.pkl")
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"fid": {"mu": np.zeros(2)}}))
    with pytest.raises(FormatError, match="needs 'mu' and 'sigma'"):
        load_official_stats(tmp_path / "bad.pkl")


def test_parse_official_name():
    assert parse_official_name("edm2-img512-xs-2147483-0.135.pkl") == (2147483, 0.135)
    assert parse_official_name("phema-0000524-0.100.pkl") == (524, 0.1)
    assert parse_official_name("network.pkl") is None


def test_convert_official_command(pickles, tmp_path):
    from edm2.cli import main
    from edm2.io.snapshot import load_snapshot

    src = pickles / "network-snapshot-0000524-0.100.pkl"
    dest = tmp_path / "net.safetensors"
    result = CliRunner().invoke(main, ["convert-official", str(src), str(dest)])
    assert result.exit_code == 0, result.output
    net, info = load_snapshot(dest, dtype=None)
    assert info.nimg == 524288 and info.kimg == 524 and info.ema_std == 0.1
    assert info.encoder == {"class": "StandardRGBEncoder"}
    assert info.extra["loss_kwargs"]["P_std"] == 1.6
    ref = load_file(str(src) + ".ref.safetensors")
    for name, value in ref.items():
        assert torch.equal(net.state_dict()[name], value), name

    evil = tmp_path / "evil-0000001-0.050.pkl"
    evil.write_bytes(pickle.dumps(_Payload(os.system, "true")))
    result = CliRunner().invoke(main, ["convert-official", str(evil), str(tmp_path / "x.safetensors")])
    assert result.exit_code != 0 and "refusing to load global" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_without_name_info_takes_explicit_values(pickles, tmp_path):
    info = convert_official_pickle(pickles / "vae-custom.pkl", tmp_path / "o.safetensors", nimg=2048, ema_std=0.2)
    assert info["nimg"] == 2048 and info["ema_std"] == 0.2
    assert info["encoder"]["raw_std"] == [2.0, 4.0, 1.25, 0.5]


class _Build:
    """Pickles as `func(*args)` followed by BUILD with `state`."""

    def __init__(self, func, args, state):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return self.func, self.args, self.state


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_tricks_are_refused(tmp_path):
    from collections import OrderedDict

    storage = torch.arange(4, dtype=torch.float32).storage()
    cases = {
        # a view past the end of its storage (would read foreign memory)
        "overruns its storage": _Payload(torch._utils._rebuild_tensor_v2, storage, 2, (4,), (1,), False, OrderedDict()),
        # BUILD on a tensor: torch's legacy __setstate__ would call set_() with any view
        "modified after construction": _Build(
            torch._utils._rebuild_tensor_v2,
            (storage, 0, (2,), (1,), False, OrderedDict()),
            (storage, 0, (1 << 20,), (1,)),
        ),
        "not a plain numeric type": np.array([1, "a"], dtype=object),
    }
    for message, payload in cases.items():
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps({"ema": payload}))
        with pytest.raises(FormatError, match=message):
            load_official_pickle(path)


# ---- reading the tensor layout in place (the post-hoc EMA input path) -------------------------


def _located(path, loc):
    """The tensor at `loc` read from the file bytes."""
    with open(path, "rb") as f:
        f.seek(loc.start)
        raw = bytearray(f.read(loc.nbytes))
    return torch.frombuffer(raw, dtype=loc.dtype).view(loc.shape) if loc.nbytes else torch.empty(loc.shape)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_layout_locates_every_tensor_in_the_file(tmp_path, protocol):
    path = tmp_path / f"network-snapshot-0000524-0.100-p{protocol}.pkl"
    big = dict(TINY, model_channels=32)  # tensors above and below the skipped size
    official_pickles.make_official_pickles(tmp_path, [dict(path=path, network_kwargs=big, seed=7, protocol=protocol)])
    tensors, info = official_pickle_layout(path)
    ref = load_file(str(path) + ".ref.safetensors")
    assert tensors.keys() == ref.keys()
    assert all(torch.equal(_located(path, loc), ref[name]) for name, loc in tensors.items())
    assert {loc.dtype for loc in tensors.values()} == {torch.float16}
    assert info["network_kwargs"] == load_official_pickle(path)["network_kwargs"]
    assert info["encoder"] == {"class": "StandardRGBEncoder"}
    assert info["extra"]["loss_kwargs"] == {"P_mean": -0.8, "P_std": 1.6, "sigma_data": 0.5}
    assert not _unrelated_modules_loaded()


def test_layouts_of_one_run_are_parsed_once_and_hold_for_every_file(tmp_path):
    # The first file has many identical small storages (every gain 0.25): each must map to its
    # own copy, or the later files, whose gains differ, would read another tensor's data.
    big = dict(TINY, model_channels=32)
    specs = [dict(path=tmp_path / "network-snapshot-0000000-0.050.pkl", network_kwargs=big, fill=0.25)]
    specs += [dict(path=tmp_path / f"network-snapshot-000{k}000-0.050.pkl", network_kwargs=big, seed=k) for k in (1, 2)]
    specs += [dict(path=tmp_path / "other-network.pkl", network_kwargs=TINY, seed=3)]
    paths = official_pickles.make_official_pickles(tmp_path, specs)
    # Same size, one byte different outside the tensor data: parsed on its own, not reused.
    moved = tmp_path / "moved-dataset.pkl"
    moved.write_bytes(paths[2].read_bytes().replace(b"datasets/demo.zip", b"datasets/demx.zip"))
    (tmp_path / "moved-dataset.pkl.ref.safetensors").write_bytes(Path(str(paths[2]) + ".ref.safetensors").read_bytes())
    layouts = OfficialLayouts()
    for path in paths + [moved]:
        tensors, info = layouts(path)
        assert (tensors, info) == official_pickle_layout(path)
        ref = load_file(str(path) + ".ref.safetensors")
        assert tensors.keys() == ref.keys()
        assert all(torch.equal(_located(path, loc), ref[name]) for name, loc in tensors.items()), path.name
        assert info["extra"]["source"] == path.name
    assert info["extra"]["dataset_kwargs"]["path"] == "datasets/demx.zip"
    assert len(layouts.templates) == 3  # the run, the other network, the changed file


def test_layout_of_protocol_2_falls_back_and_refusals_still_hold(pickles, tmp_path):
    assert official_pickle_layout(pickles / "vae-proto2-0000065-0.050.pkl") is None  # bytes re-encoded as text
    assert official_pickle_layout(pickles / "vae-custom.pkl")[1]["encoder"]["raw_std"] == [2.0, 4.0, 1.25, 0.5]
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ema": _Payload(os.system, f"touch {marker}")}))
    with pytest.raises(FormatError, match="refusing to load global"):
        official_pickle_layout(tmp_path / "evil.pkl")
    assert not marker.exists()
    data = (pickles / "vae-custom.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) - 1000])
    with pytest.raises(FormatError, match="cut.pkl"):
        official_pickle_layout(tmp_path / "cut.pkl")
