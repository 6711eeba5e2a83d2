"""Loading untrusted pickles (the MultiBench affect files, MIMIC's ``im.pk``) without running their code, without
trusting numpy's unpickling and without letting them allocate more than they hold.

A pickle is a small program: it may call any importable callable and hand any state to an object's
``__setstate__``. numpy does not promise safe unpickling of hostile input: given a structured dtype whose object
field lies past the item, ``ndarray.__setstate__`` writes pointers out of bounds; asked for a huge shape, numpy's
constructors allocate it. So this module runs the pickle with Python's pure-Python unpickler, changed so that:

* a global resolves only to our own constructors (numpy arrays, dtypes and scalars; a few builtin containers); any
  other name is refused when the unpickler meets it, before the opcode that would call it;
* numpy's reconstructors are never called: ``numpy.dtype`` and ``_reconstruct`` return placeholders, and BUILD (the
  opcode that hands over state) is accepted only on them. The array is then rebuilt by the code below: plain dtypes
  only (bool, integers, floats, complex, fixed-width bytes and str; object arrays only from a list of items the
  pickle already built), byte length = product(shape) x itemsize, ``np.frombuffer`` + ``reshape``;
* items are set or appended only on builtin lists, dicts, ordered dicts and sets; no class is instantiated;
* every length the pickle declares (bytes, strings, frames, bytearrays) is checked against the bytes left in the
  file before anything is allocated, and its arrays together may hold at most as many bytes as the file.

Any refusal, a damaged, truncated or empty file, an HTML page, or running out of memory raises
``UnsafePickleError`` naming the file and the reason; nothing from the pickle has been executed by then.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from .pickle_values import (BUILTINS, LATIN1, NDARRAY, PendingArray, PendingDType, Refusal, check_shape, finish_dtype,
                            from_bytes, new_dtype, ordered_dict, plain_dtype, raw_bytes, scalar)

__all__ = ["UnsafePickleError", "safe_unpickle", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle was refused: a global outside the allow-list, state for anything but a plain array, a length
    beyond the file, or a damaged file. ``global_name`` names the refused global, where that was the reason."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name


def _python3_name(module: str, name: str) -> tuple[str, str]:
    # Python 2 pickles (and protocol <= 2 pickles written with fix_imports) say e.g. "__builtin__.set" or
    # "numpy.core.multiarray"; translate them as pickle itself would.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# --------------------------------------------------------------------------------------------------------------
# the unpickler

_BIG = 1 << 16  # memo entries of at least this many bytes are tracked so an array's buffer can be let go
_DROPPED = object()  # a let-go buffer's memo slot (deleting it would shift protocol 4's MEMOIZE numbering)


class _Memo(dict):
    """The unpickler's memo: refuses to hand out an array or dtype before its state arrived, and remembers where
    placeholders and large buffers were stored so they can be swapped for the rebuilt object or dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.where: dict[int, list] = {}

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if isinstance(value, (PendingArray, PendingDType)) or (
                isinstance(value, (bytes, bytearray, str)) and len(value) >= _BIG):
            self.where.setdefault(id(value), []).append(key)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, (PendingArray, PendingDType)):
            raise Refusal("it refers to an array or dtype before giving its state")
        if value is _DROPPED:
            raise Refusal("it refers to an array's data a second time")
        return value

    def swap(self, old, new) -> None:
        for key in self.where.pop(id(old), ()):
            if dict.get(self, key) is old:
                super().__setitem__(key, new)

    def drop(self, obj) -> None:
        """Forget a consumed buffer (an array's bytes are never referred to again by a numpy pickle)."""
        for key in self.where.pop(id(obj), ()):
            if dict.get(self, key) is obj:
                super().__setitem__(key, _DROPPED)


class _Source:
    """The file under the unpickler: a read longer than what is left is refused before it allocates."""

    def __init__(self, fh: IO[bytes], size: int):
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else n
        if n > self.left > 0:
            raise Refusal(f"it declares {n} bytes where only {self.left} are left (a truncated file or a hostile "
                          "length)")
        data = self.fh.read(min(n, self.left))  # at the end: b"", which the unpickler reports as truncation
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.fh.readline(self.left)
        self.left -= len(line)
        return line


def _refuse(reason: str):
    def op(self) -> None:
        raise Refusal(reason)
    return op


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: each opcode below is ours to check
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, source: _Source, *, size: int, encoding: str):
        super().__init__(source, encoding=encoding)
        self.memo = _Memo()
        self._table = {k: (getattr(self, v) if isinstance(v, str) else v) for k, v in _TABLE.items()}
        self._size = size
        self._budget = size  # bytes the rebuilt arrays may hold in all
        self._pending: dict[int, object] = {}

    # ------------------------------------------------------------------------------------ globals
    def find_class(self, module: str, name: str) -> Any:
        py3 = _python3_name(module, name)
        obj = self._table.get(py3)
        if obj is None:
            qual = f"{module}.{name}"
            if py3 != (module, name):
                qual += f" (Python 3: {py3[0]}.{py3[1]})"
            raise Refusal(f"it names the global {qual!r}, which is not in the allow-list (numpy arrays, dtypes and "
                          "scalars, builtin containers)", qual)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise Refusal("it uses persistent ids")

    # ------------------------------------------------------------------------------------ arrays
    def _spend(self, nbytes: int, what: str) -> None:
        self._budget -= nbytes
        if self._budget < 0:
            raise Refusal(f"{what} would take its arrays past {self._size} bytes, the size of the file")

    def _pend(self, placeholder):
        self._pending[id(placeholder)] = placeholder
        return placeholder

    def _array(self, state: Any) -> np.ndarray:
        """numpy's array state is ([version 1,] shape, dtype, is_fortran, data)."""
        if not isinstance(state, tuple) or len(state) not in (4, 5) or len(state) == 5 and state[0] != 1:
            raise Refusal("array state is not numpy's ([1,] shape, dtype, is_fortran, data)")
        shape, dt, fortran, raw = state[-4:]
        shape, n = check_shape(shape)
        dt = plain_dtype(dt, "array")
        if fortran not in (0, 1):
            raise Refusal(f"array is_fortran flag {fortran!r}")
        order = "F" if fortran else "C"
        if dt.kind == "O":  # numpy pickles object arrays as a list of their items, already built above
            if not isinstance(raw, list) or len(raw) != n:
                raise Refusal(f"object array of shape {shape} needs a list of {n} items")
            self._spend(n, f"an object array of {n} items")
            arr = np.empty(n, dtype=object)
            for i, item in enumerate(raw):
                arr[i] = item
            return arr.reshape(shape, order=order)
        raw = raw_bytes(raw, f"array of shape {shape} and dtype {dt}")
        if len(raw) != n * dt.itemsize:
            raise Refusal(f"array of shape {shape} and dtype {dt} needs {n * dt.itemsize} bytes, its data holds "
                          f"{len(raw)}")
        self._spend(len(raw), f"an array of {len(raw)} bytes")
        self.memo.drop(state[-1])
        return from_bytes(raw, dt, shape, n, order)

    def _frombuffer(self, buf: Any, dt: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        """Protocol 5's numpy._core.numeric._frombuffer(buffer, dtype, shape, order[, axis_order])."""
        dt = plain_dtype(dt, "array")
        if dt.kind == "O":
            raise Refusal("object arrays cannot come from a raw buffer")
        shape, n = check_shape(shape)
        raw = raw_bytes(buf, f"array of shape {shape} and dtype {dt}")
        if len(raw) != n * dt.itemsize:
            raise Refusal(f"array of shape {shape} and dtype {dt} needs {n * dt.itemsize} bytes, its buffer holds "
                          f"{len(raw)}")
        self._spend(len(raw), f"an array of {len(raw)} bytes")
        self.memo.drop(buf)
        if order == "K" and axis_order is not None:
            if not isinstance(axis_order, (tuple, list)) or sorted(axis_order) != list(range(len(shape))):
                raise Refusal(f"axis order {axis_order!r} is not a permutation of the array's axes")
            return from_bytes(raw, dt, shape, n, "C").transpose(tuple(axis_order))
        if order not in ("C", "F", "K", "A"):
            raise Refusal(f"array order {order!r}")
        return from_bytes(raw, dt, shape, n, "F" if order == "F" else "C")

    def _reconstruct(self, subtype: Any, shape: Any = None, code: Any = None) -> PendingArray:
        if subtype is not NDARRAY:
            raise Refusal(f"_reconstruct of {subtype!r}; only plain numpy.ndarray is rebuilt")
        return self._pend(PendingArray())

    def _dtype(self, *args: Any) -> PendingDType:
        return self._pend(new_dtype(*args))

    def _codecs_encode(self, obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        # Protocols 0-2 store bytes (and so every numpy buffer) as _codecs.encode(text, "latin1"). Any other codec
        # name would make the pickle pick a codec to run, so only latin-1 is accepted.
        if not isinstance(obj, str) or str(encoding).lower() not in LATIN1 or errors != "strict":
            raise Refusal(f"_codecs.encode with encoding {encoding!r} (only latin-1 is used by pickle)",
                          "_codecs.encode")
        self.memo.drop(obj)  # an array's text is not referred to again; only its bytes are
        return obj.encode("latin-1")

    # ------------------------------------------------------------------------------------ opcodes
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PendingArray):
            value = self._array(state)
        elif isinstance(inst, PendingDType):
            value = finish_dtype(inst, state)
        else:
            raise Refusal(f"it sets the state of a {type(inst).__name__}; only numpy arrays and dtypes take state")
        self.stack[-1] = value
        self.memo.swap(inst, value)
        del self._pending[id(inst)]
    dispatch[pickle.BUILD[0]] = load_build

    def _target(self, kinds: tuple, what: str):
        target = self.stack[-1]
        if type(target) not in kinds:
            raise Refusal(f"it {what} a {type(target).__name__}")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "appends to").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "appends to").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, collections.OrderedDict), "sets items of")[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict), "sets items of")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target((set,), "adds items to").update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_dup(self) -> None:
        if isinstance(self.stack[-1], (PendingArray, PendingDType)):
            raise Refusal("it copies an array or dtype before giving its state")
        self.append(self.stack[-1])
    dispatch[pickle.DUP[0]] = load_dup

    def load_bytearray8(self) -> None:
        (n,) = pickle.unpack("<Q", self.read(8))
        if n > self._size:
            raise Refusal(f"it declares a bytearray of {n} bytes, more than the whole file ({self._size})")
        b = bytearray(n)
        self.readinto(b)
        self.append(b)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    for _op, _why in ((pickle.NEWOBJ, "instantiates a class (NEWOBJ)"),
                      (pickle.NEWOBJ_EX, "instantiates a class (NEWOBJ_EX)"),
                      (pickle.OBJ, "instantiates a class (OBJ)"), (pickle.INST, "instantiates a class (INST)"),
                      (pickle.EXT1, "uses the extension registry"), (pickle.EXT2, "uses the extension registry"),
                      (pickle.EXT4, "uses the extension registry")):
        dispatch[_op[0]] = _refuse(f"it {_why}")
    del _op, _why

    def run(self) -> Any:
        result = self.load()
        if self._pending:
            raise Refusal("it declares an array or dtype and never gives its state")
        return result


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Unbound names for the per-unpickler constructors; resolved to bound methods in _Unpickler.find_class.
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): NDARRAY, ("numpy", "dtype"): "_dtype",
                                         ("_codecs", "encode"): "_codecs_encode",
                                         ("collections", "OrderedDict"): ordered_dict}
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spellings
        table[(f"{core}.multiarray", "_reconstruct")] = "_reconstruct"
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = "_frombuffer"
    for name, fn in BUILTINS.items():
        table[("builtins", name)] = fn
    return table


_TABLE = _allowed_globals()


# --------------------------------------------------------------------------------------------------------------
# entry points

def _load(fh: IO[bytes], size: int, source: str, encoding: str) -> Any:
    if size <= 0:
        raise UnsafePickleError(f"{source} is empty, not a pickle")
    up = _Unpickler(_Source(fh, size), size=size, encoding=encoding)
    try:
        return up.run()
    except Refusal as e:
        raise UnsafePickleError(f"refusing to unpickle {source}: {e}; nothing was executed", e.global_name) from None
    except MemoryError:
        raise UnsafePickleError(f"cannot unpickle {source}: it needs more memory than is available") from None
    except RecursionError:
        raise UnsafePickleError(f"refusing to unpickle {source}: it nests too deeply") from None
    except Exception as e:  # the file is damaged, truncated, empty or not a pickle at all
        raise UnsafePickleError(f"{source} is not a readable pickle ({_describe(fh, e)})") from None
    finally:
        up.memo.clear()


def _describe(fh: IO[bytes], exc: Exception) -> str:
    from .sniff import describe_head

    try:
        fh.seek(0)
        head = fh.read(4096)
    except (OSError, ValueError):
        head = b""
    what = describe_head(head)
    if what:
        return f"it is {what}"
    if isinstance(exc, EOFError) or "exhausted" in str(exc):
        return "it ends too early (truncated)"
    if isinstance(exc, KeyError):  # the pure-Python unpickler's unknown opcode
        return f"invalid opcode {exc}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__


def safe_unpickle(path_or_file: str | os.PathLike | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Unpickle plain numpy arrays and builtin containers only; raise ``UnsafePickleError`` on anything else.

    ``encoding`` only matters for Python 2 pickles; latin-1 is what their array buffers need.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        path = Path(path_or_file)
        with open(path, "rb", buffering=1 << 20) as fh:
            return _load(fh, os.fstat(fh.fileno()).st_size, str(path), encoding)
    if not hasattr(path_or_file, "read"):
        raise ValueError(f"path_or_file: expected a path or a binary file object, got {type(path_or_file).__name__}")
    source = str(getattr(path_or_file, "name", "<file object>"))
    try:
        start = path_or_file.tell()
        size = os.fstat(path_or_file.fileno()).st_size - start
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        data = path_or_file.read()  # a stream of unknown length: hold it, then its length is known
        return _load(io.BytesIO(data), len(data), source, encoding)
    return _load(path_or_file, size, source, encoding)


def safe_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """``safe_unpickle`` for an in-memory pickle."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    return _load(io.BytesIO(data), len(data), "<bytes>", encoding)
