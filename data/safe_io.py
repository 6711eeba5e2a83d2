"""Loading untrusted downloaded files without running their code.

The MultiBench affect files and MIMIC's ``im.pk`` are pickles, and a pickle can name any importable callable and
call it (``os.system`` included) while loading. ``safe_unpickle`` therefore resolves globals from a fixed allow-list
of numpy array/dtype/scalar reconstructors and plain builtin containers; any other global is refused *when the
unpickler meets its name*, which is before the opcode that would call it, so a refused pickle runs nothing.

``safe_extract`` unpacks .zip / .tar / .tar.gz archives after checking every member first: no member may leave the
target folder and none may be a link or a device, so a hostile archive is refused before a single byte is written.
"""
from __future__ import annotations

import _compat_pickle
import importlib
import io
import os
import pickle
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

__all__ = ["UnsafePickleError", "UnsafeArchiveError", "safe_unpickle", "safe_loads", "safe_extract"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (or uses persistent ids)."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder, or is a link or a special file."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


# --------------------------------------------------------------------------------------------------------------
# pickles

def _numpy_core(submodule: str):
    # numpy 2 moved numpy.core to numpy._core (numpy.core is a deprecated shim); numpy 1 has only numpy.core.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocols 0-2 store bytes (and so every numpy buffer) as _codecs.encode(text, "latin1"). Any other codec name
    # would make the pickle pick a codec to run, so only latin-1 is accepted.
    if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1:
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r} (only latin-1 is used by pickle)",
                                "_codecs.encode")
    return obj.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import collections

    import numpy as np

    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spellings resolve to the same objects
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol 5 arrays
            table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    try:  # numpy >= 2 StringDType arrays
        internal = _numpy_core("_internal")
        if hasattr(internal, "_convert_to_stringdtype_kwargs"):
            fn = internal._convert_to_stringdtype_kwargs
            table[("numpy._core._internal", "_convert_to_stringdtype_kwargs")] = fn
            table[("numpy.core._internal", "_convert_to_stringdtype_kwargs")] = fn
    except ImportError:
        pass
    try:  # numpy >= 1.25: the concrete dtype classes (Float32DType, ...)
        dtypes = importlib.import_module("numpy.dtypes")
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                table[("numpy.dtypes", name)] = obj
    except ImportError:
        pass
    for name, obj in (("set", set), ("frozenset", frozenset), ("complex", complex), ("slice", slice),
                      ("bytearray", bytearray), ("range", range)):
        table[("builtins", name)] = obj
    return table


def _python3_name(module: str, name: str) -> tuple[str, str]:
    # The C unpickler hands find_class the names as written; Python 2 pickles (and protocol <= 2 pickles written
    # with fix_imports) say e.g. "__builtin__.set" or "commands.call", so translate them as pickle itself would.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_ALLOWED: dict[tuple[str, str], Any] | None = None


def _allowed() -> dict[tuple[str, str], Any]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _allowed_globals()
    return _ALLOWED


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], *, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        py3 = _python3_name(module, name)
        obj = _allowed().get(py3)
        if obj is None:
            qual = f"{module}.{name}"
            if py3 != (module, name):
                qual += f" (Python 3: {py3[0]}.{py3[1]})"
            raise UnsafePickleError(
                f"refusing to unpickle {self._source}: it names the global {qual!r}, which is not in the allow-list "
                "(numpy arrays, dtypes and scalars, builtin containers); nothing was executed", qual)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to unpickle {self._source}: it uses persistent ids")


def safe_unpickle(path_or_file: str | os.PathLike | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Unpickle numpy arrays and builtin containers only; raise ``UnsafePickleError`` on any other global.

    ``encoding`` only matters for Python 2 pickles; latin-1 is what numpy needs to restore their array buffers.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        path = Path(path_or_file)
        with open(path, "rb", buffering=1 << 20) as fh:
            return _RestrictedUnpickler(fh, source=str(path), encoding=encoding).load()
    if not hasattr(path_or_file, "read"):
        raise ValueError(f"path_or_file: expected a path or a binary file object, got {type(path_or_file).__name__}")
    source = str(getattr(path_or_file, "name", "<file object>"))
    return _RestrictedUnpickler(path_or_file, source=source, encoding=encoding).load()


def safe_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """``safe_unpickle`` for an in-memory pickle."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data: expected bytes, got {type(data).__name__}")
    return _RestrictedUnpickler(io.BytesIO(data), source="<bytes>", encoding=encoding).load()


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
    if tarfile.is_tarfile(archive):
        return "tar"
    raise ValueError(f"archive: {archive} is neither a zip nor a tar archive")


def _check_space(total: int, where: Path, archive: Path) -> None:
    free = shutil.disk_usage(where).free
    if total > free:
        raise OSError(f"not enough disk space to extract {archive}: it holds {total} bytes, {free} are free in {where}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Extract a .zip / .tar / .tar.gz (.bz2, .xz) archive into the folder ``dest``, all or nothing.

    Every member is validated before anything is written: a member with ``..`` or an absolute path, a symbolic or
    hard link, or a device/fifo raises ``UnsafeArchiveError``. The archive is unpacked into a temporary folder beside
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

    with (zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive, "r:*")) as ar:
        if kind == "zip":
            zmembers = _zip_members(ar, archive)
            total = sum(i.file_size for i in zmembers)
        else:
            tmembers = _tar_members(ar, archive)
            total = sum(m.size for m in tmembers if m.isreg())
        _check_space(total, dest.parent, archive)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
        try:
            if kind == "zip":
                ar.extractall(tmp, members=zmembers)
            elif hasattr(tarfile, "data_filter"):
                # The "data" filter repeats our checks and also drops setuid bits and odd permissions.
                ar.extractall(tmp, members=tmembers, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                ar.extractall(tmp, members=tmembers)
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
            _fsync_dir(dest.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest

