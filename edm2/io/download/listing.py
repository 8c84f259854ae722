"""Folder URLs: the files an HTML index page lists (`parse_index`, `list_directory`), the
`SHA256SUMS` a folder serves, and the check and expansion of the URLs given to `edm2 download`
(`expand_urls`); offline or unreachable, the files the destination's manifest records."""

import fnmatch
import html.parser
import time
import urllib.parse
from pathlib import Path

import requests

from edm2.errors import DownloadError, FormatError
from edm2.io.download.manifest import CHUNK, MANIFEST, read_manifest
from edm2.io.download.transfer import (
    Pace,
    _describe,
    _head_cut,
    _header_watch,
    _is_connect_failure,
    _Retry,
    _session,
    header_limit,
)
from edm2.io.download.urls import (
    DEFAULT_RETRIES,
    HINT_DOWNLOAD,
    MAX_PAGE_BYTES,
    Limits,
    check_limits,
    check_timeout,
    check_url,
    is_url,
    offline,
    split_digest,
    unsafe_name,
    url_file_name,
)


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


def _read_page(r, url: str, what: str, limits: Limits) -> str:
    """The body of the answer `r` (streamed), at most `MAX_PAGE_BYTES` once decoded and read at
    the rate and in the time `limits` allow; else one-line `DownloadError`."""
    pace = Pace(url, limits)
    data = bytearray()
    for block in r.iter_content(CHUNK):
        data += block
        if len(data) > MAX_PAGE_BYTES:
            raise DownloadError(
                f"cannot {what} {url}: the page is longer than {MAX_PAGE_BYTES} bytes (the most an index page "
                "or a SHA256SUMS may have); check the URL (it must name a folder of files)"
            )
        pace.add(len(block))
    return bytes(data).decode(r.encoding or "utf-8", errors="replace")


def _get_text(url: str, timeout: float, retries: int, backoff: float, what: str, limits: Limits | None = None) -> str:
    """The body of a small page (an index, a served manifest), retried like a transfer, bounded in
    size (`MAX_PAGE_BYTES`), rate and time (`limits`)."""
    limits = check_limits(limits)
    for attempt in range(retries + 1):
        try:
            seconds = header_limit(limits, timeout)
            with _header_watch(seconds) as watch:
                try:
                    r = _session().get(url, timeout=(timeout, timeout), stream=True)
                except requests.exceptions.RequestException:
                    if watch["cut"]:
                        raise _head_cut(url, seconds, what, HINT_DOWNLOAD) from None
                    raise
            if watch["cut"]:
                r.close()
                raise _head_cut(url, seconds, what, HINT_DOWNLOAD)
            with r:
                if r.status_code >= 500 or r.status_code in (408, 429):
                    raise _Retry(f"HTTP {r.status_code} {r.reason}")
                if r.status_code >= 400:
                    raise DownloadError(f"cannot {what} {url}: HTTP {r.status_code} {r.reason}; check the URL")
                return _read_page(r, url, what, limits)
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


def list_directory(
    url: str, timeout: float | None = None, retries: int = DEFAULT_RETRIES, backoff: float = 1.0, limits=None
):
    """`(file URLs, served digests)` of a directory URL (ending in '/'), read from its HTML index
    page; a listed `SHA256SUMS` is read as `{name: sha256}` of the folder's files. Each page is
    bounded by `MAX_PAGE_BYTES` and `limits` (default `check_limits()`)."""
    if offline():
        raise _Unreachable(f"cannot list {url}: EDM2_OFFLINE is set", "EDM2_OFFLINE is set")
    timeout = check_timeout(timeout)
    limits = check_limits(limits)
    page = _get_text(url, timeout, retries, backoff, "list", limits)
    urls = parse_index(page, url)
    served = {}
    for u in [u for u in urls if url_file_name(u) == MANIFEST]:
        urls.remove(u)
        text = _get_text(u, timeout, retries, backoff, "read", limits)
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


def _expand(sources, include=(), timeout=None, retries=DEFAULT_RETRIES, backoff=1.0, dest=None, limits=None):
    """Check and expand `sources`: `(entries, served digests, notes)` with entries
    `(url without fragment, file name, fragment digest or None)`. Every URL is checked before any
    transfer; folder URLs are listed (or, offline or unreachable, replaced by the files
    `dest/SHA256SUMS` records, with a note); `include` filters the file names."""
    timeout = check_timeout(timeout)
    limits = check_limits(limits)
    entries, served, notes = [], {}, []
    for source in sources:
        base, fragment = _check_source(source)
        if base.endswith("/"):
            try:
                urls, digests = list_directory(base, timeout, retries, backoff, limits)
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


def expand_urls(sources, include=(), timeout=None, retries=DEFAULT_RETRIES, backoff=1.0, limits=None) -> list[str]:
    """Directory URLs (ending in '/') -> their files; file URLs kept (with their `#sha256=`);
    `include` globs (matched against the file name) filter the result. Every URL is checked
    first. Raises `DownloadError` when nothing is left."""
    entries, _, _ = _expand(sources, include, timeout, retries, backoff, limits=limits)
    return [url + (f"#sha256={digest}" if digest else "") for url, _, digest in entries]
