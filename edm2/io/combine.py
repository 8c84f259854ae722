"""Linear combinations of the tensors of many files, streamed with bounded memory.

Given n_in input files that hold the same tensors (safetensors files, or official pickles read
in place: anything whose tensors are located by `TensorLocation`s) and coefficients X
[n_in, n_out], `write_linear_combinations` writes n_out safetensors files with
`out_j = sum_i X[i, j] * in_i` for every combined tensor. Instead of holding whole state dicts
in memory, the combined tensors of all inputs are streamed chunk by chunk: the chunk `[a, b)` of
the flattened tensors of every input forms a matrix W [n_in, b - a], one matrix product `X^T W`
gives that chunk of every output, which is cast to fp16 and written at its place in the output
files. Each input byte is read once, whatever the number of outputs, and the working memory is
a few chunk-sized buffers chosen to fit `max_memory`.

Reading (a thread doing `preadv`), computing (a few worker threads, each on its own chunks)
and writing (a thread doing `pwrite`) overlap. Outputs are written piece by piece under
temporary names and renamed into place when complete (`StreamingWriter`, which seals them with
the SHA-256 digests of our snapshots). An input with a recorded digest (`TensorFile.sha256`) is
verified from the bytes the pass reads, by hasher threads beside the workers; a product out of
float16 range or not finite (a NaN or infinite input weight) is refused naming the input and
the tensor.

Nothing here knows what the tensors or coefficients mean; `edm2.ema.phema` uses it for the
post-hoc EMA reconstruction.
"""

import contextlib
import dataclasses
import hashlib
import os
import queue
import re
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edm2.errors import ConfigError, FormatError
from edm2.io.safetensors_stream import StreamingWriter, file_sha256, preadv_full

_DEFAULT_CHUNK_BYTES = 160 << 20  # working buffers beyond this do not make the pass faster
_FP16_OVERFLOW = 65520.0  # the smallest magnitude that rounds to infinity in float16


def parse_bytes(value) -> int:
    """'4GiB', '512MB', '2G' or an integer (bytes) -> bytes. Raises ConfigError for other text."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ConfigError(f"{value!r} is not a memory size; use e.g. 4GiB, 512MiB or a number of bytes")
    base = 1024 if m.group(3) or not m.group(2) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclasses.dataclass
class TensorFile:
    """An input: the file read (`path`), where its tensors lie in it (`tensors`:
    {name: `edm2.io.safetensors_stream.TensorLocation`}) and the file to name in error messages
    (`shown`: the one the user gave, when `path` is a converted copy of it)."""

    path: Path
    tensors: dict
    shown: Path | None = None
    dtype: torch.dtype | None = None  # of the combined tensors; set by `plan_tensors`
    sha256: str | None = None  # recorded SHA-256 of the bytes from `data_start` to the end, verified by the pass
    data_start: int = 0  # where the tensor data begins (a safetensors file: 8 + header length)

    @property
    def name(self) -> Path:
        return self.shown or self.path


def plan_tensors(files: list, copied: Callable[[str], bool]) -> tuple[list, list, dict]:
    """Check that every file holds the same tensors; set each file's dtype of the combined ones.

    `copied(name)` is true for the tensors taken as they are from the last file instead of
    combined. Returns `(combined, copied_names, shapes)`: combined [(name, numel, shape)] in the
    data order of the first file (so chunks are contiguous runs in every file with the same
    layout), copied_names sorted. Raises FormatError when the names or shapes differ between
    files, or the combined tensors of one file are of mixed dtypes.
    """
    first = files[0]
    shapes = {name: t.shape for name, t in first.tensors.items()}
    names = sorted(shapes)
    copied_names = [name for name in names if copied(name)]
    combined = [name for name in names if not copied(name)]
    for f in files:
        if set(f.tensors) != set(names) or any(f.tensors[k].shape != shapes[k] for k in names):
            raise FormatError(
                f"{f.name.name}: its tensors differ from those of {first.name.name}; "
                "the inputs must be snapshots of one network"
            )
        dtypes = {f.tensors[k].dtype for k in combined}
        if len(dtypes) != 1:
            raise FormatError(f"{f.name}: parameters of mixed dtypes {dtypes} are not supported")
        f.dtype = dtypes.pop()
    combined = sorted(combined, key=lambda k: first.tensors[k].start)
    combined = [(name, int(np.prod(shapes[name], dtype=np.int64)), shapes[name]) for name in combined]
    return combined, copied_names, shapes


class _Pipeline:
    """Error and stop signalling shared by the reader, compute and writer threads."""

    def __init__(self):
        self.error = None
        self.stop = threading.Event()

    def fail(self, e):
        if self.error is None:
            self.error = e
        self.stop.set()

    def put(self, q, item):
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def get(self, q):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass
        return None

    def thread(self, target, *args):
        def run():
            try:
                target(*args)
            except BaseException as e:
                self.fail(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def _plan_chunks(params, chunk):
    """Split the flattened tensors into chunks of `chunk` elements.

    Each chunk is `(a, b, pieces)` with pieces `(tensor index, first, end, position in chunk)`.
    """
    flat_start = np.cumsum([0] + [numel for _, numel, _ in params])
    total = int(flat_start[-1])
    chunks = []
    for a in range(0, total, chunk):
        b = min(a + chunk, total)
        p = int(np.searchsorted(flat_start, a, side="right") - 1)
        pieces = []
        while p < len(params) and flat_start[p] < b:
            e0, e1 = max(a, flat_start[p]) - flat_start[p], min(b, flat_start[p + 1]) - flat_start[p]
            pieces.append((p, int(e0), int(e1), int(flat_start[p] + e0 - a)))
            p += 1
        chunks.append((a, b, pieces))
    return chunks


class _InputDigest:
    """The SHA-256 of one input's tensor data (file offset `data_start` to the end), computed
    from the bytes the pass reads anyway, in file order: the reader hands each run it read to
    `update`; the bytes it skips (tensors that are not combined) are read here as they are passed,
    the rest at `verify`. An input whose runs come out of file order (a layout unlike the first
    input's) is hashed again in full at `verify`."""

    def __init__(self, src: TensorFile):
        self.src = src
        self.digest = hashlib.sha256()
        self.pos = src.data_start  # every byte before this one is in the digest
        self.in_order = True

    def update(self, fd, pos: int, data) -> None:
        if not self.in_order:
            return
        if pos < self.pos:
            self.in_order = False
            return
        if pos > self.pos:
            file_sha256(fd, self.pos, pos, self.digest)
        self.digest.update(data)
        self.pos = pos + len(data)

    def verify(self, fd) -> None:
        """Raise FormatError naming the input if its data differ from the recorded digest."""
        if self.in_order:
            actual = file_sha256(fd, self.pos, None, self.digest).hexdigest()
        else:
            actual = file_sha256(fd, self.src.data_start).hexdigest()
        if actual != self.src.sha256:
            raise FormatError(
                f"{self.src.name}: contents damaged (SHA-256 of the tensor data {actual[:16]}..., written with "
                f"{self.src.sha256[:16]}...); restore or recreate the file. No output written"
            )


class _StreamingPass:
    """Write the combined tensor data of every output: the one-pass loop.

    One reader thread fills raw staging buffers with `preadv` (row i = chunk of input i),
    `workers` compute threads each convert a chunk to `acc_dtype`, multiply it by the
    coefficients and cast the result to fp16, and one writer thread puts row j of the result
    into output j. Torch runs single-threaded inside each compute thread: independent chunks in
    parallel scale better than intra-op threads on a busy machine.
    """

    def __init__(self, sources, params, X, out, acc_dtype, chunk, workers, progress, stats, select=None):
        # Rows grouped by dtype, widest first, so every group starts aligned for a dtype view.
        order = sorted(range(len(sources)), key=lambda i: -sources[i].dtype.itemsize)
        self.sources, X = [sources[i] for i in order], X[order]
        self.n_in, self.n_cols = X.shape
        # select [n_params, n_out]: the column of X each output takes for each combined tensor
        # (None: output j is column j for every tensor).
        self.select = None if select is None else torch.from_numpy(np.asarray(select, dtype=np.int64))
        self.n_out = self.n_cols if select is None else self.select.shape[1]
        self.itemsizes = [src.dtype.itemsize for src in self.sources]
        self.row_start = np.cumsum([0] + self.itemsizes)  # staging row i starts at row_start[i] * n bytes
        self.groups = []  # (first row, end row, dtype): runs of inputs converted in one copy
        for i, src in enumerate(self.sources):
            if self.groups and self.groups[-1][2] == src.dtype:
                self.groups[-1][1] = i + 1
            else:
                self.groups.append([i, i + 1, src.dtype])
        self.chunks = _plan_chunks(params, chunk)
        self.param_names = [name for name, _, _ in params]
        self.digests = [_InputDigest(src) if src.sha256 else None for src in self.sources]
        self.param_starts = [[src.tensors[name].start for name, _, _ in params] for src in self.sources]
        self.Ct = torch.from_numpy(np.ascontiguousarray(X.T)).to(acc_dtype)  # [n_out, n_in]
        self.out, self.acc_dtype, self.chunk, self.workers = out, acc_dtype, chunk, workers
        self.progress, self.stats = progress, stats
        hashed_inputs = [i for i, d in enumerate(self.digests) if d is not None]
        self.hashing = bool(hashed_inputs)
        # Hasher threads, each for its share of the inputs (an input's bytes must be hashed in order).
        self.hasher_of = {i: k % max(1, workers) for k, i in enumerate(hashed_inputs)}
        self.n_hashers = min(max(1, workers), len(hashed_inputs))
        n_staging = _staging_buffers(workers, self.hashing)
        self.staging = [np.empty(int(self.row_start[-1]) * chunk, dtype=np.uint8) for _ in range(n_staging)]
        self.outbufs = [torch.empty(self.n_out * chunk, dtype=torch.float16) for _ in range(workers + 1)]
        self.pipe = _Pipeline()
        self.free_staging, self.ready = queue.Queue(), queue.Queue()
        self.to_hash = [queue.Queue() for _ in range(self.n_hashers)]
        self.free_out, self.to_write = queue.Queue(), queue.Queue()
        for i in range(n_staging):
            self.free_staging.put(i)
        for i in range(workers + 1):
            self.free_out.put(i)
        self.staging_users = [0] * n_staging  # a staging buffer is free again when compute and hasher are done
        self.staging_guard = threading.Lock()
        self.in_fds = []

    def _release_staging(self, s) -> None:
        with self.staging_guard:
            self.staging_users[s] -= 1
            free = self.staging_users[s] == 0
        if free:
            self.free_staging.put(s)

    def _read_chunk(self, pieces, n, buf) -> list:
        """Chunk rows of every input into the staging buffer `buf` (adjacent pieces read at once);
        returns the runs read [(input, file position, staging position, length)] of the inputs
        with a digest, in file order."""
        hashed = []
        for i, fd in enumerate(self.in_fds):
            isz, base = self.itemsizes[i], int(self.row_start[i]) * n
            runs = []  # [file position, staging position, length]
            for p, e0, e1, dest in pieces:
                pos, to, length = self.param_starts[i][p] + e0 * isz, base + dest * isz, (e1 - e0) * isz
                if runs and runs[-1][0] + runs[-1][2] == pos and runs[-1][1] + runs[-1][2] == to:
                    runs[-1][2] += length
                else:
                    runs.append([pos, to, length])
            try:
                for pos, to, length in runs:
                    preadv_full(fd, buf[to : to + length], pos)
            except FormatError as e:
                raise FormatError(f"{self.sources[i].name}: {e}") from None
            if self.digests[i] is not None:
                hashed += [(i, pos, to, length) for pos, to, length in runs]
            self.stats["bytes_read"] += n * isz
        return hashed

    def reader(self) -> None:
        pipe = self.pipe
        for ci, (a, b, pieces) in enumerate(self.chunks):
            s = pipe.get(self.free_staging)
            if s is None:
                return
            t0 = time.perf_counter()
            hashed = self._read_chunk(pieces, b - a, memoryview(self.staging[s]))
            self.stats["read_s"] += time.perf_counter() - t0
            self.staging_users[s] = 1 + self.n_hashers
            for k, q in enumerate(self.to_hash):
                if not pipe.put(q, (s, [run for run in hashed if self.hasher_of[run[0]] == k])):
                    return
            if not pipe.put(self.ready, (ci, s)):
                return
        for _ in range(self.workers):
            pipe.put(self.ready, None)
        for q in self.to_hash:
            pipe.put(q, None)

    def hasher(self, k: int) -> None:
        """The digests of hasher k's inputs, from the staging buffers in the order they were read
        (so in file order per input), beside the compute workers rather than in the reader's way."""
        while True:
            item = self.pipe.get(self.to_hash[k])
            if item is None:
                return
            s, hashed = item
            t0 = time.perf_counter()
            buf = memoryview(self.staging[s])
            for i, pos, to, length in hashed:
                self.digests[i].update(self.in_fds[i], pos, buf[to : to + length])
            self._release_staging(s)
            self.stats["hash_s"] += time.perf_counter() - t0

    def compute(self) -> None:
        pipe, n_in, n_out, n_cols = self.pipe, self.n_in, self.n_out, self.n_cols
        W = torch.empty(n_in * self.chunk, dtype=self.acc_dtype)
        Y = torch.empty(n_cols * self.chunk, dtype=self.acc_dtype)
        while True:
            item = pipe.get(self.ready)
            if item is None:
                return
            ci, s = item
            a, b, _ = self.chunks[ci]
            n = b - a
            t0 = time.perf_counter()
            Wv = W[: n_in * n].view(n_in, n)
            raw = torch.from_numpy(self.staging[s])
            for lo, hi, dtype in self.groups:
                rows = raw[int(self.row_start[lo]) * n : int(self.row_start[hi]) * n]
                Wv[lo:hi].copy_(rows.view(dtype).view(hi - lo, n))
            self._release_staging(s)
            Yv = Y[: n_cols * n].view(n_cols, n)
            torch.mm(self.Ct, Wv, out=Yv)  # every column's chunk at once: Y_j = sum_i X[i, j] in_i
            # NaN and infinities propagate through the product (NaN * 0 is NaN): the range of the
            # products, one allocation-free reduction, finds a non-finite input weight (NaN fails
            # both comparisons) or an output beyond float16 (its overflow threshold is 65520).
            least, most = torch.aminmax(Yv)
            if not (-_FP16_OVERFLOW < float(least) and float(most) < _FP16_OVERFLOW):
                self._refuse_nonfinite(ci, Wv, Yv)
            t1 = time.perf_counter()
            o = pipe.get(self.free_out)
            if o is None:
                return
            t2 = time.perf_counter()
            if self.select is None:
                self.outbufs[o][: n_out * n].copy_(Y[: n_out * n])
            else:  # each tensor of output j from its own column of X (per-tensor coefficients)
                outv = self.outbufs[o][: n_out * n].view(n_out, n)
                for p, e0, e1, dest in self.chunks[ci][2]:
                    outv[:, dest : dest + e1 - e0].copy_(Yv[self.select[p], dest : dest + e1 - e0])
            self.stats["compute_s"] += time.perf_counter() - t2 + t1 - t0
            self.stats["wait_write_s"] += t2 - t1
            if not pipe.put(self.to_write, (ci, o)):
                return

    def _refuse_nonfinite(self, ci, W, out) -> None:
        """Raise FormatError naming the input file and the tensor of a non-finite weight in chunk
        `ci` (W [n_in, n]: its inputs in the accumulation dtype), or the output that overflows."""
        _a, _b, pieces = self.chunks[ci]

        def tensor_at(k):
            return next(self.param_names[p] for p, e0, e1, dest in pieces if dest <= k < dest + e1 - e0)

        for i in range(self.n_in):
            bad = (~torch.isfinite(W[i])).nonzero()
            if len(bad):
                raise FormatError(
                    f"{self.sources[i].name}: weight {tensor_at(int(bad[0, 0]))} is not finite (NaN or infinite); "
                    "the snapshot is from a diverged run or damaged. Leave it out (--instd, --inprefix or move "
                    "it away); no output written"
                )
        j, k = (int(v) for v in (~(out.abs() < _FP16_OVERFLOW)).nonzero()[0])
        if self.select is not None:  # row j of `out` is a column of X: name the first output taking it there
            p = next(p for p, e0, e1, dest in pieces if dest <= k < dest + e1 - e0)
            j = int((self.select[p] == j).nonzero()[0, 0]) if bool((self.select[p] == j).any()) else 0
        raise FormatError(
            f"{self.out.paths[j]}: weight {tensor_at(k)} overflows float16 in the reconstruction; no output written"
        )

    def writer(self) -> None:
        while True:
            item = self.pipe.get(self.to_write)
            if item is None or item == "done":
                return
            ci, o = item
            a, b, _ = self.chunks[ci]
            n = b - a
            t0 = time.perf_counter()
            data = memoryview(self.outbufs[o].numpy()).cast("B")
            for j in range(self.n_out):
                self.out.write(j, data[j * n * 2 : (j + 1) * n * 2], a * 2)
            self.free_out.put(o)
            self.stats["write_s"] += time.perf_counter() - t0
            if self.progress is not None:
                self.progress.update(n)

    def run(self) -> None:
        """Run the three stages to completion; re-raise the first error of any thread."""
        pipe = self.pipe
        torch_threads = torch.get_num_threads()
        threads = []
        try:
            for src in self.sources:
                self.in_fds.append(os.open(src.path, os.O_RDONLY))
                with contextlib.suppress(AttributeError, OSError):
                    os.posix_fadvise(self.in_fds[-1], 0, 0, os.POSIX_FADV_SEQUENTIAL)
            torch.set_num_threads(1)
            threads.append(pipe.thread(self.writer))
            compute_threads = [pipe.thread(self.compute) for _ in range(self.workers)]
            threads += compute_threads
            threads += [pipe.thread(self.hasher, k) for k in range(self.n_hashers)]
            threads.append(pipe.thread(self.reader))
            for t in compute_threads:
                t.join()
            pipe.put(self.to_write, "done")
            for t in threads:
                t.join()
            if pipe.error is None:
                for fd, digest in zip(self.in_fds, self.digests):
                    if digest is not None:
                        digest.verify(fd)
        except BaseException as e:
            pipe.fail(e)
        finally:
            pipe.stop.set()
            for t in threads:
                t.join()
            torch.set_num_threads(torch_threads)
            for fd in self.in_fds:
                os.close(fd)
        if pipe.error is not None:
            raise pipe.error


def _staging_buffers(workers: int, hashing: bool) -> int:
    """Staging buffers of a pass: one per worker and one being read, and one more for the hasher
    to lag behind by (when an input has a digest to verify)."""
    return workers + 1 + int(hashing)


def _chunk_size(sources, X, acc_dtype, total, workers, max_memory, chunk_elements, n_out=None) -> tuple[int, int]:
    """`(chunk, bytes per chunk element)`: chunk buffers sized to the memory budget.

    Per element of a chunk: raw input bytes (`_staging_buffers`), the accumulation-dtype
    input rows and X columns (per worker) and fp16 outputs (workers + 1 buffers; `n_out`
    outputs, default one per column of X). Raises ConfigError when `max_memory` cannot hold
    even a small chunk.
    """
    n_in, n_cols = X.shape
    n_out = n_cols if n_out is None else n_out
    staging = _staging_buffers(workers, any(s.sha256 for s in sources))
    per_element = staging * sum(s.dtype.itemsize for s in sources) + (workers + 1) * n_out * 2
    per_element += workers * (n_in + n_cols) * acc_dtype.itemsize
    budget = parse_bytes(max_memory) - _current_rss() - (64 << 20)
    if chunk_elements is None:
        chunk_elements = min(budget, _DEFAULT_CHUNK_BYTES) // per_element
        if chunk_elements < 256:
            need = (_current_rss() + (64 << 20) + 256 * per_element) / 2**30
            raise ConfigError(
                f"--max-memory {max_memory} is too small for {n_in} inputs and {n_out} outputs; "
                f"use at least {need:.2f}GiB, or fewer outputs per run"
            )
        # Enough chunks per worker for reading, computing and writing to overlap.
        chunk_elements = min(chunk_elements, max(4096, -(-total // (16 * workers))))
    return int(max(1, min(chunk_elements, total))), per_element


def _copy_tensors(last, names, out, offset, stats) -> None:
    """The copied tensors come from the last input as they are, stored as fp16 after the combined ones."""
    with open(last.path, "rb") as f:
        for name in names:
            t = last.tensors[name]
            f.seek(t.start)
            raw = bytearray(f.read(t.nbytes))
            value = torch.frombuffer(raw, dtype=t.dtype).to(torch.float16) if t.nbytes else torch.empty(0)
            if not bool(torch.isfinite(value).all()):
                raise FormatError(f"{last.name}: buffer {name} is not finite (NaN or infinite); no output written")
            data = memoryview(value.numpy()).cast("B")
            for j in range(len(out.paths)):
                out.write(j, data, offset)
            offset += len(data)
            stats["bytes_read"] += t.nbytes


def write_linear_combinations(
    files: list,  # The inputs: TensorFile [n_in], holding the same tensor names and shapes.
    X: np.ndarray,  # Coefficients, float64 [n_in, n_out]: out_j = sum_i X[i, j] * in_i.
    paths: list,  # The output files [n_out], written as safetensors.
    metadatas: list,  # The safetensors metadata {str: str} of each output [n_out].
    copied: Callable[[str], bool] = lambda name: False,  # Tensors taken from the last input, not combined.
    acc_dtype: torch.dtype = torch.float32,  # Accumulation dtype of the products.
    max_memory="2GiB",  # Peak memory budget of the process (bytes or text like '2GiB').
    chunk_elements: int | None = None,  # Elements per chunk (default: chosen from max_memory).
    workers: int | None = None,  # Compute threads (default: torch.get_num_threads()).
    progress: str | None = None,  # Description of a tqdm progress bar (None: no bar).
    select: Callable[[str], list] | None = None,  # tensor name -> the column of X of each output [n_out].
) -> dict:
    """Write `out_j = sum_i X[i, j] * in_i` of every combined tensor into `paths[j]`, in one pass.

    With `select`, output j's tensor `name` is instead `sum_i X[i, select(name)[j]] * in_i`
    (per-tensor coefficients: X holds every distinct column once, computed once per chunk; the
    outputs take their tensors from those columns, so a tensor equals, bit for bit, the same
    column written as a whole output by a pass with the same X and chunks).

    Every output holds the combined tensors, in the data order of the first input, then the
    copied ones (sorted by name) from the last input, all as fp16; the files appear under
    their names only when all are complete. Each input byte is read once. Returns the figures
    of the pass: 'outputs' (paths written), 'bytes_read', 'read_s', 'hash_s', 'compute_s',
    'write_s', 'wait_write_s' (seconds summed over threads), 'chunk_elements', 'working_bytes',
    'workers'. Raises FormatError for inputs that differ in their tensors or cannot be read to
    the end, whose data differ from their recorded SHA-256, or that hold a non-finite weight
    (named, with the tensor); ConfigError when `max_memory` cannot hold even a small chunk.
    Nothing is left under the output names after an error.
    """
    params, copied_names, shapes = plan_tensors(files, copied)
    entries = [(name, torch.float16, shape) for name, _, shape in params]
    entries += [(name, torch.float16, shapes[name]) for name in copied_names]
    stats = {"bytes_read": 0, "read_s": 0.0, "hash_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "wait_write_s": 0.0}
    with StreamingWriter(paths, entries, metadatas) as out:
        workers = max(1, int(workers or torch.get_num_threads()))
        total = sum(numel for _, numel, _ in params)
        columns = None
        if select is not None:
            columns = np.array([select(name) for name, _, _ in params], dtype=np.int64).reshape(len(params), len(paths))
            if columns.size and not (0 <= columns.min() and columns.max() < X.shape[1]):
                raise ValueError(f"select gives columns outside 0..{X.shape[1] - 1}")
        elif X.shape[1] != len(paths):
            raise ValueError(f"X has {X.shape[1]} columns for {len(paths)} outputs; give select")
        chunk, per_element = _chunk_size(files, X, acc_dtype, total, workers, max_memory, chunk_elements, len(paths))
        figures = {"chunk_elements": chunk, "working_bytes": chunk * per_element, "workers": workers}
        bar = None if progress is None else tqdm(total=total, unit="param", unit_scale=True, desc=progress)
        try:
            _StreamingPass(files, params, X, out, acc_dtype, chunk, workers, bar, stats, columns).run()
        finally:
            if bar is not None:
                bar.close()
        _copy_tensors(files[-1], copied_names, out, total * 2, stats)
        outputs = out.commit(threads=workers)  # the outputs' digests, read back from the page cache
    return {"outputs": outputs, **figures, **stats}
