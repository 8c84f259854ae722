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

Every transfer goes into `<name>.part` next to its final place; an interrupted transfer (a cut
connection, a killed process) continues from the end of the `.part` file with an HTTP Range
request, connection resets and 5xx answers are retried with exponential back-off, the size is
checked against Content-Length, and the file is renamed to its final name only when complete
and verified. Verification: the SHA-256 of every file is computed while it is written and
compared with the digest known for it (a `#sha256=<hex>` URL fragment, the manifest of the
destination, or, when asked for, the hash prefix in the file name such as `...-6726825d.pth`);
otherwise it is recorded in the manifest `SHA256SUMS` of the destination (sha256sum format) so
that later uses verify against it. A mismatch removes the file and raises `DownloadError`
naming the file and both digests.

`EDM2_OFFLINE=1` refuses every download that is not already present, without touching the
network; a host that cannot be reached fails at once (no retries) with one line naming the URL.
"""

import concurrent.futures
import contextlib
import fcntl
import fnmatch
import hashlib
import html.parser
import os
import re
import threading
import time
import urllib.parse
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from edm2 import __version__
from edm2.errors import DownloadError, FormatError
from edm2.io.atomic import atomic_write_text

URL_SCHEMES = ("http://", "https://", "file://")
DEFAULT_TIMEOUT = 20.0  # seconds without progress before a connection is abandoned
DEFAULT_RETRIES = 8  # failed attempts in a row (no byte received in between) before giving up
MANIFEST = "SHA256SUMS"
CHUNK = 1 << 20
_HINT = "check the network connection, or download the file by hand and pass its local path instead"


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


def cached_path(url: str, root=None) -> Path:
    """Where `url` is (or would be) cached."""
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


# ----------------------------------------------------------------------------------------------
# The manifest of a destination folder (`SHA256SUMS`, the format of `sha256sum`).


def read_manifest(path) -> dict:
    """`{file name: sha256 hex}` from a sha256sum-format file (missing file -> {})."""
    entries = {}
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
        entries[Path(m.group(2)).name] = m.group(1).lower()
    return entries


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on the manifest of `folder` (several processes may record at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{MANIFEST}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_digest(folder, name: str, digest: str) -> None:
    """Add or replace the entry of `name` in `folder/SHA256SUMS` (atomic, under a lock)."""
    folder = Path(folder)
    with _locked(folder):
        entries = read_manifest(folder / MANIFEST)
        if entries.get(name) == digest:
            return
        entries[name] = digest
        atomic_write_text(folder / MANIFEST, "".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))


def _forget_digest(folder: Path, name: str) -> None:
    with _locked(folder):
        entries = read_manifest(folder / MANIFEST)
        if entries.pop(name, None) is not None:
            atomic_write_text(folder / MANIFEST, "".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))


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
    if isinstance(e, requests.exceptions.Timeout):
        return "no answer in time"
    inner = e.args[0] if e.args else e
    reason = getattr(inner, "reason", inner)
    if isinstance(reason, str):  # urllib3's ProtocolError('Connection broken: ...', cause)
        return reason
    text = str(reason)
    text = re.sub(r"<[^>]*>: ", "", text)  # urllib3 prefixes messages with the connection repr
    text = re.sub(r"\s*\(Caused by .*", "", text)
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _content_range(value: str | None):
    """`(first byte, total or None)` of a Content-Range header 'bytes a-b/total'."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def _check_offline(url: str, dest: Path) -> None:
    if offline():
        raise DownloadError(
            f"cannot download {url}: EDM2_OFFLINE is set and {dest} is not there yet; "
            "unset EDM2_OFFLINE on a machine with internet, or pass a local copy of the file"
        )


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
) -> str:
    """Download `url` to `dest` through `dest.part`, resuming and retrying; returns the SHA-256.

    `sha256` (full hex digest) or `prefix` (its first hex digits) is checked when given; a
    mismatch removes the file and raises `DownloadError` naming the file and both digests. The
    size is checked against Content-Length (or Content-Range). Failed attempts are retried with
    back-off `backoff * 2**k` seconds (at most 30 s) until `retries` attempts in a row bring the
    file no further; a host that cannot be reached before the first byte fails at once. `bar` (a tqdm
    bar) is advanced by the bytes received. Raises `DownloadError`.
    """
    dest = Path(dest)
    _check_offline(url, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One transfer per destination at a time, across processes (parallel jobs may need the same
    # file): a process that waited finds the file complete and only verifies it.
    with open(dest.with_name(f".{dest.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file():
            return _verify_present(dest, sha256 or prefix, url)
        return _transfer(url, dest, sha256, prefix, timeout, retries, backoff, bar, stop)


def _transfer(url, dest, sha256, prefix, timeout, retries, backoff, bar, stop) -> str:
    """The body of `fetch`, under its lock."""
    timeout = float(os.environ.get("EDM2_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT)) if timeout is None else timeout
    part = dest.with_name(dest.name + ".part")
    hasher, hashed = hashlib.sha256(), 0
    failures, received_any, restarted, furthest = 0, False, False, 0
    while True:
        if stop is not None and stop.is_set():
            raise DownloadError(f"download of {url} interrupted; rerun to resume from {part}")
        offset = part.stat().st_size if part.exists() else 0
        if offset != hashed:  # a .part from an earlier run: hash what it holds first
            hasher, hashed = hashlib.sha256(), 0
            if offset:
                with open(part, "rb") as f:
                    while block := f.read(CHUNK):
                        hasher.update(block)
                        hashed += len(block)
                if bar is not None:
                    bar.update(offset)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with _session().get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as r:
                if r.status_code == 416 and offset and not restarted:
                    part.unlink()  # longer than the file (it changed on the server): start again
                    restarted = True
                    if bar is not None:
                        bar.update(-offset)
                    continue
                if r.status_code >= 500 or r.status_code in (408, 429):
                    raise _Retry(f"HTTP {r.status_code} {r.reason}")
                if r.status_code >= 400:
                    raise DownloadError(f"cannot download {url}: HTTP {r.status_code} {r.reason}; check the URL")
                total = None
                if r.status_code == 206:
                    first, total = _content_range(r.headers.get("Content-Range"))
                    if first != offset:
                        raise _Retry(f"the server answered a range from byte {first}, asked for {offset}")
                else:  # 200: the whole file (a server without Range support): start from zero
                    if offset and bar is not None:
                        bar.update(-offset)
                    offset, hasher, hashed = 0, hashlib.sha256(), 0
                    length = r.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                with open(part, "ab" if offset else "wb") as f:
                    # read1: whatever has arrived, so a cut connection loses no received byte
                    while block := r.raw.read1(CHUNK, decode_content=False):
                        if stop is not None and stop.is_set():
                            raise DownloadError(f"download of {url} interrupted; rerun to resume from {part}")
                        f.write(block)
                        hasher.update(block)
                        hashed += len(block)
                        received_any = True
                        if hashed > furthest:  # real progress (not bytes received again)
                            furthest, failures = hashed, 0
                        if bar is not None:
                            bar.update(len(block))
                if total is not None and hashed != total:
                    raise _Retry(f"the transfer stopped after {hashed} of {total} bytes")
        except (
            _Retry,
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
        ) as e:
            if not received_any and _is_connect_failure(e):
                raise DownloadError(
                    f"cannot download {url}: the host cannot be reached ({_describe(e)}); {_HINT}"
                ) from None
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"cannot download {url}: {_describe(e)} ({retries} retries); rerun to resume from {part}"
                ) from None
            time.sleep(min(30.0, backoff * 2 ** (failures - 1)))
            continue
        except requests.exceptions.RequestException as e:
            raise DownloadError(f"cannot download {url}: {_describe(e)}; {_HINT}") from None
        break
    digest = hasher.hexdigest()
    expected = sha256 or prefix
    if expected and not digest.startswith(expected.lower()):
        part.unlink()
        raise DownloadError(
            f"{dest.name}: SHA-256 mismatch for {url}: expected {expected.lower()}, got {digest}; "
            "the file was removed (a corrupted transfer or a changed file on the server); rerun to fetch it again"
        )
    os.replace(part, dest)
    return digest


def _verify_present(path: Path, expected: str | None, what: str, bar=None) -> str:
    """Hash a file that is already in place and compare with `expected` (full or prefix)."""
    digest = sha256_file(path, bar)
    if expected and not digest.startswith(expected.lower()):
        raise DownloadError(
            f"{path}: SHA-256 mismatch ({what}): expected {expected.lower()}, got {digest}; "
            "delete the file and download it again"
        )
    return digest


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
    download. A cached file is used only while its recorded digest agrees with the known one.
    `timeout` (seconds; default $EDM2_DOWNLOAD_TIMEOUT or 20) bounds connecting and every read.
    Raises `DownloadError`.
    """
    if not is_url(url):
        raise DownloadError(f"{url!r} is not a URL; expected http://, https:// or file://")
    url, fragment = split_digest(url)
    expected = (sha256 or fragment or "").lower() or None
    prefix = hash_prefix(url_file_name(url)) if check_prefix else None
    if url.lower().startswith("file://"):
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        if not path.is_file():
            raise DownloadError(f"cannot read {url}: {path} does not exist")
        if expected or prefix:
            _verify_present(path, expected or prefix, url)
        return path
    dest = cached_path(url, root)
    folder = dest.parent
    if dest.is_file() and not force:
        recorded = read_manifest(folder / MANIFEST).get(dest.name)
        known = expected or prefix
        if recorded is None:  # cached by an older version: verify once and record
            recorded = _verify_present(dest, known, url)
            record_digest(folder, dest.name, recorded)
        if not known or recorded.startswith(known):
            return dest
        dest.unlink()  # cached under another digest: fetch the wanted file again
    _check_offline(url, dest)
    bar = None
    with contextlib.ExitStack() as stack:
        if progress:
            bar = stack.enter_context(
                tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {url_file_name(url)}", leave=False)
            )
        _forget_digest(folder, dest.name)
        if force:
            dest.unlink(missing_ok=True)
        digest = fetch(
            url, dest, sha256=expected, prefix=prefix, timeout=timeout, retries=retries, backoff=backoff, bar=bar
        )
    record_digest(folder, dest.name, digest)
    return dest


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
    """File URLs listed by an HTML directory index page (the `<a href>` links that name a file
    directly inside `base_url`; parent, sort and sub-folder links are skipped). Sorted, unique."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    parser = _Links()
    parser.feed(page)
    urls = set()
    for href in parser.hrefs:
        url = urllib.parse.urljoin(base, href).split("#", 1)[0]
        if "?" in url or not url.startswith(base):
            continue
        rest = url[len(base) :]
        if rest and "/" not in rest:
            urls.add(url)
    return sorted(urls)


def list_directory(url: str, timeout: float | None = None, retries: int = DEFAULT_RETRIES, backoff: float = 1.0):
    """File URLs of a directory URL (ending in '/'), read from its HTML index page."""
    _check_offline(url, Path("the index page"))
    timeout = float(os.environ.get("EDM2_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT)) if timeout is None else timeout
    for attempt in range(retries + 1):
        try:
            r = _session().get(url, timeout=(timeout, timeout))
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise _Retry(f"HTTP {r.status_code} {r.reason}")
            if r.status_code >= 400:
                raise DownloadError(f"cannot list {url}: HTTP {r.status_code} {r.reason}; check the URL")
            page = r.text
            break
        except (_Retry, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            if _is_connect_failure(e):
                raise DownloadError(
                    f"cannot list {url}: the host cannot be reached ({_describe(e)}); {_HINT}"
                ) from None
            if attempt == retries:
                raise DownloadError(f"cannot list {url}: {_describe(e)} ({retries} retries); {_HINT}") from None
            time.sleep(min(30.0, backoff * 2**attempt))
    urls = parse_index(page, url)
    if not urls:
        raise DownloadError(f"{url}: the index page lists no files; check the URL (it must name a folder)")
    return urls


def _head_size(url: str, timeout: float) -> int | None:
    """Content-Length from a HEAD request, or None when the server does not say."""
    try:
        r = _session().head(url, timeout=(timeout, timeout), allow_redirects=True)
    except Exception:
        return None
    length = r.headers.get("Content-Length")
    return int(length) if r.status_code == 200 and length and length.isdigit() else None


def expand_urls(sources, include=(), timeout=None, retries=DEFAULT_RETRIES, backoff=1.0) -> list[str]:
    """Directory URLs (ending in '/') -> their files; file URLs kept; `include` globs (matched
    against the file name) filter the result. Raises `DownloadError` when nothing is left."""
    urls = []
    for source in sources:
        if not is_url(source) or source.lower().startswith("file://"):
            raise DownloadError(f"{source!r} is not an http(s):// URL")
        if split_digest(source)[0].endswith("/"):
            urls.extend(list_directory(source, timeout, retries, backoff))
        else:
            urls.append(source)
    if include:
        urls = [u for u in urls if any(fnmatch.fnmatchcase(url_file_name(split_digest(u)[0]), p) for p in include)]
    urls = list(dict.fromkeys(urls))
    if not urls:
        raise DownloadError(f"no file matches --include {' '.join(include)}; check the patterns against the listing")
    names = [url_file_name(split_digest(u)[0]) for u in urls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DownloadError(f"several URLs have the file name {dupes[0]}; download them into different folders")
    return urls


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
    `dest/SHA256SUMS` (and `manifest`, a sha256sum-format file of known digests, when given).
    Returns `{'downloaded': [names], 'verified': [names], 'bytes': n}`. Raises `DownloadError`
    naming the first failed file once every other transfer has finished.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"--dest {dest} is a file; pass a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / f".{MANIFEST}.lock"
        probe.touch()
    except OSError as e:
        raise DownloadError(f"--dest {dest} is not writable ({e.strerror}); pass a writable folder") from None
    timeout = float(os.environ.get("EDM2_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT)) if timeout is None else timeout
    urls = expand_urls(sources, include, timeout, retries, backoff)
    known = read_manifest(dest / MANIFEST)
    given = read_manifest(manifest) if manifest else {}
    for name, digest in given.items():
        if name in known and known[name] != digest:
            raise DownloadError(
                f"{name}: {manifest} gives SHA-256 {digest} but {dest / MANIFEST} recorded {known[name]}; "
                "remove the file and its line in the recorded manifest to fetch it again"
            )
    plan = []  # (url, name, expected digest)
    for url in urls:
        base, fragment = split_digest(url)
        name = url_file_name(base)
        plan.append((base, name, fragment or given.get(name) or known.get(name)))
    present = [(u, n, d) for u, n, d in plan if (dest / n).is_file()]
    missing = [(u, n, d) for u, n, d in plan if not (dest / n).is_file()]
    if missing:
        _check_offline(missing[0][0], dest / missing[0][1])

    stop = threading.Event()
    result = {"downloaded": [], "verified": [], "bytes": 0}
    errors = []
    lock = threading.Lock()
    with contextlib.ExitStack() as stack:
        bar = None
        if progress:
            bar = stack.enter_context(
                tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {len(plan)} files")
            )
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max(1, int(jobs))))

        def sized(url):
            size = _head_size(url, timeout)
            if bar is not None and size:
                with lock:
                    bar.total += size
                    bar.refresh()

        def verify(url, name, expected):
            size = (dest / name).stat().st_size
            if bar is not None:
                with lock:
                    bar.total += size
            digest = sha256_file(dest / name, bar)
            if expected and digest != expected:  # damaged since it was downloaded: fetch it again
                (dest / name).unlink()
                _forget_digest(dest, name)
                if bar is not None:
                    bar.update(-size)
                return transfer(url, name, expected)
            record_digest(dest, name, digest)
            with lock:
                result["verified"].append(name)

        def transfer(url, name, expected):
            digest = fetch(
                url, dest / name, sha256=expected, timeout=timeout, retries=retries, backoff=backoff, bar=bar, stop=stop
            )
            record_digest(dest, name, digest)
            with lock:
                result["downloaded"].append(name)
                result["bytes"] += (dest / name).stat().st_size

        try:
            if bar is not None:
                list(pool.map(sized, [u for u, _, _ in missing]))
            futures = {pool.submit(verify, *item): item for item in present}
            futures.update({pool.submit(transfer, *item): item for item in missing})
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                if error is not None:
                    if not isinstance(error, Exception):
                        raise error
                    errors.append((futures[future][1], error))
        except BaseException:
            stop.set()
            raise
    if errors:
        name, error = sorted(errors, key=lambda e: e[0])[0]
        message = str(error) if isinstance(error, DownloadError) else f"{name}: {type(error).__name__}: {error}"
        more = f" ({len(errors)} of {len(plan)} files failed; rerun to resume)" if len(errors) > 1 else ""
        raise DownloadError(message + more)
    return result
