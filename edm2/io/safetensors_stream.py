"""Reading and writing safetensors files at the byte level, for passes that stream tensor data
in chunks (post-hoc EMA reconstruction) instead of holding whole state dicts in memory.

The format: 8 bytes little-endian header length n, n bytes of JSON header `{name: {"dtype",
"shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` padded with spaces to a
multiple of 8, then the raw little-endian tensor data at the given offsets (relative to the end
of the header). Files written here load with `safetensors` and `edm2.io.snapshot.load_snapshot`.
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from edm2.errors import FormatError
from edm2.io.atomic import remove_stale_temporaries, temporary_prefix
from edm2.io.files import open_regular

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


# The safetensors library's own bound on the header (its MAX_HEADER_SIZE): the JSON is parsed
# in memory, so a hostile length field must not make us read gigabytes.
MAX_HEADER_BYTES = 100_000_000
# Bytes per element of every dtype the safetensors format names.
ITEMSIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


def parse_safetensors_header(f, path, size: int) -> tuple[int, dict, dict]:
    """`(header length, {name: entry}, metadata)` of the safetensors file open as `f` (binary,
    `size` bytes), every field checked: the length against the file and `MAX_HEADER_BYTES`, the
    JSON (nesting included) parsed into a dict, the metadata a {str: str} dict, each tensor entry
    a dtype the format knows, a shape of non-negative ints and data offsets inside the file that
    agree with the shape. Raises `FormatError` naming `path` and the field otherwise."""
    f.seek(0)
    head = f.read(8)
    if len(head) != 8:
        raise FormatError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise FormatError(
            f"{path}: not a safetensors file (header length {n} exceeds the file or the limit of "
            f"{MAX_HEADER_BYTES} bytes)"
        )
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        reason = "nested too deeply" if isinstance(e, RecursionError) else "bad JSON"
        raise FormatError(f"{path}: not a safetensors file (header {reason})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (the header is a {type(header).__name__}, not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: the safetensors metadata is not a map of strings to strings")
    data_size = size - 8 - n
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: tensor {name} has a malformed header entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in ITEMSIZES:
            raise FormatError(f"{path}: tensor {name} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 64:
            raise FormatError(f"{path}: tensor {name} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)) or not (
            0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise FormatError(
                f"{path}: tensor {name} has data offsets {offsets!r} outside the file; the file is truncated or corrupt"
            )
        if math.prod(shape) * ITEMSIZES[dtype] != offsets[1] - offsets[0]:
            raise FormatError(f"{path}: tensor {name} has data offsets that disagree with its shape {shape}")
    return n, header, metadata


def read_safetensors_header(path) -> tuple[dict, dict]:
    """`({name: TensorLocation}, metadata)` of a safetensors file, checked against its size.

    Raises FormatError for a file that is too short, a bad header, a dtype other than
    F16/BF16/F32/F64, or offsets that do not fit the file (truncated or corrupt).
    """
    path = Path(path)
    with open_regular(path) as f:
        n, header, metadata = parse_safetensors_header(f, path, os.fstat(f.fileno()).st_size)
    tensors = {}
    for name, entry in header.items():
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise FormatError(
                f"{path}: tensor {name} has unsupported dtype {entry['dtype']}; expected F16/BF16/F32/F64"
            )
        begin, end = entry["data_offsets"]
        tensors[name] = TensorLocation(dtype, tuple(entry["shape"]), 8 + n + begin, end - begin)
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


DIGEST_PLACEHOLDER = "0" * 64  # a SHA-256 in hex is as long: the digest replaces it without moving the data


def header_sha256(entries: dict, metadata: dict) -> str:
    """SHA-256 of a safetensors header: the tensor entries {name: {dtype, shape, data_offsets}}
    and the metadata less its "header_sha256" entry, as JSON with sorted keys (so neither the
    writer's key order nor the padding matters)."""
    meta = {k: v for k, v in metadata.items() if k != "header_sha256"}
    text = json.dumps({"__metadata__": meta, **entries}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def header_entries(entries) -> dict:
    """{name: {dtype, shape, data_offsets}} of `entries` [(name, dtype, shape)] stored back to
    back in this order."""
    header, offset = {}, 0
    for name, dtype, shape in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    return header


def safetensors_header(entries, metadata: dict) -> bytes:
    """The header bytes (length, JSON, padding to 8) for `entries` [(name, dtype, shape)] stored
    back to back in this order, with `metadata` {str: str}."""
    header = header_entries(entries)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def file_sha256(fd, start: int, end: int | None = None, digest=None) -> "hashlib._Hash":
    """`digest` (default: a new SHA-256) updated with the bytes [start, end) of the open file
    `fd` (end None: to the end of the file), read in 1 MiB pieces with positioned reads."""
    digest = hashlib.sha256() if digest is None else digest
    buf = memoryview(bytearray(1 << 20))  # one small buffer, filled again and again: no allocation per piece
    while end is None or start < end:
        got = os.preadv(fd, [buf if end is None else buf[: min(len(buf), end - start)]], start)
        if got <= 0:
            break
        digest.update(buf[:got])
        start += got
    return digest


class StreamingWriter:
    """Several safetensors files with one tensor layout, filled piece by piece at any offset.

    Each file is created under a temporary name next to its final path, with its header already
    written; `write(j, data, offset)` puts bytes at `offset` of file j's data section (thread
    safe: positioned writes); `commit()` fills in the digests, closes and renames every file
    into place. Used as a context manager, a block that raises removes the temporary files and
    leaves no output.

    Every file carries the digests of edm2.io.snapshot's writer, checked by the same readers:
    "sha256" (of the tensor data) and "header_sha256" (`header_sha256`), written as same-length
    placeholders first and filled in at `commit()`, so the data never moves and equal inputs
    give byte-identical files.
    """

    def __init__(self, paths, entries, metadatas):
        self.paths = [Path(p) for p in paths]
        self.entries = list(entries)
        self.metadatas = [{**m, "sha256": DIGEST_PLACEHOLDER, "header_sha256": DIGEST_PLACEHOLDER} for m in metadatas]
        self.fds, self.temps, self.data_start = [], [], []
        mode = 0o666 & ~_umask()
        try:
            for path, metadata in zip(self.paths, self.metadatas):
                header = safetensors_header(self.entries, metadata)
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

    def commit(self, threads: int = 1) -> list[Path]:
        """Fill in every file's digests (reading its data back, `threads` files at a time), close
        every file and rename it into place; returns the final paths."""
        entries = header_entries(self.entries)

        def seal(j):
            meta = dict(self.metadatas[j])
            meta["sha256"] = file_sha256(self.fds[j], self.data_start[j]).hexdigest()
            meta["header_sha256"] = header_sha256(entries, meta)
            header = safetensors_header(self.entries, meta)
            if len(header) != self.data_start[j]:  # cannot happen: the digests replace placeholders of their length
                raise FormatError(f"{self.paths[j]}: the header changed length when sealed; not written")
            pwrite_full(self.fds[j], memoryview(header), 0)

        if threads > 1 and len(self.fds) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(threads, len(self.fds))) as pool:
                list(pool.map(seal, range(len(self.fds))))  # hashlib releases the GIL
        else:
            for j in range(len(self.fds)):
                seal(j)
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
