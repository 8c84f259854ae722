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

Every transfer is bounded against a broken or hostile server (`Limits`, `check_limits`): a body
is never written past the file's size (Content-Length, else HEAD, else `max_bytes`, default 64
GiB, and never to within 256 MiB of a full disk), index pages and manifests past 16 MiB, a
transfer slower than `min_rate` bytes/s over `rate_window` seconds (default 1024 over 60) or
longer than `deadline` stops, and so does an answer whose headers do not arrive in that time;
the environment variables `EDM2_DOWNLOAD_MAX_BYTES`, `..._MIN_RATE`, `..._RATE_WINDOW` and
`..._DEADLINE` set them for the commands that take a URL. A `.part` that no validator proves to
be of the server's current version is resumed only when a digest is known (after comparing its
last 64 KiB with the server's), else fetched again from byte 0.

`EDM2_OFFLINE=1` refuses every download that is not already present, without touching the
network; a host that cannot be reached fails at once (no retries) with one line naming the URL.

The package, one module per concern: `urls` (checks and names of URLs, offline and timeout
settings), `manifest` (digests, lock files, `SHA256SUMS`), `transfer` (one transfer: `fetch`),
`cache` (`download`, `resolve_path`), `listing` (folder index pages, `expand_urls`) and `batch`
(`download_files`, `place_files`). The public names of all of them are importable from here.
"""

from edm2.io.download.batch import download_files, place_files
from edm2.io.download.cache import cache_dir, cached_path, download, resolve_path
from edm2.io.download.listing import expand_urls, list_directory, parse_index
from edm2.io.download.manifest import CHUNK, MANIFEST, file_lock, read_manifest, record_digest, sha256_file
from edm2.io.download.transfer import MAX_RESTARTS, OVERLAP, Pace, fetch, head_info
from edm2.io.download.urls import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_RATE,
    DEFAULT_RATE_WINDOW,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    HINT_CACHE,
    HINT_DOWNLOAD,
    MAX_PAGE_BYTES,
    MAX_TIMEOUT,
    URL_SCHEMES,
    Limits,
    check_limits,
    check_timeout,
    check_url,
    hash_prefix,
    is_url,
    offline,
    parse_bytes,
    split_digest,
    unsafe_name,
    url_file_name,
)

__all__ = [
    "URL_SCHEMES",
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "DEFAULT_RETRIES",
    "HINT_CACHE",
    "HINT_DOWNLOAD",
    "is_url",
    "offline",
    "check_timeout",
    "check_url",
    "split_digest",
    "url_file_name",
    "unsafe_name",
    "hash_prefix",
    "MANIFEST",
    "CHUNK",
    "sha256_file",
    "file_lock",
    "read_manifest",
    "record_digest",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MIN_RATE",
    "DEFAULT_RATE_WINDOW",
    "MAX_PAGE_BYTES",
    "Limits",
    "check_limits",
    "parse_bytes",
    "MAX_RESTARTS",
    "OVERLAP",
    "Pace",
    "head_info",
    "fetch",
    "cache_dir",
    "cached_path",
    "download",
    "resolve_path",
    "parse_index",
    "list_directory",
    "expand_urls",
    "download_files",
    "place_files",
]
