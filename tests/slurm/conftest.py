"""The local SLURM for the tests in this folder: started by ci/slurm/start.sh when none answers.

Every test module here is marked `slurm` (pytestmark). They are skipped (with the reason) only
where SLURM cannot be started; under CI (CI=true) that is an error instead, since CI must run
them. Test sessions on one machine take turns (a file lock): the tests stop and restart the
daemons and read job records that a restart would wipe.
"""

import fcntl
import os
import time
from pathlib import Path

import pytest
from slurm_helpers import START, STOP, run_script, slurm_answers

LOCK = Path(os.environ.get("EDM2_SLURM_LOCK", "/tmp/edm2-slurm-tests.lock"))
LOCK_WAIT_S = 1800


def take_turn():
    """An open file holding the exclusive lock; waits while another test session holds it."""
    handle = open(LOCK, "a")  # held for the whole session
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                pytest.fail(f"another test session has held {LOCK} (the local SLURM) for {LOCK_WAIT_S} s")
            time.sleep(2)


@pytest.fixture(scope="session")
def slurm():
    """A SLURM that answers, with partition `debug` and an idle node; stopped at the end of the
    session only if this fixture started it (EDM2_SLURM_KEEP=1 leaves it running)."""
    turn = take_turn()
    started = False
    try:
        if not slurm_answers():
            if os.geteuid() != 0:
                reason = "the local SLURM is not running and ci/slurm/start.sh needs root to install and start it"
            else:
                out = run_script(START)
                started = out.returncode == 0
                reason = f"ci/slurm/start.sh could not start SLURM (exit {out.returncode}):\n{out.stdout}{out.stderr}"
            if not started or not slurm_answers():
                if os.environ.get("CI"):
                    pytest.fail(f"SLURM must be startable in CI. {reason}")
                pytest.skip(reason)
        yield
        if started and not os.environ.get("EDM2_SLURM_KEEP"):
            run_script(STOP)
    finally:
        turn.close()  # releases the lock
