"""A real HTTP server on 127.0.0.1 for download tests: serves a folder with an HTML index page
(links like the NVIDIA CDN's listing), answers `Range: bytes=a-` requests with 206, counts the
requests per path, and injects faults on request: drop the connection after N bytes, answer 500
a number of times, serve corrupted bytes, or send slowly.

    with RangeServer(folder) as server:
        server.url            -> 'http://127.0.0.1:PORT/'
        server.faults['a.pkl'] = {'drop_after': 1000}   # cut the next transfer of a.pkl
        server.gets('a.pkl')  -> list of Range headers ('' for none) of every GET of a.pkl
"""

import html
import http.server
import re
import threading
import time
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    server_version = "RangeServer/1.0"

    def log_message(self, *args):
        pass

    def _index(self):
        names = sorted(p.name for p in self.server.root.iterdir() if p.is_file() and not p.name.startswith("."))
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
            fault = srv.faults.get(name, {})
        if name == "":
            return self._index()
        path = srv.root / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        if fault.get("status_times", 0) > 0:
            with srv.lock:
                fault["status_times"] -= 1
            self.send_error(fault.get("status", 500))
            return
        data = path.read_bytes()
        if fault.get("corrupt"):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m and not fault.get("ignore_range"):
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
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
        self.httpd.root = Path(root)
        self.httpd.lock = threading.Lock()
        self.httpd.log = []
        self.httpd.faults = {}
        self.httpd.delay = delay
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def faults(self) -> dict:
        return self.httpd.faults

    @property
    def log(self) -> list:
        return self.httpd.log

    def gets(self, name: str) -> list[str]:
        """The Range header ('' when none) of every GET of `name`, in order."""
        return [rng for method, n, rng in self.httpd.log if method == "GET" and n == name]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
