"""URLs and settings of the downloads: which texts are URLs, which are well formed, the file name
a URL gives and whether it is safe in a download folder, the `#sha256=` fragment, the torch.hub
hash prefix of a name, and the offline, timeout and limit settings ($EDM2_OFFLINE,
$EDM2_DOWNLOAD_TIMEOUT, $EDM2_DOWNLOAD_MAX_BYTES, $EDM2_DOWNLOAD_MIN_RATE,
$EDM2_DOWNLOAD_RATE_WINDOW, $EDM2_DOWNLOAD_DEADLINE)."""

import dataclasses
import math
import os
import re
import urllib.parse

import requests
import urllib3

from edm2.errors import DownloadError, one_line
from edm2.io.download.manifest import MANIFEST

URL_SCHEMES = ("http://", "https://", "file://")
DEFAULT_TIMEOUT = 20.0  # seconds without progress before a connection is abandoned
MAX_TIMEOUT = 86400.0
DEFAULT_RETRIES = 8  # retries after a failed attempt (no byte received in between) before giving up
# Bounds against a hostile or broken server (docs/released.md, "Limits"): the most bytes a file
# whose size is not known may have, the slowest average rate over a window that a transfer may
# keep, an optional deadline per file, and the most bytes of an index page or a served manifest.
DEFAULT_MAX_BYTES = 64 * 2**30
DEFAULT_MIN_RATE = 1024.0  # bytes per second, averaged over DEFAULT_RATE_WINDOW
DEFAULT_RATE_WINDOW = 60.0  # seconds
MAX_PAGE_BYTES = 16 * 2**20
# What to do when a host cannot be reached: the cache serves commands that also take a local
# path; `edm2 download` does not.
HINT_CACHE = "check the network connection, or download the file by hand and pass its local path instead"
HINT_DOWNLOAD = "check the network connection and the URL"


def is_url(text) -> bool:
    """True for http(s):// and file:// URLs."""
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


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


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text) -> int:
    """A number of bytes from an int or a text such as `1048576`, `512M`, `64GiB`, `2T` (binary
    units); raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"not a number of bytes: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclasses.dataclass(frozen=True)
class Limits:
    """The bounds of every transfer (`check_limits` makes them): `max_bytes` for a file whose
    size is not known otherwise (and the most any file may have), `min_rate` bytes per second
    averaged over `rate_window` seconds (0: no minimum), `deadline` seconds per file (None: none)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    min_rate: float = DEFAULT_MIN_RATE
    rate_window: float = DEFAULT_RATE_WINDOW
    deadline: float | None = None


def _setting(value, env: str, option: str, default, parse, ok, what: str):
    """`value`, else $`env`, else `default`; parsed and checked (`ok`), else `DownloadError`
    naming the option or the variable."""
    where = f"{option} {value!r}"
    if value is None:
        text = os.environ.get(env)
        if text is None or not text.strip():
            return default
        where, value = f"{env}={text}", text
    try:
        parsed = parse(value)
    except (TypeError, ValueError, OverflowError):
        parsed = None
    if parsed is None or not ok(parsed):
        raise DownloadError(f"{where}: not {what}")
    return parsed


def _finite(x) -> bool:
    return math.isfinite(x)


def check_limits(max_bytes=None, min_rate=None, rate_window=None, deadline=None) -> Limits:
    """The `Limits` of a download: each value given, else its environment variable
    ($EDM2_DOWNLOAD_MAX_BYTES, $EDM2_DOWNLOAD_MIN_RATE, $EDM2_DOWNLOAD_RATE_WINDOW,
    $EDM2_DOWNLOAD_DEADLINE), else the default; a `Limits` given as `max_bytes` is returned as it
    is. Raises `DownloadError` for a value out of range (one line naming it)."""
    if isinstance(max_bytes, Limits):
        return max_bytes
    deadline = _setting(
        deadline,
        "EDM2_DOWNLOAD_DEADLINE",
        "--deadline",
        None,
        float,
        lambda x: _finite(x) and x >= 0,
        "a finite number of seconds of at least 0 (0: no deadline)",
    )
    return Limits(
        max_bytes=_setting(
            max_bytes,
            "EDM2_DOWNLOAD_MAX_BYTES",
            "--max-bytes",
            DEFAULT_MAX_BYTES,
            parse_bytes,
            lambda x: x >= 1,
            "a number of bytes of at least 1 (e.g. 1048576, 512M, 64G)",
        ),
        min_rate=_setting(
            min_rate,
            "EDM2_DOWNLOAD_MIN_RATE",
            "--min-rate",
            DEFAULT_MIN_RATE,
            float,
            lambda x: _finite(x) and x >= 0,
            "a finite number of bytes per second of at least 0 (0: no minimum)",
        ),
        rate_window=_setting(
            rate_window,
            "EDM2_DOWNLOAD_RATE_WINDOW",
            "--rate-window",
            DEFAULT_RATE_WINDOW,
            float,
            lambda x: _finite(x) and 0.1 <= x <= MAX_TIMEOUT,
            f"a number of seconds from 0.1 to {MAX_TIMEOUT:.0f}",
        ),
        deadline=deadline or None,
    )


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


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries by the torch.hub convention, `<stem>-<hex>.<ext>`
    (e.g. `pt_inception-2015-12-05-6726825d.pth` -> '6726825d'), else None."""
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", name)
    return m.group(1) if m else None
