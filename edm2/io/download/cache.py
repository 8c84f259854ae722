"""The download cache of single files (`download`, `resolve_path`): `<root>/downloads/<first 16
hex digits of sha256(url)>-<file name>`, with its manifest; `file://` URLs read in place."""

import contextlib
import dataclasses
import hashlib
import os
import re
import urllib.parse
from pathlib import Path

from tqdm import tqdm

from edm2.errors import DownloadError, FormatError
from edm2.io.download.manifest import MANIFEST, _forget_digest, _write_error, read_manifest, record_digest, sha256_file
from edm2.io.download.transfer import _check_offline, _conflict, _fetch, _Request
from edm2.io.download.urls import (
    DEFAULT_RETRIES,
    HINT_CACHE,
    check_limits,
    check_timeout,
    check_url,
    hash_prefix,
    is_url,
    split_digest,
    url_file_name,
)


def cache_dir() -> Path:
    """Root of the edm2 cache: $EDM2_CACHE_DIR, else $XDG_CACHE_HOME/edm2, else ~/.cache/edm2."""
    root = os.environ.get("EDM2_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "edm2"
    return Path.home() / ".cache" / "edm2"


def cached_path(url: str, root=None) -> Path:
    """Where `url` is (or would be) cached (the name is the URL's digest and a sanitized file
    name, so no URL can name a path outside the cache)."""
    url = split_digest(url)[0]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url_file_name(url) or "download")
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(root or cache_dir()) / "downloads" / f"{digest}-{name}"


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
    max_bytes=None,
    min_rate: float | None = None,
    rate_window: float | None = None,
    deadline: float | None = None,
) -> Path:
    """Return a local path for `url`, downloading it into the cache first if needed.

    `file://` URLs are returned in place (never cached). An http(s) file is verified against
    `sha256`, a `#sha256=<hex>` fragment of the URL, or (with `check_prefix`) the hash prefix of
    its file name; without any, its digest is recorded in the cache manifest on the first
    download. A cached file that still matches its recorded digest but not the given one is an
    error (nothing is deleted); one damaged since it was cached is fetched again.
    `timeout` (seconds; default $EDM2_DOWNLOAD_TIMEOUT or 20) bounds connecting and every read;
    `max_bytes`, `min_rate`, `rate_window` and `deadline` bound the transfer (defaults from
    $EDM2_DOWNLOAD_MAX_BYTES, ... see `check_limits`), so every command that takes a URL (`generate
    --net URL`, `--ref URL`) has the bounds of `edm2 download`. Raises `DownloadError`.
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
    limits = check_limits(max_bytes, min_rate, rate_window, deadline)
    dest = cached_path(url, root)
    source = "the sha256 given" if sha256 else "the URL fragment" if fragment else "the hash prefix of the name"
    fix = "free space or set EDM2_CACHE_DIR to another folder"
    if force:
        dest.unlink(missing_ok=True)
    if dest.is_file() and _cached_is_good(dest, expected or prefix, source):
        return dest
    request = _Request(url, dest, expected, prefix, timeout, retries, backoff, hint=HINT_CACHE, fix=fix, limits=limits)
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
