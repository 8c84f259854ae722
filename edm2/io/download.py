"""Downloads into a local cache: released networks, reference statistics, detector weights.

    cache root   $EDM2_CACHE_DIR, else ~/.cache/edm2
    files        <root>/downloads/<first 16 hex digits of sha256(url)>-<file name in the URL>

A file is fetched once, streamed to a temporary name next to its final place and renamed into
place when complete, so an interrupted download never looks finished and several processes
can race for the same URL safely. Failures (offline, host not found, HTTP errors, timeouts)
raise `DownloadError` at once, with the URL and what to do instead. `EDM2_OFFLINE=1` refuses
every download that is not already cached, without touching the network.
"""

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from edm2.errors import DownloadError, FormatError
from edm2.io.atomic import atomic_path

URL_SCHEMES = ("http://", "https://", "file://")
DEFAULT_TIMEOUT = 20.0  # seconds without progress before a download is abandoned


def is_url(text) -> bool:
    """True for http(s):// and file:// URLs."""
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def cache_dir() -> Path:
    """Root of the edm2 cache: $EDM2_CACHE_DIR if set, else ~/.cache/edm2."""
    root = os.environ.get("EDM2_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "edm2"


def offline() -> bool:
    """True when EDM2_OFFLINE is set to a true value (1, true, yes)."""
    return os.environ.get("EDM2_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_path(url: str, root=None) -> Path:
    """Where `url` is (or would be) cached."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(root or cache_dir()) / "downloads" / f"{digest}-{name}"


def download(url: str, root=None, timeout: float | None = None, progress: bool = True, force: bool = False) -> Path:
    """Return the local path of `url`, downloading it into the cache first if needed.

    `timeout` (seconds; default $EDM2_DOWNLOAD_TIMEOUT or 20) bounds connecting and every read,
    so an unreachable host fails fast instead of hanging. Raises `DownloadError` on failure.
    """
    if not is_url(url):
        raise DownloadError(f"{url!r} is not a URL; expected http://, https:// or file://")
    dest = cached_path(url, root)
    if dest.is_file() and not force:
        return dest
    if offline():
        raise DownloadError(
            f"cannot download {url}: EDM2_OFFLINE is set and the file is not in the cache ({dest}); "
            "unset EDM2_OFFLINE on a machine with internet, or pass a local copy of the file"
        )
    if timeout is None:
        timeout = float(os.environ.get("EDM2_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT))

    hint = "check the network connection, or download the file by hand and pass its local path instead"
    try:
        with contextlib.ExitStack() as stack:
            response = stack.enter_context(urllib.request.urlopen(url, timeout=timeout))
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(total) if total and total.isdigit() else None
            bar = None
            if progress and (total is None or total > (1 << 20)):
                bar = stack.enter_context(
                    tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {dest.name}")
                )
            received = 0
            with atomic_path(dest) as tmp, open(tmp, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                f.flush()
                if total is not None and received != total:
                    raise DownloadError(f"download of {url} stopped after {received} of {total} bytes; {hint}")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; check the URL") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot download {url}: {e.reason}; {hint}") from None
    except TimeoutError:
        raise DownloadError(f"cannot download {url}: no answer within {timeout:g} s; {hint}") from None
    except (OSError, http.client.HTTPException) as e:  # connection reset, refused, incomplete read, ...
        raise DownloadError(f"cannot download {url}: {e}; {hint}") from None
    return dest


def resolve_path(path_or_url, what: str = "file", **download_kwargs) -> Path:
    """A local path for a local path or a URL (downloaded into the cache); checks the file exists."""
    if is_url(path_or_url):
        return download(str(path_or_url), **download_kwargs)
    path = Path(path_or_url).expanduser()
    if not path.exists():
        raise FormatError(f"{what} {path_or_url} does not exist; pass an existing file or an http(s):// URL")
    return path
