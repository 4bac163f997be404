"""The cleanup ladder and the periodic cleanup loop (admission lives in admission.py).

Levels and what each runs (every step counted with bytes freed and duration):

- ``gc``: ``gc.collect()``.
- ``pressure``: purge expired cache entries, shrink every cache to its
  low-water mark by LRU, demote idle models, ``gc.collect()``, then give freed
  heap back to the OS with glibc ``malloc_trim(0)`` — without it, memory that
  Python and numpy freed stays mapped in the process and RSS does not fall.
- ``critical``: as ``pressure`` but clear every unpinned cache and demote every
  unleased model, and pause :class:`~tradingd.memory.admission.Admission` of new
  containers until the level is below ``pressure`` again.

Bytes freed by cache and model steps come from their own accounting; for
``gc_collect`` and ``malloc_trim`` they are the fall in anonymous RSS.

Outside the ladder, the loop also trims once work has settled (no container
holds working memory and some finished since the last trim), at most every
``trim_interval`` seconds (5): a run frees tens of MB in the worker threads'
malloc arenas, and without a trim glibc keeps those pages mapped, so anonymous
RSS creeps up run after run (bench/disk_soak.py) although nothing leaks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tradingd.memory import malloc
from tradingd.memory.admission import Admission
from tradingd.memory.cache import ManagedCache
from tradingd.memory.models import ModelRegistry
from tradingd.memory.monitor import PressureLevel
from tradingd.periodic import poll

__all__ = [
    "ACTIONS",
    "CleanupAction",
    "CleanupLadder",
    "cleanup_loop",
    "parse_level",
]

log = logging.getLogger(__name__)

ACTIONS = (
    "gc_collect",
    "purge_expired",
    "shrink_caches",
    "clear_caches",
    "evict_idle_models",
    "evict_all_models",
    "malloc_trim",
    "ttl_sweep",
    "model_sweep",
)


def parse_level(level: PressureLevel | str | int) -> PressureLevel:
    """``"pressure"``, ``2`` or ``PressureLevel.PRESSURE`` → ``PressureLevel.PRESSURE``."""
    if isinstance(level, PressureLevel):
        return level
    if isinstance(level, str):
        try:
            return PressureLevel[level.strip().upper()]
        except KeyError:
            names = ", ".join(lvl.label for lvl in PressureLevel)
            raise ValueError(f"unknown level {level!r}; expected one of {names}") from None
    return PressureLevel(level)


@dataclass(frozen=True, slots=True)
class CleanupAction:
    """One step the ladder (or a sweep) took."""

    time: float
    level: str
    action: str
    freed_bytes: int
    duration_seconds: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CleanupLadder:
    """Runs the cleanup steps for a pressure level and keeps their record.

    ``caches`` is called each run (caches may come and go); ``usage`` returns
    anonymous RSS in bytes now, used to measure what collection and trimming
    gave back.

    Threads: ladder runs take ``_run_lock`` (one at a time: the loop and
    ``POST /admin/cleanup`` share the ladder); the counters and the record of
    recent actions change only under ``_counters_lock``, which sweeps (run from
    worker threads beside a ladder run) and :meth:`stats` take too.
    """

    def __init__(
        self,
        caches: Callable[[], Iterable[ManagedCache]],
        *,
        models: ModelRegistry | None,
        admission: Admission,
        usage: Callable[[], int],
        low_water: float = 0.6,
        malloc_trim: bool = True,
        history_size: int = 200,
        malloc_arena_max: int | None = None,
        mmap_threshold: int | None = None,
    ) -> None:
        self._caches = caches
        self.models = models
        self.admission = admission
        self._usage = usage
        self.low_water = low_water
        self.trim_enabled = malloc_trim and malloc.malloc_trim_available()
        self.malloc_arena_max = malloc_arena_max  # what limit_malloc_arenas put in force (for /stats)
        self.mmap_threshold = mmap_threshold  # what malloc.pin_malloc_thresholds put in force (for /stats)
        self.recent: deque[CleanupAction] = deque(maxlen=history_size)
        self.counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        self.freed: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        self.seconds: dict[str, float] = dict.fromkeys(ACTIONS, 0.0)
        self.runs: dict[str, int] = {lvl.label: 0 for lvl in PressureLevel}
        self._run_lock = threading.Lock()
        self._counters_lock = threading.Lock()

    def __repr__(self) -> str:
        freed = sum(self.freed.values()) / 2**20
        return f"<CleanupLadder runs={sum(self.runs.values())} freed={freed:.1f} MB trim={self.trim_enabled}>"

    # --- steps ---------------------------------------------------------------

    def _record(self, level: str, action: str, freed: int, started: float, detail: str = "") -> CleanupAction:
        duration = time.perf_counter() - started
        step = CleanupAction(time.time(), level, action, max(int(freed), 0), round(duration, 6), detail)
        with self._counters_lock:
            self.counts[action] += 1
            self.freed[action] += step.freed_bytes
            self.seconds[action] += duration
            self.recent.append(step)
        return step

    def _cache_step(self, level: str, action: str, fn: Callable[[ManagedCache], int]) -> CleanupAction:
        started = time.perf_counter()
        freed = sum(fn(cache) for cache in self._caches())
        return self._record(level, action, freed, started)

    def _rss_step(self, level: str, action: str, fn: Callable[[], int]) -> CleanupAction:
        started = time.perf_counter()
        before = self._usage()
        result = fn()
        return self._record(level, action, before - self._usage(), started, detail=f"result={result}")

    def collect(self, level: str = "gc") -> CleanupAction:
        return self._rss_step(level, "gc_collect", gc.collect)

    def trim(self, level: str = "pressure") -> CleanupAction | None:
        if not self.trim_enabled:
            return None
        return self._rss_step(level, "malloc_trim", malloc.malloc_trim)

    def sweep_expired(self) -> CleanupAction:
        """Periodic TTL sweep: release expired entries nobody touched."""
        return self._cache_step("normal", "ttl_sweep", lambda c: c.purge_expired())

    def sweep_models(self) -> CleanupAction | None:
        """Periodic idle-model sweep: demote models idle past ``idle_seconds``."""
        if self.models is None:
            return None
        started = time.perf_counter()
        return self._record("normal", "model_sweep", self.models.evict_idle(), started)

    # --- the ladder ----------------------------------------------------------

    def run(self, level: PressureLevel | str | int) -> dict[str, Any]:
        """Run every step for ``level`` now; return a report of what was freed."""
        lvl = parse_level(level)
        with self._run_lock:
            started = time.perf_counter()
            usage_before = self._usage()
            steps = self._steps(lvl)
            with self._counters_lock:
                self.runs[lvl.label] += 1
            usage_after = self._usage()
        freed = sum(s.freed_bytes for s in steps)
        duration = time.perf_counter() - started
        if steps:
            log.info(
                "cleanup %s freed %.1f MB in %.3f s (anon RSS %.1f -> %.1f MB)",
                lvl.label,
                freed / 2**20,
                duration,
                usage_before / 2**20,
                usage_after / 2**20,
            )
        report = {
            "level": lvl.label,
            "actions": [s.as_dict() for s in steps],
            "freed_bytes": freed,
            "anon_rss_before_bytes": usage_before,
            "anon_rss_after_bytes": usage_after,
            "duration_seconds": round(duration, 6),
            "admission_paused": self.admission.paused,
        }
        return report

    def _steps(self, lvl: PressureLevel) -> list[CleanupAction]:
        label = lvl.label
        steps: list[CleanupAction] = []
        if lvl == PressureLevel.NORMAL:
            return steps
        if lvl == PressureLevel.GC:
            return [self.collect(label)]
        if lvl == PressureLevel.CRITICAL:
            # Refuse new work first: clearing is pointless if new containers refill at once.
            self.admission.pause("critical memory pressure")
        steps.append(self._cache_step(label, "purge_expired", lambda c: c.purge_expired()))
        if lvl == PressureLevel.PRESSURE:
            steps.append(self._cache_step(label, "shrink_caches", lambda c: c.shrink_to(self.low_water)))
        else:
            # Pinned caches are exempt from clears but still go down to low water.
            steps.append(
                self._cache_step(
                    label, "clear_caches", lambda c: c.shrink_to(self.low_water) if c.pinned else c.clear("pressure")
                )
            )
        if self.models is not None:
            started = time.perf_counter()
            if lvl == PressureLevel.PRESSURE:
                steps.append(self._record(label, "evict_idle_models", self.models.evict_idle(), started))
            else:
                steps.append(self._record(label, "evict_all_models", self.models.evict_idle(force=True), started))
        steps.append(self.collect(label))
        trimmed = self.trim(label)
        if trimmed is not None:
            steps.append(trimmed)
        return steps

    def stats(self) -> dict[str, Any]:
        """Counters and the most recent actions, JSON-safe."""
        with self._counters_lock:
            return {
                "runs": dict(self.runs),
                "actions": {
                    name: {
                        "count": self.counts[name],
                        "freed_bytes": self.freed[name],
                        "seconds": round(self.seconds[name], 6),
                    }
                    for name in ACTIONS
                },
                "freed_bytes_total": sum(self.freed.values()),
                "malloc_trim": self.trim_enabled,
                "malloc_arena_max": self.malloc_arena_max,
                "mmap_threshold_bytes": self.mmap_threshold,
                "low_water": self.low_water,
                "recent": [a.as_dict() for a in list(self.recent)[-50:]],
            }


async def cleanup_loop(
    ladder: CleanupLadder,
    level: Callable[[], PressureLevel],
    *,
    stop: asyncio.Event,
    interval: float = 1.0,
    ttl_sweep_interval: float = 30.0,
    model_sweep_interval: float = 30.0,
    repeat_interval: float = 10.0,
    wake: asyncio.Event,
    after_ladder: Callable[[], object] | None = None,
    persist: Callable[[], object] | None = None,
    persist_interval: float = 300.0,
    work_settled: Callable[[], int | None] | None = None,
    trim_interval: float = 5.0,
) -> None:
    """The cleanup task: react to level changes, sweep on intervals, until ``stop``.

    ``level`` reads the current pressure level (the monitor samples on its own
    interval); ``wake`` (set by the monitor on a level change) cuts the wait
    short. While the level stays at ``gc`` or above, the ladder reruns every
    ``repeat_interval`` seconds rather than every tick: collecting a large
    heap every second would cost more than it frees. ``after_ladder`` (a
    fresh monitor sample) runs after each ladder so admission resumes as soon
    as usage has fallen. ``work_settled`` returns how many containers have been
    given memory so far, or None while one holds some: when that count moved
    since the last trim and nothing is held, the loop gives freed heap back to
    the OS (``malloc_trim``, level ``normal``), at most every ``trim_interval``
    seconds. Blocking work runs in a worker thread, so the event loop (and
    ``/health``) stays responsive.
    """
    loop = asyncio.get_running_loop()
    last_level = PressureLevel.NORMAL
    last_ladder = -float("inf")
    next_ttl = loop.time() + ttl_sweep_interval
    next_models = loop.time() + model_sweep_interval
    next_persist = loop.time() + persist_interval
    next_trim = loop.time()
    trimmed_after = 0  # the work_settled count at the last trim
    async for now in poll(stop, interval, wake=wake, first_delay=0):
        try:
            current = level()
            if current > PressureLevel.NORMAL and (current != last_level or now - last_ladder >= repeat_interval):
                await asyncio.to_thread(ladder.run, current)
                last_ladder = loop.time()
                if after_ladder is not None:
                    after_ladder()
                    current = level()
            if current < PressureLevel.PRESSURE and ladder.admission.paused:
                ladder.admission.resume()
            last_level = current
            if now >= next_ttl:
                await asyncio.to_thread(ladder.sweep_expired)
                next_ttl = now + ttl_sweep_interval
            if now >= next_models:
                await asyncio.to_thread(ladder.sweep_models)
                next_models = now + model_sweep_interval
            if work_settled is not None and now >= next_trim:
                settled = work_settled()
                if settled is not None and settled != trimmed_after:
                    trimmed_after = settled
                    next_trim = now + trim_interval
                    await asyncio.to_thread(ladder.trim, "normal")
            if persist is not None and now >= next_persist:
                await asyncio.to_thread(persist)
                next_persist = now + persist_interval
        except Exception:
            log.exception("cleanup tick failed")
