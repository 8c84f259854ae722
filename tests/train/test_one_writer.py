"""One writer per run (edm2.train.run.lock_run_dir, docs/training.md): a second `edm2 train` on
an --outdir that a live one holds is refused in one line naming the holder, whatever the first
has written so far; a killed holder frees the folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from train_helpers import cli_args, make_dataset, run_two_slurm_task_ranks, tiny_options

from edm2.io.runlock import LOCK_NAME, RunLock


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("writer") / "ds", num_images=8)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def start(opts, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "edm2", "train", *cli_args(opts)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_holder(run_dir, proc, timeout=120) -> dict:
    """The lock record of `proc` once it holds the run folder's lock."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            record = json.loads((run_dir / LOCK_NAME).read_text())
            if record["pid"] == proc.pid:
                return record
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"{proc.args} never took the lock (exit {proc.poll()})")


def assert_refused(done_stdout, done_stderr, returncode, holder_pid, run_dir):
    errors = [line for line in done_stderr.splitlines() if line.strip()]
    assert returncode == 1, done_stdout + done_stderr
    assert len(errors) == 1, done_stderr
    assert errors[0].startswith(f"Error: {run_dir} is in use by host {socket.gethostname()}, process {holder_pid}")
    assert "one writer per run folder" in errors[0]


@pytest.mark.slow
def test_the_same_command_twice_on_one_outdir_the_second_is_refused_and_the_first_finishes(tmp_path, data):
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=2048, batch=32, status=256, snapshot=1024, checkpoint=1024)
    first = start(opts)
    holder = wait_for_holder(run_dir, first)  # as early as the lock exists: nothing else need be written yet
    second = subprocess.run(
        [sys.executable, "-m", "edm2", "train", *cli_args(opts)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.poll() is None, "the first run ended before the second was refused; the test proves nothing"
    assert_refused(second.stdout, second.stderr, second.returncode, holder["pid"], run_dir)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    ticks = [json.loads(line)["Progress/kimg"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(ticks) == 2048 // 256 + 1 and ticks == sorted(set(ticks))  # every tick once, by the first only
    log = (run_dir / "log.txt").read_text()
    assert log.count("Training options:") == 1 and "is in use by" not in log  # the refused run wrote nothing there
    assert (run_dir / "training-done.json").exists()
    assert (run_dir / LOCK_NAME).read_text() == ""  # released at the end: the record names no holder


def test_a_second_run_with_other_options_is_refused_by_the_lock_before_any_file_is_read(tmp_path, data):
    """The holder here is this test process; the refused `edm2 train` has other options and an
    --outdir without training_options.json yet: the lock decides, not the options."""
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=128, batch=32, lr=0.02)
    with RunLock(run_dir):
        done = subprocess.run(
            [sys.executable, "-m", "edm2", "train", *cli_args(opts)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert_refused(done.stdout, done.stderr, done.returncode, os.getpid(), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # no options, log or stats written


@pytest.mark.slow
def test_a_killed_holder_frees_the_run_folder_and_the_same_command_resumes(tmp_path, data):
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=2048, batch=32, status=256, snapshot=1024, checkpoint=1024)
    first = start(opts)
    wait_for_holder(run_dir, first)
    while first.poll() is None and not list(run_dir.glob("training-state-*.pt")):
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    again = subprocess.run(
        [sys.executable, "-m", "edm2", "train", *cli_args(opts)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Resuming from" in again.stdout and (run_dir / "training-done.json").exists()


@pytest.mark.slow
def test_two_ranks_all_stop_when_rank_0_is_refused_the_lock(tmp_path, data):
    """Two SLURM-style ranks on a held --outdir: rank 0 names the holder, rank 1 stops too, before any work."""
    run_dir = tmp_path / "run"
    opts = tiny_options(run_dir, data, duration=128, batch=32, status=64, snapshot=0, checkpoint=0)
    with RunLock(run_dir):
        outs, procs = run_two_slurm_task_ranks(opts, job_id=78)
    assert [p.returncode for p in procs] == [1, 1], outs
    assert_refused(*outs[0], 1, os.getpid(), run_dir)
    assert outs[1][1].strip() == f"Error: {run_dir} is in use by another process (rank 0 was refused its lock)"
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
