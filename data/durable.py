"""Durable file IO for the whole project (the lowest layer, so data, models and the pipeline can all use it).

Every file is written to a temporary sibling, fsynced and renamed over its target, so a kill at any moment leaves
either the old file or the new one, never a truncated one. The temporary file gets the mode a plain ``open()``
would give it (``0o666 & ~umask``): ``mkstemp`` creates ``0600`` files, which the rename would carry over, and
collaborators on a shared workspace could not read reports, figures, configs or manifests.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

__all__ = ["current_umask", "fsync_path", "sha256_file", "atomic_write_bytes", "atomic_write_text",
           "atomic_path", "write_json_atomic", "locked"]


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _temp_sibling(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the mode the umask gives a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes, *, check: Callable[[Path], Any] | None = None) -> None:
    """Replace ``path`` by ``data`` atomically and durably; ``check(tmp)`` may inspect the written temporary file
    (raising leaves ``path`` untouched)."""
    path = Path(path)
    fd, tmp = _temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write (by any library); it is fsynced and replaces ``path`` only if the
    block succeeds."""
    path = Path(path)
    fd, tmp = _temp_sibling(path)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(Path(tmp))
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON, checked to read back before it replaces ``path``."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(Path(path), text.encode(), check=lambda tmp: json.loads(tmp.read_text()))


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
