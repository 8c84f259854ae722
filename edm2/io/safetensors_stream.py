"""Reading and writing safetensors files at the byte level, for passes that stream tensor data
in chunks (post-hoc EMA reconstruction) instead of holding whole state dicts in memory.

The format: 8 bytes little-endian header length n, n bytes of JSON header `{name: {"dtype",
"shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` padded with spaces to a
multiple of 8, then the raw little-endian tensor data at the given offsets (relative to the end
of the header). Files written here load with `safetensors` and `edm2.io.snapshot.load_snapshot`.
"""

import contextlib
import dataclasses
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from edm2.errors import FormatError
from edm2.io.atomic import remove_stale_temporaries, temporary_prefix

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorLocation:
    """Where one contiguous tensor's raw data lies in a file (a safetensors file or an official
    pickle): dtype as stored, shape, absolute byte offset and length."""

    dtype: torch.dtype
    shape: tuple
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def read_safetensors_header(path) -> tuple[dict, dict]:
    """`({name: TensorLocation}, metadata)` of a safetensors file, checked against its size.

    Raises FormatError for a file that is too short, a bad header, a dtype other than
    F16/BF16/F32/F64, or offsets that do not fit the file (truncated or corrupt).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise FormatError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise FormatError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise FormatError(f"{path}: not a safetensors file (bad JSON header)") from None
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, entry in header.items():
        dtype = DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise FormatError(
                f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')}; expected F16/BF16/F32/F64"
            )
        begin, end = entry["data_offsets"]
        shape = tuple(int(s) for s in entry["shape"])
        t = TensorLocation(dtype, shape, 8 + n + begin, end - begin)
        if end > size - 8 - n or t.numel * dtype.itemsize != t.nbytes:
            raise FormatError(f"{path}: tensor {name} has inconsistent offsets; the file is truncated or corrupt")
        tensors[name] = t
    return tensors, metadata


def preadv_full(fd, view, offset) -> None:
    """Fill the writable buffer `view` from file position `offset` (raises FormatError at end of file)."""
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise FormatError("unexpected end of file while reading an input snapshot (was it truncated?)")
        view, offset = view[got:], offset + got


def pwrite_full(fd, view, offset) -> None:
    """Write all of `view` at file position `offset`."""
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def safetensors_header(entries, metadata: dict) -> bytes:
    """The header bytes (length, JSON, padding to 8) for `entries` [(name, dtype, shape)] stored
    back to back in this order, with `metadata` {str: str}."""
    header, offset = {}, 0
    for name, dtype, shape in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class StreamingWriter:
    """Several safetensors files with one tensor layout, filled piece by piece at any offset.

    Each file is created under a temporary name next to its final path, with its header already
    written; `write(j, data, offset)` puts bytes at `offset` of file j's data section (thread
    safe: positioned writes); `commit()` closes and renames every file into place. Used as a
    context manager, a block that raises removes the temporary files and leaves no output.
    """

    def __init__(self, paths, entries, metadatas):
        self.paths = [Path(p) for p in paths]
        self.fds, self.temps, self.data_start = [], [], []
        mode = 0o666 & ~_umask()
        try:
            for path, metadata in zip(self.paths, metadatas):
                header = safetensors_header(entries, metadata)
                remove_stale_temporaries(path)  # left by killed writers of the same output
                fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
                self.temps.append(Path(tmp))
                self.fds.append(fd)
                os.fchmod(fd, mode)  # mkstemp makes 0600; outputs get the usual umask mode
                pwrite_full(fd, memoryview(header), 0)
                self.data_start.append(len(header))
        except BaseException:
            self.abort()
            raise

    def write(self, j: int, data, offset: int) -> None:
        """Bytes `data` at byte `offset` of file j's tensor data."""
        pwrite_full(self.fds[j], data, self.data_start[j] + offset)

    def commit(self) -> list[Path]:
        """Close every file and rename it into place; returns the final paths."""
        self._close()
        for tmp, path in zip(self.temps, self.paths):
            os.replace(tmp, path)
        self.temps = []
        return self.paths

    def abort(self) -> None:
        """Close and delete every temporary file (nothing is left behind)."""
        self._close()
        for tmp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.temps = []

    def _close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()  # after commit() there is nothing left to remove


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
