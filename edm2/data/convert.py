"""`edm2 dataset convert`: a folder or ZIP of images -> a dataset in the official format
(docs/method.md#datasets): `s[:5]/img{s}.png` with `s = f"{idx:08d}"` (idx counts *input* images),
uncompressed PNGs in a STORED ZIP or a folder, and `dataset.json` with the labels.

Worker processes decode, transform and PNG-encode the images; the parent writes them in input
order, so the output bytes do not depend on the number of workers. The output is built under a
temporary name and renamed into place only when complete.
"""

import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import pickle
import signal
import traceback
import warnings
import zipfile
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm import tqdm

from edm2.data.limits import MAX_IMAGE_PIXELS, check_regular, open_image, read_file, read_zip_member
from edm2.data.transforms import make_pil_transform
from edm2.data.writer import open_dest
from edm2.errors import ConfigError, DataError
from edm2.naming import DATASET_JSON, file_ext, is_image_name, out_name, parse_dataset_json
from edm2.utils import die_with_parent

# ---- reading the source ---------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    """What `convert` and `encode` read: a folder or ZIP, its image names and labels."""

    path: Path
    kind: str  # 'dir' or 'zip'
    names: list  # archive names (relative, '/'-separated), sorted, truncated to max_images
    labels: dict  # archive name -> label (int or list), may be empty
    num_found: int  # images found before --max-images
    ignored: list  # files skipped for their extension (not images)
    notes: list  # warnings about the labels, printed by the command

    def open_reader(self):
        return SourceReader(self.path, self.kind)


class SourceReader:
    """Reads the bytes of one source file; one ZIP handle per reader (and per process)."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind, self._zip = Path(path), kind, None

    def read(self, name: str) -> bytes:
        """The bytes of source file `name`, bounded (`edm2.data.limits`); DataError otherwise."""
        try:
            if self.kind == "dir":
                return read_file(self.path / name, f"{self.path}/{name}")
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return read_zip_member(self._zip, name, f"{self.path}:{name}")
        except (OSError, zipfile.BadZipFile, KeyError, EOFError, NotImplementedError) as e:
            raise DataError(f"cannot read {name} from {self.path}: {e}") from None

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def open_source(source, max_images: int | None = None, strict: bool = True) -> Source:
    """List the images and labels of a folder or ZIP (docs/method.md#datasets).

    Labels come from `dataset.json` in the source root if present and non-null; otherwise, for
    folders, from the sorted set of top-level folder names (root files: ''), if there are >= 2.
    `strict`: a dataset.json naming files that are not in the source is an error (else a note).
    """
    path = Path(source)
    if not path.exists():
        raise DataError(f"source {source} does not exist")
    files = []
    meta = None
    if path.is_dir():
        kind = "dir"
        for root, _dirs, fnames in os.walk(path):
            for fname in fnames:
                files.append(os.path.relpath(os.path.join(root, fname), path).replace("\\", "/"))
        for name in files:  # what will be read must be a regular file (a link to /dev/zero never ends)
            if is_image_name(name) or name == DATASET_JSON:
                check_regular(path / name, f"{source}/{name}")
        if DATASET_JSON in files:
            meta = read_file(path / DATASET_JSON, f"{source}/{DATASET_JSON}")
    elif file_ext(str(path)) == ".zip":
        kind = "zip"
        try:
            with zipfile.ZipFile(path) as z:
                files = [n for n in z.namelist() if not n.endswith("/")]
                if "dataset.json" in files:
                    meta = read_zip_member(z, DATASET_JSON, f"{source}:{DATASET_JSON}")
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
            raise DataError(f"source {source} is not a readable ZIP file ({e}); re-create or re-download it") from None
    else:
        raise DataError(f"source {source} must be a folder or a .zip file")

    names = sorted(f for f in files if is_image_name(f))
    ignored = sorted(f for f in files if not is_image_name(f) and f != "dataset.json")
    if not names:
        raise DataError(f"source {source} contains no images (files with extensions PIL knows, e.g. .png, .jpg)")
    notes = []
    labels = {}
    if meta is not None:
        labels = parse_dataset_json(meta, f"{source}/{DATASET_JSON}") or {}
        unknown = sorted(set(labels) - set(names))
        if unknown:
            msg = (
                f"{source}/dataset.json names {len(unknown)} files that are not images in the source, e.g. {unknown[0]}"
            )
            if strict:
                raise DataError(msg + "; fix dataset.json or use --on-error skip to ignore those entries")
            notes.append(msg + " (ignored)")
    if not labels and kind == "dir":
        top = {n: n.split("/")[0] if "/" in n else "" for n in names}
        classes = {c: i for i, c in enumerate(sorted(set(top.values())))}
        if len(classes) >= 2:
            labels = {n: classes[c] for n, c in top.items()}
    num_found = len(names)
    if max_images is not None:
        names = names[:max_images]
    if labels:
        unlabelled = [n for n in names if n not in labels]
        if unlabelled:
            notes.append(
                f"{len(unlabelled)} images have no label in {source}/dataset.json (e.g. {unlabelled[0]}); "
                'the output gets "labels": null'
            )
    return Source(path, kind, names, labels, num_found, ignored, notes)


def open_rgb(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """Image bytes -> loaded PIL image in mode RGB (docs/method.md#datasets: every image is converted to RGB with PIL).

    16-bit grayscale keeps its high byte (v >> 8), as PIL already does for 16-bit RGB(A);
    alpha is dropped (not composited); palette and CMYK go through PIL's convert('RGB').
    An image of more than `max_pixels` pixels is refused from its header, before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = open_image(data, name, max_pixels, hint=" (raise it with --max-pixels)")
            if img.mode.startswith("I;16") or (img.mode == "I" and np.asarray(img).max(initial=0) > 255):
                gray = (np.asarray(img).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
                return PIL.Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
            return img if img.mode == "RGB" else img.convert("RGB")
    except DataError:
        raise
    except PIL.UnidentifiedImageError:
        raise DataError(f"{name} is not an image in a format PIL reads; remove it or use --on-error skip") from None
    except Exception as e:  # decoders of broken files raise all sorts (OSError, ValueError, struct.error, ...)
        raise DataError(f"{name} is not a readable image ({e}); remove it or use --on-error skip") from None


def decode_rgb(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Image bytes -> HWC uint8 RGB array (see open_rgb)."""
    return np.array(open_rgb(data, name, max_pixels))


# ---- per-image work (runs in the workers) ---------------------------------------------------


@dataclasses.dataclass
class Result:
    idx: int
    name: str
    png: bytes | None = None  # None: skipped
    shape: tuple | None = None  # (height, width, channels) of the output image
    error: str | None = None  # bad input; fatal under on_error='fail'
    skip_reason: str | None = None  # center-crop-wide's own skip (never an error)
    upscaled: bool = False


def too_small(transform: str | None, width, height, h: int, w: int) -> bool:
    """Whether producing the output means enlarging the image (docs/method.md#datasets geometry of each transform)."""
    if transform in (None, "none"):
        return (width is not None and w < width) or (height is not None and h < height)
    if transform == "center-crop":
        return min(h, w) < max(width, height)
    if transform == "center-crop-dhariwal":
        return min(h, w) < width
    return False  # center-crop-wide skips such images itself


class ImageJob:
    """Decode -> RGB -> transform -> PNG (compress_level=0) for one input image, all on PIL images."""

    def __init__(self, source: Source, transform, width, height, upscale: bool, max_pixels: int = MAX_IMAGE_PIXELS):
        self.source_path, self.source_kind = source.path, source.kind
        self.transform, self.width, self.height, self.upscale = transform, width, height, upscale
        self.max_pixels = max_pixels
        self._reader = None
        self._fn = None

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "_fn": None}

    def __call__(self, task) -> Result:
        idx, name = task
        if self._reader is None:
            self._reader = SourceReader(self.source_path, self.source_kind)
            self._fn = make_pil_transform(self.transform, self.width, self.height)
        try:
            img = open_rgb(self._reader.read(name), name, self.max_pixels)
        except DataError as e:
            return Result(idx, name, error=str(e))
        w, h = img.size
        small = too_small(self.transform, self.width, self.height, h, w)
        if small and not self.upscale:
            return Result(
                idx,
                name,
                error=f"{name} is {w}x{h}, smaller than the {self.width}x{self.height} output; "
                "allow enlarging with --upscale or drop it with --on-error skip",
            )
        out = self._fn(img)
        if out is None:
            return Result(idx, name, skip_reason=f"{w}x{h} is too small for center-crop-wide")
        buf = io.BytesIO()
        out.save(buf, format="png", compress_level=0, optimize=False)
        return Result(idx, name, png=buf.getvalue(), shape=(out.height, out.width, 3), upscaled=small)


# Blocked in the parent while it starts the workers, so that a SIGTERM reaching a new worker before
# it has reset the handlers it inherited (e.g. one that only sets a flag) waits instead of being lost.
_BLOCKED_WHILE_STARTING = {signal.SIGTERM, signal.SIGINT}


def _worker_main(job, tasks, chunk, counter, permits, conn, parent_pid):
    """A worker process: take the next chunk of `tasks` (shared counter), run `job` on each, send
    (chunk index, results) to the parent through this worker's own pipe. `permits` bounds how far
    the workers may run ahead of the parent's writer (flow control for slow writers/huge images).
    The worker dies with its parent, also when the parent is killed with SIGKILL (it would else
    block on a full pipe that it holds open itself)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED_WHILE_STARTING)  # a pending SIGTERM ends us now
    parent = multiprocessing.parent_process()
    try:
        while True:
            while not permits.acquire(timeout=1.0):
                if parent is not None and not parent.is_alive():
                    return
            with counter.get_lock():
                k = counter.value
                counter.value += 1
            if k * chunk >= len(tasks):
                return
            try:
                msg = (k, [job(t) for t in tasks[k * chunk : (k + 1) * chunk]], None)
            except Exception:  # a bug, not bad input (job turns bad input into Result.error)
                msg = (k, None, traceback.format_exc())
            conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, KeyboardInterrupt):
        return  # the parent is gone or stopping
    finally:
        conn.close()


# ---- the conversion -------------------------------------------------------------------------


@dataclasses.dataclass
class ConvertReport:
    dest: Path
    num_input: int  # images considered (after --max-images)
    num_written: int
    resolution: tuple | None  # (width, height)
    labelled: bool
    skipped: list  # [(name, reason)]: bad inputs skipped under on_error='skip' and center-crop-wide skips
    upscaled: list  # names of images that were enlarged
    ignored: list  # non-image files in the source
    notes: list

    def summary(self) -> str:
        res = f"{self.resolution[0]}x{self.resolution[1]}" if self.resolution else "-"
        lines = [
            f"wrote {self.num_written} of {self.num_input} images ({res}, "
            f"{'labelled' if self.labelled else 'no labels'}) to {self.dest}"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} images:")
            lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        if self.upscaled:
            lines.append(f"enlarged {len(self.upscaled)} images smaller than the output, e.g. {self.upscaled[0]}")
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} files that are not images, e.g. {self.ignored[0]}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_resolution(text):
    """'64x64' or '64,64' -> (64, 64); None -> (None, None)."""
    if text is None:
        return None, None
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"resolution {text!r} is not WxH or W,H (e.g. 64x64)") from None
    if w < 1 or h < 1:
        raise ConfigError(f"resolution {text!r} must be positive")
    return w, h


def convert_dataset(
    source,  # Folder or ZIP of images.
    dest,  # Output .zip file or folder (absent or empty).
    resolution=None,  # Output (width, height) or 'WxH'; None keeps the input size.
    transform: str | None = None,  # none, center-crop, center-crop-wide or center-crop-dhariwal.
    max_images: int | None = None,  # Convert only the first N input images.
    workers: int | None = None,  # Worker processes; None = all cores; 1 = no subprocesses.
    on_error: str = "fail",  # 'fail': stop at the first bad image; 'skip': leave it out and list it.
    upscale: bool = True,  # Enlarge images smaller than the output (the reference does); False = bad input.
    progress: bool = True,  # Show a tqdm progress bar on stderr.
    max_pixels: int = MAX_IMAGE_PIXELS,  # Refuse input images of more pixels (width x height), from their header.
) -> ConvertReport:
    """Convert images into a dataset in the official format (`dataset_tool.py convert`;
    docs/method.md#datasets): RGB uint8 PNGs named `00000/img00000000.png`, uncompressed, plus
    `dataset.json`, written to a temporary name and renamed when complete. Raises ConfigError for
    bad options, DataError for unusable input (named, with the fix). Returns a ConvertReport.
    """
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    width, height = parse_resolution(resolution)
    make_pil_transform(transform, width, height)  # validate the options before touching anything
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if int(max_pixels) < 1:
        raise ConfigError(f"--max-pixels must be at least 1, got {max_pixels}")
    src = open_source(source, max_images=max_images, strict=on_error == "fail")
    job = ImageJob(src, transform, width, height, upscale, int(max_pixels))
    tasks = list(enumerate(src.names))

    skipped, upscaled, labels = [], [], []
    attrs = None
    num_written = 0
    with open_dest(dest, source=src.path) as writer, _results(job, tasks, workers, progress) as results:
        for r in results:
            error = r.error
            if error is None and r.png is not None:
                h, w, c = r.shape
                if (
                    attrs is None
                ):  # docs/method.md#datasets: the first output image fixes the size: square, power of two
                    if w != h or w & (w - 1):
                        raise ConfigError(
                            f"the first image {r.name} comes out {w}x{h}; the output must be square with a "
                            "power-of-two side: pass e.g. --resolution 64x64 --transform center-crop"
                        )
                    attrs = r.shape
                elif r.shape != attrs:
                    error = (
                        f"{r.name} comes out {w}x{h}x{c} but earlier images are {attrs[1]}x{attrs[0]}x{attrs[2]}; "
                        "pass --resolution to resize all images"
                    )
            if error is not None:
                if on_error == "fail":
                    raise DataError(error)
                skipped.append((r.name, error))
                continue
            if r.png is None:
                skipped.append((r.name, r.skip_reason))
                continue
            name = out_name(r.idx, "img{}.png")
            writer.write(name, r.png)
            label = src.labels.get(r.name)
            labels.append([name, label] if label is not None else None)
            if r.upscaled:
                upscaled.append(r.name)
            num_written += 1
        if num_written == 0:
            raise DataError(f"no image of {source} could be converted; nothing written to {dest}")
        labelled = all(x is not None for x in labels)
        writer.write("dataset.json", json.dumps({"labels": labels if labelled else None}).encode())
    return ConvertReport(
        dest=Path(dest),
        num_input=len(tasks),
        num_written=num_written,
        resolution=(attrs[1], attrs[0]),
        labelled=labelled,
        skipped=skipped,
        upscaled=upscaled,
        ignored=src.ignored,
        notes=src.notes,
    )


def _counted(results, bar):
    for r in results:
        bar.update(1)
        yield r


@contextlib.contextmanager
def _results(job, tasks, workers, progress):
    """Yield the Results in input order, computed by `workers` processes (1: in this process).

    Each worker takes chunks of consecutive tasks from a shared counter and sends their results
    through its own pipe; the parent reorders the chunks. No pool threads or per-task messages in
    the parent, which shares the cores with the workers."""
    bar = tqdm(total=len(tasks), unit="img", disable=not progress, dynamic_ncols=True)
    if workers == 1 or len(tasks) < 2:
        try:
            yield _counted(map(job, tasks), bar)
        finally:
            bar.close()
        return
    workers = min(workers, len(tasks))
    chunk = max(1, min(8, len(tasks) // (workers * 4)))
    ctx = multiprocessing.get_context()
    counter, permits = ctx.Value("q", 0), ctx.Semaphore(4 * workers)
    procs, conns = [], []
    try:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_WHILE_STARTING)
        try:
            for _ in range(workers):
                recv, send = ctx.Pipe(duplex=False)
                args = (job, tasks, chunk, counter, permits, send, os.getpid())
                proc = ctx.Process(target=_worker_main, args=args, daemon=True)
                proc.start()
                send.close()
                procs.append(proc)
                conns.append(recv)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        yield _counted(_in_order(conns, procs, permits, -(-len(tasks) // chunk)), bar)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
            if proc.exitcode is None:  # should not happen; never hang here
                proc.kill()
                proc.join()
        bar.close()


def _in_order(conns, procs, permits, num_chunks):
    """Receive the workers' chunks and yield their results in chunk order."""
    pending, live = {}, dict(zip(conns, procs))
    for k in range(num_chunks):
        while k not in pending:
            # A worker that died is reported as such first, also when the others have finished
            # meanwhile (then no pipe is live either).
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:  # killed (e.g. out of memory): its chunk will never come
                raise RuntimeError(f"a converter worker process died (exit code {dead[0].exitcode})")
            if not live:
                codes = ", ".join(str(p.exitcode) for p in procs)
                raise RuntimeError(f"the converter's worker processes stopped early (exit codes {codes})")
            for conn in wait(list(live), timeout=1.0):
                try:
                    j, results, error = pickle.loads(conn.recv_bytes())
                except EOFError:
                    live.pop(conn).join()
                    continue
                if error is not None:
                    raise RuntimeError(f"a converter worker failed:\n{error}")
                pending[j] = results
        permits.release()
        yield from pending.pop(k)
