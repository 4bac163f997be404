"""Scratch memory of sweeps, kept between sweeps up to ``IDLE_BYTES``.

A sweep's time blocks need a few megabytes of scratch (a block's moving
averages, the compiled kernel's work arrays). Allocated afresh, memory of
that size comes from ``mmap`` (glibc's threshold, pinned at 1 MiB in the
daemon, see ``memory.malloc``) and is faulted in page by page on every
allocation: measured on this project's 2-core VM, ~1.5 µs per 4 KB page, a
third of a 100k-bar sweep's time. So sweeps take their scratch here and give
it back when they end; up to ``IDLE_BYTES`` of it waits for the next sweep
(the memory of a running sweep counts against its budget, ``sweep_plan``;
this idle remainder is the only memory a sweep leaves behind).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["IDLE_BYTES", "give", "idle_bytes", "take"]

# Enough for a fast plan's block of moving averages and two threads' kernel scratch.
IDLE_BYTES = 8 * 2**20

_lock = threading.Lock()
_idle: list[NDArray[np.uint8]] = []


def take(shape: tuple[int, ...], dtype: Any) -> NDArray[Any]:
    """A C-contiguous array of ``shape`` and ``dtype`` (uninitialized), from the idle memory if it has room."""
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    raw = None
    with _lock:
        for i in range(len(_idle) - 1, -1, -1):  # sorted largest first: the first fit from the end is the smallest
            if _idle[i].nbytes >= nbytes:
                raw = _idle.pop(i)
                break
    if raw is None:
        raw = np.empty(max(nbytes, 1), dtype=np.uint8)
    out: NDArray[Any] = raw[:nbytes].view(dt).reshape(shape)
    return out


def give(array: NDArray[Any]) -> None:
    """Return an array from :func:`take` (no longer used); kept while the idle memory stays within ``IDLE_BYTES``."""
    raw = array.base if isinstance(array.base, np.ndarray) else array
    while isinstance(raw.base, np.ndarray):
        raw = raw.base
    if raw.dtype != np.uint8 or raw.ndim != 1:
        return
    with _lock:
        if any(kept is raw for kept in _idle):
            return
        _idle.append(raw)
        _idle.sort(key=lambda kept: kept.nbytes, reverse=True)
        total = 0
        for i, kept in enumerate(_idle):
            total += kept.nbytes
            if total > IDLE_BYTES:
                del _idle[i:]  # the largest are kept: small ones are cheap to allocate anew
                break


def idle_bytes() -> int:
    """Bytes kept for the next sweep."""
    with _lock:
        return sum(raw.nbytes for raw in _idle)
