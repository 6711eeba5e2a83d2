"""Verified, resumable, single-writer downloads (HTTP and Google Drive), and checks of files placed by hand.

``download`` is the one way a file from the internet enters the workspace:

* bytes go to ``<dest>.part`` (data/transfer.py moves them: resume only where a splice would be caught, partial
  answers verified, no body of unknown length accepted short, HTML never taken for the file, retries with back-off);
* the finished bytes must match the size and sha256 expected: given explicitly, or the trust-on-first-use record
  kept under ``tofu_key`` in ``tofu_store`` (data/trust_store.py); a mismatch moves them to ``<dest>.quarantine``
  and raises ``ChecksumError``;
* ``check`` (the caller's content check: does the pickle load and fit its schema, does the archive list the
  expected files) runs on those bytes before anything trusts them; a failure quarantines them (``ContentError``);
* only then is a first download recorded in the trust store, ``.part`` renamed to ``dest`` (``os.replace``, so
  ``dest`` is never partial or unchecked) and ``dest`` stamped ``<dest>.verified.json`` (size, mtime, sha256, source
  URL), which lets it be accepted later without hashing or checking it again;
* ``flock`` on ``<dest>.lock`` serialises processes: the second waits, then finds ``dest`` complete.

URLs are shown, logged and written only without credentials (``data/urls.redact_url``).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Callable

import requests

from . import trust_store
from .durable import fsync_path, locked, sha256_file, write_json_atomic
from .transfer import ChecksumError, ContentError, DownloadError, PartHash, human, read_json, transfer
from .urls import redact_url

__all__ = ["DownloadError", "ChecksumError", "ContentError", "download", "drive_url", "verify_file", "sha256_file",
           "verified_record", "stamped_source"]

log = logging.getLogger(__name__)

Check = Callable[[Path], None]  # raises ValueError (or OSError) naming what is wrong with the file


def drive_url(file_id: str) -> str:
    """The direct-download URL of a public Google Drive file id."""
    if not isinstance(file_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{10,}", file_id):
        raise ValueError(f"file_id: {file_id!r} is not a Google Drive file id")
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _sidecar(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


class _Expect:
    """What the finished file must be: an explicit sha256/size, else the trust record under ``key`` (if any)."""

    def __init__(self, key: str, sha256: str | None, size: int | None, store: Path | None):
        self.sha256, self.size, self.source = sha256, size, "expected_sha256"
        self.record = None
        if sha256 is None and store is not None:
            self.record = trust_store.get(store, key)
            if self.record is not None:
                self.sha256 = self.record["sha256"]
                self.source = f"the first-use record of {key} in {store} ({self.record.get('recorded', '?')})"
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


def _content_problem(check: Check | None, path: Path) -> str | None:
    if check is None:
        return None
    try:
        check(path)
    except (ValueError, OSError) as e:
        return str(e)
    return None


# --------------------------------------------------------------------------------------------------------------
# stamps

def _valid_stamp(dest: Path) -> dict | None:
    stamp = read_json(_sidecar(dest, ".verified.json"))
    if not isinstance(stamp, dict) or not dest.exists():
        return None
    st = dest.stat()
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns or not stamp.get("sha256"):
        return None
    return stamp


def verified_record(dest: str | os.PathLike) -> dict | None:
    """{url, size, sha256} of a file ``download`` (or ``verify_file``) checked and stamped, or None."""
    stamp = _valid_stamp(Path(dest))
    return None if stamp is None else {k: stamp.get(k) for k in ("url", "size", "sha256")}


def stamped_source(dest: str | os.PathLike) -> str | None:
    """The source URL in ``dest``'s stamp, even a stale one (the file changed since): where that path's bytes came
    from before, and so the record a changed copy is held to."""
    stamp = read_json(_sidecar(Path(dest), ".verified.json"))
    return stamp.get("url") if isinstance(stamp, dict) and isinstance(stamp.get("url"), str) else None


def _stamp(dest: Path, url: str | None, sha256: str) -> None:
    st = dest.stat()
    write_json_atomic(_sidecar(dest, ".verified.json"),
                      {"url": url, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256})


def _existing_sha(dest: Path, chunk: int) -> str:
    stamp = _valid_stamp(dest)
    if stamp is not None:
        return stamp["sha256"]
    log.info("hashing existing %s", dest)
    return sha256_file(dest, chunk)


def _check_args(url: str, expected_sha256: str | None, expected_size: int | None, retries: int, backoff: float,
                timeout: float, chunk: int) -> str | None:
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"url: expected an http(s) URL, got {redact_url(str(url))!r}")
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


# --------------------------------------------------------------------------------------------------------------
# the public entry points

def download(url: str, dest: str | os.PathLike, *, expected_sha256: str | None = None,
             expected_size: int | None = None, tofu_store: str | os.PathLike | None = None,
             tofu_key: str | None = None, check: Check | None = None, retries: int = 5, backoff: float = 0.5,
             timeout: float = 30.0, progress: bool = True, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` (verified, checked, resumable, atomic, one process at a time); return ``dest``.

    Without ``expected_sha256``, the trust record under ``tofu_key`` (default: ``url`` without credentials) in
    ``tofu_store`` is the reference, and a first download is recorded there once it passed ``check``.
    ``retries`` counts consecutive failed attempts; attempts that together add 8 MiB to the file restore the
    budget. ``timeout`` bounds the connection and each wait for data. Raises ``DownloadError`` (``ChecksumError``
    for wrong bytes, ``ContentError`` for bytes that fail ``check``) and ``trust_store.TrustStoreError``.
    """
    expected_sha256 = _check_args(url, expected_sha256, expected_size, retries, backoff, timeout, chunk)
    shown = redact_url(url)
    key = tofu_key or shown
    dest = Path(dest)
    if dest.is_dir():
        raise ValueError(f"dest: {dest} is a folder; give the file's path")
    store = Path(tofu_store) if tofu_store is not None else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = _sidecar(dest, ".part"), _sidecar(dest, ".part.json")
    quarantine = _sidecar(dest, ".quarantine")
    record_first_use = store is not None and expected_sha256 is None

    with locked(_sidecar(dest, ".lock"), f"downloading {dest}"):
        expect = _Expect(key, expected_sha256, expected_size, store)
        if dest.exists():
            stamp = _valid_stamp(dest)
            sha = _existing_sha(dest, chunk)
            problem = expect.problem(dest.stat().st_size, sha) or (
                None if stamp is not None else _content_problem(check, dest))
            if problem is None:
                if record_first_use and expect.record is None:
                    trust_store.put(store, key, dest.stat().st_size, sha, dest.name)
                _stamp(dest, (stamp or {}).get("url") or shown, sha)
                checked = "verified" if expect.sha256 or expect.size is not None else "unchecked (no checksum known)"
                log.info("%s already present and %s (sha256 %s); not downloading", dest, checked, sha)
                return dest
            log.warning("existing %s fails verification (%s); moving it to %s and downloading again",
                        dest, problem, quarantine.name)
            os.replace(dest, quarantine)
            _sidecar(dest, ".verified.json").unlink(missing_ok=True)

        size, sha = _fetch(url, shown, dest, part, meta_path, quarantine, expect, store, retries=retries,
                           backoff=backoff, timeout=timeout, chunk=chunk, progress=progress)
        problem = _content_problem(check, part)
        if problem is not None:
            _quarantine(part, meta_path, quarantine)
            raise ContentError(f"{shown} did not serve the expected file: {problem}. The bytes were moved to "
                               f"{quarantine}; {dest} was not created and nothing was recorded.", url=shown,
                               quarantine=quarantine)
        if record_first_use and expect.record is None:
            trust_store.put(store, key, size, sha, dest.name)
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, dest)
        fsync_path(dest.parent)
        meta_path.unlink(missing_ok=True)
        _stamp(dest, shown, sha)
        log.info("downloaded %s (%s, sha256 %s)", dest, human(size), sha)
    return dest


def _fetch(url: str, shown: str, dest: Path, part: Path, meta_path: Path, quarantine: Path, expect: _Expect,
           store: Path | None, **kw) -> tuple[int, str]:
    """Bring ``part`` to bytes matching ``expect``; returns their size and sha256."""
    hasher = PartHash(part, kw["chunk"])
    fresh_retry = True  # one clean re-download if bytes spliced from an earlier attempt fail the check
    with requests.Session() as session:
        while True:
            resumed = hasher.sync() > 0
            log.info("downloading %s -> %s%s", shown, dest, f" (resuming at {hasher.length} bytes)" if resumed
                     else "")
            try:
                transfer(session, url, shown, part, meta_path, hasher, expect, name=dest.name, **kw)
            except ChecksumError as exc:
                _quarantine(part, meta_path, quarantine)
                exc.quarantine = quarantine if quarantine.exists() else None
                raise
            hasher.sync()  # re-reads the file only if its size differs from what was hashed
            size, sha = hasher.length, hasher.h.hexdigest()
            problem = expect.problem(size, sha)
            if problem is None:
                return size, sha
            if resumed and fresh_retry:
                fresh_retry = False
                log.warning("%s: %s after resuming; discarding the partial file and downloading it afresh",
                            dest.name, problem)
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                continue
            _quarantine(part, meta_path, quarantine)
            raise ChecksumError(f"checksum mismatch for {shown}: {problem}. The bytes were moved to {quarantine}; "
                                f"{dest} was not created."
                                + (" If the upstream file legitimately changed, delete its entry from "
                                   f"{store} and download again." if expect.record is not None else ""),
                                url=shown, quarantine=quarantine)


def _quarantine(part: Path, meta_path: Path, quarantine: Path) -> None:
    if part.exists():
        os.replace(part, quarantine)
    meta_path.unlink(missing_ok=True)


def verify_file(path: str | os.PathLike, *, expected_sha256: str | None = None, expected_size: int | None = None,
                tofu_store: str | os.PathLike | None = None, key: str | None = None, check: Check | None = None,
                source: str | None = None) -> str:
    """Check a file already in place (placed by hand, e.g. MIMIC's ``im.pk``, or downloaded earlier) and return its
    sha256.

    Without ``expected_sha256``, ``tofu_store`` and ``key`` (any stable name, such as ``"mimic/im.pk"``) record the
    first one seen and check later ones. ``check`` runs unless the file carries a valid stamp (it passed before);
    the stamp keeps the source URL it had, else ``source``. Raises ``ChecksumError`` on a mismatch and
    ``ContentError`` when ``check`` fails (the file is left in place).
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
    stamp = _valid_stamp(path)
    sha = _existing_sha(path, 1 << 20)
    problem = expect.problem(path.stat().st_size, sha)
    if problem is not None:
        raise ChecksumError(f"{path}: {problem}", url=ident)
    if stamp is None and (problem := _content_problem(check, path)) is not None:
        raise ContentError(f"{path} is not the expected file: {problem}", url=ident)
    if store is not None and expected_sha256 is None and expect.record is None:
        trust_store.put(store, ident, path.stat().st_size, sha, path.name)
    _stamp(path, (stamp or {}).get("url") or source, sha)
    return sha


def main(argv: list[str] | None = None) -> int:
    """``python -m infmask.data.fetch URL DEST [--sha256 H] [--size N] [--tofu-store F]``: exit 0, or 2 on failure."""
    ap = argparse.ArgumentParser(prog="python -m infmask.data.fetch", description=__doc__.splitlines()[0])
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
    except (DownloadError, trust_store.TrustStoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
