"""A run is a pure function of its options: training in one go, in slices, after a corrupt
training state, with DataLoader workers, or after a SIGTERM gives bit-identical weights, EMAs and
optimizer state on CPU (docs/method.md#training)."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from train_helpers import assert_same_tensors, cli_args, load_state, make_dataset, tiny_options, wait_for_steps

from edm2.io.snapshot import load_state_dict
from edm2.train.checkpoint import list_training_states
from edm2.train.run import EX_TEMPFAIL, run_training


def assert_same_state(path_a, path_b):
    a, b = load_state(path_a), load_state(path_b)
    assert a["state"]["cur_nimg"] == b["state"]["cur_nimg"]
    for key in ("net", "optimizer", "ema", "loss_fn"):
        assert_same_tensors(a[key], b[key], key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """2048 images (32 steps of 64) in one invocation, checkpoints at 1 and 2 kimg."""
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "ds", num_images=48)
    opts = tiny_options(root / "ref", data)
    result = run_training(opts)
    assert result.finished and result.cur_nimg == 2048
    return dict(dir=root / "ref", data=data, root=root)


def test_two_slices_equal_one_go(reference, tmp_path):
    opts = tiny_options(tmp_path / "run", reference["data"], slice=1024)
    first = run_training(opts)
    assert (first.cur_nimg, first.stop_at_nimg, first.finished) == (1024, 1024, False)
    assert not (tmp_path / "run" / "training-done.json").exists()
    second = run_training(opts)
    assert (second.start_nimg, second.cur_nimg, second.finished) == (1024, 2048, True)
    for kimg in (1, 2):
        assert_same_state(
            reference["dir"] / f"training-state-000000{kimg}.pt", tmp_path / "run" / f"training-state-000000{kimg}.pt"
        )
    for std in ("0.050", "0.100"):
        name = f"network-snapshot-0000002-{std}.safetensors"
        assert_same_tensors(load_state_dict(reference["dir"] / name), load_state_dict(tmp_path / "run" / name))
    third = run_training(opts)  # already done: nothing to train, exit cleanly
    assert third.finished and third.cur_nimg == third.start_nimg == 2048


def test_corrupt_newest_training_state_is_reported_and_the_previous_one_used(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference["dir"], run_dir)
    newest = run_dir / "training-state-0000002.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    (run_dir / "training-done.json").unlink()
    result = run_training(tiny_options(run_dir, reference["data"]))
    out = capsys.readouterr().out
    assert "cannot read" in out and "training-state-0000002.pt" in out and "Resuming from" in out
    assert result.start_nimg == 1024 and result.finished
    assert_same_state(reference["dir"] / "training-state-0000002.pt", newest)


def flip_bytes_inside_the_largest_tensor(path, count=16):
    """Damage a training state as a bad disk would: bytes inside a tensor change, the archive
    stays readable (torch.save stores tensor data uncompressed)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    with open(path, "r+b") as f:
        f.seek(start)
        old = f.read(count)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in old))


def test_a_damaged_but_readable_training_state_is_refused_by_its_checksum(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference["dir"], run_dir)
    newest = run_dir / "training-state-0000002.pt"
    flip_bytes_inside_the_largest_tensor(newest)
    load_state(newest)  # still unpickles: only the checksum can tell
    (run_dir / "training-done.json").unlink()
    result = run_training(tiny_options(run_dir, reference["data"]))
    out = capsys.readouterr().out
    assert f"cannot read {newest}" in out and "contents damaged" in out and "Resuming from" in out
    assert result.start_nimg == 1024 and result.finished
    assert_same_state(reference["dir"] / "training-state-0000002.pt", newest)


def test_dataloader_workers_do_not_change_the_numbers(reference, tmp_path):
    run_training(tiny_options(tmp_path / "run", reference["data"], duration=1024, workers=1))
    assert_same_state(reference["dir"] / "training-state-0000001.pt", tmp_path / "run" / "training-state-0000001.pt")


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, workers",
    [(signal.SIGTERM, 0), (signal.SIGINT, 1)],
    ids=["SIGTERM", "Ctrl-C-to-the-process-group-with-a-DataLoader-worker"],
)
def test_a_signal_writes_a_checkpoint_exits_75_and_resumes_exactly(reference, tmp_path, signum, workers):
    """SIGTERM to the process, or Ctrl-C as a terminal sends it (SIGINT to the whole process
    group, DataLoader workers included): the step finishes, a training state is written."""
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, reference["data"], workers=workers)
    cmd = [sys.executable, "-m", "edm2", "train", *cli_args(opts)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "LOCAL_RANK", "SLURM_"))
    }
    env["OMP_NUM_THREADS"] = "1"  # the reference ran single-threaded (conftest)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    wait_for_steps(proc, run_dir)  # nimg 0 and three steps done
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # what a terminal does on Ctrl-C
    else:
        proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EX_TEMPFAIL, out
    assert f"Received {signal.Signals(signum).name}" in out and "Re-run the same command to resume" in out
    states = list_training_states(run_dir)
    stopped_at = load_state(states[0])["state"]["cur_nimg"]
    assert 0 < stopped_at < 2048 and stopped_at % 64 == 0

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Resuming from {states[0]}" in done.stdout
    assert_same_state(reference["dir"] / "training-state-0000002.pt", run_dir / "training-state-0000002.pt")


def test_sigterm_during_start_up_stops_before_the_first_step_with_75(reference, tmp_path, monkeypatch):
    """`edm2 train` catches the signal from its first line on (here: while the dataset is opened)."""
    from click.testing import CliRunner

    import edm2.train.plan as plan_module
    from edm2.cli import main

    real_open = plan_module.open_dataset

    def open_and_get_signalled(kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_open(kwargs)

    monkeypatch.setattr(plan_module, "open_dataset", open_and_get_signalled)
    previous = signal.getsignal(signal.SIGTERM)
    args = ["train", *cli_args(tiny_options(tmp_path / "run", reference["data"], duration=1024))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EX_TEMPFAIL, result.output
    assert "Received SIGTERM before the first step" in result.output and "nothing new to save" in result.output
    assert not list_training_states(tmp_path / "run")
    assert "object at 0x" not in (tmp_path / "run" / "training_options.json").read_text()  # comparable across runs
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is removed again
    monkeypatch.setattr(plan_module, "open_dataset", real_open)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert_same_state(reference["dir"] / "training-state-0000001.pt", tmp_path / "run" / "training-state-0000001.pt")
