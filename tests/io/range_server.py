"""A real HTTP server on 127.0.0.1 for download tests: serves a folder with an HTML index page
(links like the NVIDIA CDN's listing), answers `Range: bytes=a-` requests with 206, counts the
requests per path, and injects faults on request: drop the connection after N bytes, answer 500
a number of times, serve corrupted bytes, or send slowly. Each file is served with an ETag (of
its bytes) and a Last-Modified header (its mtime), and `If-Range` is honoured as real servers do
(a validator that no longer matches: the whole file with 200).

    with RangeServer(folder) as server:
        server.url            -> 'http://127.0.0.1:PORT/'
        server.faults['a.pkl'] = {'drop_after': 1000}   # cut the next transfer of a.pkl
        server.gets('a.pkl')  -> list of Range headers ('' for none) of every GET of a.pkl
        server.httpd.index_links = ['%2e%2e', 'a.pkl']    # the index page's links, as given

Faults (per file name): drop_after (bytes, once), status_times + status (GETs only), corrupt,
ignore_range (answer 200 to every Range), no_validators (no ETag / Last-Modified, If-Range
ignored), etag (a fixed ETag instead of the bytes' one), head_size (the Content-Length a HEAD
claims), and hostile answers to a GET, each bounded so that the server stops by itself: endless
(N: a body of N bytes without Content-Length, then the connection closed; the file's bytes are
not used; with chunked: True, sent as chunks of Transfer-Encoding: chunked), trickle (S: one byte of the file every S seconds, for at most trickle_for seconds,
default 20), trickle_headers (S: the status line, then the headers one byte every S seconds, for at
most trickle_for seconds, then the connection closed; GET and HEAD; the name '' is the index
page). `server.httpd.index_endless = N` makes the index page a body of N bytes without
Content-Length, and `server.httpd.index_gzip = N` a gzip-encoded page of N zero bytes (a few
KiB on the wire).
"""

import email.utils
import gzip
import hashlib
import html
import http.server
import re
import sys
import threading
import time
from pathlib import Path


def _gzip_zeros(n: int) -> bytes:
    """gzip of `n` zero bytes, compressed a MiB at a time."""
    import io

    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as f:
        block = bytes(1 << 20)
        for i in range(0, n, len(block)):
            f.write(block[: n - i])
    return out.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    server_version = "RangeServer/1.0"

    def log_message(self, *args):
        pass

    def _endless(self, total: int, row: bytes = b"x" * 65536, chunked: bool = False) -> None:
        """A 200 answer without Content-Length: `total` bytes of `row`s, then close (the client may
        close first); `chunked`: as chunks, ended by the last chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        self.end_headers()
        self.close_connection = True
        sent = 0
        try:
            while sent < total:
                chunk = row[: total - sent]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client gave up

    def _trickle_head(self, pause: float, limit: float) -> None:
        """An answer head that never ends, one byte every `pause` seconds for `limit` seconds."""
        self.close_connection = True
        status, head = b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 60000
        end = time.monotonic() + limit
        try:
            self.wfile.write(status)  # the status line at once, then the headers trickle
            for i in range(len(head)):
                if time.monotonic() > end:
                    break
                self.wfile.write(head[i : i + 1])
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass  # the client gave up

    def _index(self):
        if self.server.index_gzip:
            body = _gzip_zeros(self.server.index_gzip)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.server.index_endless:
            return self._endless(self.server.index_endless, b"<tr><td><a href='x.bin'>x.bin</a></td></tr>\n" * 1000)
        names = sorted(p.name for p in self.server.root.iterdir() if p.is_file() and not p.name.startswith("."))
        if self.server.index_links is not None:  # links as given (any href), e.g. unsafe names
            names = self.server.index_links
        rows = "".join(f'<tr><td><a href="{html.escape(n)}">{html.escape(n)}</a></td></tr>\n' for n in names)
        body = (
            "<html><head><title>Index</title></head><body><table>\n"
            '<tr><th><a href="?C=N;O=D">Name</a></th></tr>\n<tr><td><a href="../">Parent Directory</a></td></tr>\n'
            f'{rows}<tr><td><a href="sub/">sub/</a></td></tr></table></body></html>\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def _serve(self):
        srv = self.server
        name = self.path.split("?", 1)[0].lstrip("/")
        with srv.lock:
            srv.log.append((self.command, name, self.headers.get("Range", "")))
            srv.if_ranges.append((self.command, name, self.headers.get("If-Range", "")))
            fault = srv.faults.get(name, {})
        if fault.get("trickle_headers"):
            return self._trickle_head(fault["trickle_headers"], fault.get("trickle_for", 20))
        if name == "":
            return self._index()
        path = srv.root / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        if self.command == "GET" and fault.get("status_times", 0) > 0:
            with srv.lock:
                fault["status_times"] -= 1
            self.send_error(fault.get("status", 500))
            return
        if self.command == "GET" and fault.get("endless"):
            return self._endless(fault["endless"], chunked=fault.get("chunked", False))
        data = path.read_bytes()
        if fault.get("corrupt"):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        validators = {}
        if not fault.get("no_validators"):
            validators["ETag"] = fault.get("etag") or '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            validators["Last-Modified"] = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        if self.command == "HEAD" and "head_size" in fault:
            self.send_response(200)
            self.send_header("Content-Length", str(fault["head_size"]))
            self.end_headers()
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if if_range and validators and if_range not in validators.values():
            m = None  # the file changed since the client's copy began: send all of it
        if m and not fault.get("ignore_range"):
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                for key, value in validators.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in validators.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        body = memoryview(data)[start:]
        drop = fault.get("drop_after")
        if drop is not None:
            with srv.lock:
                fault.pop("drop_after")
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # cut mid-body: the client sees a short read
            return
        if fault.get("trickle"):
            end = time.monotonic() + fault.get("trickle_for", 20)
            try:
                for i in range(len(body)):
                    if time.monotonic() > end:
                        break
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(fault["trickle"])
            except OSError:
                pass  # the client gave up
            self.close_connection = True
            return
        step = 4096 if srv.delay else len(body)
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if srv.delay:
                self.wfile.flush()
                time.sleep(srv.delay)

    do_GET = _serve
    do_HEAD = _serve


class RangeServer:
    """Serve `root` on 127.0.0.1 (an ephemeral port) from a background thread."""

    def __init__(self, root, delay: float = 0.0):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = self._handle_error
        self.httpd.root = Path(root)
        self.httpd.lock = threading.Lock()
        self.httpd.log = []
        self.httpd.if_ranges = []
        self.httpd.index_links = None  # hrefs of the index page instead of the folder's files
        self.httpd.index_endless = 0  # bytes of an index page without Content-Length
        self.httpd.index_gzip = 0  # zero bytes of a gzip-encoded index page
        self.httpd.faults = {}
        self.httpd.delay = delay
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def _handle_error(self, request, client_address):
        """Quiet about clients that hung up (the tests' clients give up on purpose); anything else
        is printed as socketserver does."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        http.server.ThreadingHTTPServer.handle_error(self.httpd, request, client_address)

    @property
    def faults(self) -> dict:
        return self.httpd.faults

    @property
    def log(self) -> list:
        return self.httpd.log

    def gets(self, name: str) -> list[str]:
        """The Range header ('' when none) of every GET of `name`, in order."""
        return [rng for method, n, rng in self.httpd.log if method == "GET" and n == name]

    def if_ranges(self, name: str) -> list[str]:
        """The If-Range header ('' when none) of every GET of `name`, in order."""
        return [v for method, n, v in self.httpd.if_ranges if method == "GET" and n == name]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
