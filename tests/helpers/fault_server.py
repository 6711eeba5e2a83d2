"""A real HTTP server on 127.0.0.1 that serves files and misbehaves on request, for download tests.

Each served path is a ``Served``: its bytes and the faults to inject (no validators, no Content-Length, a lying 206,
hang-ups after N bytes, a content change after the first answer, an HTML error page, credentials required).
``serve({...})`` yields the server; ``server.url(path)`` builds URLs, ``server.log`` records (path, Range, status).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


@dataclass
class Served:
    data: bytes
    etag: bool = True                 # a strong ETag (the resume validator)
    length: bool = True               # Content-Length on 200 answers (else the body ends when the connection closes)
    ranges: bool = True               # answer Range requests with 206 / 416
    lie_206: bool = False             # a 206 with the right headers but the bytes from the start of the file
    cuts: list = field(default_factory=list)   # bytes sent before hanging up, one entry per answer
    then: bytes | None = None         # the file's bytes after the first answer (it changes upstream)
    content_type: str = "application/octet-stream"
    auth: tuple | None = None         # (user, password) required
    token: str | None = None          # ?token=... required


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _plain(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.server.log.append((self.path, self.headers.get("Range"), status))
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        item: Served | None = self.server.files.get(parts.path)
        if item is None:
            return self._plain(404, b"not found")
        if item.auth is not None:
            want = "Basic " + base64.b64encode(":".join(item.auth).encode()).decode()
            if self.headers.get("Authorization") != want:
                return self._plain(401, b"who are you?", {"WWW-Authenticate": 'Basic realm="mirror"'})
        if item.token is not None and dict(urllib.parse.parse_qsl(parts.query)).get("token") != item.token:
            return self._plain(403, b"bad token")
        data = item.data
        if item.then is not None:  # the next answer serves the new version
            item.data, item.then = item.then, None
        headers = {"Content-Type": item.content_type, "Accept-Ranges": "bytes" if item.ranges else "none"}
        if item.etag:
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        rng, start, status = self.headers.get("Range"), 0, 200
        if rng and item.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._plain(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:] if not item.lie_206 or status != 206 else data[:len(data) - start]
        self.server.log.append((self.path, rng, status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if item.length or status == 206:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        cut = item.cuts.pop(0) if item.cuts else None
        try:
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if cut is not None:
            self.close_connection = True


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, Served]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.log = files, []

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.server_address[1]}{path}"


@contextlib.contextmanager
def serve(files: dict[str, Served]) -> Iterator[FaultServer]:
    server = FaultServer(files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
