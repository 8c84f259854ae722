"""Helpers for the tests that run jobs through the local SLURM of ci/slurm/ (docs/slurm.md).

Job records are read from `scontrol show job`, which keeps finished jobs for MinJobAge=600 s
(there is no accounting database, so no `sacct`).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START = REPO / "ci" / "slurm" / "start.sh"
STOP = REPO / "ci" / "slurm" / "stop.sh"
STATE = Path(os.environ.get("EDM2_SLURM_STATE", "/run/edm2-ci-slurm"))
VENV_BIN = Path(sys.executable).parent

# Job states after which a job will not run again by itself.
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def job_env(**extra):
    """The environment for sbatch/srun/snakemake: this venv first on PATH, so jobs find `edm2`,
    `torchrun` and `snakemake` (sbatch exports the submitting environment to the job)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    # Few threads per process: the machine has 2 cores, shared with other work.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def slurm_answers():
    """True when a SLURM controller answers and the partition has a usable node."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = out.stdout.split()
    return out.returncode == 0 and any(s.rstrip("*") in {"idle", "mixed", "allocated", "completing"} for s in states)


def run_script(script, timeout=180):
    """Runs ci/slurm/start.sh or stop.sh; returns the CompletedProcess (output captured as text)."""
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)


def recorded_pids():
    """{daemon: pid} as recorded by start.sh in its state folder."""
    if not STATE.is_dir():
        return {}
    return {p.stem: int(p.read_text()) for p in STATE.glob("*.pid") if p.read_text().strip()}


def process_cmdline(pid):
    """The command line of a live process, or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return None


def sbatch(args, cwd, env=None):
    """Submits a batch job (`sbatch --parsable ARGS`) from `cwd`; returns its job id (str)."""
    out = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=cwd, env=env or job_env(), capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"sbatch {' '.join(args)} failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def job_record(job_id):
    """The `scontrol show job` record of a job as a dict of its KEY=VALUE fields."""
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True)
    assert out.returncode == 0, f"no SLURM record of job {job_id}: {out.stderr.strip()}"
    return dict(re.findall(r"(?:^|\s)([A-Za-z/:]+)=(\S*)", out.stdout.strip()))


def wait_for_job(job_id, timeout):
    """Waits until a job reaches a final state; returns its record."""
    deadline = time.monotonic() + timeout
    while True:
        record = job_record(job_id)
        if record["JobState"] in FINAL_STATES:
            return record
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job_id)])
            raise AssertionError(f"job {job_id} did not finish within {timeout} s: {record}")
        time.sleep(1)


def read_tail(path, n=4000):
    """The last n characters of a text file, for assertion messages."""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError as e:
        return f"<{e}>"
