"""The trust-on-first-use record of files whose published checksums are unknown: ``<root>/raw/checksums.json``.

    {"version": 1, "files": {KEY: {"url": KEY, "size": N, "sha256": HEX, "name": FILE, "recorded": UTC}}}

A key says where the bytes came from: a registry URL, a mirror's URL (credentials stripped), or a name for a file
placed by hand (``mimic/im.pk``). A record is added once, after the file passed its content check, and never
changed; later copies from the same source must match it. The store is the memory of what was trusted, so an
unreadable store is an error (``TrustStoreError``, naming the file and the way out) and is never rewritten: writing
it anew would silently drop every other record.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

from .durable import locked, write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["TrustStoreError", "read", "get", "put"]


class TrustStoreError(RuntimeError):
    """The trust store exists but cannot be read as one; nothing was downloaded, accepted or recorded."""


def _fail(store: Path, why: str) -> TrustStoreError:
    return TrustStoreError(
        f"the trust store {store} is unreadable ({why}); it holds the checksums of earlier downloads, so nothing was "
        f"downloaded, accepted or recorded. Restore it from a backup, or move it aside (mv {store} {store}.bad) to "
        "trust every file again on its next use")


def read(store: Path) -> dict:
    """The store's ``files`` mapping ({} when the store does not exist); ``TrustStoreError`` when unreadable."""
    store = Path(store)
    try:
        text = store.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(store, f"{type(e).__name__}: {e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise _fail(store, f"not JSON: {e}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise _fail(store, "no 'files' mapping")
    for key, rec in files.items():
        if not (isinstance(rec, dict) and isinstance(rec.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", rec["sha256"]) and type(rec.get("size")) is int
                and rec["size"] >= 0):
            raise _fail(store, f"the record {key!r} has no valid size and sha256")
    return files


def get(store: Path | None, key: str) -> dict | None:
    """The record under ``key``, or None."""
    return None if store is None else read(store).get(key)


def put(store: Path, key: str, size: int, sha256: str, name: str) -> None:
    """Record {size, sha256} under ``key`` unless a record is there already (the first one stays the reference)."""
    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    with locked(store.with_name(store.name + ".lock"), f"updating {store.name}"):
        files = read(store)
        if key in files:
            return
        files[key] = {"url": key, "size": size, "sha256": sha256, "name": name,
                      "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        write_json_atomic(store, {"version": 1, "files": files})
    log.info("trust on first use: recorded size %d and sha256 %s of %s in %s", size, sha256, key, store)
