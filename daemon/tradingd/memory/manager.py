"""The memory manager: caches, models, admission and the cleanup task, from config.

The supervisor owns one :class:`MemoryManager`. Containers reach the pieces
through it::

    cache = memory.cache("indicators")           # a ManagedCache
    sma = cache.get_or_compute(key, compute)     # single-flight, thread-safe
    await memory.admission.wait()                # before a container starts
    with memory.models.use("ml:AAPL") as model:  # leased: never demoted inside
        ...

Nothing here is needed for correctness: an evicted entry or a collected model
only costs the time to compute or load it again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from pathlib import Path
from typing import Any

from tradingd.config import CacheSettings, Config
from tradingd.memory.admission import Admission
from tradingd.memory.cache import CacheBudget, ManagedCache, PersistedEntry
from tradingd.memory.cleanup import CleanupLadder, cleanup_loop
from tradingd.memory.grants import MemoryBudget
from tradingd.memory.malloc import limit_malloc_arenas, pin_malloc_thresholds
from tradingd.memory.models import ModelRegistry
from tradingd.memory.monitor import Monitor, PressureLevel
from tradingd.stats import StatsBoard
from tradingd.storage.codec import CodecSettings, load_or_create_secret, read_state, write_state

__all__ = ["CACHE_FILE_FORMAT", "MemoryManager"]

log = logging.getLogger(__name__)

_MB = 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CACHE_FILE_FORMAT = "tradingd-cache/1"
# Persisting a cache holds its encoded copy beside it: bytes needed per byte cached.
PERSIST_FACTOR = 1.5


class MemoryManager:
    """Builds the caches and model registry from config and runs the cleanup task."""

    def __init__(self, config: Config, monitor: Monitor, *, state_dir: Path | None = None) -> None:
        self.config = config
        self.monitor = monitor
        self.state_dir = Path(state_dir) if state_dir is not None else config.state_dir
        self.cache_dir = self.state_dir / "caches"
        self.quarantine_dir = self.state_dir / "quarantine"
        self.codec_settings = CodecSettings.from_config(config.storage.compression)
        self._secret: bytes | None = None
        # A cache budget above the memory limit can never be honoured: cap it at
        # the gc mark, so caches alone never push the daemon into pressure.
        configured = int(config.caches.budget_mb * _MB)
        ceiling = int(monitor.limit.bytes * config.memory.thresholds.gc)
        self.budget_source = "config" if configured <= ceiling else "memory limit"
        if configured > ceiling:
            log.warning(
                "caches.budget_mb %.0f MB exceeds %.0f%% of the %.0f MB memory limit (%s); using %.0f MB",
                configured / _MB,
                config.memory.thresholds.gc * 100,
                monitor.limit.bytes / _MB,
                monitor.limit.source,
                ceiling / _MB,
            )
        self.budget = CacheBudget(min(configured, ceiling))
        self.cache_ceiling = self.budget.total_bytes
        self.caches: dict[str, ManagedCache] = {}
        for name, settings in config.caches.entries.items():
            self._build_cache(name, settings)
        self.models = ModelRegistry(
            self.state_dir / "models",
            secret=self._load_secret,
            idle_seconds=config.models.idle_seconds,
            quarantine_dir=self.quarantine_dir,
            settings=self.codec_settings,
        )
        self.admission = Admission()
        # Fixed, so that freeing one large block cannot retune glibc for the rest of the daemon's life.
        thresholds = pin_malloc_thresholds(monitor.limit.bytes)
        self.ladder = CleanupLadder(
            lambda: list(self.caches.values()),
            models=self.models,
            admission=self.admission,
            usage=monitor.usage_now,
            low_water=config.caches.low_water,
            malloc_trim=config.cleanup.malloc_trim,
            # Before any worker thread exists: arenas made earlier stay.
            malloc_arena_max=limit_malloc_arenas(config.cleanup.malloc_arena_max),
            mmap_threshold=thresholds[0] if thresholds is not None else None,
        )
        # Containers' working memory; the baseline is measured in start(), once the daemon is built.
        self.work = MemoryBudget(
            limit_bytes=monitor.limit.bytes,
            pressure_bytes=monitor.marks_bytes()["pressure"],
            baseline_bytes=0,
            floor_bytes=self._cache_floor,
            held_above_floor=self._held_above_floor,
            reclaim=self._reclaim_for_work,
            on_change=self._lend_to_work,
            usage=lambda: monitor.latest.used_bytes if monitor.latest is not None else None,
        )
        self._wake = asyncio.Event()
        monitor.add_listener(self._level_changed)
        self.persisted_at: float | None = None
        self.last_persist: dict[str, int] = {}
        # Saving before loading would overwrite the files with empty caches.
        self.loaded = False

    def __repr__(self) -> str:
        return (
            f"<MemoryManager {len(self.caches)} caches {self.budget.used_bytes / _MB:.1f}"
            f"/{self.budget.total_bytes / _MB:.0f} MB, {self.models!r}, {self.admission!r}>"
        )

    # --- caches ----------------------------------------------------------------

    def _build_cache(self, name: str, settings: CacheSettings) -> ManagedCache:
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"cache name {name!r} must match {_SAFE_NAME.pattern}")
        cache = ManagedCache(
            name,
            budget=self.budget,
            max_entries=settings.max_entries,
            max_bytes=int(settings.max_mb * _MB) if settings.max_mb is not None else None,
            ttl=settings.ttl if settings.ttl is not None else self.config.caches.default_ttl,
            persistent=settings.persistent,
            pinned=settings.pinned,
        )
        self.caches[name] = cache
        return cache

    def cache(self, name: str) -> ManagedCache:
        """The cache called ``name``; one not in the config is created with default settings."""
        found = self.caches.get(name)
        if found is not None:
            return found
        return self._build_cache(name, CacheSettings())

    # --- the work budget ---------------------------------------------------------

    def measure_baseline(self) -> int:
        """Set the work budget's baseline: usage now, less what caches and models hold.

        Called by the supervisor once the daemon is built and before any run starts. What is
        built by then lives as long as the daemon, so it is also frozen out of the cyclic
        collector: a full collection during a run then walks the run's objects only (before,
        each walked the whole heap under the GIL, stalling the event loop 40-90 ms).
        """
        gc.collect()
        gc.freeze()
        held = self.budget.used_bytes + int(self.models.stats()["resident_bytes"])
        self.work.baseline_bytes = max(0, self.monitor.usage_now() - held)
        self._lend_to_work(self.work.granted_bytes)
        log.info("work budget: %.0f MB (pressure mark %.0f MB, baseline %.0f MB)", self.work.capacity / _MB,
                 self.work.pressure_bytes / _MB, self.work.baseline_bytes / _MB)
        return self.work.baseline_bytes

    def _lend_to_work(self, granted: int) -> None:
        """Caches get what the limit allows less the baseline and what work holds (at most their ceiling)."""
        room = self.work.pressure_bytes - self.work.baseline_bytes - granted
        self.budget.resize(max(self._cache_floor(), min(self.cache_ceiling, room)))

    def _cache_floor(self) -> int:
        # What the ladder keeps even at critical: pinned caches down to low water.
        return sum(self._pinned_floor(cache) for cache in self.caches.values() if cache.pinned)

    def _pinned_floor(self, cache: ManagedCache) -> int:
        share = int(self.config.caches.low_water * (cache.capacity_bytes or cache.bytes))
        return min(cache.bytes, share)

    def _held_above_floor(self) -> int:
        return max(0, self.budget.used_bytes - self._cache_floor()) + int(self.models.stats()["resident_bytes"])

    def _reclaim_for_work(self, wanted: int) -> int:
        """Caches yield to grants: evict least recently used entries until ``wanted`` bytes are free."""
        freed = self.budget.settle()
        while freed < wanted:
            candidates = [c for c in self.caches.values()
                          if c.oldest_access() is not None and (not c.pinned or c.bytes > self._pinned_floor(c))]
            if not candidates:
                break
            victim = min(candidates, key=lambda c: c.oldest_access() or 0.0)
            got = victim.evict_oldest()
            if got <= 0:
                break
            freed += got
        return freed

    # --- persistence -----------------------------------------------------------

    def _load_secret(self) -> bytes:
        if self._secret is None:
            self._secret = load_or_create_secret(self.state_dir)
        return self._secret

    def _cache_path(self, name: str) -> Path:
        return self.cache_dir / f"{name}.cache"

    def load_persisted(self) -> dict[str, int]:
        """Load every persistent cache's file (expired entries skipped); entries loaded per cache.

        Reads the state secret first, whether or not a cache file exists, so a
        damaged ``secret.key`` stops start-up (:class:`SecretError`) rather than
        the first save.
        """
        self._load_secret()
        loaded: dict[str, int] = {}
        for name, cache in self.caches.items():
            if not cache.persistent:
                continue
            path = self._cache_path(name)
            if not path.exists():
                continue
            state = read_state(path, secret=self._load_secret(), quarantine_dir=self.quarantine_dir)
            entries = _entries_of(state, name)
            if entries is None:
                if state is not None:
                    log.warning("cache file %s has an unexpected shape; ignored", path)
                continue
            loaded[name] = cache.import_entries(entries)
            log.info("loaded %d entries into cache %s from %s", loaded[name], name, path)
        self.loaded = True
        return loaded

    def persist(self) -> dict[str, int]:
        """Save every persistent cache; bytes written per cache. Failures are logged, not raised.

        Does nothing until :meth:`load_persisted` has run, so a daemon that
        failed to start never replaces saved caches with empty ones.
        """
        written: dict[str, int] = {}
        if not self.loaded:
            return written
        for name, cache in self.caches.items():
            if not cache.persistent:
                continue
            self._fit_for_persist(cache)
            state = {"format": CACHE_FILE_FORMAT, "name": name, "entries": cache.export_entries()}
            try:
                written[name] = write_state(
                    self._cache_path(name), state, secret=self._load_secret(), settings=self.codec_settings
                )
            except Exception:
                log.exception("could not persist cache %s", name)
        self.persisted_at = time.time()
        self.last_persist = written
        return written

    def _fit_for_persist(self, cache: ManagedCache) -> None:
        """Evict least recently used entries until encoding the cache fits under the pressure mark.

        Encoding holds the encoded copy (and compression buffers) beside the
        entries: about ``PERSIST_FACTOR`` times the cache's bytes. Unchecked, a
        full cache persisted near the limit is what an OOM kill looks like.
        """
        headroom = self.work.pressure_bytes - self.monitor.usage_now()
        evicted = 0
        while cache.bytes and PERSIST_FACTOR * cache.bytes > headroom:
            freed = cache.evict_oldest()
            if freed <= 0:
                break
            evicted += freed
            headroom += freed // 2  # freed bytes may stay in the heap; count half
        if evicted:
            log.warning("cache %s: evicted %.1f MB so persisting it fits under the pressure mark", cache.name,
                        evicted / _MB)

    # --- the cleanup task --------------------------------------------------------

    def _level_changed(self, old: PressureLevel, new: PressureLevel) -> None:
        log.info("memory pressure %s -> %s", old.label, new.label)
        self.work.on_level(new)
        self._wake.set()

    def run_ladder(self, level: PressureLevel | str | int) -> dict[str, Any]:
        """Run the cleanup ladder now (``POST /admin/cleanup``); a report of what it freed."""
        return self.ladder.run(level)

    async def run(self, stop: asyncio.Event) -> None:
        """The cleanup task: until ``stop``, react to pressure and sweep on intervals."""
        cleanup = self.config.cleanup
        await cleanup_loop(
            self.ladder,
            lambda: self.monitor.level,
            stop=stop,
            interval=cleanup.interval,
            ttl_sweep_interval=cleanup.ttl_sweep_interval,
            model_sweep_interval=cleanup.model_sweep_interval,
            wake=self._wake,
            after_ladder=self.monitor.sample,
            persist=self.persist,
            persist_interval=cleanup.persist_interval,
            work_settled=self._work_settled,
        )

    def _work_settled(self) -> int | None:
        # Containers given memory so far, once none holds any (None while one does): trim after work.
        return None if self.work.granted_bytes else self.work.granted_total

    # --- stats -------------------------------------------------------------------

    def register_stats(self, board: StatsBoard) -> None:
        """Add the ``caches``, ``models``, ``cleanup``, ``admission`` and ``work`` sections."""
        board.register("caches", self.caches_stats)
        board.register("models", self.models.stats)
        board.register("cleanup", self.ladder.stats)
        board.register("admission", self.admission.stats)
        board.register("work", self.work.stats)

    def caches_stats(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget.total_bytes,
            "budget_source": self.budget_source,
            "used_bytes": self.budget.used_bytes,
            "low_water": self.config.caches.low_water,
            "persisted_at": self.persisted_at,
            "persisted_bytes": dict(self.last_persist),
            "caches": {name: cache.stats() for name, cache in self.caches.items()},
        }


def _entries_of(state: object, name: str) -> list[PersistedEntry] | None:
    """The entries of a cache file, or None if it is not one (for this cache)."""
    if not isinstance(state, dict) or state.get("format") != CACHE_FILE_FORMAT or state.get("name") != name:
        return None
    entries = state.get("entries")
    if not isinstance(entries, list):
        return None
    return [e for e in entries if isinstance(e, tuple) and len(e) == 3 and isinstance(e[2], float | int)]
