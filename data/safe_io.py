"""Extracting untrusted downloaded archives, all or nothing, and (re-exported from ``safe_pickle``) loading untrusted
pickles without running their code.

``safe_extract`` unpacks .zip / .tar / .tar.gz (.bz2, .xz) archives after checking every member first: no member may
leave the target folder and none may be a link, a device or a sparse file, and the sizes the members declare must
fit in the free disk space, so a hostile archive is refused before a single byte is written. A damaged, truncated
or non-archive file raises ``ArchiveError`` naming it; a partial extraction is removed, never left looking complete.
``list_archive`` runs the same member checks without extracting (the content check of a download).
"""
from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from .durable import fsync_path
from .safe_pickle import UnsafePickleError, safe_loads, safe_unpickle

__all__ = ["UnsafePickleError", "ArchiveError", "UnsafeArchiveError", "safe_unpickle", "safe_loads", "safe_extract",
           "list_archive"]


class ArchiveError(ValueError):
    """An archive cannot be extracted: damaged, truncated, not an archive, or larger than the free disk space."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would escape the target folder, or is a link, a special file or a sparse file."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


# --------------------------------------------------------------------------------------------------------------
# archives

_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_name(name: str, archive: Path) -> None:
    def refuse(why: str) -> None:
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} {why}; nothing was extracted", name)

    if not name or "\x00" in name:
        refuse("has an empty or NUL-containing name")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        refuse("is an absolute path")
    # Backslashes count as separators too: some zip writers use them, and "..\\" must not slip through.
    if any(part == ".." for part in re.split(r"[\\/]+", name)):
        refuse("contains '..' and would escape the target folder")


def _tar_members(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        _check_name(m.name, archive)
        if m.issym() or m.islnk():
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {m.name!r} is a "
                                     f"{'symbolic' if m.issym() else 'hard'} link (to {m.linkname!r}); "
                                     "nothing was extracted", m.name)
        if not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {m.name!r} is a device, fifo or other "
                                     "special file; nothing was extracted", m.name)
        if m.issparse():  # its holes would be written out in full (a few bytes may declare terabytes)
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {m.name!r} is a sparse file declaring "
                                     f"{m.size} bytes; nothing was extracted", m.name)
    return members


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        _check_name(info.filename, archive)
        mode = info.external_attr >> 16  # unix mode, 0 when the writer did not record one
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {info.filename!r} is a symbolic link; "
                                     "nothing was extracted", info.filename)
        if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(f"refusing to extract {archive}: member {info.filename!r} is a device, fifo or "
                                     "other special file; nothing was extracted", info.filename)
    return members


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        pass
    raise ArchiveError(f"{archive} is neither a zip nor a tar archive")


def _check_space(total: int, where: Path, archive: Path) -> None:
    free = shutil.disk_usage(where).free
    if total > free:
        raise ArchiveError(f"not enough disk space to extract {archive}: its members declare {total} bytes, "
                           f"{free} are free in {where}")


# What a damaged, truncated or mislabelled archive raises from the standard library while it is read.
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
            NotImplementedError, RuntimeError, UnicodeDecodeError)


def _damaged(archive: Path, exc: BaseException) -> ArchiveError:
    why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return ArchiveError(f"cannot extract {archive}: it is damaged, truncated or not a supported archive ({why}); "
                        "delete it and download it again")


def _open(archive: Path, kind: str):
    return zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive, "r:*")


def _members(ar, kind: str, archive: Path) -> tuple[list, int]:
    """The checked members and the bytes they declare."""
    if kind == "zip":
        zmembers = _zip_members(ar, archive)
        return zmembers, sum(i.file_size for i in zmembers)
    tmembers = _tar_members(ar, archive)
    return tmembers, sum(m.size for m in tmembers if m.isreg())


def list_archive(archive: str | os.PathLike) -> list[str]:
    """The names of the regular files in ``archive``, after the member checks of ``safe_extract``; nothing is written.

    Raises ``UnsafeArchiveError`` for a hostile member and ``ArchiveError`` for a damaged or non-archive file. A tar
    archive is read to its end (its member list is spread through it); a zip's is read from its directory.
    """
    archive = Path(archive)
    kind = _archive_kind(archive)
    try:
        with _open(archive, kind) as ar:
            members, _ = _members(ar, kind, archive)
    except ArchiveError:
        raise
    except (*_DAMAGED, OSError) as e:
        raise _damaged(archive, e) from None
    if kind == "zip":
        return [i.filename for i in members if not i.is_dir()]
    return [m.name for m in members if m.isreg()]


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Extract a .zip / .tar / .tar.gz (.bz2, .xz) archive into the folder ``dest``, all or nothing.

    Every member is validated before anything is written: a member with ``..`` or an absolute path, a symbolic or
    hard link, a device/fifo or a sparse file raises ``UnsafeArchiveError``; members declaring more bytes than the free
    disk space, or a damaged archive, raise ``ArchiveError``. The archive is unpacked into a temporary folder beside
    ``dest`` and renamed to ``dest`` only once complete, so ``dest`` either does not exist or holds the whole archive.
    An existing non-empty ``dest`` raises ``FileExistsError`` unless ``overwrite`` is set. Members keep their paths
    (an archive with a top folder ``x/`` gives ``dest/x/...``). Returns ``dest``.
    """
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise ValueError(f"archive: {archive} is not a file")
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"dest: {dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"dest: {dest} already exists and is not empty (pass overwrite=True to replace it)")
    kind = _archive_kind(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)

    try:
        return _extract(archive, kind, dest, overwrite)
    except ArchiveError:
        raise
    except _DAMAGED as e:
        raise _damaged(archive, e) from None
    except OSError as e:
        if e.errno is None:  # raised by a decompressor (bz2 "Invalid data stream"), not by the file system
            raise _damaged(archive, e) from None
        raise


def _extract(archive: Path, kind: str, dest: Path, overwrite: bool) -> Path:
    with _open(archive, kind) as ar:
        members, total = _members(ar, kind, archive)
        _check_space(total, dest.parent, archive)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
        try:
            if kind == "zip":
                ar.extractall(tmp, members=members)
            elif hasattr(tarfile, "data_filter"):
                # The "data" filter repeats our checks and also drops setuid bits and odd permissions.
                ar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                ar.extractall(tmp, members=members)
            # One sync for the whole tree is far cheaper than an fsync per member and makes the rename durable.
            os.sync()
            old = None
            if dest.exists():
                if overwrite and any(dest.iterdir()):
                    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
                    os.replace(dest, old)
                else:
                    dest.rmdir()
            os.replace(tmp, dest)
            fsync_path(dest.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest

