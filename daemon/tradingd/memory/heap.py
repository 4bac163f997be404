"""glibc's mmap threshold under a tight memory limit: large blocks go back to the kernel when freed.

glibc serves an allocation above its mmap threshold with a mapping of its own,
returned to the kernel by ``free``; below it, from the heap, where freed
memory stays mapped until a trim finds whole free pages. The threshold starts
at 128 KiB but *rises* each time such a mapping is freed, up to 32 MiB, so
after the first sweeps numpy's block temporaries (megabytes each) land in the
heap between small objects, and a heap fragmented that way is only partly
returned by ``malloc_trim``. Fixing the threshold stops the rise: measured
with four of the squeeze SMA containers in a row (four executor threads),
anonymous RSS peaked at 209 MB instead of 236 and kept 168 MB after the run
instead of 193. Each large block then costs a mapping and its page faults, so
the daemon fixes it only when the limit is tight; ``MALLOC_MMAP_THRESHOLD_``
in the environment wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["LEAN_LIMIT_BYTES", "MMAP_THRESHOLD_BYTES", "fix_mmap_threshold"]

# Below this limit every megabyte counts more than the page faults of a mapping per large block.
LEAN_LIMIT_BYTES = 1024 * 2**20
MMAP_THRESHOLD_BYTES = 256 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def fix_mmap_threshold(limit_bytes: int) -> int | None:
    """Fix glibc's mmap threshold when ``limit_bytes`` is tight; the threshold in force, or None (glibc's)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or limit_bytes >= LEAN_LIMIT_BYTES:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or getattr(libc, "malloc_trim", None) is None:  # not glibc (musl has no trim)
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return MMAP_THRESHOLD_BYTES if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 else None
