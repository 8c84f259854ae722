"""A download folder's bookkeeping: the SHA-256 of files, lock files shared by processes and
threads, the manifest `SHA256SUMS` (the format of `sha256sum`) and one-line errors for failed
writes (disk full, quota, read-only)."""

import contextlib
import fcntl
import hashlib
import os
import re
import stat
from pathlib import Path

from edm2.errors import DownloadError, FormatError
from edm2.io.atomic import WRITE_ERRNOS, atomic_write_text

MANIFEST = "SHA256SUMS"
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20  # the most a SHA256SUMS or a --list file may have (a few lines per file)


def read_bounded(path, what: str, limit: int = MAX_MANIFEST_BYTES) -> str:
    """The text of the regular file `path` (at most `limit` bytes; undecodable bytes replaced);
    a device, FIFO or folder, or a larger file, is a `FormatError` naming it (FileNotFoundError
    passes through)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise FormatError(f"{path}: not a regular file; give a {what}")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{path}: larger than {limit} bytes, the most a {what} may have")
    return data.decode("utf-8", errors="replace")


def sha256_file(path, bar=None) -> str:
    """SHA-256 hex digest of a file (read in 1 MiB blocks; `bar` is updated with the bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock on `path` across processes and threads, removed when released.

    The lock file is unlinked while still locked, so none is left behind: a process that waited
    on a file that was unlinked meanwhile (its inode no longer under `path`) opens it anew.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
                same = (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def read_manifest(path, text: str | None = None) -> dict:
    """`{file name: sha256 hex}` from a sha256sum-format file (missing file -> {}); `text`, when
    given, is parsed instead (`path` then only names it in errors)."""
    entries = {}
    if text is None:
        try:
            text = read_bounded(path, "sha256sum-format file")
        except FileNotFoundError:
            return entries
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.rstrip("\n"))
        if not m:
            raise FormatError(f"{path}:{number}: not a sha256sum line ('<64 hex digits>  <file name>')")
        entries[m.group(2).replace("\\", "/").rsplit("/", 1)[-1]] = m.group(1).lower()
    return entries


def _write_manifest(folder: Path, entries: dict) -> None:
    try:
        atomic_write_text(folder / MANIFEST, "".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))
    except OSError as e:
        raise _write_error(e, folder / MANIFEST, None) from None


def record_digest(folder, name: str, digest: str) -> None:
    """Add or replace the entry of `name` in `folder/SHA256SUMS` (atomic, under a lock)."""
    folder = Path(folder)
    with file_lock(folder / f".{MANIFEST}.lock"):
        entries = read_manifest(folder / MANIFEST)
        if entries.get(name) == digest:
            return
        entries[name] = digest
        _write_manifest(folder, entries)


def _forget_digest(folder: Path, name: str) -> None:
    with file_lock(folder / f".{MANIFEST}.lock"):
        entries = read_manifest(folder / MANIFEST)
        if entries.pop(name, None) is not None:
            _write_manifest(folder, entries)


def _write_error(e: OSError, path, fix: str | None) -> Exception:
    """A one-line DownloadError for a failed write of `path` (disk full, quota, read-only...),
    or `e` itself for other errors."""
    if e.errno not in WRITE_ERRNOS:
        return e
    fix = fix or "free space or write elsewhere"
    return DownloadError(f"cannot write {path}: {e.strerror or e}; {fix}")
