"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves on request (data/fetch.py)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infmask.data import fetch, transfer
from infmask.data.drive_page import confirm_target
from infmask.data.fetch import ChecksumError, DownloadError, download, drive_url, verified_record, verify_file

ROOT = Path(__file__).resolve().parents[2]  # for the subprocesses' PYTHONPATH
pytestmark = pytest.mark.timeout(60)  # a hang in the code under test must fail, not stall the suite

CONTENT = bytes((i * 7 + i // 251) % 256 for i in range(200_000))
OTHER = bytes(reversed(CONTENT))
DRIVE_ID = "1_XdzdW8UNG1TTS6QcX10uhoS6N11OBit"
UUID = "0f3b9c2e-5d1a-4c8e-9b7f-2a6d4e1c8b90"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None, int]] = []  # (path with query, Range header, status)
        self.fail: dict[str, int] = {}  # path -> number of 500s still to send
        self.drop_after: dict[str, list[int]] = {}  # path -> bytes sent before each of the next cuts
        self.ignore_range: set[str] = set()
        self.stall: dict[str, str] = {}  # path -> "headers" | "body"
        self.gate: dict[str, tuple[threading.Event, threading.Event]] = {}  # path -> (half sent, go on)
        self.release = threading.Event()  # set at teardown so stalled handlers return
        self.lock = threading.Lock()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def record(self, path: str, rng: str | None, status: int) -> None:
        with self.lock:
            self.log.append((path, rng, status))

    def full_gets(self, path: str) -> int:
        return sum(1 for p, r, s in self.log if p.split("?")[0] == path and s == 200)


def confirm_page(port: int, file_id: str) -> bytes:
    # Shaped like drive.usercontent.google.com's "Virus scan warning" page.
    return (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>"
        '<meta http-equiv="content-type" content="text/html; charset=utf-8"/></head><body><div class="uc-main">'
        '<div id="uc-text"><p class="uc-warning-caption">Google Drive can\'t scan this file for viruses.</p>'
        f'<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={file_id}">mosi_data.pkl</a>'
        " (195K)</span> is too large for Google to scan for viruses. Would you still like to download this file?</p>"
        f'<form id="download-form" action="http://127.0.0.1:{port}/download" method="get">'
        '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" '
        'value="Download anyway"/>'
        f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" value="download">'
        f'<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{UUID}"></form>'
        "</div></div></body></html>").encode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        st: State = self.server.state
        st.record(self.path, self.headers.get("Range"), status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901 - one branch per misbehaviour
        st: State = self.server.state
        parts = urllib.parse.urlsplit(self.path)
        path, query = parts.path, dict(urllib.parse.parse_qsl(parts.query))
        try:
            if path == "/uc":  # Drive: the first answer for a large file is the warning page
                return self._send(200, confirm_page(st.port, query.get("id", "")),
                                  {"Content-Type": "text/html; charset=utf-8"})
            if path == "/download":
                if query.get("confirm") != "t" or query.get("uuid") != UUID or query.get("id") != DRIVE_ID:
                    return self._send(200, confirm_page(st.port, query.get("id", "")),
                                      {"Content-Type": "text/html; charset=utf-8"})
                path = "/drive-file"
            if st.fail.get(path, 0) > 0:
                st.fail[path] -= 1
                return self._send(500, b"internal error", {"Content-Type": "text/plain"})
            if path not in st.files:
                return self._send(404, b"not found", {"Content-Type": "text/plain"})
            data = st.files[path]
            etag = f'"{sha(data)[:16]}"'
            headers = {"Content-Type": "application/octet-stream", "ETag": etag, "Accept-Ranges": "bytes"}
            if st.stall.get(path) == "headers":
                st.record(self.path, self.headers.get("Range"), 0)
                st.release.wait(20)
                return
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            start = 0
            if rng and path not in st.ignore_range and (if_range is None or if_range == etag):
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            else:
                status = 200
            st.record(self.path, rng, status)
            body = data[start:]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cuts = st.drop_after.get(path)
            cut = cuts.pop(0) if cuts else None
            gate = st.gate.get(path) if status == 200 else None
            if st.stall.get(path) == "body":
                self.wfile.write(body[:1000])
                self.wfile.flush()
                st.release.wait(20)
                return
            if cut is not None:  # send part of the body, then hang up
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            if gate is not None:
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                gate[0].set()
                gate[1].wait(30)
                self.wfile.write(body[half:])
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    st = State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = st
    st.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield st
    finally:
        st.release.set()
        for _, go in st.gate.values():
            go.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


FAST = {"retries": 3, "backoff": 0.01, "timeout": 5.0, "progress": False}


def resumed_at(offset: int) -> str:
    """The Range of a resumed first download (no sha256 known): the last bytes held are asked again to check."""
    return f"bytes={max(0, offset - transfer._OVERLAP)}-"


def test_download_then_idempotent(server, tmp_path, caplog):
    server.files["/f.bin"] = CONTENT
    dest = tmp_path / "raw" / "f.bin"
    assert download(server.url("/f.bin"), dest, expected_sha256=sha(CONTENT), **FAST) == dest
    assert dest.read_bytes() == CONTENT
    assert not (tmp_path / "raw" / "f.bin.part").exists()
    assert verified_record(dest) == {"url": server.url("/f.bin"), "size": len(CONTENT), "sha256": sha(CONTENT)}
    n = len(server.log)
    with caplog.at_level(logging.INFO, logger="infmask.data.fetch"):
        download(server.url("/f.bin"), dest, expected_sha256=sha(CONTENT), **FAST)
    assert len(server.log) == n  # nothing fetched again
    assert "already present and verified" in caplog.text


def test_resume_after_dropped_connection(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.drop_after["/f.bin"] = [70_001]
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, expected_sha256=sha(CONTENT), **FAST)
    assert dest.read_bytes() == CONTENT
    assert [(r, s) for _, r, s in server.log] == [(None, 200), ("bytes=70001-", 206)]


def test_resume_drive_download_goes_through_confirm_again(server, tmp_path):
    server.files["/drive-file"] = CONTENT
    server.drop_after["/drive-file"] = [50_000]
    url = server.url(f"/uc?export=download&id={DRIVE_ID}")
    download(url, tmp_path / "mosi_data.pkl", **FAST)
    assert (tmp_path / "mosi_data.pkl").read_bytes() == CONTENT
    assert [p.split("?")[0] for p, _, _ in server.log] == ["/uc", "/download", "/uc", "/download"]
    assert server.log[-1][1:] == (resumed_at(50_000), 206)


def test_drive_confirm_page(server, tmp_path):
    server.files["/drive-file"] = CONTENT
    url = server.url(f"/uc?export=download&id={DRIVE_ID}")
    dest = download(url, tmp_path / "mosi_data.pkl", **FAST)
    assert dest.read_bytes() == CONTENT
    first, second = server.log[0][0], server.log[1][0]
    assert first.startswith("/uc?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(second).query))
    assert query == {"id": DRIVE_ID, "export": "download", "confirm": "t", "uuid": UUID}


def test_drive_url_and_page_parsing():
    assert drive_url(DRIVE_ID) == f"https://drive.google.com/uc?export=download&id={DRIVE_ID}"
    with pytest.raises(ValueError, match="file_id"):
        drive_url("not an id!")
    target, title = confirm_target(confirm_page(1, DRIVE_ID).decode(), "https://drive.google.com/uc?id=x", {})
    assert title == "Google Drive - Virus scan warning" and "confirm=t" in target and f"uuid={UUID}" in target
    quota = ("<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users have viewed or "
             "downloaded this file recently.</body></html>")
    assert confirm_target(quota, "https://drive.google.com/uc?id=x", {}) == \
        (None, "Google Drive - Quota exceeded")
    old = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=AbCd&amp;id=XYZ">Download anyway</a>'
    assert confirm_target(old, "https://drive.google.com/uc?id=XYZ", {})[0] == \
        "https://drive.google.com/uc?export=download&confirm=AbCd&id=XYZ"
    assert "confirm=tok" in confirm_target("<html></html>", "https://drive.google.com/uc?id=XYZ",
                                                  {"download_warning_123": "tok"})[0]


def test_404_is_immediate_and_clear(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(server.url("/missing.pkl"), tmp_path / "m.pkl", retries=5, backoff=1.0, progress=False)
    assert time.monotonic() - t0 < 1.0  # no back-off sleeps
    assert info.value.status == 404 and "404" in str(info.value) and server.url("/missing.pkl") in str(info.value)
    assert len(server.log) == 1
    assert not (tmp_path / "m.pkl").exists()


def test_progress_restores_retry_budget(server, tmp_path, monkeypatch):
    # Six drops with retries=2: each attempt moves the file forward, so the transfer is never abandoned.
    monkeypatch.setattr(transfer, "_PROGRESS_RESET", 10_000)
    monkeypatch.setattr(transfer, "_OVERLAP", 1000)
    server.files["/f.bin"] = CONTENT
    server.drop_after["/f.bin"] = [20_000] * 6
    download(server.url("/f.bin"), tmp_path / "f.bin", retries=2, backoff=0.01, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == CONTENT
    assert [r for _, r, _ in server.log] == [None] + [f"bytes={19_000 * k}-" for k in range(1, 7)]  # 1000 sent again


def test_dropped_connection_without_progress_gives_up(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.drop_after["/f.bin"] = [1000] * 6  # the same bytes again and again are not progress
    with pytest.raises(DownloadError, match="giving up"):
        download(server.url("/f.bin"), tmp_path / "f.bin", retries=2, backoff=0.01, progress=False)
    assert len(server.log) == 3 and (tmp_path / "f.bin.part").stat().st_size == 1000  # kept for a later resume
    download(server.url("/f.bin"), tmp_path / "f.bin", **FAST)  # ... which works
    assert (tmp_path / "f.bin").read_bytes() == CONTENT


def test_500_then_success_is_retried(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.fail["/f.bin"] = 2
    download(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == CONTENT
    assert [s for _, _, s in server.log] == [500, 500, 200]


def test_persistent_500_gives_up(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.fail["/f.bin"] = 99
    with pytest.raises(DownloadError) as info:
        download(server.url("/f.bin"), tmp_path / "f.bin", retries=2, backoff=0.01, progress=False)
    assert info.value.status == 500 and len(server.log) == 3
    assert not (tmp_path / "f.bin").exists()


def test_wrong_content_is_quarantined(server, tmp_path):
    server.files["/f.bin"] = OTHER
    dest = tmp_path / "f.bin"
    with pytest.raises(ChecksumError) as info:
        download(server.url("/f.bin"), dest, expected_sha256=sha(CONTENT), expected_size=len(CONTENT), **FAST)
    quarantine = tmp_path / "f.bin.quarantine"
    assert info.value.quarantine == quarantine and quarantine.read_bytes() == OTHER
    assert sha(CONTENT) in str(info.value) and sha(OTHER) in str(info.value)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    assert verified_record(dest) is None


def test_wrong_size_announced_fails_before_downloading(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    with pytest.raises(ChecksumError, match="announces"):
        download(server.url("/f.bin"), tmp_path / "f.bin", expected_size=1000, **FAST)
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("where", ["headers", "body"])
def test_stalled_server_times_out(server, tmp_path, where):
    server.files["/slow.bin"] = CONTENT
    server.stall["/slow.bin"] = where
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download(server.url("/slow.bin"), tmp_path / "slow.bin", retries=1, backoff=0.01, timeout=0.5,
                 progress=False)
    assert time.monotonic() - t0 < 3.0
    assert not (tmp_path / "slow.bin").exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.ignore_range.add("/f.bin")
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"\x00garbage" * 1000)  # a stale partial file
    download(server.url("/f.bin"), dest, expected_sha256=sha(CONTENT), **FAST)
    assert dest.read_bytes() == CONTENT
    assert [(r, s) for _, r, s in server.log] == [("bytes=8000-", 200)]


def test_drop_then_range_ignored(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.drop_after["/f.bin"] = [30_000]
    server.ignore_range.add("/f.bin")
    download(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == CONTENT
    assert [(r, s) for _, r, s in server.log] == [(None, 200), (resumed_at(30_000), 200)]


def test_416_on_complete_part_and_on_oversized_part(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    (tmp_path / "a.part").write_bytes(CONTENT)  # complete but never renamed (crash before the rename)
    download(server.url("/f.bin"), tmp_path / "a", expected_sha256=sha(CONTENT), **FAST)
    assert (tmp_path / "a").read_bytes() == CONTENT
    assert [s for _, _, s in server.log] == [416]
    (tmp_path / "b.part").write_bytes(CONTENT + b"extra")  # longer than the file, no validator: restart from zero
    download(server.url("/f.bin"), tmp_path / "b", **FAST)
    assert (tmp_path / "b").read_bytes() == CONTENT
    assert [(r, s) for _, r, s in server.log] == [("bytes=200000-", 416), (None, 200)]


def test_upstream_change_between_attempts_restarts(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    server.drop_after["/f.bin"] = [40_000]
    real_sleep = time.sleep

    def change_then_sleep(seconds):  # the file changes upstream while we back off
        server.files["/f.bin"] = OTHER
        real_sleep(seconds)

    transfer.time.sleep, saved = change_then_sleep, transfer.time.sleep
    try:
        download(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
    finally:
        transfer.time.sleep = saved
    assert (tmp_path / "f.bin").read_bytes() == OTHER  # If-Range made the server send the new file whole
    assert [(r, s) for _, r, s in server.log] == [(None, 200), (resumed_at(40_000), 200)]


def test_spliced_resume_is_redownloaded_before_failing(server, tmp_path):
    # A .part from some other file: resuming splices garbage, so one fresh download is tried before giving up.
    server.files["/f.bin"] = CONTENT
    (tmp_path / "f.bin.part").write_bytes(OTHER[:5000])
    download(server.url("/f.bin"), tmp_path / "f.bin", expected_sha256=sha(CONTENT), **FAST)
    assert (tmp_path / "f.bin").read_bytes() == CONTENT
    assert [(r, s) for _, r, s in server.log] == [("bytes=5000-", 206), (None, 200)]


def test_tofu_records_then_detects_change(server, tmp_path):
    server.files["/f.bin"] = CONTENT
    store = tmp_path / "ws" / "tofu.json"
    dest = tmp_path / "raw" / "f.bin"
    url = server.url("/f.bin")
    download(url, dest, tofu_store=store, **FAST)
    rec = json.loads(store.read_text())["files"][url]
    assert (rec["url"], rec["size"], rec["sha256"]) == (url, len(CONTENT), sha(CONTENT))
    # Same bytes again: fine.
    dest.unlink()
    download(url, dest, tofu_store=store, **FAST)
    assert dest.read_bytes() == CONTENT
    # The upstream file changes: refused, quarantined, record kept.
    dest.unlink()
    server.files["/f.bin"] = OTHER
    with pytest.raises(ChecksumError, match="first-use record"):
        download(url, dest, tofu_store=store, **FAST)
    assert not dest.exists() and (tmp_path / "raw" / "f.bin.quarantine").read_bytes() == OTHER
    assert json.loads(store.read_text())["files"][url]["sha256"] == sha(CONTENT)
    # A corrupted existing file is caught by the record too, and replaced by a good download.
    server.files["/f.bin"] = CONTENT
    dest.write_bytes(OTHER)
    download(url, dest, tofu_store=store, **FAST)
    assert dest.read_bytes() == CONTENT


def test_verify_placed_file_with_tofu(tmp_path):
    placed = tmp_path / "im.pk"
    placed.write_bytes(CONTENT)
    store = tmp_path / "tofu.json"
    assert verify_file(placed, tofu_store=store, key="mimic/im.pk") == sha(CONTENT)
    assert verify_file(placed, tofu_store=store, key="mimic/im.pk") == sha(CONTENT)
    placed.write_bytes(OTHER)
    with pytest.raises(ChecksumError):
        verify_file(placed, tofu_store=store, key="mimic/im.pk")
    assert placed.exists()  # a hand-placed file is reported, not moved
    with pytest.raises(ChecksumError):
        verify_file(placed, expected_sha256=sha(CONTENT))


def test_progress_log_lines_without_terminal(server, tmp_path, caplog, monkeypatch):
    server.files["/f.bin"] = CONTENT
    monkeypatch.setattr(transfer, "_LOG_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="infmask.data.fetch"):
        download(server.url("/f.bin"), tmp_path / "f.bin", chunk=50_000, retries=0, progress=True)
    lines = [r.getMessage() for r in caplog.records if "%" in r.getMessage() and "/s" in r.getMessage()]
    assert lines and lines[-1].startswith("f.bin: 195.3 KiB / 195.3 KiB (100%)")


def test_two_processes_download_once(server, tmp_path):
    server.files["/big.bin"] = CONTENT
    half_sent, go_on = threading.Event(), threading.Event()
    server.gate["/big.bin"] = (half_sent, go_on)
    dest = tmp_path / "big.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "infmask.data.fetch", server.url("/big.bin"), str(dest), "--no-progress", "--timeout", "20",
           "--sha256", sha(CONTENT)]

    def start():
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a = start()
    b = None
    try:
        assert half_sent.wait(20), "first process never started downloading"
        b = start()
        b_lines: list[str] = []
        waiting = threading.Event()

        def read_b():
            for line in b.stderr:
                b_lines.append(line)
                if "waiting for another process" in line:
                    waiting.set()

        reader = threading.Thread(target=read_b, daemon=True)
        reader.start()
        assert waiting.wait(20), "second process did not wait for the lock"
        go_on.set()
        out_a = a.communicate(timeout=30)
        b.wait(timeout=30)
        reader.join(5)
    finally:
        go_on.set()
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    assert a.returncode == 0, out_a[1]
    assert b.returncode == 0, "".join(b_lines)
    assert "already present and verified" in "".join(b_lines)
    assert server.full_gets("/big.bin") == 1 and len(server.log) == 1
    assert dest.read_bytes() == CONTENT


def test_cli_exit_code_2_on_error(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "infmask.data.fetch", server.url("/nope"), str(tmp_path / "x"),
                           "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "404" in proc.stderr


@pytest.mark.parametrize("kwargs, arg", [({"expected_sha256": "abc"}, "expected_sha256"),
                                         ({"expected_size": -1}, "expected_size"), ({"retries": -1}, "retries"),
                                         ({"timeout": 0}, "timeout"), ({"chunk": 0}, "chunk")])
def test_bad_arguments(tmp_path, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        download("http://127.0.0.1:9/x", tmp_path / "x", **kwargs)
    with pytest.raises(ValueError, match="url"):
        download("ftp://example.org/x", tmp_path / "x")
