"""Training stops on numeric faults that the paper's safety measure cannot absorb
(edm2.train.finite, docs/training.md): one line, a non-zero exit, the last good files kept."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import cli_args, load_state, make_dataset, run_two_slurm_task_ranks, tiny_options

from edm2.errors import NumericError
from edm2.train.finite import NONFINITE_LOSS_STEPS, FiniteGuard
from edm2.train.run import run_training

SNAPSHOTS_AT_0 = [f"network-snapshot-0000000-{std}.safetensors" for std in ("0.050", "0.100")]


def edm2_train(opts, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "SLURM_"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "edm2", "train", *cli_args(opts), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def error_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("Error")]


def assert_every_file_finite(run_dir) -> None:
    """Every snapshot and training state on disk holds finite numbers only."""
    for path in run_dir.glob("network-snapshot-*.safetensors"):
        for name, t in load_file(path).items():
            assert torch.isfinite(t).all(), f"{path.name}: {name}"
    for path in run_dir.glob("training-state-*.pt"):
        for name, t in load_state(path)["net"].items():
            assert torch.isfinite(t).all(), f"{path.name}: {name}"


def poison(data_dir, index=3, value=np.nan):
    """Put `value` into one pixel of the `index`-th latent (.npy) image of a dataset folder."""
    path = sorted(data_dir.rglob("*.npy"))[index]
    arr = np.load(path)
    arr[0, 1, 2] = value
    np.save(path, arr)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_poisoned_latent_image_stops_training_after_consecutive_non_finite_losses(tmp_path, value):
    """A NaN (or inf) in a float latent dataset of 8 images: every batch of 32 holds it, so the loss is
    non-finite at every step; the run stops after NONFINITE_LOSS_STEPS steps instead of training on."""
    data = make_dataset(tmp_path / "latents", num_images=8, channels=8)
    poison(data, value=value)
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=4096, batch=32, status=128, snapshot=1024, checkpoint=1024)
    done = edm2_train(opts)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = error_lines(done)
    assert len(lines) == 1, done.stderr
    stop_at = NONFINITE_LOSS_STEPS * 32
    assert f"training stopped at {stop_at} images: the loss was not finite for {NONFINITE_LOSS_STEPS}" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (run_dir / "training-done.json").exists()
    assert not list(run_dir.glob("training-state-*.pt"))  # none at the stop (512 images)
    assert sorted(p.name for p in run_dir.glob("network-snapshot-*")) == SNAPSHOTS_AT_0
    assert_every_file_finite(run_dir)
    log = (run_dir / "log.txt").read_text()
    assert "Numeric fault: training stopped at 512 images" in log  # the reason is in the run's log too


def test_an_absurd_finite_learning_rate_stops_at_the_first_check_with_the_weight_named(tmp_path):
    """--lr 1e38 (finite, accepted by the option checks) overflows the weights in the first steps;
    gradients are finite, so only the weight check can see it."""
    data = make_dataset(tmp_path / "ds", num_images=8)
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=2048, batch=32, lr=1e38, status=64, snapshot=1024, checkpoint=1024)
    done = edm2_train(opts)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = error_lines(done)
    assert len(lines) == 1, done.stderr
    m = re.match(r"Error: training stopped at (\d+) images: weight (\S+) is not finite", lines[0])
    assert m and 0 < int(m.group(1)) <= 256 and "--lr" in lines[0], lines[0]  # a few steps: 1e38 overflows fast
    assert not (run_dir / "training-done.json").exists()
    assert not list(run_dir.glob("training-state-*.pt"))  # the first state would have been at 64 images
    assert sorted(p.name for p in run_dir.glob("network-snapshot-*")) == SNAPSHOTS_AT_0
    assert_every_file_finite(run_dir)


def test_a_run_stopped_by_a_numeric_fault_keeps_its_last_good_state_for_a_resume(tmp_path):
    """Good training first (a state at 1024 images), then the data turns bad: the stop writes no
    state after the fault is seen, and once the data are fixed the run resumes and finishes."""
    data = make_dataset(tmp_path / "latents", num_images=8, channels=8)
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=1024, batch=32, status=512, snapshot=1024, checkpoint=1024)
    run_training(opts)
    poison(data)
    longer = tiny_options(run_dir, data, duration=3072, batch=32, status=512, snapshot=1024, checkpoint=1024)
    with pytest.raises(
        NumericError, match=f"stopped at 1536 images: the loss was not finite for {NONFINITE_LOSS_STEPS}"
    ):
        run_training(longer)
    assert sorted(p.name for p in run_dir.glob("training-state-*.pt")) == ["training-state-0000001.pt"]
    assert json.loads((run_dir / "training-done.json").read_text())["nimg"] == 1024  # the first duration's, only
    assert_every_file_finite(run_dir)

    make_dataset(tmp_path / "latents", num_images=8, channels=8)  # the same clean images again
    result = run_training(longer)
    assert result.start_nimg == 1024 and result.finished
    assert json.loads((run_dir / "training-done.json").read_text())["nimg"] == 3072


def test_isolated_non_finite_losses_are_absorbed_by_zeroed_gradients():
    """The official measure handles a bad batch now and then: fewer than the limit in a row never stop a run."""
    guard = FiniteGuard("cpu", patience=3)
    net = torch.nn.Linear(2, 2)
    for loss in [1.0, float("nan"), float("nan"), 0.5, float("inf"), float("nan"), 2.0]:
        guard.after_step(torch.tensor(loss))
    guard.check(net, 7)
    for _ in range(3):
        guard.after_step(torch.tensor(float("nan")))
    with pytest.raises(NumericError, match="not finite for 3 consecutive steps"):
        guard.check(net, 10)
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(NumericError, match="weight bias is not finite"):
        FiniteGuard("cpu").check(net, 11)


def test_a_noise_level_that_overflows_stops_the_run_like_a_poisoned_dataset(tmp_path):
    """--P_mean 60 (finite, accepted): sigma ~ e^60 overflows sigma^2 in float32, so every loss is NaN."""
    data = make_dataset(tmp_path / "ds", num_images=8)
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=2048, batch=32, P_mean=60.0, status=128, snapshot=1024, checkpoint=1024)
    done = edm2_train(opts)
    assert done.returncode == 1, done.stdout + done.stderr
    assert error_lines(done) == [
        line for line in error_lines(done) if "training stopped at 512 images: the loss was not finite" in line
    ]
    assert len(error_lines(done)) == 1 and not (run_dir / "training-done.json").exists()
    assert not list(run_dir.glob("training-state-*.pt")) and not list(run_dir.glob("*.tmp"))
    assert_every_file_finite(run_dir)


@pytest.mark.slow
def test_two_ranks_stop_together_at_the_same_image_count_with_the_same_line(tmp_path):
    """Two SLURM-style ranks on a dataset whose every image holds a NaN: the check is all-reduced, so both
    ranks stop at the same image count with the same one line and exit 1, with no process group left."""
    data = make_dataset(tmp_path / "latents", num_images=8, channels=8)
    for index in range(8):  # every image: every rank's every batch
        poison(data, index=index)
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=4096, batch=32, status=128, snapshot=1024, checkpoint=1024)
    outs, procs = run_two_slurm_task_ranks(opts, job_id=79)
    assert [p.returncode for p in procs] == [1, 1], outs
    errors = [[line for line in err.splitlines() if line.startswith("Error")] for _out, err in outs]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    assert "training stopped at 512 images: the loss was not finite for 16 consecutive steps" in errors[0][0]
    assert not (run_dir / "training-done.json").exists() and not list(run_dir.glob("training-state-*.pt"))
