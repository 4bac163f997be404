"""The byte budget shared by every :class:`~tradingd.memory.cache.ManagedCache`.

Each cache enforces its own share under its own lock on every put; the budget
only steps in when caches *together* overflow ``caches.budget_mb``, and then
evicts the least recently used entry across all of them until the total fits.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tradingd.memory.cache import ManagedCache

__all__ = ["CacheBudget"]

_MB = 1024 * 1024


class CacheBudget:
    """One byte budget shared by every cache attached to it."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError("cache budget must be positive")
        self.total_bytes = int(total_bytes)
        # Read without the lock by ManagedCache.put (the hot path), hence copy-on-write.
        self._caches: list[ManagedCache] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        used, total = self.used_bytes / _MB, self.total_bytes / _MB
        return f"<CacheBudget {used:.1f} of {total:.1f} MB, {len(self._caches)} caches>"

    @property
    def caches(self) -> tuple[ManagedCache, ...]:
        return tuple(self._caches)

    @property
    def used_bytes(self) -> int:
        return sum(cache.bytes for cache in self._caches)

    def attach(self, cache: ManagedCache) -> None:
        with self._lock:
            if cache not in self._caches:
                self._caches = [*self._caches, cache]  # copy-on-write: readers never lock

    def detach(self, cache: ManagedCache) -> None:
        with self._lock:
            self._caches = [c for c in self._caches if c is not cache]

    def settle(self) -> int:
        """Evict globally least recently used entries until the budget holds; return bytes freed.

        Runs outside every cache's lock and takes one cache lock at a time, so
        two caches settling at once cannot deadlock.
        """
        freed = 0
        while True:
            over = self.used_bytes - self.total_bytes
            if over <= 0:
                return freed
            victim: ManagedCache | None = None
            oldest = math.inf
            for cache in self._caches:
                last = cache._oldest_access()
                if last is not None and last < oldest:
                    victim, oldest = cache, last
            if victim is None:
                return freed
            freed += victim._evict_oldest("size")
