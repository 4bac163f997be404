"""Named, thread-safe caches with LRU, TTL, entry and byte limits.

Every :class:`ManagedCache` draws from one :class:`CacheBudget` (see
:mod:`tradingd.memory.budget`, re-exported here), so the sum of all cache bytes
stays under ``caches.budget_mb`` however the caches are sized individually;
when the budget overflows, the least recently used entry across all caches
goes first.

Sizes come from :func:`tradingd.memory.sizeof.sizeof` once per put (never per
get), so the hot path is a dict lookup under one lock. Expiry is tracked in a
heap keyed by deadline, so :meth:`ManagedCache.purge_expired` releases expired
values without anyone touching them, in time proportional to what expired.

:meth:`ManagedCache.get_or_compute` is single-flight: when many threads miss
the same key at once, one computes and the others wait for its result
(:mod:`tradingd.memory.flight`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, TypeVar, cast

import numpy as np

from tradingd.memory.budget import CacheBudget
from tradingd.memory.flight import Flight
from tradingd.memory.sizeof import ARRAY_HEADER_BYTES, sizeof

__all__ = ["EVICTION_REASONS", "CacheBudget", "EvictionReason", "ManagedCache", "PersistedEntry"]

_MISS = object()

log = logging.getLogger(__name__)

EvictionReason = Literal["ttl", "lru", "size", "pressure"]
EVICTION_REASONS: tuple[EvictionReason, ...] = ("ttl", "lru", "size", "pressure")
# (key, value, absolute expiry as wall-clock seconds) — wall clock because a
# monotonic deadline means nothing to the next process.
PersistedEntry = tuple[Hashable, Any, float]

V = TypeVar("V")
_MB = 1024 * 1024


# An entry is a plain list, [value, nbytes, expires, last_access, seq]: creating
# and indexing a list is several times cheaper than a slotted object, and
# put/get are the hot path (bench/cache_vs_cachetools.py).
_Entry = list[Any]

_seq = itertools.count()
_heappush = heapq.heappush
_INF = math.inf


class ManagedCache:
    """A named LRU + TTL cache bounded by entries, bytes and a shared budget.

    Thread-safe: compute threads and the event loop use it concurrently.
    ``pinned`` caches survive pressure clears (they still shrink to low water);
    ``persistent`` caches are saved and loaded by the memory manager.
    """

    def __init__(
        self,
        name: str,
        *,
        budget: CacheBudget | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        ttl: float = 3600.0,
        persistent: bool = False,
        pinned: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.name = name
        self.budget = budget
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._ttl = float(ttl)  # fixed: default-TTL deadlines rely on insertion order
        self.persistent = persistent
        self.pinned = pinned
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()
        # Deadlines. Entries with the cache's own TTL expire in insertion
        # order (the clock is monotonic, the TTL constant), so an ordered dict
        # keeps them: O(1) to add and remove, purged from the front. Entries
        # given their own TTL go into a heap, whose stale items (replaced or
        # evicted keys) are recognised by their sequence number.
        self._deadlines: OrderedDict[Hashable, float] = OrderedDict()
        self._expiry: list[tuple[float, int, Hashable]] = []
        self._flights: dict[Hashable, Flight] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.rejected = 0
        self.evictions: dict[EvictionReason, int] = dict.fromkeys(EVICTION_REASONS, 0)
        self.evicted_bytes: dict[EvictionReason, int] = dict.fromkeys(EVICTION_REASONS, 0)
        caps = [c for c in (max_bytes, budget.total_bytes if budget else None) if c is not None]
        self._capacity: float = min(caps) if caps else math.inf
        if budget is not None:
            budget.attach(self)

    def __repr__(self) -> str:
        return f"<ManagedCache {self.name} {len(self._data)} entries {self._bytes / _MB:.1f} MB>"

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        entry = self._data.get(key)
        return entry is not None and entry[2] > self._clock()

    @property
    def ttl(self) -> float:
        """Seconds an entry lives unless ``put`` gives it its own ``ttl``."""
        return self._ttl

    @property
    def bytes(self) -> int:
        """Bytes held by live entries (as measured when they were put)."""
        return self._bytes

    @property
    def capacity_bytes(self) -> int | None:
        """The tighter of this cache's own cap and the shared budget, if any."""
        return None if self._capacity == math.inf else int(self._capacity)

    # --- reading and writing -------------------------------------------------

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The live value for ``key`` (and mark it recently used), else ``default``."""
        with self._lock:
            value = self._hit(key)
            if value is _MISS:
                self.misses += 1
                return default
            return value

    def _hit(self, key: Hashable) -> Any:
        """Under the lock: the live value (marked used, counted), or ``_MISS`` (an expired entry is dropped)."""
        entry = self._data.get(key)
        if entry is None:
            return _MISS
        now = self._clock()
        if entry[2] <= now:
            self._drop(key, entry, "ttl")
            return _MISS
        self._data.move_to_end(key)
        entry[3] = now
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any, *, ttl: float | None = None, nbytes: int | None = None) -> bool:
        """Store ``value``; returns False if it alone exceeds the cache's capacity.

        ``nbytes`` skips measuring when the caller already knows the size.
        """
        if nbytes is not None:
            size = int(nbytes)
        elif type(value) is np.ndarray and value.base is None and not value.dtype.hasobject:
            size = value.nbytes + ARRAY_HEADER_BYTES  # sizeof()'s fast path, inlined: put is hot
        else:
            size = sizeof(value)
        capacity = self._capacity
        if size > capacity:
            with self._lock:
                self.rejected += 1
                self._remove(key)
            return False
        data = self._data
        with self._lock:
            now = self._clock()
            old = data.pop(key, None)
            if old is not None:
                self._deadlines.pop(key, None)
            total = self._bytes + size - (old[1] if old is not None else 0)
            seq = next(_seq)
            expires = now + (self._ttl if ttl is None else ttl)
            data[key] = [value, size, expires, now, seq]
            if ttl is None:
                self._deadlines[key] = expires
            elif expires != _INF:
                expiry = self._expiry
                _heappush(expiry, (expires, seq, key))
                if len(expiry) > 2 * len(data) + 64:
                    self._compact_expiry()
            # Evict LRU entries for the entry limit, then for bytes: this
            # cache's cap and the whole budget, whichever is tighter, enforced
            # under our own lock; only a budget shared with other caches needs
            # the cross-cache settle below.
            self._bytes = total
            max_entries = self.max_entries
            if max_entries is not None:
                while len(data) > max_entries:
                    self._pop_lru("lru")
            while self._bytes > capacity:
                self._pop_lru("size")
        budget = self.budget
        if budget is not None and budget.overdrawn:
            budget.settle()
        return True

    def pop(self, key: Hashable) -> Any:
        """Remove ``key`` and return its value (``None`` if absent). Not counted as an eviction."""
        with self._lock:
            return self._remove(key)

    def _remove(self, key: Hashable) -> Any:
        """Under the lock: take ``key`` out (not an eviction); its value or ``None``."""
        entry = self._data.pop(key, None)
        if entry is None:
            return None
        self._deadlines.pop(key, None)
        self._bytes -= entry[1]
        return entry[0]

    def keys(self) -> list[Hashable]:
        """A snapshot of the keys, least recently used first."""
        with self._lock:
            return list(self._data)

    # --- single flight -------------------------------------------------------

    def get_or_compute(self, key: Hashable, compute: Callable[[], V], *, ttl: float | None = None) -> V:
        """The cached value for ``key``, computing it once however many threads ask.

        If ``compute`` raises, every caller waiting on that computation gets the
        exception and nothing is cached; if the leader is interrupted
        (``BaseException``), a waiter takes over.
        """
        while True:
            with self._lock:
                value = self._hit(key)
                if value is not _MISS:
                    return cast(V, value)
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = Flight()
                    self.misses += 1
                else:
                    self.coalesced += 1
            if not leader:
                flight.done.wait()
                if flight.retry:
                    continue
                if flight.error is not None:
                    raise flight.error
                return cast(V, flight.value)
            try:
                result = compute()
            except Exception as exc:
                self._land(key, flight, error=exc)
                raise
            except BaseException:
                self._land(key, flight, retry=True)
                raise
            self.put(key, result, ttl=ttl)
            self._land(key, flight, value=result)
            return result

    def _land(self, key: Hashable, flight: Flight, **outcome: Any) -> None:
        """Leader side: retire the flight, then wake its waiters with ``outcome``."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.finish(**outcome)

    # --- eviction ------------------------------------------------------------

    def _drop(self, key: Hashable, entry: _Entry, reason: EvictionReason) -> int:
        del self._data[key]
        self._deadlines.pop(key, None)
        self._bytes -= entry[1]
        self.evictions[reason] += 1
        self.evicted_bytes[reason] += entry[1]
        return int(entry[1])

    def _pop_lru(self, reason: EvictionReason) -> int:
        key = next(iter(self._data))
        return self._drop(key, self._data[key], reason)

    def _compact_expiry(self) -> None:
        deadlines = self._deadlines
        self._expiry = [(e[2], e[4], k) for k, e in self._data.items() if e[2] != _INF and k not in deadlines]
        heapq.heapify(self._expiry)

    def oldest_access(self) -> float | None:
        """When the least recently used entry was last used (``None`` when empty)."""
        with self._lock:
            if not self._data:
                return None
            return float(next(iter(self._data.values()))[3])

    def evict_oldest(self) -> int:
        """Evict the least recently used entry for size (the shared budget's call); return bytes freed."""
        with self._lock:
            return self._pop_lru("size") if self._data else 0

    def purge_expired(self) -> int:
        """Drop every expired entry now; return the bytes released."""
        freed = 0
        with self._lock:
            now = self._clock()
            deadlines, data = self._deadlines, self._data
            while deadlines:
                key, expires = next(iter(deadlines.items()))
                if expires > now:
                    break
                freed += self._drop(key, data[key], "ttl")
            heap = self._expiry
            while heap and heap[0][0] <= now:
                _, seq, key = heapq.heappop(heap)
                entry = self._data.get(key)
                if entry is not None and entry[4] == seq:
                    freed += self._drop(key, entry, "ttl")
        return freed

    def shrink_to(self, fraction: float, *, reason: EvictionReason = "pressure") -> int:
        """Evict least recently used entries down to ``fraction`` of capacity; return bytes freed.

        Capacity is the tighter of ``max_bytes`` and the budget; with neither,
        the current size. ``max_entries`` shrinks by the same fraction.
        """
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be within [0, 1]")
        freed = 0
        with self._lock:
            capacity = self.capacity_bytes
            target_bytes = fraction * (capacity if capacity is not None else self._bytes)
            target_entries = fraction * self.max_entries if self.max_entries is not None else math.inf
            while self._data and (self._bytes > target_bytes or len(self._data) > target_entries):
                freed += self._pop_lru(reason)
        return freed

    def clear(self, reason: EvictionReason = "pressure", *, force: bool = False) -> int:
        """Drop every entry (pinned caches ignore pressure clears unless ``force``); return bytes freed."""
        if self.pinned and reason == "pressure" and not force:
            return 0
        with self._lock:
            freed = self._bytes
            count = len(self._data)
            self._data.clear()
            self._deadlines.clear()
            self._expiry.clear()
            self._bytes = 0
            self.evictions[reason] += count
            self.evicted_bytes[reason] += freed
        return freed

    # --- persistence and stats -----------------------------------------------

    def export_entries(self) -> list[PersistedEntry]:
        """Live entries, least recently used first, with wall-clock expiry."""
        with self._lock:
            now, wall = self._clock(), time.time()
            return [(k, e[0], wall + (e[2] - now)) for k, e in self._data.items() if e[2] > now]

    def import_entries(self, entries: Iterable[PersistedEntry]) -> int:
        """Load persisted entries, skipping those already expired; return how many were loaded."""
        wall = time.time()
        return sum(1 for key, value, expires_at in entries
                   if expires_at > wall and self.put(key, value, ttl=expires_at - wall))

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, JSON-safe."""
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "entries": len(self._data),
                "bytes": self._bytes,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                "ttl_seconds": self.ttl,
                "hits": self.hits,
                "misses": self.misses,
                "coalesced": self.coalesced,
                "rejected": self.rejected,
                "hit_ratio": round(self.hits / lookups, 4) if lookups else None,
                "evictions": dict(self.evictions),
                "evicted_bytes": dict(self.evicted_bytes),
                "in_flight": len(self._flights),
                "persistent": self.persistent,
                "pinned": self.pinned,
            }
