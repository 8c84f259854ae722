"""Outputs that cannot be written: checked before any compute and reported in one line naming
the path (read-only file systems, existing files where a folder is wanted, folders where a file
is wanted), and a disk that fills during the run gives one line too and leaves no partial file.

Read-only and full file systems are real tmpfs mounts (root can write anywhere else)."""

import json
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from tiny_networks import tiny_network

from edm2.cli import main
from edm2.io.snapshot import save_snapshot
from edm2.metrics.cnn import CNNClassifier, save_detector
from edm2.nn import Precond


def mount_tmpfs(where, options):
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    return where


@pytest.fixture
def mounts(tmp_path):
    made = []

    def mount(name, options):
        made.append(mount_tmpfs(tmp_path / name, options))
        return made[-1]

    yield mount
    for where in reversed(made):
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    labels = []
    for i in range(12):
        PIL.Image.fromarray(rng.integers(0, 256, [8, 8, 3], dtype=np.uint8)).save(images / f"{i:03d}.png")
        labels.append([f"{i:03d}.png", i % 3])
    (images / "dataset.json").write_text(json.dumps({"labels": labels}))
    torch.manual_seed(0)
    net = Precond(**tiny_network(label_dim=3))
    snapshots = root / "run"
    for std in (0.05, 0.1):
        save_snapshot(snapshots / f"network-snapshot-0000001-{std:.3f}.safetensors", net.state_dict(),
                      net.init_kwargs, {"class": "StandardRGBEncoder"}, 1024, std)  # fmt: skip
    cnn = root / "cnn.safetensors"
    save_detector(cnn, CNNClassifier(in_channels=3, resolution=8, num_classes=3, width=8, feature_dim=64), 0.5, {})
    return {"images": images, "net": snapshots / "network-snapshot-0000001-0.100.safetensors",
            "run": snapshots, "cnn": cnn}  # fmt: skip


def commands(inputs, out):
    """One command line per kind of output, writing under `out`."""
    i = {k: str(v) for k, v in inputs.items()}
    return {
        "convert": ["dataset", "convert", "--source", i["images"], "--dest", f"{out}/d.zip"],
        "convert-to-folder": ["dataset", "convert", "--source", i["images"], "--dest", f"{out}/d"],
        "generate": ["generate", "--net", i["net"], "--outdir", f"{out}/img", "--seeds", "0-3", "--steps", "2"],
        "phema": ["phema", "--indir", i["run"], "--outdir", f"{out}/ph", "--outstd", "0.07"],
        "train": ["train", "--outdir", f"{out}/run", "--data", i["images"], "--preset", "edm2-img64-xs",
                  "--duration", "64", "--batch", "8", "--channels", "8", "--precision", "fp32", "--workers", "0"],
        "metrics-ref": ["metrics", "ref", "--data", i["images"], "--dest", f"{out}/ref.npz", "--metrics", "fd_cnn",
                        "--cnn-detector", i["cnn"], "--workers", "0"],
        "train-detector": ["metrics", "train-detector", "--data", i["images"], "--dest", f"{out}/c.safetensors"],
        "convert-official": ["convert-official", i["net"], f"{out}/x.safetensors"],
    }  # fmt: skip


def invoke(args):
    return CliRunner().invoke(main, args)


def assert_one_line_error(r, path):
    assert r.exit_code != 0, r.output
    lines = [line for line in r.output.strip().splitlines() if not line.startswith(("features", "generate", "  "))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert str(path) in lines[0] and "Traceback" not in r.output


@pytest.mark.parametrize("name", list(commands({k: "x" for k in ("images", "net", "run", "cnn")}, "o")))
def test_read_only_destination_is_one_line_before_any_compute(inputs, mounts, name):
    ro = mounts("ro", "ro,size=1m")
    args = commands(inputs, ro)[name]
    r = invoke(args)
    assert_one_line_error(r, ro)
    assert "Read-only file system" in r.output
    assert "features" not in r.output and "kimg" not in r.output  # nothing was computed


def test_an_existing_file_where_a_folder_is_wanted(inputs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for name in ("generate", "phema", "train", "convert-to-folder"):
        args = [a.replace(str(tmp_path / "o"), str(blocker)) for a in commands(inputs, tmp_path / "o")[name]]
        r = invoke(args)
        assert_one_line_error(r, blocker)


def test_a_folder_where_a_file_is_wanted(inputs, tmp_path):
    (tmp_path / "ref.npz").mkdir()
    r = invoke(commands(inputs, tmp_path)["metrics-ref"])
    assert_one_line_error(r, tmp_path / "ref.npz")
    assert "it is a folder" in r.output


def test_a_disk_that_fills_during_the_run_gives_one_line_and_no_partial_file(inputs, mounts):
    full = mounts("full", "size=16k")  # room for the write check, not for 64x64 float64 statistics
    r = invoke(commands(inputs, full)["metrics-ref"])
    assert_one_line_error(r, full)
    assert "No space left on device" in r.output
    assert list(full.iterdir()) == []  # no partial or temporary file


def test_full_disk_while_writing_a_training_state_or_a_snapshot(mounts):
    from edm2.errors import OutputError
    from edm2.io.snapshot import write_safetensors
    from edm2.train.checkpoint import write_training_state

    full = mounts("full", "size=64k")
    big = torch.zeros(100_000)  # 400 kB
    with pytest.raises(OutputError, match="cannot write training state .*training-state-0000001.pt"):
        write_training_state(full / "training-state-0000001.pt", {"net": {"w": big}})
    with pytest.raises(OutputError, match="cannot write .*net.safetensors: .*No space left on device"):
        write_safetensors(full / "net.safetensors", {"w": big}, {"format": "x"})
    assert list(full.iterdir()) == []


# convert-official's input in `commands` is no pickle (it only checks the output before reading).
@pytest.mark.parametrize(
    "name", [n for n in commands({k: "x" for k in ("images", "net", "run", "cnn")}, "o") if n != "convert-official"]
)
def test_every_command_on_a_disk_that_fills_names_the_file_and_says_so(inputs, mounts, name):
    """One page of room: the write check passes (an empty file), the outputs do not fit. The
    error is one sentence naming the output being written under the full disk and the cause."""
    full = mounts("full", "size=4k")
    r = invoke(commands(inputs, full)[name])
    assert r.exit_code != 0, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in r.output and "enforce fail" not in r.output, r.output
    assert f"{full}/" in errors[0] and "No space left on device" in errors[0], r.output
    assert not [p for p in full.rglob("*") if p.name.endswith(".tmp") or ".part" in p.name], list(full.rglob("*"))
