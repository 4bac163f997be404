"""The work budget: containers' working memory, granted in bytes from what the limit allows.

Caches and models are bounded by the cleanup ladder; the working memory of
containers (sweep blocks, kept trades, result documents) is bounded here.
Before a container runs it asks for a :class:`Grant` between its *minimum*
(the smallest block it can run in) and its *estimate* (its peak when nothing
limits it)::

    grant = await budget.acquire("run/phase/SYM01-0000", estimate=e, minimum=m)
    try:
        ...  # run with chunk_bytes derived from grant.bytes, read at each block boundary
    finally:
        grant.release()

What work may hold (``capacity``) is the ``pressure`` mark minus the
process baseline minus the floors of caches and models (what the ladder never
frees); the baseline is the start-up figure or, when larger, the usage now not
explained by grants, caches and models (imports and heap fragmentation grow
it). What it may hold *now* also leaves out what caches and models hold above
their floor; granting may first ask caches to yield (``reclaim``), and
``on_change(granted)`` lets the caches' own budget shrink by what is granted,
so caches cannot grow back into memory lent to work. Waiters are served first
come, first served: a small request never overtakes a large one that arrived
earlier, so nothing starves.

Under ``critical`` pressure every grant shrinks toward its minimum (containers
take smaller blocks from their next block boundary) and nobody new is granted;
when the level falls below ``pressure`` grants grow back toward their estimates.

All methods run on the event loop, except the thread-safe reads of
:attr:`Grant.bytes` from worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tradingd.memory.monitor import PressureLevel

__all__ = ["Grant", "GrantRefused", "MemoryBudget"]

log = logging.getLogger(__name__)

_MB = 1024 * 1024


class GrantRefused(MemoryError):
    """A container's minimum exceeds what the memory limit can ever grant."""


@dataclass(eq=False)
class Grant:
    """Bytes of working memory granted to one container (shrinks under critical pressure)."""

    owner: str
    estimate: int
    minimum: int
    requested_at: float
    granted: int = 0
    wait_seconds: float = 0.0
    _budget: MemoryBudget | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def bytes(self) -> int:
        """What the holder may use from its next block boundary on (thread-safe)."""
        with self._lock:
            return self.granted

    def release(self) -> None:
        """Hand the bytes back to the budget (idempotent)."""
        if self._budget is not None:
            self._budget.release(self)

    def _set(self, value: int) -> int:
        with self._lock:
            old, self.granted = self.granted, value
        return value - old


class MemoryBudget:
    """What the memory limit allows for work, granted to containers first come, first served.

    ``held_above_floor`` returns the bytes caches and models hold above their
    floor now; ``reclaim(n)`` asks them to free about ``n`` bytes (run in a
    worker thread; returns bytes freed). ``floor_bytes`` is what they keep even
    under critical pressure. ``shrink_to`` is the fraction of its current
    grant a container keeps under critical pressure (never below its minimum).
    """

    def __init__(
        self,
        *,
        limit_bytes: int,
        pressure_bytes: int,
        baseline_bytes: int,
        floor_bytes: Callable[[], int] = lambda: 0,
        held_above_floor: Callable[[], int] = lambda: 0,
        reclaim: Callable[[int], int] | None = None,
        on_change: Callable[[int], None] | None = None,
        usage: Callable[[], int | None] | None = None,
        shrink_to: float = 0.5,
    ) -> None:
        self.limit_bytes = int(limit_bytes)
        self.pressure_bytes = int(pressure_bytes)
        self.baseline_bytes = int(baseline_bytes)
        self._floor = floor_bytes
        self._held = held_above_floor
        self._reclaim = reclaim
        self._on_change = on_change
        self._usage = usage
        self.shrink_to = shrink_to
        self.level = PressureLevel.NORMAL
        self._grants: list[Grant] = []
        self._waiting: deque[Grant] = deque()
        self._changed = asyncio.Event()
        self._told = 0  # the granted bytes on_change last heard
        self.granted_total = 0
        self.refused_total = 0
        self.shrinks = 0
        self.wait_seconds_total = 0.0
        self.reclaimed_bytes_total = 0
        self.max_wait_seconds = 0.0
        # Per container kind: the largest relative estimate-vs-peak error seen, and the last one.
        self.estimate_errors: dict[str, dict[str, float]] = {}

    def __repr__(self) -> str:
        return (f"<MemoryBudget {self.granted_bytes / _MB:.1f} of {self.capacity / _MB:.1f} MB granted, "
                f"{len(self._grants)} grants, {len(self._waiting)} waiting, level={self.level.label}>")

    # --- figures ---------------------------------------------------------------

    @property
    def unaccounted_bytes(self) -> int:
        """The baseline as it is now: usage not explained by grants, caches and models.

        It grows past the start-up baseline as the daemon imports libraries
        (scikit-learn) and its heap fragments; never counted below the start-up
        figure, so containers using less than their grant do not inflate the budget.
        """
        used = self._usage() if self._usage is not None else None
        if used is None:
            return self.baseline_bytes
        return max(self.baseline_bytes, used - self.granted_bytes - self._held() - self._floor())

    @property
    def capacity(self) -> int:
        """What work may hold: the pressure mark minus the baseline (as it is now) and the floors."""
        return max(0, self.pressure_bytes - self.unaccounted_bytes - self._floor())

    @property
    def granted_bytes(self) -> int:
        return sum(g.bytes for g in self._grants)

    def available(self) -> int:
        """What may be granted now without shrinking caches (may be negative)."""
        return self.capacity - self.granted_bytes - self._held()

    # --- acquiring and releasing ---------------------------------------------

    async def acquire(self, owner: str, *, estimate: int, minimum: int) -> Grant:
        """A grant between ``minimum`` and ``estimate`` bytes, once the queue reaches us and it fits.

        Raises :class:`GrantRefused` at once when ``minimum`` exceeds
        :attr:`capacity` (no amount of waiting would help).
        """
        minimum = max(1, int(minimum))
        estimate = max(minimum, int(estimate))
        ceiling = self.pressure_bytes - self.baseline_bytes - self._floor()
        if minimum > ceiling:
            self.refused_total += 1
            raise GrantRefused(
                f"{owner}: needs at least {minimum / _MB:.1f} MB of working memory (estimate "
                f"{estimate / _MB:.1f} MB), but the memory limit of {self.limit_bytes / _MB:.0f} MB allows at most "
                f"{ceiling / _MB:.1f} MB for work (pressure mark {self.pressure_bytes / _MB:.0f} MB minus "
                f"baseline {self.baseline_bytes / _MB:.0f} MB and cache/model floors); raise MemoryMax/--memory "
                f"or split the work (smaller execution.chunk_size / batch_size)")
        grant = Grant(owner=owner, estimate=estimate, minimum=minimum, requested_at=time.monotonic(), _budget=self)
        self._waiting.append(grant)
        try:
            while True:
                changed = self._changed
                if self._waiting[0] is grant and self.level < PressureLevel.CRITICAL:
                    size = await self._fit(grant)
                    if size is not None and self.level < PressureLevel.CRITICAL:
                        self._waiting.popleft()
                        self._give(grant, size)
                        self._notify()  # the next in line may fit too
                        return grant
                    changed = self._changed
                await changed.wait()
        except BaseException:
            if grant in self._waiting:
                self._waiting.remove(grant)
                self._notify()
            raise

    def release(self, grant: Grant) -> None:
        """Return ``grant``'s bytes (idempotent) and wake whoever waits."""
        if grant in self._grants:
            self._grants.remove(grant)
            grant._set(0)
            self._notify()

    async def _fit(self, grant: Grant) -> int | None:
        """What ``grant`` may have now (asking caches to yield first), or None: wait."""
        free = self.available()
        if free < grant.estimate and self._reclaim is not None and self._held() > 0:
            freed = await asyncio.to_thread(self._reclaim, grant.estimate - free)
            self.reclaimed_bytes_total += freed
            free = self.available()
        if free < grant.minimum and self._grants:
            return None  # wait for a release (or a level change)
        # Alone, a container always gets its minimum: nothing else would free memory for it.
        return max(grant.minimum, min(grant.estimate, free))

    def _give(self, grant: Grant, size: int) -> None:
        grant._set(size)
        grant.wait_seconds = time.monotonic() - grant.requested_at
        self.wait_seconds_total += grant.wait_seconds
        self.max_wait_seconds = max(self.max_wait_seconds, grant.wait_seconds)
        self.granted_total += 1
        self._grants.append(grant)
        log.debug("granted %s %.1f MB (estimate %.1f, waited %.2f s)", grant.owner, size / _MB,
                  grant.estimate / _MB, grant.wait_seconds)

    def _notify(self) -> None:
        """Tell the caches what is granted (if that changed); wake every waiter (each checks if it is next)."""
        granted = self.granted_bytes
        if self._on_change is not None and granted != self._told:
            self._told = granted
            self._on_change(granted)
        self._changed.set()
        self._changed = asyncio.Event()

    # --- pressure ----------------------------------------------------------------

    def on_level(self, level: PressureLevel) -> None:
        """Follow the monitor: shrink grants at ``critical``, grow them back below ``pressure``."""
        previous, self.level = self.level, level
        if level >= PressureLevel.CRITICAL and previous < PressureLevel.CRITICAL:
            for grant in self._grants:
                smaller = max(grant.minimum, int(grant.bytes * self.shrink_to))
                if smaller < grant.bytes:
                    grant._set(smaller)
                    self.shrinks += 1
            log.warning("critical memory pressure: grants shrunk to %.1f MB", self.granted_bytes / _MB)
        elif level < PressureLevel.PRESSURE <= previous or (level < PressureLevel.CRITICAL <= previous):
            self._grow()
        self._notify()

    def _grow(self) -> None:
        """Give shrunk grants back toward their estimates, oldest first, as far as the budget allows."""
        if self.level >= PressureLevel.PRESSURE:
            return
        for grant in sorted(self._grants, key=lambda g: g.requested_at):
            missing = grant.estimate - grant.bytes
            if missing > 0:
                grant._set(grant.bytes + max(0, min(missing, self.available())))

    def observe(self, kind: str, *, estimate: int, peak: int) -> None:
        """Record a finished container's measured peak against its estimate (for /stats)."""
        if estimate <= 0:
            return
        error = (peak - estimate) / estimate
        seen = self.estimate_errors.setdefault(kind, {"count": 0, "largest_error": 0.0})
        seen["count"] += 1
        if abs(error) >= abs(seen["largest_error"]):
            seen["largest_error"] = round(error, 4)
        seen["last_error"] = round(error, 4)

    # --- stats -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """JSON-safe: budget, granted bytes, grants held, waiters and their estimates."""
        now = time.monotonic()
        return {
            "limit_bytes": self.limit_bytes,
            "pressure_bytes": self.pressure_bytes,
            "baseline_bytes": self.baseline_bytes,
            "unaccounted_bytes": self.unaccounted_bytes,
            "capacity_bytes": self.capacity,
            "granted_bytes": self.granted_bytes,
            "available_bytes": self.available(),
            "level": self.level.label,
            "grants": [{"owner": g.owner, "bytes": g.bytes, "estimate_bytes": g.estimate,
                        "minimum_bytes": g.minimum} for g in self._grants],
            "waiting": [{"owner": w.owner, "estimate_bytes": w.estimate, "minimum_bytes": w.minimum,
                         "waited_seconds": round(now - w.requested_at, 3)} for w in self._waiting],
            "granted_total": self.granted_total,
            "refused_total": self.refused_total,
            "shrinks_total": self.shrinks,
            "reclaimed_bytes_total": self.reclaimed_bytes_total,
            "wait_seconds_total": round(self.wait_seconds_total, 3),
            "max_wait_seconds": round(self.max_wait_seconds, 3),
            "estimate_errors": {kind: dict(seen) for kind, seen in self.estimate_errors.items()},
            "largest_estimate_error": max((abs(s["largest_error"]) for s in self.estimate_errors.values()),
                                          default=0.0),
        }
