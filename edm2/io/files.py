"""Opening an input file that must be a regular file, without blocking on anything else."""

import os
import stat

from edm2.errors import FormatError


def open_regular(path, missing: str | None = None):
    """Open `path` for binary reading if it is a regular file (or a link to one); raise
    `FormatError` naming it otherwise (`missing`: the whole message for a file that does not
    exist). Opened without blocking, so a FIFO named like a snapshot or pickle is refused
    instead of waiting forever for a writer, and a link to /dev/zero is refused instead of read
    without end."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FormatError(missing or f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: a folder, not a file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(f"{path}: not a regular file (a FIFO, device or socket, or a link to one)")
    os.set_blocking(fd, True)
    return open(fd, "rb", closefd=True)
