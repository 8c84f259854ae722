"""Writing datasets: a STORED ZIP or a folder, built under a temporary name and renamed into place
only when complete, so a failed or killed run never leaves an output that looks finished."""

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from edm2.errors import ConfigError, DataError
from edm2.io.atomic import atomic_path, remove_stale_temporaries, temporary_prefix
from edm2.naming import file_ext

# Fixed timestamp of every ZIP member, so the same images give the same bytes on every run.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class _ZipWriter:
    def __init__(self, zf: zipfile.ZipFile):
        self._zf = zf

    def write(self, name: str, data: bytes):
        info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED  # docs/method.md#datasets: no compression
        info.external_attr = 0o644 << 16
        self._zf.writestr(info, data)


class _DirWriter:
    def __init__(self, root: Path):
        self._root = root

    def write(self, name: str, data: bytes):
        path = self._root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def check_dest(dest, source=None) -> Path:
    """Refuse a destination that exists (ZIP) or is a non-empty folder, or that lies in the source."""
    dest = Path(dest)
    if source is not None:
        src, dst = Path(source).resolve(), dest.resolve()
        if dst == src or src in dst.parents:
            raise ConfigError(f"destination {dest} lies inside the source {source}; write it somewhere else")
    if file_ext(str(dest)) == ".zip":
        if dest.exists():
            raise DataError(f"destination {dest} already exists; delete it first or choose another name")
    elif dest.exists():
        if not dest.is_dir():
            raise DataError(f"destination {dest} exists and is not a folder; give a .zip name or a new folder")
        if any(dest.iterdir()):
            raise DataError(f"destination folder {dest} is not empty; empty it or choose another folder")
    return dest


@contextlib.contextmanager
def open_dest(dest, source=None):
    """Yield a writer with `.write(name, bytes)`; the dataset appears at `dest` only on success."""
    dest = check_dest(dest, source)
    if file_ext(str(dest)) == ".zip":
        with atomic_path(dest) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                yield _ZipWriter(zf)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(dest), suffix=".tmp", dir=dest.parent))
    try:
        yield _DirWriter(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; the dataset gets the usual mode
        if dest.exists():
            dest.rmdir()  # checked empty above
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
