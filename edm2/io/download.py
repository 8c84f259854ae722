"""Verified, resumable downloads: released networks, raw training snapshots, reference
statistics and detector weights.

Two entry points share one transfer routine (`fetch`):

- `download(url)`: one file into the cache, for the commands that take a URL (`--net`,
  `--ref`, detector weights). The cache root is `$EDM2_CACHE_DIR`, else
  `$XDG_CACHE_HOME/edm2`, else `~/.cache/edm2`; files live under
  `<root>/downloads/<first 16 hex digits of sha256(url)>-<file name in the URL>`. A `file://`
  URL is read in place and never copied into the cache (so a replaced file is never served
  stale).
- `download_files(urls, dest)`: `edm2 download`, many files or a whole directory (read from the
  HTML index page the server returns, as the NVIDIA CDN serves
  https://nvlabs-fi-cdn.nvidia.com/edm2/raw-snapshots/<run>/) into a folder, `jobs` at a time.

Every transfer goes into `<name>.part` next to its final place, with the server's validator of
that version of the file (ETag, else Last-Modified, and the total size) kept in
`.<name>.part.json`; an interrupted transfer (a cut connection, a killed process) continues from
the end of the `.part` file with an HTTP Range request carrying `If-Range`, and starts again from
byte 0 when the server's file changed in between (a 200 answer, another total size or
validator). A `.part` that is already complete is verified and renamed without fetching it
again. Connection resets and 5xx answers are retried with exponential back-off, the size is
checked against Content-Length, and the file is renamed to its final name only when complete
and verified. Verification: the SHA-256 of every file is computed while it is written and
compared with the digest known for it (a `#sha256=<hex>` URL fragment, `--manifest`, the
`SHA256SUMS` a folder's listing serves, the manifest of the destination, or, when asked for, the
hash prefix in the file name such as `...-6726825d.pth`); otherwise it is recorded in the
manifest `SHA256SUMS` of the destination (sha256sum format) so that later uses verify against it.
A transfer that fails its digest is removed; a file already in place is never deleted because a
digest given from outside disagrees with it (that is an error naming both digests), only when
it no longer matches its own recorded digest (it was damaged since).

`EDM2_OFFLINE=1` refuses every download that is not already present, without touching the
network; a host that cannot be reached fails at once (no retries) with one line naming the URL.
"""

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import fnmatch
import hashlib
import html.parser
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import NamedTuple

import requests
import urllib3
from tqdm import tqdm

from edm2 import __version__
from edm2.errors import DownloadError, FormatError, one_line
from edm2.io.atomic import WRITE_ERRNOS, atomic_path, atomic_write_text

URL_SCHEMES = ("http://", "https://", "file://")
DEFAULT_TIMEOUT = 20.0  # seconds without progress before a connection is abandoned
MAX_TIMEOUT = 86400.0
DEFAULT_RETRIES = 8  # retries after a failed attempt (no byte received in between) before giving up
MAX_RESTARTS = 3  # the server's file changed under a transfer this many times: give up
MANIFEST = "SHA256SUMS"
CHUNK = 1 << 20
# What to do when a host cannot be reached: the cache serves commands that also take a local
# path; `edm2 download` does not.
HINT_CACHE = "check the network connection, or download the file by hand and pass its local path instead"
HINT_DOWNLOAD = "check the network connection and the URL"


def is_url(text) -> bool:
    """True for http(s):// and file:// URLs."""
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def cache_dir() -> Path:
    """Root of the edm2 cache: $EDM2_CACHE_DIR, else $XDG_CACHE_HOME/edm2, else ~/.cache/edm2."""
    root = os.environ.get("EDM2_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "edm2"
    return Path.home() / ".cache" / "edm2"


def offline() -> bool:
    """True when EDM2_OFFLINE is set to a true value (1, true, yes)."""
    return os.environ.get("EDM2_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_timeout(timeout) -> float:
    """`timeout` (seconds), or $EDM2_DOWNLOAD_TIMEOUT, or the default; finite, 0.1 .. 86400."""
    where = f"timeout {timeout!r}"
    if timeout is None:
        env = os.environ.get("EDM2_DOWNLOAD_TIMEOUT")
        if env is None or not env.strip():
            return DEFAULT_TIMEOUT
        where, timeout = f"EDM2_DOWNLOAD_TIMEOUT={env}", env
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.1 <= value <= MAX_TIMEOUT):
        raise DownloadError(f"{where}: not a number of seconds from 0.1 to {MAX_TIMEOUT:.0f}")
    return value


def check_url(url: str) -> str:
    """Return `url` (http or https, fragment removed by the caller) if it is well formed; else
    raise `DownloadError` "'<url>': not a valid URL (<reason>)" before any transfer."""

    def bad(reason):
        return DownloadError(f"'{url}': not a valid URL ({reason})")

    if any(c.isspace() for c in url):
        raise bad("it contains a space; write it as %20")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise bad("it contains a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise bad(str(e)[:1].lower() + str(e)[1:]) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad("not http:// or https://")
    if not parts.hostname:
        raise bad("no host")
    if port == 0:
        raise bad("port 0")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise bad(f"the host name {parts.hostname!r} is malformed") from None
    try:
        urllib3.util.parse_url(url)
        requests.Request("GET", url).prepare()
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ValueError, UnicodeError) as e:
        raise bad(one_line(str(e), 200)) from None
    return url


def split_digest(url: str) -> tuple[str, str | None]:
    """`(url without fragment, sha256 hex or None)` for a URL that may end in `#sha256=<hex>`."""
    base, _, fragment = url.partition("#")
    m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if fragment and not m:
        raise DownloadError(f"{url}: the URL fragment must be #sha256=<64 hex digits>")
    return base, (m.group(1).lower() if m else None)


def url_file_name(url: str) -> str:
    """The last path segment of a URL, decoded ('' for a directory URL)."""
    return urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]


def unsafe_name(name: str) -> str | None:
    """Why a decoded file name from a URL cannot be a file of a download folder, or None: empty,
    `.` or `..`, a path separator or NUL, a hidden name (our lock and state files are hidden), a
    `.part` name (our partial transfers) or the folder's own manifest."""
    if not name:
        return "no file name"
    if name in (".", ".."):
        return f"the name {name!r} is a folder"
    if "/" in name or "\\" in name or "\0" in name:
        return f"the name {name!r} holds a path separator or NUL"
    if name.startswith("."):
        return f"the name {name!r} is hidden (lock and state files are)"
    if name.endswith(".part"):
        return f"the name {name!r} ends in .part (partial transfers do)"
    if name == MANIFEST:
        return f"{MANIFEST} is the manifest the download folder keeps"
    return None


def cached_path(url: str, root=None) -> Path:
    """Where `url` is (or would be) cached (the name is the URL's digest and a sanitized file
    name, so no URL can name a path outside the cache)."""
    url = split_digest(url)[0]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url_file_name(url) or "download")
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(root or cache_dir()) / "downloads" / f"{digest}-{name}"


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries by the torch.hub convention, `<stem>-<hex>.<ext>`
    (e.g. `pt_inception-2015-12-05-6726825d.pth` -> '6726825d'), else None."""
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", name)
    return m.group(1) if m else None


def sha256_file(path, bar=None) -> str:
    """SHA-256 hex digest of a file (read in 1 MiB blocks; `bar` is updated with the bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    return h.hexdigest()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# Lock files and the manifest of a destination folder (`SHA256SUMS`, the format of `sha256sum`).


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
            text = Path(path).read_text()
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


# ----------------------------------------------------------------------------------------------
# One transfer.


class _Retry(Exception):
    """A failure worth another attempt (connection reset, 5xx, truncated body)."""


_local = threading.local()


def _session():
    """One `requests.Session` per thread (connection reuse; sessions are not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
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


def head_info(url: str, timeout: float) -> dict | None:
    """`{'size', 'etag', 'last_modified'}` from a HEAD request, or None when it fails or the
    server does not say the size."""
    try:
        r = _session().head(url, timeout=(timeout, timeout), allow_redirects=True)
    except Exception:
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


def _same_version(state: dict | None, url: str, size, validator: dict) -> bool:
    """True when a response (total `size`, `validator`) is of the version of the file that the
    `.part` was started from (`state`); without any validator the total size must agree."""
    if not state or state.get("url") != url or state.get("size") is None or state.get("size") != size:
        return False
    for key in ("etag", "last_modified"):
        if state.get(key) and validator.get(key) and state[key] != validator[key]:
            return False
    return True


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
) -> str:
    """Download `url` to `dest` through `dest.part`, resuming and retrying; returns the SHA-256.

    `sha256` (full hex digest) or `prefix` (its first hex digits) is checked when given; a
    transfer that does not match is removed and `DownloadError` names the file and both digests.
    The size is checked against Content-Length (or Content-Range). Failed attempts are retried with
    back-off `backoff * 2**k` seconds (at most 30 s) until `retries` retries in a row bring the
    file no further; a host that cannot be reached before the first byte fails at once (`hint`
    says what to do). `bar` (a tqdm bar) is advanced by the bytes received; `fix` says what to do
    when the disk is full; `head` (from `head_info`) tells whether a `.part` is complete already.
    Raises `DownloadError`.
    """
    request = _Request(url, Path(dest), sha256, prefix, timeout, retries, backoff, bar, stop, hint, fix, head)
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
        request = dataclasses.replace(request, dest=dest, timeout=check_timeout(request.timeout))
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

    def run(self) -> str:
        """Bring the whole file into the `.part` (unless it is complete already), then verify and
        rename it; returns its SHA-256."""
        if not self._part_complete():
            self._attempts()
        return self._finish()

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
        self.hasher, self.hashed = hashlib.sha256(), 0
        self._show(0)

    def _resume_advice(self) -> str:
        part = self.part
        return f"rerun to resume from {part}" if part.exists() and part.stat().st_size else "rerun to retry"

    def _part_complete(self) -> bool:
        """True when the `.part` is complete already (the size `head` gives, the same version):
        no request is needed."""
        head, state = self.request.head, _read_state(self.request.dest)
        if self.part.exists() and head and head.get("size") == self.part.stat().st_size:
            return state is None or _same_version(state, self.url, head["size"], head)
        return False

    def _attempts(self) -> None:
        """Attempt after attempt until the `.part` holds the whole file: retries with back-off;
        raises `DownloadError` when stopped, unreachable or out of retries."""
        while True:
            if self.request.stopped():
                raise DownloadError(f"download of {self.url} interrupted; {self._resume_advice()}")
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
        time.sleep(min(30.0, request.backoff * 2 ** (self.failures - 1)))

    def _attempt(self) -> bool:
        """One GET from the end of the `.part`: True when the `.part` then holds the whole file,
        False when it was started again from byte 0 (try again at once). Raises `_Retry`."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        if offset != self.hashed:  # a .part from an earlier run: hash what it holds first
            self._rehash(offset)
            self._show(offset)
        state = _read_state(self.request.dest) if offset else None
        timeout = (self.request.timeout, self.request.timeout)
        with _session().get(self.url, headers=self._headers(offset, state), stream=True, timeout=timeout) as r:
            validator = _validator(r.headers)
            if r.status_code == 416 and offset:
                _, total = _content_range(r.headers.get("Content-Range"))
                if total == offset and (state is None or _same_version(state, self.url, total, validator)):
                    return True  # the .part holds the whole file already
                self._restart("the file on the server changed")  # e.g. shorter than the .part
                return False
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise _Retry(f"HTTP {r.status_code} {r.reason}")
            if r.status_code >= 400:
                raise DownloadError(f"cannot download {self.url}: HTTP {r.status_code} {r.reason}; check the URL")
            started = self._start_body(r, offset, state, validator)
            if started is None:
                return False
            offset, total = started
            self._write_body(r, offset)
            if total is not None and self.hashed != total:
                raise _Retry(f"the transfer stopped after {self.hashed} of {total} bytes")
        return True

    def _headers(self, offset: int, state: dict | None) -> dict:
        """The request headers: a Range from `offset` (with If-Range from `state`) when resuming."""
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if state and state.get("url") == self.url and (state.get("etag") or state.get("last_modified")):
                headers["If-Range"] = state.get("etag") or state["last_modified"]
        return headers

    def _start_body(self, r, offset: int, state: dict | None, validator: dict):
        """`(offset, total or None)` at which the body of the answer `r` goes into the `.part`, or
        None when the `.part` was started again (try again at once); a whole file's version is recorded."""
        if r.status_code == 206 and offset:
            first, total = _content_range(r.headers.get("Content-Range"))
            if first != offset:
                raise _Retry(f"the server answered a range from byte {first}, asked for {offset}")
            if not _same_version(state, self.url, total, validator):
                # Another version of the file than the .part was started from, or no
                # record of which: start again rather than stitch two versions.
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

    def _write_body(self, r, offset: int) -> None:
        """Append the body of `r` to the `.part` (from `offset`; 0 truncates it), hashing it and
        advancing the bar; a write error is a `DownloadError` naming the `.part`."""
        part, fix = self.part, f"{self.fix}; then rerun to resume"
        try:
            f = open(part, "ab" if offset else "wb")
        except OSError as e:
            raise _write_error(e, part, self.fix) from None
        try:
            # read1: whatever has arrived, so a cut connection loses no received byte
            while block := r.raw.read1(CHUNK, decode_content=False):
                if self.request.stopped():
                    raise DownloadError(f"download of {self.url} interrupted; rerun to resume from {part}")
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
        finally:
            try:
                f.close()
            except OSError as e:
                raise _write_error(e, part, fix) from None

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


# ----------------------------------------------------------------------------------------------
# The cache (single files).


def download(
    url: str,
    root=None,
    timeout: float | None = None,
    progress: bool = True,
    force: bool = False,
    sha256: str | None = None,
    check_prefix: bool = False,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 1.0,
) -> Path:
    """Return a local path for `url`, downloading it into the cache first if needed.

    `file://` URLs are returned in place (never cached). An http(s) file is verified against
    `sha256`, a `#sha256=<hex>` fragment of the URL, or (with `check_prefix`) the hash prefix of
    its file name; without any, its digest is recorded in the cache manifest on the first
    download. A cached file that still matches its recorded digest but not the given one is an
    error (nothing is deleted); one damaged since it was cached is fetched again.
    `timeout` (seconds; default $EDM2_DOWNLOAD_TIMEOUT or 20) bounds connecting and every read.
    Raises `DownloadError`.
    """
    if not is_url(url):
        raise DownloadError(f"{url!r} is not a URL; expected http://, https:// or file://")
    url, fragment = split_digest(url)
    expected = (sha256 or fragment or "").lower() or None
    prefix = hash_prefix(url_file_name(url)) if check_prefix else None
    if url.lower().startswith("file://"):
        return _local_file(url, expected or prefix)
    check_url(url)
    timeout = check_timeout(timeout)
    dest = cached_path(url, root)
    source = "the sha256 given" if sha256 else "the URL fragment" if fragment else "the hash prefix of the name"
    fix = "free space or set EDM2_CACHE_DIR to another folder"
    if force:
        dest.unlink(missing_ok=True)
    if dest.is_file() and _cached_is_good(dest, expected or prefix, source):
        return dest
    request = _Request(url, dest, expected, prefix, timeout, retries, backoff, hint=HINT_CACHE, fix=fix)
    digest = _fetch_into_cache(request, progress)
    record_digest(dest.parent, dest.name, digest)
    return dest


def _local_file(url: str, expected: str | None) -> Path:
    """The path of a `file://` URL, checked to be a file whose SHA-256 starts with `expected`
    (when given); else raise `DownloadError`."""
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if path.is_dir():
        raise DownloadError(f"cannot read {url}: {path} is a folder; give the URL of a file")
    if not path.is_file():
        raise DownloadError(f"cannot read {url}: {path} does not exist")
    if expected:
        digest = sha256_file(path)
        if not digest.startswith(expected):
            raise DownloadError(
                f"{path}: SHA-256 mismatch ({url}): expected {expected}, got {digest}; "
                "check the digest, or that this is the file you meant"
            )
    return path


def _cached_is_good(dest: Path, known: str | None, source: str) -> bool:
    """True when the cached file `dest` may be served for the digest (or prefix) `known`, recording
    its digest when it had none; False when it was damaged since it was cached (it is removed).
    A good file that `known` (from `source`) contradicts raises `DownloadError`."""
    folder = dest.parent
    recorded = read_manifest(folder / MANIFEST).get(dest.name)
    if recorded is not None and (not known or recorded.startswith(known)):
        return True
    digest = sha256_file(dest)  # no record (an older version), or another digest is given
    if (known and digest.startswith(known)) or (not known and recorded is None):
        record_digest(folder, dest.name, digest)
        return True
    if recorded is None or digest == recorded:  # a good file, a digest given that differs
        raise _conflict(dest, known, source, digest)
    dest.unlink()  # damaged since it was cached: fetch it again
    return False


def _fetch_into_cache(request: _Request, progress: bool) -> str:
    """Fetch `request` into the cache (with a progress bar when `progress`) once its old digest is
    forgotten; returns the SHA-256."""
    dest, folder = request.dest, request.dest.parent
    _check_offline(request.url, dest)
    with contextlib.ExitStack() as stack:
        if progress:
            bar = tqdm(
                unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {url_file_name(request.url)}", leave=False
            )
            request = dataclasses.replace(request, bar=stack.enter_context(bar))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _write_error(e, folder, request.fix) from None
        _forget_digest(folder, dest.name)
        return _fetch(request)[0]


def resolve_path(path_or_url, what: str = "file", **download_kwargs) -> Path:
    """A local path for a local path or a URL (downloaded into the cache); checks the file exists."""
    if is_url(path_or_url):
        return download(str(path_or_url), **download_kwargs)
    path = Path(path_or_url).expanduser()
    if not path.exists():
        raise FormatError(f"{what} {path_or_url} does not exist; pass an existing file or an http(s):// URL")
    return path


# ----------------------------------------------------------------------------------------------
# Directories and many files (`edm2 download`).


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def parse_index(page: str, base_url: str) -> list[str]:
    """File URLs listed by an HTML directory index page: the `<a href>` links that name a file
    directly inside `base_url` (a query string is kept, the name is its path part). Parent, sort
    and sub-folder links, other hosts, and names that are not safe file names (empty, `.`, `..`,
    path separators or NUL once decoded, hidden names such as lock files, `*.part`) are skipped.
    A listed `SHA256SUMS` is kept (it is read as the folder's digests, not downloaded). Sorted,
    unique."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    base_path = urllib.parse.urlsplit(base)
    parser = _Links()
    parser.feed(page)
    urls = {}  # name -> URL (a link without a query string preferred)
    for href in parser.hrefs:
        try:
            url = urllib.parse.urljoin(base, href).split("#", 1)[0]
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            continue
        if (parts.scheme, parts.netloc) != (base_path.scheme, base_path.netloc):
            continue
        if not parts.path.startswith(base_path.path):
            continue
        rest = parts.path[len(base_path.path) :]
        if not rest or "/" in rest:
            continue
        name = urllib.parse.unquote(rest)
        if name != MANIFEST and unsafe_name(name):
            continue
        if name not in urls or ("?" in urls[name] and not parts.query):
            urls[name] = url
    return sorted(urls.values())


def _get_text(url: str, timeout: float, retries: int, backoff: float, what: str) -> str:
    """The body of a small page (an index, a served manifest), retried like a transfer."""
    for attempt in range(retries + 1):
        try:
            r = _session().get(url, timeout=(timeout, timeout))
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise _Retry(f"HTTP {r.status_code} {r.reason}")
            if r.status_code >= 400:
                raise DownloadError(f"cannot {what} {url}: HTTP {r.status_code} {r.reason}; check the URL")
            return r.text
        except (_Retry, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            if _is_connect_failure(e):
                why = f"the host cannot be reached ({_describe(e)})"
                raise _Unreachable(f"cannot {what} {url}: {why}; {HINT_DOWNLOAD}", why) from None
            if attempt == retries:
                raise DownloadError(
                    f"cannot {what} {url}: {_describe(e)} ({attempt + 1} attempts failed); {HINT_DOWNLOAD}"
                ) from None
            time.sleep(min(30.0, backoff * 2**attempt))
        except requests.exceptions.RequestException as e:
            raise DownloadError(f"cannot {what} {url}: {_describe(e)}; {HINT_DOWNLOAD}") from None
    raise AssertionError("unreachable")


class _Unreachable(DownloadError):
    """The host of a folder could not be reached at all (`why`: in a few words)."""

    def __init__(self, message, why):
        super().__init__(message)
        self.why = why


def list_directory(url: str, timeout: float | None = None, retries: int = DEFAULT_RETRIES, backoff: float = 1.0):
    """`(file URLs, served digests)` of a directory URL (ending in '/'), read from its HTML index
    page; a listed `SHA256SUMS` is read as `{name: sha256}` of the folder's files."""
    if offline():
        raise _Unreachable(f"cannot list {url}: EDM2_OFFLINE is set", "EDM2_OFFLINE is set")
    timeout = check_timeout(timeout)
    page = _get_text(url, timeout, retries, backoff, "list")
    urls = parse_index(page, url)
    served = {}
    for u in [u for u in urls if url_file_name(u) == MANIFEST]:
        urls.remove(u)
        text = _get_text(u, timeout, retries, backoff, "read")
        try:
            served = read_manifest(u, text)
        except FormatError as e:
            raise DownloadError(f"the folder's {MANIFEST}: {e}") from None
    if not urls:
        raise DownloadError(f"{url}: the index page lists no files; check the URL (it must name a folder)")
    return urls, served


def _recorded_urls(url: str, dest, include, why: str):
    """The URLs of the files recorded in `dest/SHA256SUMS` for a folder `url` whose listing cannot
    be read (offline, or the host cannot be reached); raises when none is recorded."""
    recorded = read_manifest(Path(dest) / MANIFEST) if dest is not None else {}
    names = [n for n in sorted(recorded) if not unsafe_name(n)]
    if include:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    if not names:
        where = f" and {Path(dest) / MANIFEST} records no file" + (" matching --include" if include else "")
        raise DownloadError(
            f"cannot list {url}: {why}; the folder listing needs the network{where if dest is not None else ''}"
        )
    return [url + urllib.parse.quote(n) for n in names]


def _check_source(source: str) -> tuple[str, str | None]:
    """`(url, fragment digest)` of one URL given to `edm2 download`, checked (well formed, http(s),
    a file name that is safe, no digest on a folder) before anything is created or fetched."""
    if not is_url(source) or source.lower().startswith("file://"):
        raise DownloadError(f"{source!r} is not an http(s):// URL")
    base, fragment = split_digest(source)
    check_url(base)
    if base.endswith("/"):
        if fragment:
            raise DownloadError(
                f"'{source}': a #sha256= fragment gives the digest of one file, not of a folder; "
                "give the folder's digests with --manifest FILE (sha256sum format)"
            )
    else:
        why = unsafe_name(url_file_name(base))
        if why:
            raise DownloadError(f"'{source}': cannot be saved as a file ({why}); give the URL of a file")
    return base, fragment


def _expand(sources, include=(), timeout=None, retries=DEFAULT_RETRIES, backoff=1.0, dest=None):
    """Check and expand `sources`: `(entries, served digests, notes)` with entries
    `(url without fragment, file name, fragment digest or None)`. Every URL is checked before any
    transfer; folder URLs are listed (or, offline or unreachable, replaced by the files
    `dest/SHA256SUMS` records, with a note); `include` filters the file names."""
    timeout = check_timeout(timeout)
    entries, served, notes = [], {}, []
    for source in sources:
        base, fragment = _check_source(source)
        if base.endswith("/"):
            try:
                urls, digests = list_directory(base, timeout, retries, backoff)
            except _Unreachable as e:
                urls, digests = _recorded_urls(base, dest, include, e.why), {}
                notes.append(
                    f"{e.why}: the listing of {base} was not read; "
                    f"only the {len(urls)} files recorded in {Path(dest) / MANIFEST} were verified"
                )
            served.update(digests)
            entries.extend((u, url_file_name(u), None) for u in urls)
        else:
            entries.append((base, url_file_name(base), fragment))
    if include:
        entries = [e for e in entries if any(fnmatch.fnmatchcase(e[1], p) for p in include)]
    if not entries:
        raise DownloadError(f"no file matches --include {' '.join(include)}; check the patterns against the listing")
    merged = {}
    for url, name, digest in entries:  # the same URL with and without a digest counts once
        old = merged.get(url)
        if old and old[2] and digest and old[2] != digest:
            raise DownloadError(f"'{url}': given with two digests, #sha256={old[2]} and #sha256={digest}; keep one")
        merged[url] = (url, name, (old[2] if old else None) or digest)
    entries = list(merged.values())
    names = [e[1] for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DownloadError(f"several URLs have the file name {dupes[0]}; download them into different folders")
    return entries, served, notes


def expand_urls(sources, include=(), timeout=None, retries=DEFAULT_RETRIES, backoff=1.0) -> list[str]:
    """Directory URLs (ending in '/') -> their files; file URLs kept (with their `#sha256=`);
    `include` globs (matched against the file name) filter the result. Every URL is checked
    first. Raises `DownloadError` when nothing is left."""
    entries, _, _ = _expand(sources, include, timeout, retries, backoff)
    return [url + (f"#sha256={digest}" if digest else "") for url, _, digest in entries]


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


def _check_free_space(dest: Path, heads: dict, fix: str) -> None:
    """Raise `DownloadError` when `dest` has less free space than the files of `heads`
    (`{name: head_info or None}`) still need beyond their `.part`."""
    needed = 0
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
        infos = self.pool.map(lambda p: head_info(p.url, self.shared.timeout), missing)
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
) -> dict:
    """Download files and directories (`sources`: http(s) URLs; a URL ending in '/' is a folder
    whose HTML index lists its files) into `dest`, `jobs` transfers at a time.

    Files already in `dest` are not fetched again; they are verified against the manifest
    `dest/SHA256SUMS`, and against the digests given (`#sha256=` fragments, `manifest`: a
    sha256sum-format file, the `SHA256SUMS` a folder's listing serves). A present file that
    matches its recorded digest (or has none) but not a given one is an error, and nothing is
    deleted or fetched; a file that no longer matches its recorded digest is fetched again.
    Free space is checked first when the sizes are known. Returns `{'downloaded': [names],
    'verified': [names], 'bytes': n, 'notes': [lines]}`. Raises `DownloadError` naming the first
    failed file once every other transfer has finished.
    """
    dest = Path(dest)
    sources = list(sources)
    for source in sources:  # every URL checked before anything is created
        _check_source(source)
    timeout = check_timeout(timeout)
    _check_dest(dest)
    fix = "free space or pass another --dest"
    entries, served, notes = _expand(sources, include, timeout, retries, backoff, dest=dest)
    known = read_manifest(dest / MANIFEST)
    given = read_manifest(manifest) if manifest else {}
    plan = _plan(entries, served, given, manifest, known, dest)

    result = {"downloaded": [], "verified": [], "bytes": 0, "notes": notes}
    shared = _Request("", dest, None, None, timeout, retries, backoff, None, threading.Event(), HINT_DOWNLOAD, fix)
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
        _check_free_space(dest, batch.head_missing(missing), fix)
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
