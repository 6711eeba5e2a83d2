"""Moving one file's bytes from an HTTP(S) server into ``<dest>.part``: attempts, resumption, retries, and the checks
that keep a download complete and consistent. ``data/fetch.py`` decides what the finished bytes must be.

* A broken transfer resumes (HTTP ``Range``) only where a splice of two versions would be caught: the server gave a
  strong validator (an ETag that is not weak, or Last-Modified), sent back in ``If-Range``, or the file's sha256 is
  known in advance. Otherwise it starts again from byte 0.
* A partial answer (206) is trusted only if its Content-Range starts where we asked, runs to the end of the total
  announced before, and its validators are unchanged; when no sha256 is known, the last 64 KiB already held are
  asked again and compared. Anything else: the partial file is dropped and the download does not resume again.
* A body whose length the server did not give (no Content-Length, not chunked) counts as complete only when the
  server then answers a request for the bytes after it with "416: the file has exactly this many bytes".
* An HTML page is never taken for the file, from any host; Google Drive's confirm page is followed and its other
  pages (quota, not shared) named in the error.
* Connection errors, timeouts, 408/429 and 5xx are retried with exponential back-off; other 4xx fail at once.
URLs appear in messages and sidecar files only as ``redact_url`` gives them (no credentials).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import requests
import urllib3

from .drive_page import confirm_target, is_google
from .durable import write_json_atomic
from .sniff import describe_head, looks_like_html
from .urls import redact_text

log = logging.getLogger("infmask.data.fetch")

# Seconds between plain progress log lines when stderr is not a terminal (tests lower it).
_LOG_EVERY = 10.0
_MAX_BACKOFF = 60.0
# An attempt that adds this many bytes before failing restores the retry budget (a trickle does not).
_PROGRESS_RESET = 8 << 20
_HTML_SNIFF = 1 << 20  # an HTML confirm/error page is far smaller than this
_OVERLAP = 64 << 10    # bytes asked again on resume, to check a 206 against what we hold
_SNIFF = 512           # first bytes of a body held back to tell an HTML page from the file
_USER_AGENT = "infmask-fetch/1 (+python-requests)"


class DownloadError(RuntimeError):
    """A download failed; ``url`` (credentials stripped) and, for HTTP errors, ``status`` say which and why."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class ChecksumError(DownloadError):
    """The bytes do not match the expected (or first-seen) size/sha256; they were quarantined, not kept."""

    def __init__(self, message: str, *, url: str, quarantine: Path | None = None):
        super().__init__(message, url=url)
        self.quarantine = quarantine


class ContentError(ChecksumError):
    """The bytes are not the kind of file expected (they failed the content check); quarantined, never recorded."""


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 408/429/5xx)."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _Restart(Exception):
    """The partial file cannot be continued; start again from byte 0 (not counted as a failure)."""


def read_json(path: Path) -> Any:
    """One of our sidecar files, or None when missing or unreadable (it is then rebuilt)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"  # pragma: no cover


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
        of = f" / {human(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        log.info("%s: %s%s at %s/s", self.name, human(self.done), of, human(rate))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------------------
# helpers of one attempt

_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _network_reason(exc: BaseException, timeout: float) -> str:
    text = redact_text(str(exc))
    if isinstance(exc, (requests.Timeout, TimeoutError)) or "timed out" in text.lower():
        return f"timed out (no data for {timeout:g} s): {text}"
    return f"connection error: {text}"


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value and value.strip().isdigit():
        return min(float(value), _MAX_BACKOFF)
    return None


class PartHash:
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


def _validator(meta: dict) -> str | None:
    """The strong validator the server gave for the partial file: an ETag that is not weak, else Last-Modified."""
    etag = meta.get("etag") or ""
    return (etag if etag and not etag.startswith("W/") else None) or meta.get("last_modified")


def _partial_problem(resp: requests.Response, start: int, meta: dict) -> str | None:
    """Why a 206 answer to ``Range: bytes=start-`` cannot be trusted, or None."""
    cstart, cend, ctotal = _content_range(resp.headers.get("Content-Range"))
    if cstart != start:
        return f"it starts at byte {cstart}, not at byte {start} as asked"
    if cend is None or ctotal is None or cend != ctotal - 1:
        return f"its Content-Range {resp.headers.get('Content-Range')!r} does not run to the end of the file"
    if meta.get("total") is not None and ctotal != meta["total"]:
        return f"the file now has {ctotal} bytes, not the {meta['total']} announced before"
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) != cend - cstart + 1:
        return f"its Content-Length {length} does not match its Content-Range"
    for header, key in (("ETag", "etag"), ("Last-Modified", "last_modified")):
        before, now = meta.get(key), resp.headers.get(header)
        if before and now and before != now:
            return f"its {header} changed from {before} to {now}"
    return None


def _get(session: requests.Session, url: str, shown: str, headers: dict,
         timeout: float) -> tuple[requests.Response, bytes]:
    """GET ``url``, following a Drive confirm page; returns the response and any body bytes already read. An HTML
    page that is not a confirm page is an error: it is never the data file."""
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
        target, title = confirm_target(text, resp.url, resp.cookies.get_dict())
        resp.close()
        if target is not None:
            log.info("%s answered with a confirm page (%s); submitting its form", shown, title or "no title")
            url = target
            continue
        if is_google(resp.url):
            raise DownloadError(
                f"Google Drive returned an HTML page instead of the file for {shown}: {title or 'untitled page'}. "
                "The file may be over its download quota (try again later) or no longer shared publicly; "
                "download it in a browser and place it at the destination to continue.", url=shown, status=200)
        raise DownloadError(f"{shown} answered with an HTML page ({title or 'untitled'}) instead of the file; nothing "
                            "was stored. Check the URL (or --base-url).", url=shown, status=200)
    raise DownloadError(f"too many confirm pages in a row for {shown}", url=shown)


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


def _take(blocks: Iterator[bytes], n: int) -> tuple[bytes, bytes]:
    """The first ``n`` bytes of ``blocks`` (fewer if it ends) and what the last block held beyond them."""
    got = b""
    for block in blocks:
        got += block
        if len(got) >= n:
            return got[:n], got[n:]
    return got, b""


def _confirm_length(session: requests.Session, url: str, shown: str, size: int, validator: str | None,
                    timeout: float) -> None:
    """A body of unknown length ended after ``size`` bytes: complete only if the server says the file has exactly
    that many (416 to a request for the bytes after it)."""
    headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT, "Range": f"bytes={size}-"}
    if validator:
        headers["If-Range"] = validator
    resp, _ = _get(session, url, shown, headers, timeout)
    with resp:
        status = resp.status_code
        if status == 416 and _content_range(resp.headers.get("Content-Range"))[2] == size:
            return
        if status == 206:
            raise _Transient(f"connection closed after {size} bytes of a body of unknown length (the server has more)")
        if status in (408, 429) or status >= 500:
            raise _Transient(f"HTTP {status} {resp.reason} while confirming the length", status=status,
                             retry_after=_retry_after(resp))
    raise DownloadError(f"{shown} sent a body of unknown length (no Content-Length) and does not confirm that its "
                        f"{size} bytes are the whole file (asked for the bytes after them: HTTP {status}); a transfer "
                        "cut short cannot be told from a complete one, so nothing was stored", url=shown)


# --------------------------------------------------------------------------------------------------------------
# one attempt

def _start_over(part: Path, hasher: PartHash) -> None:
    part.write_bytes(b"")
    hasher.reset()


def _attempt(session: requests.Session, url: str, shown: str, part: Path, meta_path: Path, hasher: PartHash,
             expect: Any, *, timeout: float, chunk: int, progress: bool, name: str) -> None:
    """Bring ``part`` to the complete file, resuming when that is safe. Raises _Transient / _Restart / errors."""
    offset = hasher.sync()
    meta = read_json(meta_path) or {}
    if offset and meta.get("url") not in (None, shown):
        log.info("%s: discarding a partial file from another source", part.name)
        raise _Restart
    limit = expect.max_size()
    if limit is not None and offset > limit:
        raise _Restart
    known_total = meta.get("total") if meta.get("total") is not None else limit
    if offset and known_total is not None and offset == known_total:
        return  # complete from an earlier attempt; only verification is left
    validator = _validator(meta)
    if offset and (meta.get("no_resume") or not (validator or expect.sha256)):
        log.info("%s: cannot resume safely (%s); starting again from byte 0", name,
                 "the server's partial answers were wrong" if meta.get("no_resume")
                 else "no ETag or Last-Modified from the server and no known sha256")
        _start_over(part, hasher)
        offset = 0
    overlap = min(offset, _OVERLAP) if offset and expect.sha256 is None else 0
    start = offset - overlap

    headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator
    resp, head = _get(session, url, shown, headers, timeout)
    with resp:
        status = resp.status_code
        if status == 416:
            _, _, total = _content_range(resp.headers.get("Content-Range"))
            if offset and total is not None and offset == total and not overlap:
                return
            log.info("%s: server refused the range (have %d bytes, it has %s); restarting", name, offset, total)
            raise _Restart
        if status in (408, 429) or status >= 500:
            raise _Transient(f"HTTP {status} {resp.reason}", status=status, retry_after=_retry_after(resp))
        if status >= 400:
            hint = {401: " (authorisation required)", 403: " (access denied)", 404: " (no such file)",
                    410: " (gone)"}.get(status, "")
            raise DownloadError(f"HTTP {status} {resp.reason}{hint} for {shown}", url=shown, status=status)
        if status == 206:
            if not offset:
                raise DownloadError(f"{shown} answered 206 (partial content) to a request for the whole file",
                                    url=shown, status=status)
            problem = _partial_problem(resp, start, meta)
            if problem is not None:
                _distrust(meta_path, meta, name, problem)
            total = _content_range(resp.headers.get("Content-Range"))[2]
            etag, modified = meta.get("etag"), meta.get("last_modified")
        elif status == 200:
            if offset:
                log.info("%s: server sent the whole file instead of the range; restarting from byte 0", name)
            total = int(resp.headers["Content-Length"]) if resp.headers.get("Content-Length", "").isdigit() else None
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        else:
            raise DownloadError(f"unexpected HTTP {status} {resp.reason} for {shown}", url=shown, status=status)
        if total is not None and limit is not None and total != limit:
            raise ChecksumError(f"{shown}: the server announces {total} bytes but {limit} are expected "
                                f"({expect.problem(total, '') or 'size mismatch'}); the transfer was not started",
                                url=shown)
        if status == 200:
            _start_over(part, hasher)  # the server sends the whole file
            offset, overlap = 0, 0
        meta = {"url": shown, "etag": etag, "last_modified": modified, "total": total,
                "no_resume": bool(meta.get("no_resume"))}
        write_json_atomic(meta_path, meta)
        chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
        _receive(resp, head, part, hasher, meta_path, meta, offset=offset, overlap=overlap, total=total,
                 limit=limit, chunk=chunk, progress=progress, name=name, shown=shown, timeout=timeout)
    if total is None and not chunked:
        _confirm_length(session, url, shown, hasher.length, _validator(meta), timeout)


def _distrust(meta_path: Path, meta: dict, name: str, problem: str) -> None:
    log.warning("%s: the server's partial answer cannot be trusted (%s); downloading the whole file again", name,
                problem)
    write_json_atomic(meta_path, {**meta, "no_resume": True})
    raise _Restart


def _receive(resp: requests.Response, head: bytes, part: Path, hasher: PartHash, meta_path: Path, meta: dict, *,
             offset: int, overlap: int, total: int | None, limit: int | None, chunk: int, progress: bool,
             name: str, shown: str, timeout: float) -> None:
    blocks = _chain(head, _blocks(resp, chunk))
    received = 0
    try:
        if overlap:  # the bytes we hold before `offset`, sent again: they must be the same
            again, rest = _take(blocks, overlap)
            with open(part, "rb") as fh:
                fh.seek(offset - overlap)
                held = fh.read(overlap)
            if again != held:
                _distrust(meta_path, meta, name, f"the {overlap} bytes before byte {offset} came back different")
            blocks = _chain(rest, blocks)
        bar = _Progress(name, total, offset, progress)
        # At byte 0 the first bytes are held back until they show whether this is an HTML page (refused whatever its
        # Content-Type: an error page must never become the data file).
        pending, sniffing = b"", offset == 0
        try:
            with open(part, "ab") as fh:
                for block in blocks:
                    if sniffing:
                        pending += block
                        if len(pending) < _SNIFF:
                            continue
                        block, pending, sniffing = pending, b"", _refuse_html(pending, shown, resp.status_code)
                    if not block:
                        continue
                    fh.write(block)
                    hasher.update(block)
                    received += len(block)
                    bar.update(len(block))
                    if limit is not None and offset + received > limit:
                        raise ChecksumError(f"{shown}: received more than the expected {limit} bytes", url=shown)
                    if total is not None and offset + received > total:
                        raise _Transient(f"the server sent more than the {total} bytes it announced")
                if pending:
                    _refuse_html(pending, shown, resp.status_code)
                    fh.write(pending)
                    hasher.update(pending)
                    received += len(pending)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            bar.close()
    except _NETWORK_ERRORS as exc:
        raise _Transient(_network_reason(exc, timeout)) from exc
    if total is not None and offset + received != total:
        raise _Transient(f"connection closed after {offset + received} of {total} bytes")


def _refuse_html(first: bytes, shown: str, status: int) -> bool:
    if looks_like_html(first):
        raise DownloadError(f"{shown} answered with {describe_head(first)} instead of the file; nothing was stored. "
                            "Check the URL (or --base-url).", url=shown, status=status)
    return False


# --------------------------------------------------------------------------------------------------------------
# attempts until done

def transfer(session: requests.Session, url: str, shown: str, part: Path, meta_path: Path, hasher: PartHash,
             expect: Any, *, retries: int, backoff: float, timeout: float, chunk: int, progress: bool,
             name: str) -> None:
    """Attempts until ``part`` holds the whole file; raises DownloadError (ChecksumError) when giving up."""
    failures, high_water, restarts = 0, hasher.sync(), 0
    while True:
        try:
            _attempt(session, url, shown, part, meta_path, hasher, expect, timeout=timeout, chunk=chunk,
                     progress=progress, name=name)
            return
        except _Restart:
            restarts += 1
            if restarts > retries + 2:
                raise DownloadError(f"{shown}: the server keeps refusing to resume; giving up", url=shown)
            part.unlink(missing_ok=True)
            meta = read_json(meta_path) or {}
            meta_path.unlink(missing_ok=True)
            if meta.get("no_resume"):  # remembered for the fresh start
                write_json_atomic(meta_path, {"url": shown, "no_resume": True})
            hasher.reset()
            continue
        except _Transient as exc:
            size = hasher.sync()
            if size >= high_water + _PROGRESS_RESET:  # real progress restores the retry budget
                high_water, failures = size, 1
            else:
                failures += 1
            if failures > retries:
                raise DownloadError(f"giving up on {shown} after {failures} failed attempt(s): {exc}", url=shown,
                                    status=exc.status) from exc
            delay = min(backoff * 2 ** (failures - 1), _MAX_BACKOFF) * (1 + 0.1 * random.random())
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", name, exc, delay, failures, retries)
            time.sleep(delay)
