"""One writer per run folder (edm2.io.runlock): a second process is refused naming the holder,
and a killed holder leaves no stale lock. Real processes, real POSIX locks."""

import signal
import socket
import subprocess
import sys

import pytest

from edm2.errors import ConfigError
from edm2.io.runlock import LOCK_NAME, RunLock

HOLD = """
import sys, time
from edm2.io.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder_until_the_holder_is_killed(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        with pytest.raises(ConfigError) as refused:
            RunLock(run).acquire()
        message = str(refused.value)
        assert f"{run} is in use by host {socket.gethostname()}, process {holder.pid} since " in message
        assert "one writer per run folder" in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel releases the lock
        holder.wait()
    with RunLock(run) as lock:
        assert lock.path == run / LOCK_NAME
        assert '"pid"' in lock.path.read_text()


def test_the_same_process_cannot_take_the_lock_twice(tmp_path):
    """POSIX locks do not conflict within a process (and closing a second descriptor would drop
    the first): a second RunLock of the same folder here is refused all the same."""
    with RunLock(tmp_path):
        with pytest.raises(ConfigError, match="in use by this process already"):
            RunLock(tmp_path / "." / "").acquire()
    with RunLock(tmp_path):  # released at the end of the block
        pass


def test_a_released_lock_names_no_holder_and_other_processes_can_take_it(tmp_path):
    lock = RunLock(tmp_path).acquire()
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    out = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", ""), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "held", out.stderr


def test_a_holder_on_another_folder_does_not_block(tmp_path):
    holder = start_holder(tmp_path / "a")
    try:
        with RunLock(tmp_path / "b"):
            pass
    finally:
        holder.kill()
        holder.wait()
