"""glibc malloc: the tuning the daemon does at start, and the trim the cleanup ladder runs.

A long-running daemon that frees tens of MB after every run is at the mercy of
three glibc behaviours; each function here turns one off or works around it
(the experiments: bench/results/disk_soak_memory.md):

- memory freed in a thread's arena stays mapped until trimmed —
  :func:`malloc_trim` gives it back (the ladder and the trim after work call it);
- threads get arenas of their own (8 per core) that fragment run after run —
  :func:`limit_malloc_arenas`;
- the mmap and trim thresholds move on their own: freeing one ``mmap``-ed block
  larger than any before raises both for the rest of the process's life, and
  from then on the arenas keep megabytes more — :func:`pin_malloc_thresholds`.

Everything is a no-op without glibc (musl has no ``malloc_trim``): the daemon
then runs with its libc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

__all__ = [
    "LEAN_LIMIT_BYTES",
    "LEAN_MMAP_THRESHOLD",
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "limit_malloc_arenas",
    "malloc_trim",
    "malloc_trim_available",
    "pin_malloc_thresholds",
]

log = logging.getLogger(__name__)

# mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# Where glibc's own dynamic thresholds settle in the daemon's first runs of the
# backtest spec (mmap 1 MiB + a page, trim twice that; read with gdb from `mp_`):
# pinned there, so nothing later can move them.
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 2 << 20
# Under a tight limit, every megabyte counts more than a mapping's page faults per large block:
# numpy's block temporaries are mapped and unmapped instead of landing in the heap between small
# objects (four squeeze SMA containers in a row: peak 209 MB instead of 236, 168 MB kept instead of 193).
LEAN_LIMIT_BYTES = 1024 << 20
LEAN_MMAP_THRESHOLD = 256 << 10


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _load_trim(libc: ctypes.CDLL | None) -> Callable[[int], int] | None:
    trim = getattr(libc, "malloc_trim", None)  # glibc only; musl has none
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def _load_mallopt(libc: ctypes.CDLL | None) -> Callable[[int, int], int] | None:
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt  # type: ignore[no-any-return]


_libc = _load_libc()
_trim = _load_trim(_libc)
_mallopt = _load_mallopt(_libc) if _trim is not None else None  # glibc's mallopt only


def malloc_trim_available() -> bool:
    """Whether this libc has ``malloc_trim`` (glibc does, musl does not)."""
    return _trim is not None


def malloc_trim() -> int:
    """glibc ``malloc_trim(0)``: give free heap pages back to the OS; 1 if any went, 0 if none or no glibc."""
    return _trim(0) if _trim is not None else 0


def limit_malloc_arenas(arenas: int | None) -> int | None:
    """Cap glibc's malloc arenas at ``arenas``; the cap in force, or None (glibc's default, or no glibc).

    glibc gives threads arenas of their own, up to 8 per core; memory freed in
    one stays mapped there, and with the worker threads of one run after
    another the arenas fragment: anonymous RSS crept up ~2 MB per 100 runs of
    the backtest spec even with a trim after each, and less with two arenas
    (bench/results/disk_soak_memory.md). ``MALLOC_ARENA_MAX`` in the environment wins (the
    operator's choice; glibc read it at start). Call before worker threads
    start: arenas already made stay.
    """
    from_env = os.environ.get("MALLOC_ARENA_MAX")
    if from_env is not None:
        return int(from_env) if from_env.isdigit() else None
    if arenas is None or _mallopt is None:
        return None
    return arenas if _mallopt(_M_ARENA_MAX, arenas) == 1 else None


def pin_malloc_thresholds(limit_bytes: int | None = None) -> tuple[int, int] | None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (:data:`LEAN_MMAP_THRESHOLD` when
    ``limit_bytes`` is below :data:`LEAN_LIMIT_BYTES`) and its trim threshold at :data:`TRIM_THRESHOLD`.

    Returns the pair now in force, or None (no glibc, or the operator set
    either in the environment: ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``, which win).

    Why: left dynamic, glibc raises the mmap threshold to the size of any
    ``mmap``-ed block freed that is larger than the threshold, and the trim
    threshold to twice that, for good. Blocks below the new threshold then come
    from the arenas, and each arena keeps up to the trim threshold of free
    memory at its top, which ``malloc_trim`` does not return for threads'
    arenas. In the daemon this happened once, about 1,000 runs into a soak of
    the backtest spec: CPython's table of interned strings (~66,000 of them;
    pathlib interns every path part, so each run adds and drops ~20) was
    rebuilt at twice its size and its old 1.9 MB table freed, the thresholds
    went from 1 MiB / 2 MiB to 1.9 MB / 3.8 MB, and the two arenas kept
    2.5-3.5 MB more for good (the table's own +1.8 MB aside). Setting the
    thresholds with ``mallopt`` turns the adjustment off.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if _mallopt is None or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ \
            or "mmap_threshold" in tunables or "trim_threshold" in tunables:
        return None
    lean = limit_bytes is not None and limit_bytes < LEAN_LIMIT_BYTES
    mmap_threshold = LEAN_MMAP_THRESHOLD if lean else MMAP_THRESHOLD
    if _mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1 or _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return None
    log.debug("malloc thresholds pinned: mmap %d, trim %d bytes", mmap_threshold, TRIM_THRESHOLD)
    return mmap_threshold, TRIM_THRESHOLD
