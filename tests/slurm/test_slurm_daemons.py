"""ci/slurm/start.sh and stop.sh: a real single-node SLURM that runs jobs, started and stopped by PID."""

import socket
import subprocess
import time
from pathlib import Path

import pytest
from slurm_helpers import (
    START,
    STATE,
    STOP,
    job_env,
    process_cmdline,
    recorded_pids,
    run_script,
    sbatch,
    slurm_answers,
    wait_for_job,
)

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "slurmctld", "slurmd")


def controller_port_open():
    """Whether something listens on slurmctld's port (6817 in ci/slurm/slurm.conf.in)."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", 6817)) == 0


def test_batch_job_runs_and_stays_on_record(slurm, tmp_path):
    job = sbatch(
        ["--mem=100", "--time=1", "--output=out-%j.txt", "--wrap", "echo job $SLURM_JOB_ID on $(hostname -s)"], tmp_path
    )
    record = wait_for_job(job, timeout=60)
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0"
    assert record["Partition"] == "debug"
    assert (tmp_path / f"out-{job}.txt").read_text().strip() == f"job {job} on {socket.gethostname().split('.')[0]}"


def test_fake_gpu_is_schedulable_and_visible_to_the_job(slurm, tmp_path):
    job = sbatch(
        ["--mem=100", "--time=1", "--gpus=a100:1", "--output=gpu.txt", "--wrap", "echo $CUDA_VISIBLE_DEVICES"], tmp_path
    )
    record = wait_for_job(job, timeout=60)
    assert record["JobState"] == "COMPLETED"
    assert record["TresPerJob"] == "gres:gpu:a100:1"
    assert (tmp_path / "gpu.txt").read_text().strip() == "0"


def test_two_tasks_of_one_job_get_their_own_ranks(slurm, tmp_path):
    job = sbatch(
        [
            "--ntasks=2",
            "--mem-per-cpu=100",
            "--time=1",
            "--output=ranks.txt",
            "--wrap",
            "srun bash -c 'echo $SLURM_PROCID/$SLURM_NTASKS'",
        ],
        tmp_path,
    )
    assert wait_for_job(job, timeout=60)["JobState"] == "COMPLETED"
    assert sorted((tmp_path / "ranks.txt").read_text().split()) == ["0/2", "1/2"]


def test_stop_and_start_act_on_recorded_daemons_only(slurm):
    before = recorded_pids()
    if set(before) != set(DAEMONS):
        pytest.skip(f"this SLURM was not started by ci/slurm/start.sh (no complete state in {STATE})")

    # A process that looks like a SLURM daemon by name but was not started by start.sh.
    decoy = subprocess.Popen(["bash", "-c", "exec -a slurmd sleep 300"])
    try:
        time.sleep(0.2)
        assert process_cmdline(decoy.pid).startswith("slurmd")

        out = run_script(STOP)
        assert out.returncode == 0, out.stderr
        for name, pid in before.items():
            assert f"stopped {name} (pid {pid})" in out.stdout
            cmdline = process_cmdline(pid)
            assert cmdline is None or name not in cmdline, f"{name} (pid {pid}) still running"
        assert decoy.poll() is None, "stop.sh killed a process it did not start"
        assert not Path("/run/slurmctld.pid").exists() and not Path("/run/slurmd.pid").exists()
        assert not controller_port_open()

        again = run_script(STOP)
        assert again.returncode == 0 and "nothing to stop" in again.stdout

        out = run_script(START)
        assert out.returncode == 0, out.stdout + out.stderr
        after = recorded_pids()
        assert set(after) == set(DAEMONS)
        for name, pid in after.items():
            assert name in process_cmdline(pid)
        assert slurm_answers()

        again = run_script(START)
        assert again.returncode == 0 and "already running" in again.stdout
        assert recorded_pids() == after
    finally:
        decoy.kill()
        decoy.wait()
        if set(recorded_pids()) != set(DAEMONS):
            run_script(START)


def test_environment_reaches_jobs(slurm, tmp_path):
    """sbatch exports the submitting environment: jobs find this venv's commands."""
    job = sbatch(["--mem=100", "--time=1", "--output=which.txt", "--wrap", "command -v edm2"], tmp_path, env=job_env())
    assert wait_for_job(job, timeout=60)["JobState"] == "COMPLETED"
    assert Path((tmp_path / "which.txt").read_text().strip()).parent == Path(job_env()["PATH"].split(":")[0])
