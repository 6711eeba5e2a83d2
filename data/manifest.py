"""The manifest-backed build directory, used by every dataset for its generated, preprocessed and cached sets.

A build is written into a hidden ``.<name>.partial-<pid>`` sibling; every file is hashed into ``manifest.json``
(written last), and the directory is renamed into place. So a directory with a readable manifest is complete, a
killed build leaves only a hidden folder that the next build removes, and a rebuild replaces the old set only once
the new one is whole. ``verify`` re-hashes (or, ``deep=False``, checks sizes); ``ready`` says whether a build can be
used, removing a damaged one, and remembers what it verified in this process so that it is not hashed twice.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from .durable import atomic_write_bytes, fsync_path, sha256_file

log = logging.getLogger("infmask.data")

__all__ = ["sha256_file", "start_build", "building", "finalise", "read_manifest", "verify", "ready",
           "verified_earlier", "forget_verified"]

MANIFEST = "manifest.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_build(out_dir: Path) -> Path:
    """A fresh, empty build directory beside ``out_dir``; those of processes that no longer run (a killed build)
    are removed first."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{out_dir.name}.partial-*", f".{out_dir.name}.old-*"):
        for p in out_dir.parent.glob(pattern):
            try:
                pid = int(p.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    partial.mkdir()
    return partial


@contextlib.contextmanager
def building(out_dir: Path) -> Iterator[Path]:
    """``start_build`` for the block; the build directory is removed if the block fails (call ``finalise`` last
    inside it)."""
    partial = start_build(out_dir)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def finalise(partial: Path, out_dir: Path, params: dict, **extra) -> dict:
    """Hash and fsync every file of ``partial`` into its manifest (``params``, the files, ``extra`` keys), written
    last, then rename the directory into place; returns the manifest."""
    partial, out_dir = Path(partial), Path(out_dir)
    files = {}
    for p in sorted(partial.iterdir()):
        if p.is_file():
            fsync_path(p)
            files[p.name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    manifest = {**extra, "params": params, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_bytes(partial / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(),
                       check=lambda tmp: json.loads(tmp.read_text()))
    fsync_path(partial)
    if out_dir.exists():
        # A rename cannot replace a non-empty directory: move the old one aside first, delete it after.
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(partial, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out_dir)
    fsync_path(out_dir.parent)
    return manifest


def read_manifest(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / MANIFEST).read_text())


def verify(out_dir: Path, expect: dict | None = None, deep: bool = True) -> list[str]:
    """Problems with a build directory; an empty list means complete and intact.

    ``expect``: parameters the manifest must carry (e.g. ``{"seed": 42, "size": 224}``); a mismatch is a problem.
    ``deep=False`` checks presence and sizes only (skips re-hashing).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return [f"{out_dir}: missing directory"]
    mpath = out_dir / MANIFEST
    if not mpath.is_file():
        return [f"{mpath}: missing manifest (incomplete directory)"]
    try:
        manifest = json.loads(mpath.read_text())
        files, params = manifest["files"], manifest["params"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{mpath}: unreadable manifest ({e})"]
    problems = [] if files else [f"{mpath}: lists no files"]
    for name, meta in sorted(files.items()):
        p = out_dir / name
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != meta.get("size"):
            problems.append(f"{p}: size {p.stat().st_size} != {meta.get('size')} (truncated or corrupt)")
        elif deep and sha256_file(p) != meta.get("sha256"):
            problems.append(f"{p}: sha256 mismatch (corrupt)")
    for k, v in (expect or {}).items():
        if params.get(k) != v:
            problems.append(f"{mpath}: parameter {k}={params.get(k)!r}, expected {v!r}")
    return problems


# Builds verified by this process, with their files' identity at the time: `infmask run` checks the data before
# each of its runs, and an unchanged build need not be hashed again.
_VERIFIED: set[tuple] = set()


def _stamp(path: Path) -> tuple:
    """Identity of a build as files on disk: any rewrite or truncation changes a size or an mtime."""
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


def verified_earlier(path: Path) -> bool:
    """Whether ``ready`` verified this build in this process and it is unchanged on disk since."""
    path = Path(path)
    return path.is_dir() and any(k[0] == str(path) and k[1] == _stamp(path) for k in _VERIFIED)


def forget_verified() -> None:
    """Hash every build again on its next ``ready`` (tests that damage a build in place)."""
    _VERIFIED.clear()


def ready(path: Path, what: str, *, expect: dict | None = None, deep: bool = True,
          say: Callable[[str], None] | None = None) -> bool:
    """True when ``path`` holds a complete, verified build (carrying ``expect``); a damaged or stale one is removed
    (rebuilt, never used), with a warning in the log and, when given, through ``say``."""
    path = Path(path)
    if not path.exists():
        return False
    key = (str(path), _stamp(path), json.dumps(expect, sort_keys=True, default=str))
    if key in _VERIFIED:
        return True
    problems = verify(path, expect=expect, deep=deep)
    if not problems:
        _VERIFIED.add(key)
        return True
    log.warning("%s at %s is damaged or stale (%s); rebuilding it", what, path, "; ".join(problems[:3]))
    if say is not None:
        say(f"{what} at {path} is damaged or stale ({problems[0]}); rebuilding it")
    shutil.rmtree(path)
    return False
