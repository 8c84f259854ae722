"""Downloads into the cache: a local HTTP server's files are fetched atomically, once, and
verified (URL fragment, hash prefix of the name, recorded digest); file:// URLs are read in
place; unreachable hosts, HTTP errors, truncated bodies and offline mode fail with
DownloadError."""

import contextlib
import hashlib
import http.server
import socket
import threading

import pytest

from edm2.errors import DownloadError, FormatError
from edm2.io.download import MANIFEST, cache_dir, cached_path, download, is_url, read_manifest, resolve_path

PAYLOAD = bytes(range(256)) * 64


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("EDM2_CACHE_DIR", str(root))
    monkeypatch.delenv("EDM2_OFFLINE", raising=False)
    return root


class Handler(http.server.BaseHTTPRequestHandler):
    requests = []

    def do_GET(self):
        Handler.requests.append(self.path)
        if self.path in ("/net.pkl", "/other.pkl") or self.path.startswith("/weights-"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated.pkl":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 2))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 (loopback only), stopped after the test."""
    Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_temporaries(root):
    """No temporary or partial file (the manifest's lock file is not one)."""
    names = [p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    return [n for n in names if n.startswith(".") or n.endswith(".part")] == []


def test_cache_dir_honours_edm2_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("EDM2_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "edm2"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edm2"
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_is_url():
    assert is_url("https://x/y.pkl") and is_url("http://x") and is_url("file:///tmp/a")
    assert not is_url("/tmp/a.pkl") and not is_url("edm2-img512-xs-fid")


def test_file_url_is_read_in_place_never_cached(tmp_path, cache):
    src = tmp_path / "net.pkl"
    src.write_bytes(PAYLOAD)
    assert download(src.as_uri(), progress=False) == src
    src.write_bytes(PAYLOAD[::-1])  # replaced: the new content is what the next use reads
    assert download(src.as_uri(), progress=False).read_bytes() == PAYLOAD[::-1]
    assert not (cache / "downloads").exists()
    src.unlink()
    with pytest.raises(DownloadError, match="does not exist"):
        download(src.as_uri(), progress=False)


def test_url_fragment_pins_the_digest(tmp_path, cache, server):
    good = hashlib.sha256(PAYLOAD).hexdigest()
    path = download(f"{server}/net.pkl#sha256={good}", progress=False)
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError) as e:
        download(f"{server}/other.pkl#sha256={'0' * 64}", progress=False)
    assert "0" * 64 in str(e.value) and good in str(e.value) and "other.pkl" in str(e.value)
    assert not cached_path(f"{server}/other.pkl").exists() and no_temporaries(cache)


def test_hash_prefix_of_the_file_name_is_checked(cache, server):
    good = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    assert download(f"{server}/weights-{good}.pth", progress=False, check_prefix=True).read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match=f"expected deadbeef, got {good}"):
        download(f"{server}/weights-deadbeef.pth", progress=False, check_prefix=True)
    assert not cached_path(f"{server}/weights-deadbeef.pth").exists() and no_temporaries(cache)


def test_a_cached_file_is_verified_against_the_recorded_digest(cache, server):
    url = f"{server}/net.pkl"
    path = download(url, progress=False)
    assert read_manifest(path.parent / MANIFEST)[path.name] == hashlib.sha256(PAYLOAD).hexdigest()
    # Asked for another digest than the cached file has and records: an error naming both
    # digests; the good file is kept and nothing is fetched.
    with pytest.raises(DownloadError) as e:
        download(url + "#sha256=" + "1" * 64, progress=False)
    message = str(e.value)
    assert "1" * 64 in message and hashlib.sha256(PAYLOAD).hexdigest() in message and "\n" not in message
    assert f"fix the digest, or delete {path} to download it again" in message
    assert path.read_bytes() == PAYLOAD and Handler.requests == ["/net.pkl"]


def test_http_download_from_local_server_is_cached(cache, server):
    url = f"{server}/net.pkl"
    path = download(url, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert download(url, progress=False) == path
    assert Handler.requests == ["/net.pkl"]  # the second call did not hit the server


def test_http_error_is_a_download_error(cache, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server}/missing.pkl", progress=False)
    assert not cached_path(f"{server}/missing.pkl").exists()


def test_truncated_body_leaves_nothing_under_the_final_name(cache, server):
    url = f"{server}/truncated.pkl"
    with pytest.raises(
        DownloadError,
        match=r"IncompleteRead.*\(2 attempts in a row failed\); rerun to resume from .*truncated.pkl.part",
    ):
        download(url, timeout=2, progress=False, retries=1, backoff=0.01)
    path = cached_path(url)
    assert not path.exists() and path.with_name(path.name + ".part").stat().st_size == len(PAYLOAD)


def test_unreachable_host_fails_fast_with_a_clear_error(cache):
    url = f"http://127.0.0.1:{closed_port()}/edm2-img512-xs-2147483-0.135.pkl"
    with pytest.raises(DownloadError, match="cannot download .*check the network connection"):
        download(url, timeout=2, progress=False)
    assert not cached_path(url).exists()


def test_offline_mode_refuses_without_touching_the_network(cache, server, monkeypatch):
    monkeypatch.setenv("EDM2_OFFLINE", "1")
    with pytest.raises(DownloadError, match="EDM2_OFFLINE"):
        download(f"{server}/net.pkl", progress=False)
    assert Handler.requests == []


def test_offline_mode_still_serves_cached_files(cache, server, monkeypatch):
    path = download(f"{server}/net.pkl", progress=False)
    monkeypatch.setenv("EDM2_OFFLINE", "1")
    assert download(f"{server}/net.pkl", progress=False) == path


def test_resolve_path_accepts_local_files_and_rejects_missing_ones(tmp_path, cache):
    f = tmp_path / "a.npz"
    f.write_bytes(b"x")
    assert resolve_path(f) == f
    with pytest.raises(FormatError, match="does not exist"):
        resolve_path(tmp_path / "missing.npz")
