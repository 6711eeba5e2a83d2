"""Verified, resumable, single-writer downloads (HTTP and Google Drive).

``download`` is the one way a file from the internet enters the workspace:

* bytes go to ``<dest>.part``; an interrupted transfer resumes with an HTTP ``Range`` request (guarded by
  ``If-Range`` so a file that changed upstream restarts instead of being spliced);
* connection errors, timeouts, 408/429 and 5xx are retried with exponential back-off; other 4xx fail at once;
* only after the size and sha256 check does ``.part`` become ``dest`` (``os.replace``), so ``dest`` is never a
  partial or corrupt file; a mismatch moves the bytes to ``<dest>.quarantine`` and raises ``ChecksumError``;
* published checksums are unknown for the MultiBench files, so with ``tofu_store`` the first verified download
  records {url, size, sha256} ("trust on first use") and every later download must match it;
* ``flock`` on ``<dest>.lock`` serialises processes: the second waits, then finds ``dest`` complete;
* a ``<dest>.verified.json`` stamp (size, mtime, sha256) lets an existing file be accepted without re-hashing it.

Google Drive answers large files with an HTML "virus scan warning" page whose form (fields ``id``, ``export``,
``confirm``, ``uuid``) has to be submitted to get the bytes; ``download`` follows that form itself.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import html.parser
import json
import logging
import os
import random
import re
import sys
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import requests
import urllib3

__all__ = ["DownloadError", "ChecksumError", "download", "drive_url", "verify_file", "sha256_file",
           "verified_record"]

log = logging.getLogger(__name__)

# Seconds between plain progress log lines when stderr is not a terminal (tests lower it).
_LOG_EVERY = 10.0
_MAX_BACKOFF = 60.0
# An attempt that adds this many bytes before failing restores the retry budget (a trickle does not).
_PROGRESS_RESET = 8 << 20
_HTML_SNIFF = 1 << 20  # an HTML confirm/error page is far smaller than this
_USER_AGENT = "infmask-fetch/1 (+python-requests)"


class DownloadError(RuntimeError):
    """A download failed; ``url`` and, for HTTP errors, ``status`` say which and why."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class ChecksumError(DownloadError):
    """The bytes do not match the expected (or first-seen) size/sha256; they were quarantined, not kept."""

    def __init__(self, message: str, *, url: str, quarantine: Path | None = None):
        super().__init__(message, url=url)
        self.quarantine = quarantine


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 408/429/5xx)."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _Restart(Exception):
    """The partial file cannot be continued; start again from byte 0 (not counted as a failure)."""


# --------------------------------------------------------------------------------------------------------------
# small helpers

def drive_url(file_id: str) -> str:
    """The direct-download URL of a public Google Drive file id."""
    if not isinstance(file_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{10,}", file_id):
        raise ValueError(f"file_id: {file_id!r} is not a Google Drive file id")
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _sidecar(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    json.loads(tmp.read_text())  # verify before it replaces the old one
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@contextlib.contextmanager
def _locked(lock_path: Path, what: str) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            log.info("waiting for another process to finish %s (lock %s)", what, lock_path)
            fcntl.flock(fh, fcntl.LOCK_EX)
            log.info("lock %s acquired", lock_path)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------------------
# trust on first use

def _tofu_get(store: Path, url: str) -> dict | None:
    data = _read_json(store) or {}
    return (data.get("files") or {}).get(url)


def _tofu_put(store: Path, url: str, size: int, sha256: str, name: str) -> None:
    store.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_sidecar(store, ".lock"), f"updating {store.name}"):
        data = _read_json(store) or {}
        files = data.setdefault("files", {})
        if url in files:  # another process recorded it meanwhile; the first record stays the reference
            return
        data["version"] = 1
        files[url] = {"url": url, "size": size, "sha256": sha256, "name": name,
                      "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        _write_json_atomic(store, data)
    log.info("trust on first use: recorded size %d and sha256 %s of %s in %s", size, sha256, url, store)


class _Expect:
    """What the finished file must be: an explicit sha256/size, else the TOFU record (if any)."""

    def __init__(self, url: str, sha256: str | None, size: int | None, store: Path | None):
        self.sha256, self.size, self.source = sha256, size, "expected_sha256"
        self.record = None
        if sha256 is None and store is not None:
            self.record = _tofu_get(store, url)
            if self.record is not None:
                self.sha256 = self.record["sha256"]
                self.source = f"the first-use record in {store} ({self.record.get('recorded', '?')})"
        self.record_size = None if self.record is None else int(self.record["size"])

    def max_size(self) -> int | None:
        sizes = [s for s in (self.size, self.record_size) if s is not None]
        return min(sizes) if sizes else None

    def problem(self, size: int, sha256: str) -> str | None:
        if self.size is not None and size != self.size:
            return f"size {size} differs from expected_size {self.size}"
        if self.record_size is not None and size != self.record_size:
            return f"size {size} differs from the size {self.record_size} in {self.source}"
        if self.sha256 is not None and sha256 != self.sha256:
            return f"sha256 {sha256} differs from {self.sha256} given by {self.source}"
        return None


# --------------------------------------------------------------------------------------------------------------
# Google Drive's confirm page

class _FormParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                               "inputs": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _confirm_target(page: str, page_url: str, cookies: dict) -> tuple[str | None, str]:
    """The URL that the Drive "download anyway" form (or older confirm link/cookie) leads to, and the page title."""
    parser = _FormParser()
    try:
        parser.feed(page)
    except Exception:  # a malformed page simply has no usable form
        return None, ""
    title = " ".join(parser.title.split())
    for form in parser.forms:
        if "confirm" in form["inputs"] and form["method"] == "get":
            action = urllib.parse.urljoin(page_url, form["action"] or page_url)
            parts = urllib.parse.urlsplit(action)
            query = urllib.parse.urlencode(form["inputs"])
            return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), title
    if parser.links:  # the pre-2024 page: <a href="/uc?export=download&confirm=XXXX&id=...">
        return urllib.parse.urljoin(page_url, parser.links[0]), title
    for name, value in cookies.items():  # the oldest flow: the token is only in a download_warning cookie
        if name.startswith("download_warning"):
            parts = urllib.parse.urlsplit(page_url)
            query = dict(urllib.parse.parse_qsl(parts.query))
            query["confirm"] = value
            return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query))), title
    return None, title


def _is_google(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "google.com" or host.endswith(".google.com") or host.endswith(".googleusercontent.com")


# --------------------------------------------------------------------------------------------------------------
# progress

class _Progress:
    def __init__(self, name: str, total: int | None, initial: int, enabled: bool):
        self.name, self.total, self.done = name, total, initial
        self.bar = None
        self.enabled = enabled
        self.t0 = self.last = time.monotonic()
        self.start_bytes = initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=name, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= _LOG_EVERY:
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        rate = (self.done - self.start_bytes) / max(time.monotonic() - self.t0, 1e-6)
        of = f" / {_human(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        log.info("%s: %s%s at %s/s", self.name, _human(self.done), of, _human(rate))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------------------
# one transfer attempt

_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _network_reason(exc: BaseException, timeout: float) -> str:
    text = str(exc)
    if isinstance(exc, (requests.Timeout, TimeoutError)) or "timed out" in text.lower():
        return f"timed out (no data for {timeout:g} s): {text}"
    return f"connection error: {text}"


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value and value.strip().isdigit():
        return min(float(value), _MAX_BACKOFF)
    return None


class _PartHash:
    """sha256 of ``.part`` kept in step with the bytes written, so a finished download needs no second read."""

    def __init__(self, part: Path, chunk: int):
        self.part, self.chunk = part, chunk
        self.h = hashlib.sha256()
        self.length = 0

    def sync(self) -> int:
        size = self.part.stat().st_size if self.part.exists() else 0
        if size != self.length:
            self.h, self.length = hashlib.sha256(), 0
            if size:
                with open(self.part, "rb") as fh:
                    while block := fh.read(self.chunk):
                        self.h.update(block)
                        self.length += len(block)
        return self.length

    def reset(self) -> None:
        self.h, self.length = hashlib.sha256(), 0

    def update(self, block: bytes) -> None:
        self.h.update(block)
        self.length += len(block)


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(start, end, total) of 'bytes a-b/N' or 'bytes */N'; None where absent or '*'."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None, None
    start, end, total = m.groups()
    return (int(start) if start else None, int(end) if end else None, int(total) if total not in (None, "*") else None)


def _get(session: requests.Session, url: str, headers: dict, timeout: float) -> tuple[requests.Response, bytes]:
    """GET ``url``, following a Drive confirm page; returns the response and any body bytes already read."""
    for _hop in range(4):
        try:
            resp = session.get(url, headers=headers, stream=True, timeout=(timeout, timeout), allow_redirects=True)
        except _NETWORK_ERRORS as exc:
            raise _Transient(_network_reason(exc, timeout)) from exc
        ctype = resp.headers.get("Content-Type", "").lower()
        if resp.status_code != 200 or not ctype.startswith("text/html"):
            return resp, b""
        try:
            head = b""
            for block in _blocks(resp, 64 << 10):
                head += block
                if len(head) >= _HTML_SNIFF:
                    break
        except _NETWORK_ERRORS as exc:
            resp.close()
            raise _Transient(_network_reason(exc, timeout)) from exc
        text = head.decode(resp.encoding or "utf-8", errors="replace")
        target, title = _confirm_target(text, resp.url, resp.cookies.get_dict())
        if target is not None:
            resp.close()
            log.info("%s answered with a confirm page (%s); submitting its form", url, title or "no title")
            url = target
            continue
        if _is_google(resp.url):
            resp.close()
            raise DownloadError(
                f"Google Drive returned an HTML page instead of the file for {url}: {title or 'untitled page'}. "
                "The file may be over its download quota (try again later) or no longer shared publicly; "
                "download it in a browser and place it at the destination to continue.", url=url, status=200)
        return resp, head
    raise DownloadError(f"too many confirm pages in a row for {url}", url=url)


def _attempt(session: requests.Session, url: str, part: Path, meta_path: Path, hasher: _PartHash,
             expect: _Expect, *, timeout: float, chunk: int, progress: bool, name: str) -> None:
    """Bring ``part`` to the complete file, resuming when possible. Raises _Transient / _Restart / errors."""
    offset = hasher.sync()
    meta = _read_json(meta_path) or {}
    if offset and meta.get("url") not in (None, url):
        log.info("%s: discarding a partial file from another source", part.name)
        raise _Restart
    limit = expect.max_size()
    if limit is not None and offset > limit:
        raise _Restart
    known_total = meta.get("total") if meta.get("total") is not None else limit
    if offset and known_total is not None and offset == known_total:
        return  # complete from an earlier attempt; only verification is left

    headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        etag = meta.get("etag") or ""
        validator = (etag if etag and not etag.startswith("W/") else None) or meta.get("last_modified")  # strong only
        if validator:
            headers["If-Range"] = validator
    resp, head = _get(session, url, headers, timeout)
    with resp:
        status = resp.status_code
        if status == 416:
            _, _, total = _content_range(resp.headers.get("Content-Range"))
            if offset and total is not None and offset == total:
                return
            log.info("%s: server refused the range (have %d bytes, it has %s); restarting", name, offset, total)
            raise _Restart
        if status in (408, 429) or status >= 500:
            raise _Transient(f"HTTP {status} {resp.reason}", status=status, retry_after=_retry_after(resp))
        if status >= 400:
            hint = {401: " (authorisation required)", 403: " (access denied)", 404: " (no such file)",
                    410: " (gone)"}.get(status, "")
            raise DownloadError(f"HTTP {status} {resp.reason}{hint} for {url}", url=url, status=status)
        if status == 206:
            start, _, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                log.info("%s: server resumed at byte %s instead of %d; restarting", name, start, offset)
                raise _Restart
        elif status == 200:
            if offset:
                log.info("%s: server ignored the range request; restarting from byte 0", name)
            total = int(resp.headers["Content-Length"]) if resp.headers.get("Content-Length", "").isdigit() else None
        else:
            raise DownloadError(f"unexpected HTTP {status} {resp.reason} for {url}", url=url, status=status)
        if total is not None and limit is not None and total != limit:
            raise ChecksumError(f"{url}: the server announces {total} bytes but {limit} are expected "
                                f"({expect.problem(total, '') or 'size mismatch'}); the transfer was not started",
                                url=url)
        if status == 200:
            part.write_bytes(b"")  # start clean: the server sends the whole file
            hasher.reset()
            offset = 0
        _write_json_atomic(meta_path, {"url": url, "etag": resp.headers.get("ETag"),
                                       "last_modified": resp.headers.get("Last-Modified"), "total": total})

        bar = _Progress(name, total, offset, progress)
        received = 0
        try:
            with open(part, "ab") as fh:
                for block in _chain(head, _blocks(resp, chunk)):
                    if not block:
                        continue
                    fh.write(block)
                    hasher.update(block)
                    received += len(block)
                    bar.update(len(block))
                    if limit is not None and offset + received > limit:
                        raise ChecksumError(f"{url}: received more than the expected {limit} bytes", url=url)
                fh.flush()
                os.fsync(fh.fileno())
        except _NETWORK_ERRORS as exc:
            raise _Transient(_network_reason(exc, timeout)) from exc
        finally:
            bar.close()
        if total is not None and offset + received != total:
            raise _Transient(f"connection closed after {offset + received} of {total} bytes")


def _blocks(resp: requests.Response, chunk: int) -> Iterator[bytes]:
    # read1 hands over whatever has arrived, so a dropped connection loses nothing already received (read(n) and
    # iter_content discard a short last block). No content decoding: Range offsets count the bytes as sent, and a
    # .tar.gz served with "Content-Encoding: gzip" must not be unpacked on the way in.
    while True:
        block = resp.raw.read1(chunk, decode_content=False)
        if not block:
            return
        yield block


def _chain(head: bytes, blocks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from blocks


# --------------------------------------------------------------------------------------------------------------
# the public entry points

def verified_record(dest: str | os.PathLike) -> dict | None:
    """{url, size, sha256} of a file ``download`` completed, or None (for manifests)."""
    dest = Path(dest)
    stamp = _read_json(_sidecar(dest, ".verified.json"))
    if not stamp or not dest.exists():
        return None
    st = dest.stat()
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return None
    return {k: stamp.get(k) for k in ("url", "size", "sha256")}


def _stamp(dest: Path, url: str | None, sha256: str) -> None:
    st = dest.stat()
    _write_json_atomic(_sidecar(dest, ".verified.json"),
                       {"url": url, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})


def _existing_sha(dest: Path, chunk: int) -> str:
    stamp = _read_json(_sidecar(dest, ".verified.json")) or {}
    st = dest.stat()
    if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns and stamp.get("sha256"):
        return stamp["sha256"]
    log.info("hashing existing %s", dest)
    return sha256_file(dest, chunk)


def _check_args(url: str, expected_sha256: str | None, expected_size: int | None, retries: int, backoff: float,
                timeout: float, chunk: int) -> str | None:
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"url: expected an http(s) URL, got {url!r}")
    if expected_sha256 is not None:
        if not isinstance(expected_sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
            raise ValueError(f"expected_sha256: not a sha256 hex digest: {expected_sha256!r}")
        expected_sha256 = expected_sha256.lower()
    if expected_size is not None and (not isinstance(expected_size, int) or expected_size < 0):
        raise ValueError(f"expected_size: expected a non-negative int, got {expected_size!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected a non-negative int, got {retries!r}")
    if backoff < 0:
        raise ValueError(f"backoff: must be >= 0, got {backoff!r}")
    if not timeout > 0:
        raise ValueError(f"timeout: must be > 0, got {timeout!r}")
    if not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    return expected_sha256


def download(url: str, dest: str | os.PathLike, *, expected_sha256: str | None = None,
             expected_size: int | None = None, tofu_store: str | os.PathLike | None = None, retries: int = 5,
             backoff: float = 0.5, timeout: float = 30.0, progress: bool = True, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` (verified, resumable, atomic, one process at a time) and return ``dest``.

    ``retries`` counts consecutive failed attempts; attempts that together add 8 MiB to the file restore the
    budget, so a long transfer over a flaky link is not abandoned while it makes real progress. ``timeout`` bounds
    both the connection and each wait for data. Raises ``DownloadError`` (``ChecksumError`` for wrong bytes).
    """
    expected_sha256 = _check_args(url, expected_sha256, expected_size, retries, backoff, timeout, chunk)
    dest = Path(dest)
    if dest.is_dir():
        raise ValueError(f"dest: {dest} is a folder; give the file's path")
    store = Path(tofu_store) if tofu_store is not None else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = _sidecar(dest, ".part"), _sidecar(dest, ".part.json")
    quarantine = _sidecar(dest, ".quarantine")

    with _locked(_sidecar(dest, ".lock"), f"downloading {dest}"):
        expect = _Expect(url, expected_sha256, expected_size, store)

        if dest.exists():
            sha = _existing_sha(dest, chunk)
            problem = expect.problem(dest.stat().st_size, sha)
            if problem is None:
                _stamp(dest, url, sha)
                if store is not None and expected_sha256 is None and expect.record is None:
                    _tofu_put(store, url, dest.stat().st_size, sha, dest.name)
                checked = "verified" if expect.sha256 or expect.size is not None else "unchecked (no checksum known)"
                log.info("%s already present and %s (sha256 %s); not downloading", dest, checked, sha)
                return dest
            log.warning("existing %s fails verification (%s); moving it to %s and downloading again",
                        dest, problem, quarantine.name)
            os.replace(dest, quarantine)
            _sidecar(dest, ".verified.json").unlink(missing_ok=True)

        hasher = _PartHash(part, chunk)
        fresh_retry = True  # one clean re-download if bytes spliced from an earlier attempt fail the check
        with requests.Session() as session:
            while True:
                resumed = hasher.sync() > 0
                log.info("downloading %s -> %s%s", url, dest, f" (resuming at {hasher.length} bytes)" if resumed
                         else "")
                try:
                    _transfer(session, url, part, meta_path, hasher, expect, retries=retries, backoff=backoff,
                              timeout=timeout, chunk=chunk, progress=progress, name=dest.name)
                except ChecksumError as exc:
                    _quarantine(part, meta_path, quarantine)
                    exc.quarantine = quarantine if quarantine.exists() else None
                    raise
                hasher.sync()  # re-reads the file only if its size differs from what was hashed
                size, sha = hasher.length, hasher.h.hexdigest()
                problem = expect.problem(size, sha)
                if problem is None:
                    break
                if resumed and fresh_retry:
                    fresh_retry = False
                    log.warning("%s: %s after resuming; discarding the partial file and downloading it afresh",
                                dest.name, problem)
                    part.unlink(missing_ok=True)
                    meta_path.unlink(missing_ok=True)
                    continue
                _quarantine(part, meta_path, quarantine)
                raise ChecksumError(f"checksum mismatch for {url}: {problem}. The bytes were moved to {quarantine}; "
                                    f"{dest} was not created."
                                    + (" If the upstream file legitimately changed, delete its entry from "
                                       f"{store} and download again." if expect.record is not None else ""),
                                    url=url, quarantine=quarantine)

        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, dest)
        _fsync_dir(dest.parent)
        meta_path.unlink(missing_ok=True)
        _stamp(dest, url, sha)
        if store is not None and expected_sha256 is None and expect.record is None:
            _tofu_put(store, url, size, sha, dest.name)
        log.info("downloaded %s (%s, sha256 %s)", dest, _human(size), sha)
    return dest


def _quarantine(part: Path, meta_path: Path, quarantine: Path) -> None:
    if part.exists():
        os.replace(part, quarantine)
    meta_path.unlink(missing_ok=True)


def _transfer(session: requests.Session, url: str, part: Path, meta_path: Path, hasher: _PartHash, expect: _Expect,
              *, retries: int, backoff: float, timeout: float, chunk: int, progress: bool, name: str) -> None:
    failures, high_water, restarts = 0, hasher.sync(), 0
    while True:
        try:
            _attempt(session, url, part, meta_path, hasher, expect, timeout=timeout, chunk=chunk,
                     progress=progress, name=name)
            return
        except _Restart:
            restarts += 1
            if restarts > retries + 2:
                raise DownloadError(f"{url}: the server keeps refusing to resume; giving up", url=url)
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            hasher.reset()
            continue
        except _Transient as exc:
            size = hasher.sync()
            if size >= high_water + _PROGRESS_RESET:  # real progress restores the retry budget
                high_water, failures = size, 1
            else:
                failures += 1
            if failures > retries:
                raise DownloadError(f"giving up on {url} after {failures} failed attempt(s): {exc}", url=url,
                                    status=exc.status) from exc
            delay = min(backoff * 2 ** (failures - 1), _MAX_BACKOFF) * (1 + 0.1 * random.random())
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", name, exc, delay, failures, retries)
            time.sleep(delay)


def verify_file(path: str | os.PathLike, *, expected_sha256: str | None = None, expected_size: int | None = None,
                tofu_store: str | os.PathLike | None = None, key: str | None = None) -> str:
    """Check a file placed by hand (e.g. MIMIC's ``im.pk``) and return its sha256.

    Without ``expected_sha256``, ``tofu_store`` and ``key`` (any stable name, such as ``"mimic/im.pk"``) record the
    first one seen and check later ones. Raises ``ChecksumError`` on a mismatch (the file is left in place).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: {path} is not a file")
    if tofu_store is not None and key is None:
        raise ValueError("key: required with tofu_store")
    store = Path(tofu_store) if tofu_store is not None else None
    ident = key if key is not None else str(path)
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(expected_sha256)):
        raise ValueError(f"expected_sha256: not a sha256 hex digest: {expected_sha256!r}")
    expected_sha256 = expected_sha256.lower() if expected_sha256 else None
    expect = _Expect(ident, expected_sha256, expected_size, store)
    sha = _existing_sha(path, 1 << 20)
    problem = expect.problem(path.stat().st_size, sha)
    if problem is not None:
        raise ChecksumError(f"{path}: {problem}", url=ident)
    _stamp(path, None, sha)
    if store is not None and expected_sha256 is None and expect.record is None:
        _tofu_put(store, ident, path.stat().st_size, sha, path.name)
    return sha


def main(argv: list[str] | None = None) -> int:
    """``python -m data.fetch URL DEST [--sha256 H] [--size N] [--tofu-store F]``: exit 0, or 2 on failure."""
    ap = argparse.ArgumentParser(prog="python -m data.fetch", description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--sha256")
    ap.add_argument("--size", type=int)
    ap.add_argument("--tofu-store", type=Path)
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--backoff", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s", stream=sys.stderr)
    try:
        download(args.url, args.dest, expected_sha256=args.sha256, expected_size=args.size,
                 tofu_store=args.tofu_store, retries=args.retries, backoff=args.backoff, timeout=args.timeout,
                 progress=not args.no_progress)
    except (DownloadError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
