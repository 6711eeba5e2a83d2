"""What a safe pickle may build, each from checked state: plain numpy dtypes, arrays and scalars (never through
numpy's own reconstructors), and a few builtins that take only values the pickle already built (never an iterator or
a size). ``data/safe_pickle.py`` runs the pickle and calls these."""
from __future__ import annotations

import collections
import math
import re
from typing import Any

import numpy as np


class Refusal(Exception):
    """Raised inside the unpickler; ``safe_unpickle`` turns it into UnsafePickleError with the file's name."""

    def __init__(self, reason: str, global_name: str | None = None):
        super().__init__(reason)
        self.global_name = global_name


_ITEMSIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8, 12, 16), "c": (8, 16, 24, 32),
              "O": (4, 8)}
_SPEC = re.compile(r"([biufcSUO])(\d{1,7})")
_MAX_STRING_ITEM = 1 << 20   # bytes per item of an S/U dtype
_MAX_NDIM = 64


class NDArrayName:
    """What the global ``numpy.ndarray`` resolves to: a name for ``_reconstruct``, not a callable."""

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise Refusal("it calls numpy.ndarray(...) to allocate an array; only pickled arrays are rebuilt")


NDARRAY = NDArrayName()


class PendingDType:
    """``numpy.dtype(spec, align, copy)`` before its BUILD state arrives."""

    __slots__ = ("kind", "size")

    def __init__(self, kind: str, size: int):
        self.kind, self.size = kind, size


class PendingArray:
    """``_reconstruct(ndarray, ...)`` before its BUILD state arrives."""

    __slots__ = ()


def new_dtype(spec: Any, align: Any = False, copy: Any = False) -> PendingDType:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    m = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if m is None:
        raise Refusal(f"dtype {spec!r} is not a plain dtype (bool, integer, float, complex, fixed-width bytes or "
                      "str, object)")
    if align not in (0, 1) or copy not in (0, 1):
        raise Refusal(f"dtype {spec!r}: unexpected arguments align={align!r}, copy={copy!r}")
    kind, size = m.group(1), int(m.group(2))
    if kind in _ITEMSIZES and size not in _ITEMSIZES[kind] or kind in "SU" and size > _MAX_STRING_ITEM:
        raise Refusal(f"dtype {spec!r} has an unsupported item size")
    return PendingDType(kind, size)


def finish_dtype(p: PendingDType, state: Any) -> np.dtype:
    """numpy's dtype state is (version, byte order, subarray, names, fields, itemsize, alignment, flags[,
    metadata]); only plain dtypes are accepted: no sub-array, no fields, no metadata."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise Refusal("dtype state is not numpy's (version 3 or 4, 8 or 9 fields)")
    order, subarray, names, fields, itemsize = state[1:6]
    if subarray is not None or names is not None or fields is not None:
        raise Refusal("structured and sub-array dtypes are not accepted (only plain ones)")
    if len(state) == 9 and state[8] not in (None, {}):
        raise Refusal("dtypes with metadata (datetime units, user metadata) are not accepted")
    if isinstance(order, bytes):
        order = order.decode("ascii", "replace")
    if order not in ("<", ">", "|", "="):
        raise Refusal(f"dtype byte order {order!r} is not one of <, >, |, =")
    dt = np.dtype(f"{p.kind}{p.size}")
    if p.kind in "SU" and itemsize != dt.itemsize or p.kind not in "SU" and itemsize not in (-1, dt.itemsize):
        raise Refusal(f"dtype {dt} declares item size {itemsize!r}, not {dt.itemsize}")
    if order in "<>" and dt.byteorder not in ("|",):
        dt = dt.newbyteorder(order)
    return dt


def plain_dtype(dt: Any, what: str) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.kind not in "biufcSUO" or dt.fields is not None or dt.subdtype is not None:
        raise Refusal(f"{what}: {dt!r} is not a plain dtype")
    return dt


def check_shape(shape: Any) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, (tuple, list)) or len(shape) > _MAX_NDIM:
        raise Refusal(f"array shape {shape!r} is not a tuple of at most {_MAX_NDIM} sizes")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise Refusal(f"array shape {tuple(shape)!r} holds something other than sizes >= 0")
    return tuple(shape), math.prod(shape)


def raw_bytes(raw: Any, what: str) -> bytes | bytearray:
    if isinstance(raw, str):  # Python 2 pickles read with encoding="latin1"
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError:
            raise Refusal(f"{what}: its data is text outside latin-1") from None
    if not isinstance(raw, (bytes, bytearray)):
        raise Refusal(f"{what}: its data is a {type(raw).__name__}, not bytes")
    return raw


def from_bytes(raw: bytes | bytearray, dt: np.dtype, shape: tuple[int, ...], n: int, order: str) -> np.ndarray:
    if dt.kind == "b":  # any non-zero byte is True; numpy's bool must hold exactly 0 or 1
        flat = np.frombuffer(raw, dtype=np.uint8, count=n) != 0
    else:
        flat = np.frombuffer(raw, dtype=dt, count=n) if n else np.empty(0, dtype=dt)
        if isinstance(raw, bytes):  # read-only memory: own a writable copy, as a normal unpickled array is
            flat = flat.copy()
    return flat.reshape(shape, order=order)


def scalar(dt: Any, data: Any = None) -> Any:
    dt = plain_dtype(dt, "numpy scalar")
    if dt.kind == "O":
        raise Refusal("numpy object scalars are not accepted")
    raw = raw_bytes(data, f"numpy scalar of {dt}")
    if len(raw) != dt.itemsize:
        raise Refusal(f"numpy scalar of {dt} holds {len(raw)} bytes, not {dt.itemsize}")
    return from_bytes(raw, dt, (), 1, "C")[()]


LATIN1 = ("latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1")


# Builtins a pickle may construct, each taking only already-built values (never an iterator or a size, which
# could make them allocate or loop without bound).
def _set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise Refusal(f"set() of a {type(items).__name__}")
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    if not isinstance(items, (list, tuple)):
        raise Refusal(f"frozenset() of a {type(items).__name__}")
    return frozenset(items)


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    if isinstance(data, str) and isinstance(encoding, str) and encoding.lower().replace("_", "-") in ("latin-1",
                                                                                                     "latin1"):
        return bytearray(data.encode("latin-1"))
    raise Refusal(f"bytearray() of a {type(data).__name__}")


def _bytes(*args: Any) -> bytes:
    if args:  # protocols 0-2 write b"" as bytes(); anything else goes through _codecs.encode
        raise Refusal("bytes() with arguments")
    return b""


def ordered_dict(items: Any = ()) -> collections.OrderedDict:
    if not isinstance(items, (list, tuple, dict)):
        raise Refusal(f"OrderedDict() of a {type(items).__name__}")
    return collections.OrderedDict(items)


def _complex(real: Any = 0, imag: Any = 0) -> complex:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (real, imag)):
        raise Refusal("complex() of something other than two numbers")
    return complex(real, imag)


BUILTINS = {"set": _set, "frozenset": _frozenset, "bytearray": _bytearray, "bytes": _bytes, "complex": _complex,
             "slice": slice, "range": range}
