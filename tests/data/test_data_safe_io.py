"""Restricted unpickling and archive extraction (data/safe_io.py)."""
from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import subprocess
import tarfile
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from infmask.data.safe_io import UnsafeArchiveError, UnsafePickleError, safe_extract, safe_loads, safe_unpickle

# ------------------------------------------------------------------------------------------------------------
# pickles


class _OsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Subprocess:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_OsSystem, _Subprocess, _Eval])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_refused_and_nothing_runs(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    # The hostile global sits after harmless arrays, as it would in a tampered data file.
    obj = {"train": {"vision": np.zeros((2, 3), np.float32)}, "evil": payload(marker)}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        safe_unpickle(path)
    expected = {_OsSystem: "system", _Subprocess: "subprocess.call", _Eval: "eval"}[payload]
    assert expected in str(info.value) and expected in info.value.global_name
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()
    # Loading the same bytes with plain pickle does run the payload: the test payloads are real.
    if payload is _Eval:
        pickle.loads(path.read_bytes())
        assert marker.exists()


def _roundtrip_data():
    return {
        "train": {
            "vision": np.random.default_rng(0).normal(size=(4, 50, 35)).astype(np.float32),
            "audio": np.random.default_rng(1).normal(size=(4, 50, 74)),
            "labels": np.array([[[1.5]], [[-0.5]], [[0.0]], [[2.0]]]),
            "id": np.array(["a", "b", "c", "d"]),
            "ids_obj": np.array(["x", b"y", 3, None], dtype=object),
        },
        "nested": {"ints": np.arange(6, dtype=np.int64).reshape(2, 3), "bool": np.array([True, False]),
                   "u8": np.arange(5, dtype=np.uint8), "f16": np.ones(3, np.float16), "c": np.array([1 + 2j]),
                   "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "big_endian": np.arange(3, dtype=">f8"),
                   "empty": np.zeros((0, 3), np.float32), "bytes": np.array([b"ab", b"c"]),
                   "scalars": [np.float32(1.5), np.int64(7), np.bool_(True)], "dtype": np.dtype(">i2")},
        "builtins": [1, 2.5, "s", b"bytes", None, True, (1, 2), {1, 2}, frozenset({3}), 1j, slice(1, 5, 2),
                     bytearray(b"ab"), collections.OrderedDict(a=1)],
    }


def _assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == object:
            assert list(a) == list(b)
        else:
            np.testing.assert_array_equal(a, b)
        assert a.flags.f_contiguous == b.flags.f_contiguous
    elif isinstance(a, dict):
        assert type(a) is type(b) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_numpy_and_builtins_load(tmp_path, protocol):
    data = _roundtrip_data()
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, safe_unpickle(path))
    with open(path, "rb") as fh:  # a file object works too
        _assert_same(data, safe_unpickle(fh))
    _assert_same(data, safe_loads(path.read_bytes()))


def _as_numpy1(blob: bytes) -> bytes:
    """Rewrite a numpy-2 pickle so it names numpy 1.x's ``numpy.core.*`` modules."""
    out = bytearray()
    ops = list(pickletools.genops(blob))
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(blob)
        raw = blob[pos:end]
        if op.name == "FRAME":  # frames are optional; dropping them lets strings change length
            continue
        if op.name == "GLOBAL" and arg.startswith("numpy._core"):
            mod, name = arg.split(" ", 1)
            raw = b"c" + mod.replace("numpy._core", "numpy.core").encode() + b"\n" + name.encode() + b"\n"
        elif op.name == "SHORT_BINUNICODE" and arg.startswith("numpy._core"):
            new = arg.replace("numpy._core", "numpy.core").encode()
            raw = b"\x8c" + bytes([len(new)]) + new
        out += raw
    return bytes(out)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy1_module_paths_load(tmp_path, protocol):
    data = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "s": np.float64(2.5), "o": np.array([1, "x"], object)}
    blob = _as_numpy1(pickle.dumps(data, protocol=protocol))
    assert b"numpy.core" in blob and b"numpy._core" not in blob
    _assert_same(data, safe_loads(blob))


def test_python2_style_builtin_module_loads():
    # Python 2 pickles say __builtin__ (protocol 0/1/2 with fix_imports writes it for set & co).
    blob = pickle.dumps({"s": {1, 2}, "c": 2j}, protocol=2, fix_imports=True)
    assert b"__builtin__" in blob
    assert safe_loads(blob) == {"s": {1, 2}, "c": 2j}


def test_object_array_with_foreign_type_refused():
    arr = np.array([Fraction(1, 3), 2], dtype=object)
    with pytest.raises(UnsafePickleError, match="fractions.Fraction"):
        safe_loads(pickle.dumps({"x": arr}, protocol=4))


class _RawObjectArray:
    """An object array whose 'elements' are raw bytes: loading it must not turn bytes into object pointers."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), np.dtype("O"), False, b"A" * 16)


def test_crafted_object_array_from_raw_bytes_refused():
    with pytest.raises((TypeError, ValueError, pickle.UnpicklingError)):
        safe_loads(pickle.dumps(_RawObjectArray(), protocol=2))


@pytest.mark.parametrize("module, name", [("builtins", "getattr"), ("builtins", "__import__"), ("numpy", "load"),
                                          ("numpy.lib.npyio", "load"), ("os", "system"), ("posix", "system"),
                                          ("collections", "defaultdict"), ("numpy.testing", "assert_equal")])
def test_other_globals_refused(module, name):
    blob = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n."
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        safe_loads(blob)


def test_codecs_encode_restricted_to_latin1():
    # pickle writes _codecs.encode(text, "latin1") for bytes; any other codec choice is refused.
    blob = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(UnsafePickleError, match="encoding"):
        safe_loads(blob)


def test_persistent_ids_refused():
    blob = b"\x80\x02X\x01\x00\x00\x00xQ."  # BINPERSID
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_loads(blob)


def test_bad_argument():
    with pytest.raises(ValueError, match="path_or_file"):
        safe_unpickle(123)


# ------------------------------------------------------------------------------------------------------------
# archives

def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def _symlink_info(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


_GOOD = [("mmimdb/dataset/0001.json", b'{"plot": ["x"]}'), ("mmimdb/dataset/0001.jpeg", b"\xff\xd8jpeg"),
         ("mmimdb/split.json", b"{}")]


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_normal_extracts(tmp_path, suffix, mode):
    archive = _tar(tmp_path / f"a{suffix}", _GOOD, mode)
    dest = safe_extract(archive, tmp_path / "out")
    for name, data in _GOOD:
        assert (dest / name).read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_zip_normal_extracts(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("triangle_real_data/", b"")
        for name, data in _GOOD:
            zf.writestr(name, data)
    dest = safe_extract(archive, tmp_path / "out")
    for name, data in _GOOD:
        assert (dest / name).read_bytes() == data


def _bad_tar(tmp_path: Path, case: str, mode: str) -> Path:
    bad = {"dotdot": ("../evil.txt", b"x"), "nested_dotdot": ("a/../../evil.txt", b"x"),
           "absolute": (str(tmp_path / "abs_evil.txt"), b"x"),
           "symlink": _symlink_info("link", "/etc/passwd"),
           "hardlink": _symlink_info("hl", "/etc/passwd", tarfile.LNKTYPE),
           "device": _symlink_info("dev", "", tarfile.CHRTYPE),
           "fifo": _symlink_info("fifo", "", tarfile.FIFOTYPE)}[case]
    # The unsafe member comes last: validation must still happen before the safe ones are written.
    return _tar(tmp_path / ("bad.tar" + (".gz" if mode == "w:gz" else "")), [*_GOOD, bad], mode)


@pytest.mark.parametrize("case", ["dotdot", "nested_dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_unsafe_members_refused(tmp_path, case, mode):
    archive = _bad_tar(tmp_path, case, mode)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest)
    assert info.value.member
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs_evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # nothing written anywhere


def _zip_with(tmp_path: Path, name: str, data: bytes = b"x", mode: int | None = None) -> Path:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for good_name, good in _GOOD:
            zf.writestr(good_name, good)
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return archive


@pytest.mark.parametrize("case", ["dotdot", "backslash_dotdot", "absolute", "drive", "symlink", "device"])
def test_zip_unsafe_members_refused(tmp_path, case):
    name, mode = {"dotdot": ("../evil.txt", None), "backslash_dotdot": ("a\\..\\..\\evil.txt", None),
                  "absolute": ("/tmp/abs_evil.txt", None), "drive": ("C:/evil.txt", None),
                  "symlink": ("link", 0o120777), "device": ("dev", 0o020644)}[case]
    archive = _zip_with(tmp_path, name, b"/etc/passwd" if case == "symlink" else b"x", mode)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest)
    assert info.value.member == name and repr(name) in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]


def test_existing_dest_needs_overwrite(tmp_path):
    archive = _tar(tmp_path / "a.tar", _GOOD)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        safe_extract(archive, dest)
    assert (dest / "old.txt").exists()
    safe_extract(archive, dest, overwrite=True)
    assert not (dest / "old.txt").exists() and (dest / _GOOD[0][0]).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    safe_extract(archive, empty)  # an empty folder is simply filled
    assert (empty / _GOOD[0][0]).exists()


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="archive"):
        safe_extract(junk, tmp_path / "out")


def _sparse_tar(path: Path, realsize: int = 1 << 40) -> Path:
    """A PAX (GNU 1.0) sparse member: 1 KiB in the archive, declaring `realsize` bytes once extracted."""
    data = b"1\n0\n1\n".ljust(512, b"\0") + b"x".ljust(512, b"\0")  # the sparse map, then the one data block
    info = tarfile.TarInfo("GNUSparseFile.0/big.bin")
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big.bin",
                        "GNU.sparse.realsize": str(realsize)}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data))
    return path


def _damaged(tmp_path: Path, case: str) -> Path:
    good_tgz = _tar(tmp_path / "good.tar.gz", [*_GOOD, ("big.bin", os.urandom(200_000))], "w:gz").read_bytes()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for name, data in _GOOD:
            zf.writestr(name, data)
    path = tmp_path / {"truncated_tgz": "a.tar.gz", "garbage_tgz": "a.tar.gz", "truncated_zip": "a.zip",
                       "garbage_zip": "a.zip", "html_named_zip": "a.zip", "unknown": "a.bin"}[case]
    path.write_bytes({"truncated_tgz": good_tgz[: len(good_tgz) // 2], "garbage_tgz": b"\x1f\x8b" + os.urandom(5000),
                      "truncated_zip": zbuf.getvalue()[:-30], "garbage_zip": os.urandom(3000),
                      "html_named_zip": b"<html><title>Not Found</title></html>", "unknown": b"plain text"}[case])
    (tmp_path / "good.tar.gz").unlink()
    return path


@pytest.mark.parametrize("case", ["truncated_tgz", "garbage_tgz", "truncated_zip", "garbage_zip", "html_named_zip",
                                  "unknown"])
def test_damaged_archive_is_a_clear_error_and_leaves_nothing(tmp_path, case):
    archive = _damaged(tmp_path, case)
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match=r"damaged|neither a zip nor a tar") as info:
        safe_extract(archive, dest)
    from infmask.data.safe_io import ArchiveError, list_archive

    assert isinstance(info.value, ArchiveError) and str(archive) in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # no partial folder, no temporary one
    with pytest.raises(ArchiveError):
        list_archive(archive)


def test_sparse_member_declaring_a_terabyte_is_refused(tmp_path):
    archive = _sparse_tar(tmp_path / "sparse.tar")
    assert archive.stat().st_size < 20_000
    with pytest.raises(UnsafeArchiveError, match="sparse") as info:
        safe_extract(archive, tmp_path / "out")
    assert info.value.member == "big.bin"
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]


def test_member_declaring_more_than_the_free_space_is_an_archive_error(tmp_path):
    info = tarfile.TarInfo("huge.bin")
    info.size = 1 << 40  # a header that declares a terabyte, with no data behind it
    archive = tmp_path / "huge.tar"
    archive.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024)
    with pytest.raises(ValueError, match="not enough disk space|damaged") as raised:
        safe_extract(archive, tmp_path / "out")
    from infmask.data.safe_io import ArchiveError

    assert isinstance(raised.value, ArchiveError) and str(archive) in str(raised.value)
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]
