"""Many files into one folder (`edm2 download`, `download_files`): the digest each file must
have, present files verified and missing ones transferred `jobs` at a time, free space checked
first; and `place_files`, which links or moves downloaded files into another folder."""

import concurrent.futures
import contextlib
import dataclasses
import errno
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from edm2.errors import DownloadError
from edm2.io.atomic import atomic_path, atomic_write_text
from edm2.io.download.listing import _check_source, _expand
from edm2.io.download.manifest import MANIFEST, _forget_digest, _write_error, read_manifest, record_digest, sha256_file
from edm2.io.download.transfer import _check_offline, _conflict, _fetch, _part, _Request, head_info
from edm2.io.download.urls import DEFAULT_RETRIES, HINT_DOWNLOAD, check_limits, check_timeout


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class _Planned(NamedTuple):
    """One file of `download_files`: its URL, its name in the folder, the SHA-256 it must have
    (None when unknown) and where that digest comes from (for messages)."""

    url: str
    name: str
    expected: str | None
    source: str


def _check_dest(dest: Path) -> None:
    """Create the folder `dest` and check that it can be written; else raise `DownloadError`."""
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"--dest {dest} is a file; pass a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edm2-write-check-", dir=dest)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DownloadError(f"--dest {dest} is not writable ({e.strerror or e}); pass a writable folder") from None


def _plan(entries, served: dict, given: dict, manifest, known: dict, dest: Path) -> list[_Planned]:
    """The digest each file of `entries` (from `_expand`) must have: the one given from outside
    (URL fragment, `given` by `manifest`, `served` by the folder), which must agree with each
    other, else the one `known` to `dest/SHA256SUMS`."""
    plan = []
    for url, name, fragment in entries:
        outside = [
            (d, s)
            for d, s in ((fragment, "the URL fragment"), (given.get(name), f"--manifest {manifest}"))
            + ((served.get(name), f"the {MANIFEST} the folder serves"),)
            if d
        ]
        for d, s in outside[1:]:
            if d != outside[0][0]:
                raise DownloadError(
                    f"{name}: {outside[0][1]} gives SHA-256 {outside[0][0]} but {s} gives {d}; fix one of them"
                )
        if outside:
            plan.append(_Planned(url, name, outside[0][0], outside[0][1]))
        else:
            plan.append(_Planned(url, name, known.get(name), f"{dest / MANIFEST}"))
    return plan


def _check_free_space(dest: Path, heads: dict, fix: str, max_bytes: int | None = None) -> None:
    """Raise `DownloadError` when a file of `heads` (`{name: head_info or None}`) is larger than
    `max_bytes`, or when `dest` has less free space than they still need beyond their `.part`."""
    needed = 0
    for name, info in sorted(heads.items()):
        if info is not None and max_bytes is not None and info["size"] > max_bytes:
            raise DownloadError(
                f"{name}: its size, {info['size']} bytes (HEAD), is over the limit of {max_bytes} bytes "
                "(--max-bytes, EDM2_DOWNLOAD_MAX_BYTES); raise the limit if the file really is that large"
            )
    for name, info in heads.items():
        if info is not None:
            part = _part(dest / name)
            have = part.stat().st_size if part.is_file() else 0
            needed += max(0, info["size"] - have)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DownloadError(f"--dest {dest}: {_size(needed)} needed, {_size(free)} free; {fix}")


def _raise_failures(failed: list, total: int) -> None:
    """Raise the one-line `DownloadError` for `failed` (`(name, error)` pairs, of `total` files):
    the first failure by name, with the count when several failed."""
    name, error = sorted(failed, key=lambda e: e[0])[0]
    message = str(error) if isinstance(error, DownloadError) else f"{name}: {type(error).__name__}: {error}"
    if len(failed) > 1:
        message += f" ({len(failed)} of {total} files failed)"
    raise DownloadError(message)


class _Batch:
    """The files of one `download_files` call into `dest`: the folder's manifest `known`, the
    thread `pool`, the `_Request` every transfer shares (`shared`: its bar, stop event, retry
    policy), and the `result` that the threads fill in."""

    def __init__(self, dest: Path, known: dict, pool, shared: _Request, result: dict):
        self.dest, self.known, self.pool, self.shared, self.result = dest, known, pool, shared, result
        self.bar = shared.bar
        self.lock = threading.Lock()
        self.checked = set()  # present files that matched a given digest in `settle_doubtful`
        self.heads = {}  # name -> head_info of the files that are missing

    def run_all(self, function, items: list) -> list:
        """Run `function(item)` for every item in the pool; return the failures as (name, error).
        An interrupt (not an `Exception`) sets the stop event and is raised again."""
        failed = []
        futures = {self.pool.submit(function, item): item for item in items}
        try:
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                if error is not None:
                    if not isinstance(error, Exception):
                        raise error
                    failed.append((futures[future].name, error))
        except BaseException:
            self.shared.stop.set()
            raise
        return failed

    def settle_doubtful(self, plan: list) -> None:
        """Check the present files whose given digest is not the recorded one, before any transfer:
        a match is recorded, a file damaged since it was recorded is removed (to be fetched again),
        and a good file that a given digest contradicts is an error."""
        refetch = set()

        def precheck(p: _Planned):
            path = self.dest / p.name
            digest = sha256_file(path)
            recorded = self.known.get(p.name)
            if digest == p.expected:
                record_digest(self.dest, p.name, digest)
                with self.lock:
                    self.checked.add(p.name)
            elif recorded is not None and digest != recorded:
                with self.lock:  # damaged since it was recorded: fetch it again
                    refetch.add(p.name)
            else:
                raise _conflict(path, p.expected, p.source, digest)

        doubtful = [
            p for p in plan if (self.dest / p.name).is_file() and p.expected and p.expected != self.known.get(p.name)
        ]
        failed = self.run_all(precheck, doubtful)
        if failed:
            _raise_failures(failed, len(plan))
        for name in refetch:
            (self.dest / name).unlink(missing_ok=True)
            _forget_digest(self.dest, name)

    def head_missing(self, missing: list) -> dict:
        """`{name: head_info or None}` of the `missing` files (HEAD requests in the pool); their
        sizes are added to the bar's total."""
        infos = self.pool.map(lambda p: head_info(p.url, self.shared.timeout, self.shared.limits), missing)
        self.heads = dict(zip([p.name for p in missing], infos))
        for info in self.heads.values():
            if info is not None:
                self._add_total(info["size"])
        return self.heads

    def _add_total(self, size: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.total += size

    def bring(self, p: _Planned) -> None:
        """Verify the file `p` when it is present, else transfer it."""
        return self.verify(p) if (self.dest / p.name).is_file() else self.transfer(p)

    def verify(self, p: _Planned) -> None:
        """Hash a present file and record it as verified; one that no longer matches its expected
        digest (damaged since it was downloaded) is removed and fetched again."""
        path = self.dest / p.name
        if p.name in self.checked:
            with self.lock:
                self.result["verified"].append(p.name)
            return
        size = path.stat().st_size
        self._add_total(size)
        digest = sha256_file(path, self.bar)
        if p.expected and digest != p.expected:  # damaged since it was downloaded: fetch it again
            path.unlink()
            _forget_digest(self.dest, p.name)
            if self.bar is not None:
                self.bar.update(-size)
            return self.transfer(p)
        record_digest(self.dest, p.name, digest)
        with self.lock:
            self.result["verified"].append(p.name)

    def transfer(self, p: _Planned) -> None:
        """Fetch the file `p`, record its digest and count it as downloaded (or as verified, when
        another process brought it meanwhile)."""
        path = self.dest / p.name
        request = dataclasses.replace(self.shared, url=p.url, dest=path, sha256=p.expected, head=self.heads.get(p.name))
        digest, transferred = _fetch(request)
        record_digest(self.dest, p.name, digest)
        with self.lock:
            if transferred:
                self.result["downloaded"].append(p.name)
                self.result["bytes"] += path.stat().st_size
            else:  # another process brought it while this one waited: only verified
                self.result["verified"].append(p.name)


def download_files(
    sources,
    dest,
    include=(),
    jobs: int = 4,
    manifest=None,
    timeout: float | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
    progress: bool = True,
    max_bytes=None,
    min_rate: float | None = None,
    rate_window: float | None = None,
    deadline: float | None = None,
) -> dict:
    """Download files and directories (`sources`: http(s) URLs; a URL ending in '/' is a folder
    whose HTML index lists its files) into `dest`, `jobs` transfers at a time.

    Files already in `dest` are not fetched again; they are verified against the manifest
    `dest/SHA256SUMS`, and against the digests given (`#sha256=` fragments, `manifest`: a
    sha256sum-format file, the `SHA256SUMS` a folder's listing serves). A present file that
    matches its recorded digest (or has none) but not a given one is an error, and nothing is
    deleted or fetched; a file that no longer matches its recorded digest is fetched again.
    Free space is checked first when the sizes are known. `max_bytes`, `min_rate`, `rate_window`
    and `deadline` bound every transfer and page (see `check_limits`). Returns `{'downloaded': [names],
    'verified': [names], 'bytes': n, 'notes': [lines]}`. Raises `DownloadError` naming the first
    failed file once every other transfer has finished.
    """
    dest = Path(dest)
    sources = list(sources)
    for source in sources:  # every URL checked before anything is created
        _check_source(source)
    timeout = check_timeout(timeout)
    limits = check_limits(max_bytes, min_rate, rate_window, deadline)
    _check_dest(dest)
    fix = "free space or pass another --dest"
    entries, served, notes = _expand(sources, include, timeout, retries, backoff, dest=dest, limits=limits)
    known = read_manifest(dest / MANIFEST)
    given = read_manifest(manifest) if manifest else {}
    plan = _plan(entries, served, given, manifest, known, dest)

    result = {"downloaded": [], "verified": [], "bytes": 0, "notes": notes}
    shared = _Request(
        "", dest, None, None, timeout, retries, backoff, None, threading.Event(), HINT_DOWNLOAD, fix, limits=limits
    )
    with contextlib.ExitStack() as stack:
        if progress:
            bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {len(plan)} files")
            shared = dataclasses.replace(shared, bar=stack.enter_context(bar))
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max(1, int(jobs))))
        batch = _Batch(dest, known, pool, shared, result)
        # 1. Present files whose given digest is not the recorded one: decide before any transfer.
        batch.settle_doubtful(plan)
        present = [p for p in plan if (dest / p.name).is_file()]
        missing = [p for p in plan if not (dest / p.name).is_file()]
        if missing:
            _check_offline(missing[0].url, dest / missing[0].name)
        # 2. Sizes (HEAD) of what is missing: free space for what remains to fetch.
        _check_free_space(dest, batch.head_missing(missing), fix, limits.max_bytes)
        # 3. Verify what is there, transfer what is not.
        failed = batch.run_all(batch.bring, present + missing)
    if failed:
        _raise_failures(failed, len(plan))
    return result


def place_files(folder, names, into, move: bool = False) -> None:
    """Hard-link (or with `move`, move) the files `names` of the download folder `folder` into
    the folder `into`, and write their lines of `folder/SHA256SUMS` to `into/SHA256SUMS`.

    Linking gives a view of the download that can be deleted and made again (a workflow output
    that its rerun removes first) without losing the downloads; a file system that cannot link
    gets copies. Moving frees the download folder (its SHA256SUMS keeps the digests, so a later
    download of the same files is verified against them). Raises `DownloadError` for write
    errors (disk full, read-only...).
    """
    folder, into = Path(folder), Path(into)
    digests = read_manifest(folder / MANIFEST)
    try:
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            source, target = folder / name, into / name
            if target.exists() and os.path.samefile(source, target):
                if move:
                    source.unlink()
                continue
            if move:
                shutil.move(source, target)  # a rename on the same file system
                continue
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
        lines = "".join(f"{digests[n]}  {n}\n" for n in sorted(names) if n in digests)
        atomic_write_text(into / MANIFEST, lines)
    except OSError as e:
        raise _write_error(e, into, "free space or pass another folder") from None
