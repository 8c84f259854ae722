"""Write files under a temporary name and rename them into place, so a killed job never
leaves a file that looks finished."""

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from edm2.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_prefix(path) -> str:
    """File name prefix of this process's temporaries for `path`: `.<name>.<host>-<pid>.`, so that
    a later run can tell the temporaries of killed processes from those of live ones."""
    return f".{Path(path).name}.{socket.gethostname()}-{os.getpid()}."


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporaries for `path` left by killed processes of this host (SIGKILL, power
    loss: no cleanup code ran); return what was removed. Temporaries of live processes, and of
    other hosts sharing the folder, are kept."""
    path = Path(path)
    host = socket.gethostname()
    pattern = re.compile(re.escape(f".{path.name}.{host}-") + r"(\d+)\..*\.tmp")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        m = pattern.fullmatch(candidate.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds.

    On any exception the temporary file is removed and `path` is left untouched; temporaries of
    earlier, killed writers of the same `path` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes 0600 files, and some writers (safetensors) replace the file at `tmp` with
        # their own: set the usual mode (0666 less the umask) on whatever is there at the end.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(path)) from None  # name the output, not the temporary
        raise


@contextlib.contextmanager
def made_folder(path):
    """Create the folder `path` (and missing parents) for the block; if the block raises, remove
    again the folders it created that are still empty (a failed command leaves no empty output
    folder behind)."""
    path = Path(path)
    created = [p for p in [path, *path.parents] if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` under a temporary name, then rename (no partial file on failure)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


class _WriteErrorRecorder:
    """A binary file for `torch.save` that keeps the first OSError of a write: torch reports a
    failed write only as RuntimeError("[enforce fail at inline_container.cc] unexpected pos"),
    which says neither the file nor that the disk is full."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.file.flush()


def torch_save(obj, path) -> None:
    """`torch.save(obj, path)`, raising the OSError of a failed write (ENOSPC, EDQUOT, EIO, ...)
    with `path` as its filename instead of torch's RuntimeError."""
    import torch  # here: the other writers of this module need no torch

    with open(path, "wb") as f:
        recorder = _WriteErrorRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is None:
                raise
            e = recorder.error
            raise OSError(e.errno, e.strerror, str(path)) from None


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path(".")


def _probe_writable(folder: Path, path: Path, what: str) -> None:
    """Create and remove a file in `folder`, so that a read-only file system, missing permission
    or a full disk is reported now, before any compute, naming `path`."""
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edm2-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"cannot write {what} {path}: {e.strerror or e} ({folder}); choose another location"
        ) from None


def check_output_file(path, what: str = "output") -> Path:
    """Raise `OutputError` now if the file `path` could not be written later: it is a folder, or
    its folder (or the nearest existing parent) is read-only, not a folder, or full. The folders
    are created later by `atomic_path`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder; give a file name")
    _probe_writable(_nearest_existing(path.parent), path, what)
    return path


def check_output_dir(path, what: str = "output folder") -> Path:
    """Raise `OutputError` now if files could not be written into the folder `path` later: it
    exists and is not a folder, or it (or the nearest existing parent) is read-only or full."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write into {what} {path}: it exists and is not a folder")
    _probe_writable(_nearest_existing(path), path, what)
    return path


# Errors of writing that mean "this output cannot be written here", reported in one line.
WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EISDIR,
    errno.ENOTDIR,
}


def describe_write_error(e: OSError, outputs=()) -> str | None:
    """One line for an OSError of writing an output (disk full, read-only, ...), else None.

    It names the file of the error; where the writer did not say (a stream such as a log, a
    library that drops the name), the command's output paths `outputs` instead."""
    if e.errno not in WRITE_ERRNOS:
        return None
    if e.filename:
        where = f" {e.filename}"
    elif outputs:
        where = f" under {', '.join(outputs)}"
    else:
        where = " an output"
    return f"cannot write{where}: {e.strerror or e}; free space or choose another location (nothing partial was kept)"
