"""One writer per run folder: an advisory lock that a killed process releases.

    with RunLock("runs/xs"):          # raises ConfigError naming the holder if another process has it
        ...train...

Mechanism: a POSIX record lock (`fcntl.lockf`, F_SETLK on the whole file) on `<folder>/.edm2.lock`.
The kernel releases it when the process exits, however it exits (SIGKILL included), so a
killed job never leaves a stale lock. On cluster file systems POSIX locks are the ones that are
coherent between nodes: NFS (v3 through the NLM lock manager, v4 in the protocol; a dead
client's locks expire with its lease) and Lustre mounted with `-o flock`. BSD `flock()` is not
used: NFS emulates it with POSIX locks on Linux, and elsewhere (older kernels, FUSE, some
parallel file systems) it is local to one node, where two nodes would both "hold" it.

The lock file holds the holder's host, process id and start time (JSON), only so that a refused
process can name it; the lock itself is the kernel's. Where the file system cannot lock at all
(ENOLCK, EOPNOTSUPP, ENOSYS: Lustre with `-o localflock` reports success instead, which is
node-local), the run goes on with a one-line warning: refusing would stop every run there.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import warnings
from pathlib import Path

from edm2.errors import ConfigError

LOCK_NAME = ".edm2.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}

# POSIX locks are per process: a second lock of the same file in this process would succeed (and
# closing its descriptor would release the first). Locks held here are tracked by real path.
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


class RunLock:
    """Exclusive advisory lock on the folder `folder` (created if missing) for one writer.

    `what` names the folder in messages ("run folder", "output folder"). `acquire()` raises
    `ConfigError` ("<folder> is in use by host H, process P since T; ...") when another process,
    on this or another node, or another RunLock of this process, holds it. A context manager:
    released at the end of the block (and, in any case, when the process ends)."""

    def __init__(self, folder, what: str = "run folder"):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._key: str | None = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _HELD_GUARD:
            if key in _HELD:
                raise ConfigError(f"{self.folder} is in use by this process already; one writer per {self.what}")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(
                        f"{self.folder} is in use by {self._holder()}; one writer per {self.what}: wait for it "
                        "to finish or stop it, or choose another folder"
                    ) from None
                if e.errno in _UNSUPPORTED:
                    warnings.warn(
                        f"cannot lock {self.path} ({e.strerror}): this file system has no locks; make sure "
                        f"only one process writes {self.folder}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return self
                raise
            _HELD.add(key)
        self._fd, self._key = fd, key
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with _HELD_GUARD:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # the record names a holder only while there is one
            os.close(self._fd)  # releases the lock
            _HELD.discard(self._key)
        self._fd = self._key = None

    def _holder(self) -> str:
        """'host H, process P since T' from the lock file, or 'another process' if unreadable."""
        try:
            record = json.loads(self.path.read_text()[:4096])
            return f"host {record['host']}, process {int(record['pid'])} since {record['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
