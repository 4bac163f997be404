"""Byte sizes of cached values, right for numpy and pandas, bounded in cost.

``sys.getsizeof`` sees only an object's own header: a list of arrays of 80 MB
"weighs" 72 bytes. The cache budget needs the memory the value keeps alive:

- numpy arrays: the data buffer. A view keeps its base alive, so a view is
  charged for the base, and a base shared by several views inside one value is
  counted once (bases are tracked by ``id`` for the duration of one
  measurement). Arrays over a file mapping (``numpy.memmap``) cost no anonymous
  memory and are charged only their header: the OS page cache holds the data.
- pandas objects: ``memory_usage`` per column; Arrow-backed columns report their
  buffers cheaply, ``object`` columns are sampled (``sample`` values) and
  extrapolated, so a 10-million-row frame costs a few thousand ``getsizeof``
  calls, not ten million.
- containers (list, tuple, set, dict) and plain objects (``__dict__`` /
  ``__slots__``): recursion is bounded by ``max_depth``; long containers are
  sampled beyond ``max_items`` and extrapolated.
- anything else: ``sys.getsizeof``.

Shared objects are counted once per measurement (cycles cannot loop).
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ARRAY_HEADER_BYTES", "sizeof"]

_DEFAULT_MAX_DEPTH = 6
_DEFAULT_MAX_ITEMS = 1_000
_DEFAULT_SAMPLE = 1_000
# Scalars and strings have no children worth walking.
_ATOMIC = (int, float, complex, bool, str, bytes, bytearray, type(None), range)


def sizeof(
    obj: object,
    *,
    max_depth: int = _DEFAULT_MAX_DEPTH,
    max_items: int = _DEFAULT_MAX_ITEMS,
    sample: int = _DEFAULT_SAMPLE,
) -> int:
    """Return the bytes ``obj`` keeps alive, estimated with bounded cost.

    ``max_depth`` bounds recursion into containers and objects, ``max_items``
    bounds how many items of one container are measured (the rest is
    extrapolated from their mean), ``sample`` bounds how many values of an
    ``object`` column or array are measured.
    """
    # Fast path for the common cached value: an array owning its data.
    if type(obj) is np.ndarray and obj.base is None and not obj.dtype.hasobject:
        return int(obj.nbytes) + ARRAY_HEADER_BYTES
    return _Measure(max_depth, max_items, sample).size(obj, 0)


ARRAY_HEADER_BYTES = sys.getsizeof(np.empty(0))


class _Measure:
    """One measurement: remembers what it has already counted."""

    __slots__ = ("max_depth", "max_items", "sample", "seen")

    def __init__(self, max_depth: int, max_items: int, sample: int) -> None:
        self.max_depth = max_depth
        self.max_items = max_items
        self.sample = max(1, sample)
        self.seen: set[int] = set()

    def size(self, obj: object, depth: int) -> int:
        oid = id(obj)
        if oid in self.seen:
            return 0
        self.seen.add(oid)
        if isinstance(obj, _ATOMIC):
            return sys.getsizeof(obj)
        if isinstance(obj, np.ndarray):
            return self._array(obj)
        if isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
            return self._pandas(obj)
        if isinstance(obj, np.generic):
            return sys.getsizeof(obj)
        if depth >= self.max_depth:
            return _shallow(obj)
        if isinstance(obj, dict):
            items: list[object] = []
            for k, v in obj.items():
                items.append(k)
                items.append(v)
                if len(items) >= 2 * self.max_items:
                    break
            return _shallow(obj) + self._extrapolate(items, 2 * len(obj), depth)
        if isinstance(obj, (list, tuple, set, frozenset)):
            return _shallow(obj) + self._extrapolate(_head(obj, self.max_items), len(obj), depth)
        return self._object(obj, depth)

    def _extrapolate(self, head: list[object], total: int, depth: int) -> int:
        if not head:
            return 0
        measured = sum(self.size(item, depth + 1) for item in head)
        if total <= len(head):
            return measured
        return int(measured * total / len(head))

    def _object(self, obj: object, depth: int) -> int:
        total = _shallow(obj)
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            total += self.size(attrs, depth + 1)
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    total += self.size(getattr(obj, slot), depth + 1)
        return total

    def _array(self, arr: np.ndarray[Any, Any]) -> int:
        total = ARRAY_HEADER_BYTES
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        owner = root.base
        if owner is None:
            if root is arr or id(root) not in self.seen:
                self.seen.add(id(root))
                total += int(root.nbytes)
        elif isinstance(owner, mmap.mmap) or isinstance(root, np.memmap):
            pass  # file-backed pages: the page cache holds them, not our heap
        elif id(owner) not in self.seen:
            self.seen.add(id(owner))
            total += _buffer_bytes(owner, root)
        if arr.dtype.kind == "O" and arr.size:
            total += self._object_values(arr.ravel(), arr.size)
        return total

    def _object_values(self, values: np.ndarray[Any, Any] | pd.Series | pd.Index, count: int) -> int:
        # Evenly spaced, not the head: values often grow along a frame
        # (ids, timestamps as strings), and the head would under-count.
        step = max(1, count // self.sample)
        picked = values.iloc[::step] if isinstance(values, pd.Series) else values[::step]
        head = _head(picked, self.sample)
        if not head:
            return 0
        # One ``seen`` set across values: a string shared by many rows really
        # is stored once.
        measured = sum(self.size(v, self.max_depth) for v in head)
        return int(measured * count / len(head))

    def _pandas(self, obj: pd.DataFrame | pd.Series | pd.Index) -> int:
        overhead = sys.getsizeof(object()) * 8  # manager, flags, attrs: small and fixed
        if isinstance(obj, pd.Index):
            return overhead + self._column(obj)
        total = overhead + self._column(obj.index)
        if isinstance(obj, pd.Series):
            return total + self._column(obj)
        # One call for every column's buffers; only Python-object columns are
        # walked further (sampled), so wide numeric frames stay cheap.
        total += int(obj.memory_usage(index=False, deep=False).sum())
        for position, dtype in enumerate(obj.dtypes):
            if _holds_python_objects(dtype):
                total += self._object_values(obj.iloc[:, position], len(obj))
        return total

    def _column(self, col: pd.Series | pd.Index) -> int:
        if isinstance(col, pd.Index):
            shallow = int(col.memory_usage(deep=False))
        else:
            shallow = int(col.memory_usage(index=False, deep=False))
        if len(col) == 0 or not _holds_python_objects(col.dtype):
            return shallow
        return shallow + self._object_values(col, len(col))


def _holds_python_objects(dtype: object) -> bool:
    """True for columns whose buffer holds pointers to Python objects."""
    return dtype == np.dtype("O") or getattr(dtype, "storage", None) == "python"


def _head(values: Iterable[object], limit: int) -> list[object]:
    head: list[object] = []
    for value in values:
        head.append(value)
        if len(head) >= limit:
            break
    return head


def _shallow(obj: object) -> int:
    try:
        return sys.getsizeof(obj)
    except TypeError:  # some extension types refuse; a pointer-sized guess is enough
        return 64


def _buffer_bytes(owner: object, root: np.ndarray[Any, Any]) -> int:
    """Bytes of a non-array buffer owner (bytes, bytearray, Arrow buffer...)."""
    if isinstance(owner, (bytes, bytearray)):
        return sys.getsizeof(owner)
    nbytes = getattr(owner, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        return memoryview(owner).nbytes  # type: ignore[arg-type]
    except TypeError:
        return int(root.nbytes)
