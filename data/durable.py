"""Small durable-IO helpers of the data layer: an flock held for a block, and JSON written atomically."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` to a temporary sibling, fsync, check it reads back, then rename it over ``path``."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    json.loads(tmp.read_text())  # verify before it replaces the old one
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def locked(lock_path: Path, what: str) -> Iterator[None]:
    """An exclusive flock on ``lock_path`` for the block; says once that it waits when another process holds it."""
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
