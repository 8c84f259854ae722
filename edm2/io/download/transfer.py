"""One verified, resumable transfer (`fetch`): `<name>.part` with the server's validator of that
version of the file in `.<name>.part.json`, Range requests with If-Range to resume, a restart
from byte 0 when the file changed on the server, retries with back-off, the size and SHA-256
checked before the rename to the final name (see the package docstring). Every transfer is bounded
(`Limits`: the size a server may send, a minimum rate over a window, an optional deadline), and a
`.part` whose version no validator proves is resumed only when a digest will check the result,
after comparing its last bytes with the server's."""

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import requests
import requests.adapters
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from edm2 import __version__
from edm2.errors import DownloadError, one_line
from edm2.io.atomic import atomic_write_text
from edm2.io.download.manifest import CHUNK, _write_error, file_lock, sha256_file
from edm2.io.download.urls import DEFAULT_RETRIES, HINT_CACHE, Limits, check_limits, check_timeout, offline

MAX_RESTARTS = 3  # the server's file changed under a transfer this many times: give up
OVERLAP = 1 << 16  # bytes of the .part fetched again and compared when no validator proves its version
KEEP_FREE = 256 << 20  # a body of unknown length stops before the disk has less free space than this


class _Retry(Exception):
    """A failure worth another attempt (connection reset, 5xx, truncated body)."""


class _Unproven(Exception):
    """A `.part` resumed without a validator gave a file that fails its digest."""


_local = threading.local()


class _WatchedHead:
    """A connection whose reading of an answer's status line and headers (`getresponse`) is cut
    after the seconds `header_watch` gives (set by `_header_watch` in the calling thread), by
    shutting its socket down: a server that trickles its headers one byte at a time would
    otherwise be read for as long as each byte comes within the read timeout (http.client allows
    100 header lines of 64 KiB)."""

    def getresponse(self, *args, **kwargs):
        watch = getattr(_local, "header_watch", None)
        if not watch or not watch.get("seconds"):
            return super().getresponse(*args, **kwargs)
        timer = threading.Timer(watch["seconds"], self._cut, (watch,))
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse(*args, **kwargs)
        finally:
            timer.cancel()

    def _cut(self, watch: dict) -> None:
        watch["cut"] = True
        sock = getattr(self, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class HeadCutShort(http.client.RemoteDisconnected):
    """The connection closed in the middle of an answer's headers."""


class _LineWatch:
    """A file object that notes a line read without its end (the connection closed within it)."""

    def __init__(self, fp):
        self.fp, self.short = fp, False

    def readline(self, *args):
        line = self.fp.readline(*args)
        if not line.endswith(b"\n"):
            self.short = True
        return line

    def __getattr__(self, name):
        return getattr(self.fp, name)


class _CheckedHead(http.client.HTTPResponse):
    """http.client's response, except that a head cut short (the connection closed before the
    empty line that ends the headers) is an error, not the whole head of an empty answer."""

    def begin(self):
        if self.headers is not None:
            return super().begin()
        fp = self.fp
        self.fp = watch = _LineWatch(fp)
        try:
            super().begin()
        finally:
            if self.fp is watch:
                self.fp = fp
        if watch.short:
            self.close()
            raise HeadCutShort("the connection closed in the middle of the answer's headers")


class _HTTPConnection(_WatchedHead, HTTPConnection):
    response_class = _CheckedHead


class _HTTPSConnection(_WatchedHead, HTTPSConnection):
    response_class = _CheckedHead


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections whose answer heads are bounded in time (`_WatchedHead`)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # (a SOCKS proxy keeps its own connections)
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager


@contextlib.contextmanager
def _header_watch(seconds: float | None):
    """Bound the reading of the status line and headers of the requests of this thread to
    `seconds` (None: unbounded) while in the block; yields a dict whose 'cut' says whether a head
    was cut."""
    watch = {"seconds": seconds, "cut": False}
    _local.header_watch = watch
    try:
        yield watch
    finally:
        _local.header_watch = None


def header_limit(limits: Limits, timeout: float, started: float | None = None) -> float | None:
    """The seconds an answer's status line and headers may take: the rate window (at least the
    read timeout) while a minimum rate is set, at most what is left of the deadline (`started`: a
    `time.monotonic()`); None when neither is set."""
    candidates = []
    if limits.min_rate:
        candidates.append(max(limits.rate_window, timeout))
    if limits.deadline is not None:
        left = limits.deadline - (time.monotonic() - started if started is not None else 0.0)
        candidates.append(max(0.1, left))
    return min(candidates) if candidates else None


def _head_cut(url: str, seconds: float, what: str = "download", advice: str = "rerun to retry") -> DownloadError:
    return DownloadError(
        f"cannot {what} {url}: the server's answer did not finish its status line and headers within "
        f"{seconds:.3g} s (--min-rate over --rate-window, --deadline); {advice}"
    )


def _session():
    """One `requests.Session` per thread (connection reuse; sessions are not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = _Adapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = f"edm2/{__version__}"
        session.headers["Accept-Encoding"] = "identity"  # byte ranges refer to the stored bytes
        _local.session = session
    return session


def _is_connect_failure(e) -> bool:
    """True when the host could not be reached at all (no route, refused, name not resolved)."""
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(e, requests.exceptions.ConnectionError) and e.args:
        reason = getattr(e.args[0], "reason", e.args[0])
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _describe(e) -> str:
    """A short description of a requests/urllib3 failure (no object reprs)."""
    if isinstance(e, _Retry):
        return str(e)
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return "no answer to the connection in time"
    if isinstance(e, requests.exceptions.Timeout):
        return "no answer in time"
    inner = e.args[0] if e.args else e
    cut = [a for a in getattr(inner, "args", ()) if isinstance(a, HeadCutShort)]
    if cut:
        return str(cut[0])
    reason = getattr(inner, "reason", inner)
    if isinstance(reason, str):  # urllib3's ProtocolError('Connection broken: ...', cause)
        return one_line(reason, 300)
    text = str(reason)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        m = re.search(r"Failed to resolve '([^']*)'(?: \(\[Errno [-\d]+\] ([^)]*)\))?", text)
        host, why = (m.group(1), m.group(2)) if m else ("", None)
        return f"name {host} not resolved" + (f" ({why})" if why else "") if host else "name not resolved"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        m = re.search(r"\[Errno -?\d+\] (.*)$", text)
        return (m.group(1) if m else "cannot connect").strip().rstrip(")").lower()
    text = re.sub(r"<[^>]*>:? ?", "", text)  # urllib3 prefixes messages with the connection repr
    text = re.sub(r"\w+\(host='[^']*', port=\d+\): ", "", text)
    text = re.sub(r"\s*\(Caused by .*", "", text)
    text = one_line(text, 300)
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _content_range(value: str | None):
    """`(first byte or None, total or None)` of a Content-Range header 'bytes a-b/total' or
    'bytes */total' (the latter in 416 answers)."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (None if m.group(2) == "*" else int(m.group(2)))


def _check_offline(url: str, dest: Path) -> None:
    if offline():
        raise DownloadError(
            f"cannot download {url}: EDM2_OFFLINE is set and {dest} is not there yet; "
            "unset EDM2_OFFLINE on a machine with internet, or pass a local copy of the file"
        )


def _validator(headers) -> dict:
    """The validators of a response: its strong ETag and its Last-Modified (None when absent)."""
    etag = headers.get("ETag")
    return {
        "etag": etag if etag and not etag.startswith("W/") else None,
        "last_modified": headers.get("Last-Modified") or None,
    }


def head_info(url: str, timeout: float, limits: Limits | None = None) -> dict | None:
    """`{'size', 'etag', 'last_modified'}` from a HEAD request, or None when it fails or the
    server does not say the size (its head bounded in time by `limits`, see `header_limit`)."""
    try:
        with _header_watch(header_limit(check_limits(limits), timeout)) as watch:
            r = _session().head(url, timeout=(timeout, timeout), allow_redirects=True)
    except Exception:
        return None
    if watch["cut"]:
        return None
    length = r.headers.get("Content-Length")
    if r.status_code != 200 or not (length and length.isdigit()):
        return None
    return {"size": int(length), **_validator(r.headers)}


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _state_path(dest: Path) -> Path:
    """The record of which version of the server's file the `.part` holds."""
    return dest.with_name(f".{dest.name}.part.json")


def _read_state(dest: Path) -> dict | None:
    try:
        state = json.loads(_state_path(dest).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _has_validator(state: dict | None) -> bool:
    """True when the record of a `.part` holds a validator (ETag or Last-Modified)."""
    return bool(state and (state.get("etag") or state.get("last_modified")))


def _validated(state: dict | None, url: str, size, validator: dict) -> bool:
    """True when a response (total `size`, `validator`) is proven to be of the version of the file
    that the `.part` was started from (`state`): the same URL and total size, and a validator
    (ETag or Last-Modified) that both have and that agrees (none that disagrees). Without a
    validator on both sides nothing is proven (the same size is not the same file)."""
    if not state or state.get("url") != url or state.get("size") is None or state.get("size") != size:
        return False
    matched = False
    for key in ("etag", "last_modified"):
        if state.get(key) and validator.get(key):
            if state[key] != validator[key]:
                return False
            matched = True
    return matched


def _rate(n: float) -> str:
    return f"{n:.3g}" if n < 100 else f"{n:.0f}"


class Pace:
    """The rate and time bounds of one transfer (`limits`): `add(n)` after every block received
    raises `DownloadError` naming `url` when the bytes of the last `rate_window` seconds average
    less than `min_rate` per second, or when `deadline` seconds have passed since `started` (a
    `time.monotonic()`); `advice` (a callable) says what to do next."""

    def __init__(self, url: str, limits: Limits, started: float | None = None, advice=lambda: "rerun to retry"):
        self.url, self.limits, self.advice = url, limits, advice
        now = time.monotonic()
        self.started = now if started is None else started
        self.mark_time, self.mark_bytes, self.bytes = now, 0, 0

    def check_deadline(self) -> None:
        deadline = self.limits.deadline
        elapsed = time.monotonic() - self.started
        if deadline is not None and elapsed > deadline:
            raise DownloadError(
                f"cannot download {self.url}: not complete after {elapsed:.0f} s, over the deadline of "
                f"{deadline:g} s (--deadline, EDM2_DOWNLOAD_DEADLINE; {self.bytes} bytes came at "
                f"{_rate(self.bytes / max(elapsed, 1e-9))} bytes/s); {self.advice()}"
            )

    def add(self, n: int) -> None:
        self.bytes += n
        self.check_deadline()
        limits, now = self.limits, time.monotonic()
        elapsed = now - self.mark_time
        if limits.min_rate and elapsed >= limits.rate_window:
            rate = (self.bytes - self.mark_bytes) / elapsed
            if rate < limits.min_rate:
                raise DownloadError(
                    f"cannot download {self.url}: {_rate(rate)} bytes/s over the last {elapsed:.3g} s, below the "
                    f"minimum of {limits.min_rate:g} bytes/s (--min-rate, EDM2_DOWNLOAD_MIN_RATE; averaged over "
                    f"--rate-window {limits.rate_window:g} s); {self.advice()}"
                )
            self.mark_time, self.mark_bytes = now, self.bytes


@dataclasses.dataclass(frozen=True)
class _Request:
    """One transfer as `fetch` takes it: `url` into `dest`, the digest to check and the retry policy
    (the parameters of `fetch`, which documents them)."""

    url: str
    dest: Path
    sha256: str | None = None
    prefix: str | None = None
    timeout: float | None = None
    retries: int = DEFAULT_RETRIES
    backoff: float = 1.0
    bar: object = None
    stop: threading.Event | None = None
    hint: str = HINT_CACHE
    fix: str | None = None
    head: dict | None = None
    limits: Limits | None = None

    def stopped(self) -> bool:
        """True when the caller asked every transfer to stop."""
        return self.stop is not None and self.stop.is_set()


def fetch(
    url: str,
    dest,
    sha256: str | None = None,
    prefix: str | None = None,
    timeout: float | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
    bar=None,
    stop: threading.Event | None = None,
    hint: str = HINT_CACHE,
    fix: str | None = None,
    head: dict | None = None,
    limits: Limits | None = None,
) -> str:
    """Download `url` to `dest` through `dest.part`, resuming and retrying; returns the SHA-256.

    `sha256` (full hex digest) or `prefix` (its first hex digits) is checked when given; a
    transfer that does not match is removed and `DownloadError` names the file and both digests.
    The size is checked against Content-Length (or Content-Range). Failed attempts are retried with
    back-off `backoff * 2**k` seconds (at most 30 s) until `retries` retries in a row bring the
    file no further; a host that cannot be reached before the first byte fails at once (`hint`
    says what to do). `bar` (a tqdm bar) is advanced by the bytes received; `fix` says what to do
    when the disk is full; `head` (from `head_info`) tells whether a `.part` is complete already
    and bounds a body without Content-Length; `limits` (default: `check_limits()`) bounds the
    size, rate and time of the transfer. A `.part` is resumed only when a validator (ETag or
    Last-Modified, sent as If-Range) proves it is of the server's current version, or when a
    digest is known: then its last bytes (up to `OVERLAP`) are fetched again and compared, and a
    result that fails the digest is fetched once more from byte 0. Raises `DownloadError`.
    """
    request = _Request(url, Path(dest), sha256, prefix, timeout, retries, backoff, bar, stop, hint, fix, head, limits)
    return _fetch(request)[0]


def _fetch(request: _Request) -> tuple[str, bool]:
    """`fetch`, returning `(digest, transferred)`: False when another process brought the file
    while this one waited for the lock (it was only verified)."""
    dest = Path(request.dest)
    _check_offline(request.url, dest)
    with contextlib.ExitStack() as stack:
        # One transfer per destination at a time, across processes (parallel jobs may need the
        # same file): a process that waited finds the file complete and only verifies it.
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(dest.with_name(f".{dest.name}.lock")))
        except OSError as e:
            raise _write_error(e, dest.parent, request.fix) from None
        if dest.is_file():
            return _verify_present(dest, request.sha256 or request.prefix, request.url), False
        limits = check_limits(request.limits)
        request = dataclasses.replace(request, dest=dest, timeout=check_timeout(request.timeout), limits=limits)
        return _Transfer(request).run(), True


class _Transfer:
    """The body of `fetch`, under its lock: the `.part` of `request.dest`, the bytes of it that
    are hashed and shown on the bar, and the counts of failures and restarts."""

    def __init__(self, request: _Request):
        self.request = request
        self.url = request.url
        self.part, self.state_path = _part(request.dest), _state_path(request.dest)
        self.fix = request.fix or "free space or write elsewhere"
        self.hasher, self.hashed = hashlib.sha256(), 0
        self.failures, self.received_any, self.restarts, self.furthest, self.shown = 0, False, 0, 0, 0
        self.expected = (request.sha256 or request.prefix or "").lower() or None
        self.unproven = False  # the .part was resumed without a validator: only the digest proves it
        self.started = time.monotonic()

    def run(self) -> str:
        """Bring the whole file into the `.part` (unless it is complete already), then verify and
        rename it; returns its SHA-256."""
        while True:
            if not self._part_complete():
                self._attempts()
            try:
                return self._finish()
            except _Unproven:  # a resume without a validator did not give the digest: once more from 0
                self._restart("a resumed transfer without a validator did not give the expected SHA-256")

    def _pace(self) -> Pace:
        return Pace(self.url, self.request.limits, self.started, self._resume_advice)

    def _trust(self, state: dict | None, total, validator: dict) -> bool:
        """True when the `.part` (record `state`) may be continued by, or is complete for, an answer
        of total size `total` with `validator`: proven by a validator, or (no validator recorded)
        left to the known digest to prove (`unproven`)."""
        if _validated(state, self.url, total, validator):
            return True
        if self.expected and not _has_validator(state):
            if state is None or (state.get("url") == self.url and state.get("size") in (None, total)):
                self.unproven = True
                return True
        return False

    def _show(self, n: int) -> None:
        """Keep the bar at the `n` bytes of this file that are in place."""
        if self.request.bar is not None and n != self.shown:
            self.request.bar.update(n - self.shown)
        self.shown = n

    def _rehash(self, size: int) -> None:
        """Hash the `.part` anew from byte 0 (`size`: its size; 0 reads nothing)."""
        self.hasher, self.hashed = hashlib.sha256(), 0
        if size:
            with open(self.part, "rb") as f:
                while block := f.read(CHUNK):
                    self.hasher.update(block)
                    self.hashed += len(block)

    def _restart(self, why: str, count: bool = True) -> None:
        """Remove the `.part` to start again from byte 0; too many counted restarts are an error."""
        self.restarts += count
        if self.restarts > MAX_RESTARTS:
            raise DownloadError(f"cannot download {self.url}: {why} {self.restarts} times in a row; rerun later")
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()
        self.hasher, self.hashed, self.unproven = hashlib.sha256(), 0, False
        self._show(0)

    def _resume_advice(self) -> str:
        part = self.part
        kept = self.hashed or (part.exists() and part.stat().st_size)
        return f"rerun to resume from {part}" if kept else "rerun to retry"

    def _part_complete(self) -> bool:
        """True when the `.part` is complete already (the size `head` gives, the same version):
        no request is needed."""
        head, state = self.request.head, _read_state(self.request.dest)
        if self.part.exists() and head and head.get("size") == self.part.stat().st_size:
            return self._trust(state, head["size"], head)
        return False

    def _attempts(self) -> None:
        """Attempt after attempt until the `.part` holds the whole file: retries with back-off;
        raises `DownloadError` when stopped, unreachable or out of retries."""
        while True:
            if self.request.stopped():
                raise DownloadError(f"download of {self.url} interrupted; {self._resume_advice()}")
            self._pace().check_deadline()
            try:
                if self._attempt():
                    return
            except (
                _Retry,
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError,
            ) as e:
                self._failed(e)
            except requests.exceptions.RequestException as e:
                raise DownloadError(f"cannot download {self.url}: {_describe(e)}; {self.request.hint}") from None

    def _failed(self, e: Exception) -> None:
        """After a failed attempt `e`: raise `DownloadError` (unreachable, or out of retries), else
        wait the back-off."""
        request = self.request
        if not self.received_any and _is_connect_failure(e):
            raise DownloadError(
                f"cannot download {self.url}: the host cannot be reached ({_describe(e)}); {request.hint}"
            ) from None
        self.failures += 1
        if self.failures > request.retries:
            raise DownloadError(
                f"cannot download {self.url}: {_describe(e)} ({self.failures} attempts in a row failed); "
                f"{self._resume_advice()}"
            ) from None
        pause = min(30.0, request.backoff * 2 ** (self.failures - 1))
        if request.limits is not None and request.limits.deadline is not None:  # no sleeping past it
            pause = min(pause, max(0.0, request.limits.deadline - (time.monotonic() - self.started)) + 0.01)
        time.sleep(pause)

    def _attempt(self) -> bool:
        """One GET from the end of the `.part`: True when the `.part` then holds the whole file,
        False when it was started again from byte 0 (try again at once). Raises `_Retry`."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        state = _read_state(self.request.dest) if offset else None
        if offset and not _has_validator(state) and not self.expected:
            # Nothing could tell a .part of another version of the file (the same size is not
            # the same file), and no digest will check the result: start again from byte 0.
            self._restart("no validator", count=False)
            offset, state = 0, None
        if offset != self.hashed:  # a .part from an earlier run: hash what it holds first
            self._rehash(offset)
            self._show(offset)
        # Without a validator, fetch the .part's last bytes again and compare them first.
        overlap = min(offset, OVERLAP) if offset and not _has_validator(state) else 0
        timeout = (self.request.timeout, self.request.timeout)
        pace = self._pace()
        headers = self._headers(offset, state, overlap)
        seconds = header_limit(self.request.limits, self.request.timeout, self.started)
        with _header_watch(seconds) as watch:
            try:
                r = _session().get(self.url, headers=headers, stream=True, timeout=timeout)
            except requests.exceptions.RequestException:
                if watch["cut"]:
                    raise _head_cut(self.url, seconds, advice=self._resume_advice()) from None
                raise
        if watch["cut"]:
            r.close()
            raise _head_cut(self.url, seconds, advice=self._resume_advice())
        with r:
            validator = _validator(r.headers)
            if r.status_code == 416 and offset:
                _, total = _content_range(r.headers.get("Content-Range"))
                if not overlap and total == offset and self._trust(state, total, validator):
                    return True  # the .part holds the whole file already
                self._restart("the file on the server changed")  # e.g. shorter than the .part
                return False
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise _Retry(f"HTTP {r.status_code} {r.reason}")
            if r.status_code >= 400:
                raise DownloadError(f"cannot download {self.url}: HTTP {r.status_code} {r.reason}; check the URL")
            started = self._start_body(r, offset, state, validator, overlap, pace)
            if started is None:
                return False
            offset, total = started
            self._write_body(r, offset, total, pace)
            if total is not None and self.hashed != total:
                raise _Retry(f"the transfer stopped after {self.hashed} of {total} bytes")
        return True

    def _headers(self, offset: int, state: dict | None, overlap: int = 0) -> dict:
        """The request headers: a Range from `offset` less `overlap` (with If-Range from `state`)
        when resuming."""
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset - overlap}-"
            if state and state.get("url") == self.url and (state.get("etag") or state.get("last_modified")):
                headers["If-Range"] = state.get("etag") or state["last_modified"]
        return headers

    def _start_body(self, r, offset: int, state: dict | None, validator: dict, overlap: int, pace: Pace):
        """`(offset, total or None)` at which the body of the answer `r` goes into the `.part`, or
        None when the `.part` was started again (try again at once); a whole file's version is recorded.
        A resume without a validator (`overlap` > 0) first compares the `overlap` bytes before
        `offset` with the `.part`'s."""
        if r.status_code == 206 and offset:
            first, total = _content_range(r.headers.get("Content-Range"))
            if first != offset - overlap:
                raise _Retry(f"the server answered a range from byte {first}, asked for {offset - overlap}")
            if (total is not None and total < offset) or not self._trust(state, total, validator):
                # Another version of the file than the .part was started from, or no
                # record of which: start again rather than stitch two versions.
                self._restart("the file on the server changed")
                return None
            if overlap and not self._overlap_matches(r, offset, overlap, pace):
                self._restart("the file on the server changed")
                return None
            return offset, total
        # 200: the whole file (changed since, or a server without Range support)
        if offset:  # (not counted: a server without Range support does this every time)
            self._restart("the file on the server changed", count=False)
        length = r.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if r.status_code == 206:  # a range from 0 we did not ask for
            total = _content_range(r.headers.get("Content-Range"))[1]
        try:
            atomic_write_text(self.state_path, json.dumps({"url": self.url, "size": total, **validator}))
        except OSError as e:
            raise _write_error(e, self.state_path, self.fix) from None
        return 0, total

    def _overlap_matches(self, r, offset: int, overlap: int, pace: Pace) -> bool:
        """True when the first `overlap` bytes of the body of `r` are the `.part`'s bytes before
        `offset` (raises `_Retry` when the body ends before)."""
        received = bytearray()
        while len(received) < overlap:
            block = r.raw.read1(overlap - len(received), decode_content=False)
            if not block:
                raise _Retry(f"the transfer stopped after {len(received)} of the {overlap} bytes compared")
            received += block
            pace.add(len(block))
        with open(self.part, "rb") as f:
            f.seek(offset - overlap)
            return f.read(overlap) == bytes(received)

    def _limit(self, total, offset: int) -> tuple[int, str, str]:
        """`(most bytes the .part may hold, where that bound comes from, what to do when a body
        goes past it)` for an answer of total size `total` (None: not said) appended at `offset`.
        A total over --max-bytes, or more than the free space, is refused before any byte; a body
        of unknown length may not fill the disk (it stops `KEEP_FREE` bytes before)."""
        max_bytes, folder = self.request.limits.max_bytes, self.part.parent
        if total is not None and total > max_bytes:
            self._discard()
            raise DownloadError(
                f"cannot download {self.url}: its size, {total} bytes, is over the limit of {max_bytes} bytes "
                "(--max-bytes, EDM2_DOWNLOAD_MAX_BYTES); raise the limit if the file really is that large"
            )
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if total is not None:
            if free is not None and total - offset > free:
                raise DownloadError(
                    f"cannot download {self.url}: {total - offset} more bytes needed, {free} free in {folder}; "
                    f"{self.fix}"
                )
            return total, "the size the server gave", ""
        head = self.request.head
        if head and head.get("size") is not None and head["size"] <= max_bytes:
            bound, source, advice = head["size"], "the size its HEAD answer gave", ""
        else:
            bound, source = max_bytes, "--max-bytes, EDM2_DOWNLOAD_MAX_BYTES"
            advice = "; raise --max-bytes if the file really is that large"
        if free is not None and offset + free - KEEP_FREE < bound:
            bound = max(0, offset + free - KEEP_FREE)
            source = f"the free space of {folder}, less {KEEP_FREE >> 20} MiB kept free"
            advice = f"; {self.fix}"
        return bound, source, advice

    def _discard(self) -> None:
        """Remove the `.part` and its record: nothing is left that looks resumable."""
        self.part.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        self.hasher, self.hashed, self.unproven = hashlib.sha256(), 0, False
        self._show(0)

    def _write_body(self, r, offset: int, total, pace: Pace) -> None:
        """Append the body of `r` to the `.part` (from `offset`; 0 truncates it), hashing it and
        advancing the bar; a write error is a `DownloadError` naming the `.part`. A body longer
        than the file's size (or, not said, than --max-bytes) is refused and the `.part` removed;
        `pace` bounds the rate and time."""
        part, fix = self.part, f"{self.fix}; then rerun to resume"
        limit, source, advice = self._limit(total, offset)
        try:
            f = open(part, "ab" if offset else "wb")
        except OSError as e:
            raise _write_error(e, part, self.fix) from None
        too_long = False
        try:
            # read1: whatever has arrived, so a cut connection loses no received byte
            while block := r.raw.read1(CHUNK, decode_content=False):
                if self.request.stopped():
                    raise DownloadError(f"download of {self.url} interrupted; rerun to resume from {part}")
                if self.hashed + len(block) > limit:
                    too_long = True
                    break
                try:
                    f.write(block)
                except OSError as e:
                    raise _write_error(e, part, fix) from None
                self.hasher.update(block)
                self.hashed += len(block)
                self.received_any = True
                if self.hashed > self.furthest:  # real progress (not bytes received again)
                    self.furthest, self.failures = self.hashed, 0
                self._show(self.hashed)
                pace.add(len(block))
        finally:
            try:
                f.close()
            except OSError as e:
                raise _write_error(e, part, fix) from None
        if too_long:
            self._discard()
            raise DownloadError(
                f"cannot download {self.url}: the server sent more than {limit} bytes ({source}); the transfer "
                f"was removed{advice}"
            )

    def _finish(self) -> str:
        """Check the SHA-256 of the complete `.part` and rename it to its final name; returns the
        digest. A mismatch removes the `.part` and raises `DownloadError`."""
        size = self.part.stat().st_size
        if self.hashed != size:  # complete without a transfer: hash the .part
            self._rehash(size)
            self._show(self.hashed)
        digest = self.hasher.hexdigest()
        expected = self.request.sha256 or self.request.prefix
        if expected and not digest.startswith(expected.lower()):
            self.part.unlink()
            self.state_path.unlink(missing_ok=True)
            if self.unproven:
                raise _Unproven()
            raise DownloadError(
                f"{self.request.dest.name}: SHA-256 mismatch for {self.url}: expected {expected.lower()}, "
                f"got {digest}; the transfer was removed (nothing is kept under the final name): a corrupted "
                "transfer or a changed file on the server (rerun to fetch it again), or a wrong digest (fix it)"
            )
        os.replace(self.part, self.request.dest)
        self.state_path.unlink(missing_ok=True)
        return digest


def _verify_present(path: Path, expected: str | None, what: str, bar=None) -> str:
    """Hash a file that is already in place and compare with `expected` (full or prefix); a
    mismatch is an error that deletes nothing."""
    digest = sha256_file(path, bar)
    if expected and not digest.startswith(expected.lower()):
        raise DownloadError(
            f"{path}: SHA-256 mismatch ({what}): expected {expected.lower()}, got {digest}; "
            f"fix the digest, or delete {path} to download it again"
        )
    return digest


def _conflict(path: Path, given: str, source: str, digest: str) -> DownloadError:
    return DownloadError(
        f"{path}: the given SHA-256 {given} ({source}) differs from the present file's {digest}; "
        f"fix the digest, or delete {path} to download it again"
    )
