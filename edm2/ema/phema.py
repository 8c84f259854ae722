"""Post-hoc EMA reconstruction in one streaming pass with bounded memory (EDM2 paper, arXiv
2312.02696, Sec. 3.3 and Appendix C.2; docs/method.md).

Every output EMA length is a linear combination of the input snapshots,
`out_j = sum_i X[i, j] * in_i`, with the coefficients X of `solve_posthoc_coefficients`. Instead
of holding whole output networks in memory (the official tool keeps a batch of 8 and re-reads
every input once per batch), the parameters of all inputs are streamed chunk by chunk: the
chunk `[a, b)` of the flattened parameters of every input forms a matrix W [n_in, b - a], one
matrix product `X^T W` gives that chunk of every output, which is cast to fp16 and written at
its place in the output files. Each input byte is read once, whatever the number of outputs,
and the working memory is a few chunk-sized buffers chosen to fit `max_memory`.

Reading (a thread doing `preadv`), computing (a few worker threads, each on its own chunks)
and writing (a thread doing `pwrite`) overlap. Outputs are safetensors files written piece by
piece under temporary names and renamed into place when complete
(`edm2.io.safetensors_stream.StreamingWriter`); they load with `edm2.io.snapshot.load_snapshot`.
"""

import contextlib
import dataclasses
import json
import os
import queue
import re
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edm2.ema.maths import parse_std_list, solve_posthoc_coefficients
from edm2.errors import ConfigError, FormatError
from edm2.io.atomic import made_folder
from edm2.io.official import OfficialLayouts, load_official_pickle, snapshot_fields
from edm2.io.safetensors_stream import StreamingWriter, preadv_full, read_safetensors_header
from edm2.io.snapshot import FORMAT, read_snapshot_info, save_snapshot
from edm2.naming import PHEMA_PREFIX, parse_snapshot_name, snapshot_name
from edm2.utils import kimg_to_nimg

_DEFAULT_CHUNK_BYTES = 160 << 20  # working buffers beyond this do not make the pass faster


# The only buffers of the EDM2 network are the MPFourier frequencies and phases (docs/method.md#mp-layers);
# they are copied from the last input, never averaged (docs/method.md#official-details). Deciding this from the
# names avoids building the network (which costs seconds of torch start-up on the meta device).
BUFFER_SUFFIXES = (".freqs", ".phases")


def is_buffer(name: str) -> bool:
    """Whether a state-dict entry of `edm2.nn.Precond` is a buffer (not EMA-averaged)."""
    return name.endswith(BUFFER_SUFFIXES)


# ----------------------------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass
class PhemaInput:
    """One input snapshot: its file, training image count and relative EMA std."""

    path: Path
    nimg: int
    std: float

    @property
    def is_pickle(self) -> bool:
        return self.path.suffix == ".pkl"


def find_inputs(indir, inprefix: str | None = None, instd=None, exclude_prefix: str | None = None) -> list:
    """Scan `indir` (not recursively) for snapshots named `<prefix>-<kimg>-<std>.(pkl|safetensors)`.

    kimg -> nimg by `kimg_to_nimg` (docs/method.md#ema); for our snapshots the exact nimg of the
    metadata is used (it agrees whenever nimg is a multiple of 1024). Filters: exact prefix
    (`inprefix`), std membership (`instd`, a list or std-list text). Sorted by (nimg, std).
    """
    indir = Path(indir)
    if not indir.is_dir():
        raise ConfigError(f"--indir {indir}: no such directory")
    stds = None if instd is None else parse_std_list(instd)
    found = {}
    for path in sorted(indir.iterdir()):
        parsed = parse_snapshot_name(path.name)
        if parsed is None or not path.is_file():
            continue
        prefix = parsed.prefix
        if (inprefix is not None and prefix != inprefix) or (exclude_prefix is not None and prefix == exclude_prefix):
            continue
        kimg, std = parsed.kimg, parsed.std
        if stds is not None and std not in stds:
            continue
        nimg = kimg_to_nimg(kimg)
        if parsed.ext == "safetensors":
            info = read_snapshot_info(path)
            if info.nimg // 1000 != kimg or info.ema_std is None or abs(info.ema_std - std) > 5e-4:
                raise FormatError(
                    f"{path}: metadata (nimg={info.nimg}, ema_std={info.ema_std}) disagrees with the file name; "
                    "rename the file or fix its metadata"
                )
            nimg = info.nimg
        key = (nimg, std)
        if key in found:
            raise ConfigError(
                f"{found[key].path.name} and {path.name} are the same snapshot (kimg {kimg}, std {std}); "
                "remove one or pick one with --inprefix"
            )
        found[key] = PhemaInput(path, nimg, std)
    return [found[key] for key in sorted(found)]


def plan_coefficients(inputs: list, out_std: list, out_nimg: int | None = None):
    """Select the inputs and solve the coefficients (docs/method.md#ema).

    Returns `(used_inputs, out_nimg, X)` with X float64 [len(used_inputs), len(out_std)],
    columns summing to 1.
    """
    if not inputs:
        raise ConfigError("no input snapshots found; check --indir, --inprefix and --instd")
    if out_nimg is None:
        out_nimg = max(inp.nimg for inp in inputs)
    elif out_nimg not in {inp.nimg for inp in inputs}:
        kimgs = sorted({inp.nimg // 1000 for inp in inputs})
        raise ConfigError(f"--outkimg {out_nimg // 1000} matches no input snapshot; available kimg: {kimgs}")
    used = [inp for inp in inputs if 0 < inp.nimg <= out_nimg]  # step-0 snapshots never help
    if not used:
        raise ConfigError(f"no input snapshot with 0 < nimg <= {out_nimg}; the step-0 snapshots cannot be used")
    try:
        X = solve_posthoc_coefficients(
            [inp.nimg for inp in used], [inp.std for inp in used], np.full(len(out_std), out_nimg), out_std
        )
    except np.linalg.LinAlgError:
        X = np.full((len(used), len(out_std)), np.nan)
    if not np.all(np.isfinite(X)):
        raise ConfigError("the input EMA profiles are linearly dependent; remove duplicate snapshots")
    return used, out_nimg, X


# ----------------------------------------------------------------------------------------------
# The streaming pass.


def parse_bytes(value) -> int:
    """'4GiB', '512MB', '2G' or an integer (bytes) -> bytes."""
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
class _Source:
    """An input as the pass sees it: a safetensors file, its tensors and its parameter dtype."""

    inp: PhemaInput
    path: Path
    tensors: dict
    dtype: torch.dtype


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
    """Split the flattened parameters into chunks of `chunk` elements.

    Each chunk is `(a, b, pieces)` with pieces `(param index, first, end, position in chunk)`.
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


class _StreamingPass:
    """Write the parameter data of every output: the one-pass loop.

    One reader thread fills raw staging buffers with `preadv` (row i = chunk of input i),
    `workers` compute threads each convert a chunk to `acc_dtype`, multiply it by the
    coefficients and cast the result to fp16, and one writer thread puts row j of the result
    into output j. Torch runs single-threaded inside each compute thread: independent chunks in
    parallel scale better than intra-op threads on a busy machine.
    """

    def __init__(self, sources, params, X, out, acc_dtype, chunk, workers, progress, stats):
        # Rows grouped by dtype, widest first, so every group starts aligned for a dtype view.
        order = sorted(range(len(sources)), key=lambda i: -sources[i].dtype.itemsize)
        self.sources, X = [sources[i] for i in order], X[order]
        self.n_in, self.n_out = X.shape
        self.itemsizes = [src.dtype.itemsize for src in self.sources]
        self.row_start = np.cumsum([0] + self.itemsizes)  # staging row i starts at row_start[i] * n bytes
        self.groups = []  # (first row, end row, dtype): runs of inputs converted in one copy
        for i, src in enumerate(self.sources):
            if self.groups and self.groups[-1][2] == src.dtype:
                self.groups[-1][1] = i + 1
            else:
                self.groups.append([i, i + 1, src.dtype])
        self.chunks = _plan_chunks(params, chunk)
        self.param_starts = [[src.tensors[name].start for name, _, _ in params] for src in self.sources]
        self.Ct = torch.from_numpy(np.ascontiguousarray(X.T)).to(acc_dtype)  # [n_out, n_in]
        self.out, self.acc_dtype, self.chunk, self.workers = out, acc_dtype, chunk, workers
        self.progress, self.stats = progress, stats
        self.staging = [np.empty(int(self.row_start[-1]) * chunk, dtype=np.uint8) for _ in range(workers + 1)]
        self.outbufs = [torch.empty(self.n_out * chunk, dtype=torch.float16) for _ in range(workers + 1)]
        self.pipe = _Pipeline()
        self.free_staging, self.ready = queue.Queue(), queue.Queue()
        self.free_out, self.to_write = queue.Queue(), queue.Queue()
        for i in range(workers + 1):
            self.free_staging.put(i)
            self.free_out.put(i)
        self.in_fds = []

    def _read_chunk(self, pieces, n, buf) -> None:
        """Chunk rows of every input into the staging buffer `buf` (adjacent pieces read at once)."""
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
                raise FormatError(f"{self.sources[i].inp.path}: {e}") from None
            self.stats["bytes_read"] += n * isz

    def reader(self) -> None:
        pipe = self.pipe
        for ci, (a, b, pieces) in enumerate(self.chunks):
            s = pipe.get(self.free_staging)
            if s is None:
                return
            t0 = time.perf_counter()
            self._read_chunk(pieces, b - a, memoryview(self.staging[s]))
            self.stats["read_s"] += time.perf_counter() - t0
            if not pipe.put(self.ready, (ci, s)):
                return
        for _ in range(self.workers):
            pipe.put(self.ready, None)

    def compute(self) -> None:
        pipe, n_in, n_out = self.pipe, self.n_in, self.n_out
        W = torch.empty(n_in * self.chunk, dtype=self.acc_dtype)
        Y = torch.empty(n_out * self.chunk, dtype=self.acc_dtype)
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
            self.free_staging.put(s)
            Yv = Y[: n_out * n].view(n_out, n)
            torch.mm(self.Ct, Wv, out=Yv)  # every output's chunk at once: out_j = sum_i X[i, j] in_i
            t1 = time.perf_counter()
            o = pipe.get(self.free_out)
            if o is None:
                return
            t2 = time.perf_counter()
            self.outbufs[o][: n_out * n].copy_(Y[: n_out * n])
            self.stats["compute_s"] += time.perf_counter() - t2 + t1 - t0
            self.stats["wait_write_s"] += t2 - t1
            if not pipe.put(self.to_write, (ci, o)):
                return

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
            threads.append(pipe.thread(self.reader))
            for t in compute_threads:
                t.join()
            pipe.put(self.to_write, "done")
            for t in threads:
                t.join()
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


def _open_source(inp: PhemaInput, scratch: Path, layouts: OfficialLayouts) -> tuple[_Source, dict]:
    """An input as the streaming pass reads it: a safetensors file, or an official pickle read in
    place (one written with pickle protocol 2 is converted once into `scratch`). `layouts` parses
    the pickles, once per distinct structure (the snapshots of one run share one)."""
    path = inp.path
    if inp.is_pickle:
        layout = layouts(inp.path)  # read in place, no network built
        if layout is not None:
            return _Source(inp, inp.path, layout[0], None), layout[1]
        data = load_official_pickle(inp.path, dtype=None)
        encoder, extra = snapshot_fields(data, inp.path)
        path = scratch / (inp.path.stem + ".safetensors")
        save_snapshot(path, data["ema"].state_dict(), data["network_kwargs"], encoder, inp.nimg, inp.std, extra, None)
        del data
    tensors, meta = read_safetensors_header(path)
    if meta.get("format") != FORMAT:
        raise FormatError(f"{inp.path}: not an edm2 snapshot (metadata format={meta.get('format')!r})")
    info = {
        "network_kwargs": json.loads(meta["network_kwargs"]),
        "encoder": json.loads(meta["encoder"]),
        "extra": json.loads(meta.get("extra") or "{}"),
    }
    return _Source(inp, path, tensors, None), info


def _check_layout(sources, infos) -> tuple[list, list, dict]:
    """Check that every input holds the same network; set each source's parameter dtype.

    Returns `(params, buffer_names, shapes)`: params [(name, numel, shape)] in the data order of
    the first input (so chunks are contiguous runs in every file with the same layout).
    """
    first = sources[0]
    shapes = {name: t.shape for name, t in first.tensors.items()}
    state_names = sorted(shapes)
    buffer_names = [name for name in state_names if is_buffer(name)]
    param_names = [name for name in state_names if not is_buffer(name)]
    for src, info in zip(sources, infos):
        if info["network_kwargs"] != infos[0]["network_kwargs"]:
            raise FormatError(
                f"{src.inp.path.name} has a different network config than {first.inp.path.name}; "
                "pick the snapshots of one run (--indir/--inprefix)"
            )
        if set(src.tensors) != set(state_names) or any(src.tensors[k].shape != shapes[k] for k in state_names):
            raise FormatError(
                f"{src.inp.path.name}: its tensors differ from those of {first.inp.path.name}; "
                "the inputs must be snapshots of one network"
            )
        dtypes = {src.tensors[k].dtype for k in param_names}
        if len(dtypes) != 1:
            raise FormatError(f"{src.inp.path}: parameters of mixed dtypes {dtypes} are not supported")
        src.dtype = dtypes.pop()
    params = sorted(param_names, key=lambda k: first.tensors[k].start)
    params = [(name, int(np.prod(shapes[name], dtype=np.int64)), shapes[name]) for name in params]
    return params, buffer_names, shapes


def _output_metadata(info, sources, coefficients, std, out_nimg, acc_dtype) -> dict:
    """Snapshot metadata of one output: the first input's, plus in `extra.phema` the inputs and
    the coefficients of this output."""
    extra = dict(info["extra"])
    extra.pop("phema", None)
    extra["phema"] = {
        "inputs": [{"file": s.inp.path.name, "nimg": s.inp.nimg, "std": s.inp.std} for s in sources],
        "coefficients": [float(c) for c in coefficients],
        "out_nimg": out_nimg,
        "accumulate_dtype": str(acc_dtype).removeprefix("torch."),
    }
    return {
        "format": FORMAT,
        "network_kwargs": json.dumps(info["network_kwargs"]),
        "encoder": json.dumps(info["encoder"]),
        "nimg": str(int(out_nimg)),
        "ema_std": repr(round(float(std), 9)),
        "extra": json.dumps(extra),
    }


def _chunk_size(sources, X, acc_dtype, total, workers, max_memory, chunk_elements) -> tuple[int, int]:
    """`(chunk, bytes per chunk element)`: chunk buffers sized to the memory budget.

    Per element of a chunk: raw input bytes (workers + 1 staging buffers), the accumulation-dtype
    input and output columns (per worker) and fp16 outputs (workers + 1 buffers). Raises
    ConfigError when `max_memory` cannot hold even a small chunk.
    """
    n_in, n_out = X.shape
    per_element = (workers + 1) * (sum(s.dtype.itemsize for s in sources) + n_out * 2)
    per_element += workers * (n_in + n_out) * acc_dtype.itemsize
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


def _copy_buffers(last, buffer_names, out, offset, stats) -> None:
    """Buffers come from the last input (never averaged), stored as fp16 after the parameters."""
    with open(last.path, "rb") as f:
        for name in buffer_names:
            t = last.tensors[name]
            f.seek(t.start)
            raw = bytearray(f.read(t.nbytes))
            value = torch.frombuffer(raw, dtype=t.dtype).to(torch.float16) if t.nbytes else torch.empty(0)
            data = memoryview(value.numpy()).cast("B")
            for j in range(len(out.paths)):
                out.write(j, data, offset)
            offset += len(data)
            stats["bytes_read"] += t.nbytes


def _select(indir, outdir, inprefix, instd, outprefix, outkimg, out_std):
    """Inputs and the reconstruction time: `(used inputs, out_nimg)` (see plan_coefficients)."""
    same_dir = outdir.exists() and Path(indir).resolve() == outdir.resolve()
    inputs = find_inputs(indir, inprefix, instd, exclude_prefix=outprefix if same_dir else None)
    out_nimg = None
    if outkimg is not None:  # the input time with this kimg (= kimg_to_nimg(outkimg) for official files)
        times = {inp.nimg for inp in inputs if inp.nimg // 1000 == int(outkimg)}
        out_nimg = times.pop() if len(times) == 1 else kimg_to_nimg(int(outkimg))
    used, out_nimg, _ = plan_coefficients(inputs, out_std, out_nimg)
    return used, out_nimg


def reconstruct_phema(
    indir,
    outdir,
    outstd,
    inprefix: str | None = None,  # Only inputs with exactly this file-name prefix.
    instd=None,  # Only inputs with these stds (list or std-list text).
    outprefix: str = PHEMA_PREFIX,  # Output file-name prefix.
    outkimg: int | None = None,  # Reconstruct at this training kimg (default: the latest input).
    skip: bool = False,  # Skip outputs that already exist.
    max_memory="2GiB",  # Peak memory budget of the process (bytes or text like '2GiB').
    dtype: torch.dtype = torch.float32,  # Accumulation dtype (float32 or float64).
    chunk_elements: int | None = None,  # Elements per chunk (default: chosen from max_memory).
    workers: int | None = None,  # Compute threads (default: torch.get_num_threads()).
    scratch_dir=None,  # Where official pickles are converted (default: a temporary folder in outdir).
    progress: bool = False,  # Show a tqdm progress bar.
) -> dict:
    """Reconstruct networks with the given EMA lengths from the snapshots in `indir`.

    The post-hoc EMA of the EDM2 paper (arXiv 2312.02696, Sec. 3.3 and Appendix C.2; see
    docs/method.md): every output is `out_j = sum_i X[i, j] in_i` with the least-squares
    coefficients of `plan_coefficients`, computed in one streaming pass. Writes
    `{outprefix}-{kimg:07d}-{std:.3f}.safetensors` into `outdir` (our snapshot format: fp16
    weights, metadata of the first input, and in `extra.phema` the inputs and the coefficients
    used; buffers come from the last input). Returns a summary dict with 'outputs' (paths
    written), 'inputs', 'out_nimg', 'coefficients' and figures of the pass. Raises ConfigError
    for bad options or inputs that cannot give the outputs, FormatError for unreadable inputs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError("edm2 phema runs in a single process; do not start it under torchrun (WORLD_SIZE != 1)")
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"accumulation dtype {dtype} is not supported; use float32 or float64")
    t_start = time.perf_counter()
    out_std = parse_std_list(outstd)
    outdir = Path(outdir)
    used, out_nimg = _select(indir, outdir, inprefix, instd, outprefix, outkimg, out_std)

    def out_path(std):
        return outdir / snapshot_name(outprefix, out_nimg // 1000, std)

    if skip:
        out_std = [std for std in out_std if not out_path(std).exists()]
    result = {"outputs": [], "inputs": used, "out_nimg": out_nimg, "coefficients": None, "bytes_read": 0}
    if not out_std:
        return result
    if len({out_path(std).name for std in out_std}) != len(out_std):
        raise ConfigError("two output stds give the same file name (std:.3f); use stds at least 0.001 apart")
    used, out_nimg, X = plan_coefficients(used, out_std, out_nimg)
    result["coefficients"] = X
    with made_folder(outdir):  # removed again if the inputs turn out unusable
        stats = {"bytes_read": 0, "read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "wait_write_s": 0.0}
        with tempfile.TemporaryDirectory(prefix=".phema-scratch-", dir=scratch_dir or outdir) as scratch:
            layouts = OfficialLayouts(check=False)  # inputs are compared with each other instead
            sources, infos = zip(
                *(_open_source(inp, Path(scratch), layouts) for inp in used)
            )  # pickles converted first
            params, buffer_names, shapes = _check_layout(sources, infos)
            # Outputs: parameters in streaming order, then buffers.
            entries = [(name, torch.float16, shape) for name, _, shape in params]
            entries += [(name, torch.float16, shapes[name]) for name in buffer_names]
            metadatas = [
                _output_metadata(infos[0], sources, X[:, j], std, out_nimg, dtype) for j, std in enumerate(out_std)
            ]
            with StreamingWriter([out_path(std) for std in out_std], entries, metadatas) as out:
                workers = max(1, int(workers or torch.get_num_threads()))
                total = sum(numel for _, numel, _ in params)
                chunk, per_element = _chunk_size(sources, X, dtype, total, workers, max_memory, chunk_elements)
                result.update(chunk_elements=chunk, working_bytes=chunk * per_element, workers=workers)
                bar = None
                if progress:
                    bar = tqdm(
                        total=total, unit="param", unit_scale=True, desc=f"phema {X.shape[0]} in -> {X.shape[1]} out"
                    )
                try:
                    _StreamingPass(sources, params, X, out, dtype, chunk, workers, bar, stats).run()
                finally:
                    if bar is not None:
                        bar.close()
                _copy_buffers(sources[-1], buffer_names, out, total * 2, stats)
                result["outputs"] = out.commit()
    result.update(stats)
    result["out_std"] = out_std
    result["wall_s"] = time.perf_counter() - t_start
    return result
