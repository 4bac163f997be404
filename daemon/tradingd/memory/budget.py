"""The byte budget shared by every cache attached to it.

Each cache enforces its own share under its own lock on every put; the budget
steps in when caches together overflow it, and then evicts the least recently
used entry across all of them until the total fits. The budget starts at
``caches.budget_mb`` and shrinks while containers hold memory grants (see
memory/grants.py): caches get what work does not.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

__all__ = ["BudgetMember", "CacheBudget"]

_MB = 1024 * 1024


class BudgetMember(Protocol):
    """What the budget needs of a cache (``BudgetMember`` is one)."""

    @property
    def bytes(self) -> int: ...

    def oldest_access(self) -> float | None:
        """When the least recently used entry was last used (``None`` when empty)."""

    def evict_oldest(self) -> int:
        """Evict the least recently used entry for size; return the bytes freed."""


class CacheBudget:
    """One byte budget shared by every cache attached to it."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError("cache budget must be positive")
        self.total_bytes = int(total_bytes)
        # Read without the lock by BudgetMember.put (the hot path), hence copy-on-write.
        self._caches: list[BudgetMember] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        used, total = self.used_bytes / _MB, self.total_bytes / _MB
        return f"<CacheBudget {used:.1f} of {total:.1f} MB, {len(self._caches)} caches>"

    @property
    def caches(self) -> tuple[BudgetMember, ...]:
        return tuple(self._caches)

    @property
    def used_bytes(self) -> int:
        return sum(cache.bytes for cache in self._caches)

    @property
    def overdrawn(self) -> bool:
        """Whether caches together exceed the budget (it may have shrunk since a cache was sized)."""
        return sum(cache.bytes for cache in self._caches) > self.total_bytes

    def resize(self, total_bytes: int) -> None:
        """Change the budget (the work budget lends to and borrows from it); :meth:`settle` enforces it."""
        self.total_bytes = max(1, int(total_bytes))

    def attach(self, cache: BudgetMember) -> None:
        with self._lock:
            if cache not in self._caches:
                self._caches = [*self._caches, cache]  # copy-on-write: readers never lock

    def detach(self, cache: BudgetMember) -> None:
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
            victim: BudgetMember | None = None
            oldest = math.inf
            for cache in self._caches:
                last = cache.oldest_access()
                if last is not None and last < oldest:
                    victim, oldest = cache, last
            if victim is None:
                return freed
            freed += victim.evict_oldest()
