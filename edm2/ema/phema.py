"""Post-hoc EMA reconstruction in one streaming pass with bounded memory (EDM2-SPEC §7.4).

Every output EMA length is a linear combination of the input snapshots,
`out_j = sum_i X[i, j] * in_i`, with the coefficients X of `solve_posthoc_coefficients`. Instead
of holding whole output networks in memory (the official tool keeps a batch of 8 and re-reads
every input once per batch), the parameters of all inputs are streamed chunk by chunk: the
chunk `[a, b)` of the flattened parameters of every input forms a matrix W [n_in, b - a], one
matrix product `X^T W` gives that chunk of every output, which is cast to fp16 and written at
its place in the output files. Each input byte is read once, whatever the number of outputs,
and the working memory is a few chunk-sized buffers chosen to fit `max_memory`.

Reading (a thread doing `preadv`), computing (a few worker threads, each on its own chunks)
and writing (a thread doing `pwrite`) overlap. Outputs are safetensors files written directly
(8-byte little-endian header length, JSON header, raw data) under temporary names and renamed
into place when complete; they load with `edm2.io.snapshot.load_snapshot`.
"""

import contextlib
import dataclasses
import json
import os
import queue
import re
import resource
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from edm2.ema.maths import parse_std_list, solve_posthoc_coefficients
from edm2.errors import ConfigError, FormatError
from edm2.io.atomic import remove_stale_temporaries, temporary_prefix
from edm2.naming import parse_snapshot_name, snapshot_name
from edm2.utils import kimg_to_nimg

_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_DEFAULT_CHUNK_BYTES = 160 << 20  # working buffers beyond this do not make the pass faster


# The only buffers of the EDM2 network are the MPFourier frequencies and phases (spec §1.5);
# they are copied from the last input, never averaged (spec §14.12). Deciding this from the
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

    kimg -> nimg by `kimg_to_nimg` (spec §7.4); for our snapshots the exact nimg of the
    metadata is used (it agrees whenever nimg is a multiple of 1024). Filters: exact prefix
    (`inprefix`), std membership (`instd`, a list or std-list text). Sorted by (nimg, std).
    """
    from edm2.io.snapshot import read_snapshot_info

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
    """Select the inputs and solve the coefficients (spec §7.4 steps 1, 2, 5).

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
# Reading and writing safetensors files at the byte level.


@dataclasses.dataclass
class _Tensor:
    dtype: torch.dtype
    shape: tuple
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def read_safetensors_header(path) -> tuple[dict, dict]:
    """`({name: _Tensor}, metadata)` of a safetensors file, validated against its size."""
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
        dtype = _ST_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise FormatError(
                f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')}; expected F16/BF16/F32/F64"
            )
        begin, end = entry["data_offsets"]
        shape = tuple(int(s) for s in entry["shape"])
        t = _Tensor(dtype, shape, 8 + n + begin, end - begin)
        if end > size - 8 - n or t.numel * dtype.itemsize != t.nbytes:
            raise FormatError(f"{path}: tensor {name} has inconsistent offsets; the file is truncated or corrupt")
        tensors[name] = t
    return tensors, metadata


def _preadv_full(fd, view, offset):
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise FormatError("unexpected end of file while reading an input snapshot (was it truncated?)")
        view, offset = view[got:], offset + got


def _pwrite_full(fd, view, offset):
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _safetensors_header(entries, metadata) -> bytes:
    """entries: list of (name, dtype, shape) in data order -> header bytes (padded to 8)."""
    header, offset = {}, 0
    for name, dtype, shape in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


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


def _stream_outputs(sources, params, X, out_fds, out_data_start, acc_dtype, chunk, workers, progress, stats):
    """Write the parameter data of every output: the one-pass loop.

    One reader thread fills raw staging buffers with `preadv` (row i = chunk of input i),
    `workers` compute threads each convert a chunk to `acc_dtype`, multiply it by the
    coefficients and cast the result to fp16, and one writer thread `pwrite`s row j of the
    result into output j. Torch runs single-threaded inside each compute thread: independent
    chunks in parallel scale better than intra-op threads on a busy machine.
    """
    # Rows grouped by dtype, widest first, so every group starts aligned for a dtype view.
    order = sorted(range(len(sources)), key=lambda i: -sources[i].dtype.itemsize)
    sources, X = [sources[i] for i in order], X[order]
    n_in, n_out = X.shape
    itemsizes = [src.dtype.itemsize for src in sources]
    row_start = np.cumsum([0] + itemsizes)  # staging row i starts at row_start[i] * n bytes
    groups = []  # (first row, end row, dtype): runs of inputs converted in one copy
    for i, src in enumerate(sources):
        if groups and groups[-1][2] == src.dtype:
            groups[-1][1] = i + 1
        else:
            groups.append([i, i + 1, src.dtype])
    chunks = _plan_chunks(params, chunk)
    param_starts = [[src.tensors[name].start for name, _, _ in params] for src in sources]
    Ct = torch.from_numpy(np.ascontiguousarray(X.T)).to(acc_dtype)  # [n_out, n_in]

    staging = [np.empty(int(row_start[-1]) * chunk, dtype=np.uint8) for _ in range(workers + 1)]
    outbufs = [torch.empty(n_out * chunk, dtype=torch.float16) for _ in range(workers + 1)]
    pipe = _Pipeline()
    free_staging, ready = queue.Queue(), queue.Queue()
    free_out, to_write = queue.Queue(), queue.Queue()
    for i in range(workers + 1):
        free_staging.put(i)
        free_out.put(i)
    in_fds = []

    def reader():
        for ci, (a, b, pieces) in enumerate(chunks):
            s = pipe.get(free_staging)
            if s is None:
                return
            buf, n = memoryview(staging[s]), b - a
            t0 = time.perf_counter()
            for i, fd in enumerate(in_fds):
                isz, base = itemsizes[i], int(row_start[i]) * n
                runs = []  # [file position, staging position, length]: adjacent pieces read at once
                for p, e0, e1, dest in pieces:
                    pos, to, length = param_starts[i][p] + e0 * isz, base + dest * isz, (e1 - e0) * isz
                    if runs and runs[-1][0] + runs[-1][2] == pos and runs[-1][1] + runs[-1][2] == to:
                        runs[-1][2] += length
                    else:
                        runs.append([pos, to, length])
                try:
                    for pos, to, length in runs:
                        _preadv_full(fd, buf[to : to + length], pos)
                except FormatError as e:
                    raise FormatError(f"{sources[i].inp.path}: {e}") from None
                stats["bytes_read"] += n * isz
            stats["read_s"] += time.perf_counter() - t0
            if not pipe.put(ready, (ci, s)):
                return
        for _ in range(workers):
            pipe.put(ready, None)

    def compute():
        W = torch.empty(n_in * chunk, dtype=acc_dtype)
        Y = torch.empty(n_out * chunk, dtype=acc_dtype)
        while True:
            item = pipe.get(ready)
            if item is None:
                return
            ci, s = item
            a, b, _ = chunks[ci]
            n = b - a
            t0 = time.perf_counter()
            Wv = W[: n_in * n].view(n_in, n)
            raw = torch.from_numpy(staging[s])
            for lo, hi, dtype in groups:
                rows = raw[int(row_start[lo]) * n : int(row_start[hi]) * n]
                Wv[lo:hi].copy_(rows.view(dtype).view(hi - lo, n))
            free_staging.put(s)
            Yv = Y[: n_out * n].view(n_out, n)
            torch.mm(Ct, Wv, out=Yv)  # every output's chunk at once (spec §7.4 step 6)
            t1 = time.perf_counter()
            o = pipe.get(free_out)
            if o is None:
                return
            t2 = time.perf_counter()
            outbufs[o][: n_out * n].copy_(Y[: n_out * n])
            stats["compute_s"] += time.perf_counter() - t2 + t1 - t0
            stats["wait_write_s"] += t2 - t1
            if not pipe.put(to_write, (ci, o)):
                return

    def writer():
        while True:
            item = pipe.get(to_write)
            if item is None or item == "done":
                return
            ci, o = item
            a, b, _ = chunks[ci]
            n = b - a
            t0 = time.perf_counter()
            data = memoryview(outbufs[o].numpy()).cast("B")
            for j, fd in enumerate(out_fds):
                _pwrite_full(fd, data[j * n * 2 : (j + 1) * n * 2], out_data_start[j] + a * 2)
            free_out.put(o)
            stats["write_s"] += time.perf_counter() - t0
            if progress is not None:
                progress.update(n)

    torch_threads = torch.get_num_threads()
    threads = []
    try:
        for src in sources:
            in_fds.append(os.open(src.path, os.O_RDONLY))
            with contextlib.suppress(AttributeError, OSError):
                os.posix_fadvise(in_fds[-1], 0, 0, os.POSIX_FADV_SEQUENTIAL)
        torch.set_num_threads(1)
        threads.append(pipe.thread(writer))
        compute_threads = [pipe.thread(compute) for _ in range(workers)]
        threads += compute_threads
        threads.append(pipe.thread(reader))
        for t in compute_threads:
            t.join()
        pipe.put(to_write, "done")
        for t in threads:
            t.join()
    except BaseException as e:
        pipe.fail(e)
    finally:
        pipe.stop.set()
        for t in threads:
            t.join()
        torch.set_num_threads(torch_threads)
        for fd in in_fds:
            os.close(fd)
    if pipe.error is not None:
        raise pipe.error


def _open_source(inp: PhemaInput, scratch: Path) -> tuple[_Source, dict]:
    """An input as a safetensors file (official pickles are converted once into `scratch`)."""
    from edm2.io.snapshot import FORMAT, save_snapshot

    path = inp.path
    if inp.is_pickle:
        from edm2.io.official import load_official_pickle, snapshot_fields

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


def reconstruct_phema(
    indir,
    outdir,
    outstd,
    inprefix: str | None = None,  # Only inputs with exactly this file-name prefix.
    instd=None,  # Only inputs with these stds (list or std-list text).
    outprefix: str = "phema",  # Output file-name prefix.
    outkimg: int | None = None,  # Reconstruct at this training kimg (default: the latest input).
    skip: bool = False,  # Skip outputs that already exist.
    max_memory="2GiB",  # Peak memory budget of the process (bytes or text like '2GiB').
    dtype: torch.dtype = torch.float32,  # Accumulation dtype (float32 or float64).
    chunk_elements: int | None = None,  # Elements per chunk (default: chosen from max_memory).
    workers: int | None = None,  # Compute threads (default: torch.get_num_threads()).
    scratch_dir=None,  # Where official pickles are converted (default: a temporary folder in outdir).
    progress: bool = False,  # Show a tqdm progress bar.
) -> dict:
    """Reconstruct networks with the given EMA lengths from the snapshots in `indir` (spec §7.4).

    Writes `{outprefix}-{kimg:07d}-{std:.3f}.safetensors` into `outdir` (our snapshot format:
    fp16 weights, metadata of the first input, and in `extra.phema` the inputs and the
    coefficients used; buffers come from the last input). Returns a summary dict with
    'outputs' (paths written), 'inputs', 'out_nimg', 'coefficients' and figures of the pass.
    """
    from edm2.io.snapshot import FORMAT

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError("edm2 phema runs in a single process; do not start it under torchrun (WORLD_SIZE != 1)")
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"accumulation dtype {dtype} is not supported; use float32 or float64")
    t_start = time.perf_counter()
    out_std = parse_std_list(outstd)
    outdir = Path(outdir)
    same_dir = outdir.exists() and Path(indir).resolve() == outdir.resolve()
    inputs = find_inputs(indir, inprefix, instd, exclude_prefix=outprefix if same_dir else None)
    out_nimg = None
    if outkimg is not None:  # the input time with this kimg (= kimg_to_nimg(outkimg) for official files)
        times = {inp.nimg for inp in inputs if inp.nimg // 1000 == int(outkimg)}
        out_nimg = times.pop() if len(times) == 1 else kimg_to_nimg(int(outkimg))
    used, out_nimg, _ = plan_coefficients(inputs, out_std, out_nimg)

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
    outdir.mkdir(parents=True, exist_ok=True)

    stats = {"bytes_read": 0, "read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "wait_write_s": 0.0}
    temps, out_fds = [], []
    with tempfile.TemporaryDirectory(prefix=".phema-scratch-", dir=scratch_dir or outdir) as scratch:
        try:
            # Inputs: headers, network config, dtypes (official pickles are converted first).
            sources, infos = [], []
            for inp in used:
                src, info = _open_source(inp, Path(scratch))
                sources.append(src)
                infos.append(info)
            # The tensors of the first input define the layout; every input must match it.
            shapes = {name: t.shape for name, t in sources[0].tensors.items()}
            state_names = sorted(shapes)
            buffer_names = [name for name in state_names if is_buffer(name)]
            param_names = [name for name in state_names if not is_buffer(name)]
            for src, info in zip(sources, infos):
                if info["network_kwargs"] != infos[0]["network_kwargs"]:
                    raise FormatError(
                        f"{src.inp.path.name} has a different network config than {sources[0].inp.path.name}; "
                        "pick the snapshots of one run (--indir/--inprefix)"
                    )
                if set(src.tensors) != set(state_names) or any(src.tensors[k].shape != shapes[k] for k in state_names):
                    raise FormatError(
                        f"{src.inp.path.name}: its tensors differ from those of {sources[0].inp.path.name}; "
                        "the inputs must be snapshots of one network"
                    )
                dtypes = {src.tensors[k].dtype for k in param_names}
                if len(dtypes) != 1:
                    raise FormatError(f"{src.inp.path}: parameters of mixed dtypes {dtypes} are not supported")
                src.dtype = dtypes.pop()
            # Flattened parameter order = the data order of the first input, so chunks are
            # contiguous runs in every file with the same layout.
            params = sorted(param_names, key=lambda k: sources[0].tensors[k].start)
            params = [(name, int(np.prod(shapes[name], dtype=np.int64)), shapes[name]) for name in params]

            # Outputs: header first (parameters in streaming order, then buffers).
            entries = [(name, torch.float16, shape) for name, _, shape in params]
            entries += [(name, torch.float16, shapes[name]) for name in buffer_names]
            extra0 = dict(infos[0]["extra"])
            extra0.pop("phema", None)
            input_list = [{"file": s.inp.path.name, "nimg": s.inp.nimg, "std": s.inp.std} for s in sources]
            out_data_start, headers = [], []
            umask = os.umask(0o022)
            os.umask(umask)
            file_mode = 0o666 & ~umask
            for j, std in enumerate(out_std):
                extra = dict(
                    extra0,
                    phema={
                        "inputs": input_list,
                        "coefficients": [float(c) for c in X[:, j]],
                        "out_nimg": out_nimg,
                        "accumulate_dtype": str(dtype).removeprefix("torch."),
                    },
                )
                metadata = {
                    "format": FORMAT,
                    "network_kwargs": json.dumps(infos[0]["network_kwargs"]),
                    "encoder": json.dumps(infos[0]["encoder"]),
                    "nimg": str(int(out_nimg)),
                    "ema_std": repr(round(float(std), 9)),
                    "extra": json.dumps(extra),
                }
                header = _safetensors_header(entries, metadata)
                headers.append(header)
                out_data_start.append(len(header))
                remove_stale_temporaries(out_path(std))
                fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(out_path(std)), suffix=".tmp", dir=outdir)
                temps.append(Path(tmp))
                out_fds.append(fd)
                os.fchmod(fd, file_mode)  # mkstemp makes 0600; outputs get the usual umask mode
                _pwrite_full(fd, memoryview(header), 0)

            # Working memory: chunk buffers sized to the budget (bounded memory): per element of
            # a chunk, raw input bytes (workers + 1 staging buffers), the accumulation-dtype
            # input and output columns (per worker) and fp16 outputs (workers + 1 buffers).
            n_in, n_out = X.shape
            workers = max(1, int(workers or torch.get_num_threads()))
            per_element = (workers + 1) * (sum(s.dtype.itemsize for s in sources) + n_out * 2)
            per_element += workers * (n_in + n_out) * dtype.itemsize
            budget = parse_bytes(max_memory) - _current_rss() - (64 << 20)
            total = sum(numel for _, numel, _ in params)
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
            chunk = int(max(1, min(chunk_elements, total)))
            result["chunk_elements"] = chunk
            result["working_bytes"] = chunk * per_element
            result["workers"] = workers

            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="param", unit_scale=True, desc=f"phema {n_in} in -> {n_out} out")
            try:
                _stream_outputs(sources, params, X, out_fds, out_data_start, dtype, chunk, workers, bar, stats)
            finally:
                if bar is not None:
                    bar.close()

            # Buffers: from the last input (spec §7.4 step 6), stored as fp16.
            last = sources[-1]
            total_bytes = total * 2
            with open(last.path, "rb") as f:
                for name in buffer_names:
                    t = last.tensors[name]
                    f.seek(t.start)
                    raw = bytearray(f.read(t.nbytes))
                    value = torch.frombuffer(raw, dtype=t.dtype).to(torch.float16) if t.nbytes else torch.empty(0)
                    data = memoryview(value.numpy()).cast("B")
                    for j, fd in enumerate(out_fds):
                        _pwrite_full(fd, data, out_data_start[j] + total_bytes)
                    total_bytes += len(data)
                    stats["bytes_read"] += t.nbytes
            for fd in out_fds:
                os.close(fd)
            out_fds = []
            for tmp, std in zip(temps, out_std):
                os.replace(tmp, out_path(std))
                result["outputs"].append(out_path(std))
            temps = []
        finally:
            for fd in out_fds:
                os.close(fd)
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    result.update(stats)
    result["out_std"] = out_std
    result["wall_s"] = time.perf_counter() - t_start
    return result
