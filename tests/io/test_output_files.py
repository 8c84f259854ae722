"""Every output file gets the usual mode (0666 less the umask), and identical inputs give
byte-identical snapshot and detector files (safetensors orders its metadata at random)."""

import os
import stat

import pytest
import torch
from tiny_networks import tiny_network

from edm2.io.snapshot import read_snapshot_info, save_snapshot
from edm2.metrics.cnn import CNNClassifier, save_detector
from edm2.nn import Precond


def tiny_precond():
    torch.manual_seed(0)
    return Precond(**tiny_network())


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_snapshots_are_byte_identical_and_get_the_usual_mode(tmp_path, umask_022):
    net = tiny_precond()
    extra = {"dataset": {"path": "x.zip", "cond": True}, "loss": {"P_mean": -0.4}, "a": 1, "z": [1, 2]}
    files = [tmp_path / f"snap{i}.safetensors" for i in range(4)]
    for f in files:
        save_snapshot(f, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 2048, 0.1, extra)
    first = files[0].read_bytes()
    assert all(f.read_bytes() == first for f in files[1:])
    assert all(mode(f) == 0o644 for f in files)
    info = read_snapshot_info(files[0])
    assert info.nimg == 2048 and info.ema_std == 0.1 and info.extra == extra


def test_detector_files_are_byte_identical_and_get_the_usual_mode(tmp_path, umask_022):
    torch.manual_seed(0)
    model = CNNClassifier(in_channels=3, resolution=8, num_classes=3)
    files = [tmp_path / f"cnn{i}.safetensors" for i in range(3)]
    for f in files:
        save_detector(f, model, 0.75, {"epochs": 1, "data": "d", "seed": 0, "batch": 8})
    assert files[1].read_bytes() == files[0].read_bytes() == files[2].read_bytes()
    assert all(mode(f) == 0o644 for f in files)


def test_other_umasks_are_honoured(tmp_path):
    old = os.umask(0o077)
    try:
        net = tiny_precond()
        save_snapshot(tmp_path / "s.safetensors", net.state_dict(), net.init_kwargs, {}, 0)
    finally:
        os.umask(old)
    assert mode(tmp_path / "s.safetensors") == 0o600


def test_a_damaged_snapshot_is_refused_on_load_naming_the_file(tmp_path):
    from click.testing import CliRunner

    from edm2.cli import main
    from edm2.errors import FormatError
    from edm2.io.snapshot import load_snapshot

    net = tiny_precond()
    path = tmp_path / "net.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, dtype=None)
    load_snapshot(path)  # intact: loads
    data = bytearray(path.read_bytes())
    data[-100:-84] = bytes(b ^ 0xFF for b in data[-100:-84])  # 16 bytes inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="contents damaged"):
        load_snapshot(path)
    r = CliRunner().invoke(main, ["generate", "--net", str(path), "--outdir", str(tmp_path / "out"), "--seeds", "0"])
    assert r.exit_code == 1 and str(path) in r.output and "contents damaged" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_stale_temporaries_of_dead_processes_are_removed_live_and_other_hosts_kept(tmp_path):
    import socket
    import subprocess
    import sys

    from edm2.io.atomic import atomic_write_text

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.json.{host}-{dead_pid}.abc123.tmp"
    live = tmp_path / f".out.json.{host}-{os.getpid()}.def456.tmp"  # a writer of this (live) process
    other = tmp_path / f".out.json.otherhost-{dead_pid}.ghi789.tmp"  # another node on a shared folder
    for p in (stale, live, other):
        p.write_text("partial")
    atomic_write_text(tmp_path / "out.json", "{}")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "out.json").read_text() == "{}"
