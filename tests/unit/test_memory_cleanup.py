"""The cleanup ladder and admission, driven by a fake usage source."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tradingd.config import Config, parse_config
from tradingd.memory.admission import Admission
from tradingd.memory.cleanup import parse_level
from tradingd.memory.manager import MemoryManager
from tradingd.memory.monitor import MemoryLimit, MemorySample, Monitor, PressureLevel

from tests.conftest import await_until

MB = 1024 * 1024
LIMIT = 100 * MB


class FakeUsage:
    """Usage = what the caches and models hold + memory held elsewhere (``other``)."""

    def __init__(self) -> None:
        self.manager: MemoryManager | None = None
        self.other = 0

    def __call__(self) -> MemorySample:
        held = 0
        if self.manager is not None:
            held = self.manager.budget.used_bytes + self.manager.models.stats()["resident_bytes"]
        used = held + self.other
        return MemorySample(time.time(), used, used, None, used)


def make(tmp_path: Path, **caches: dict[str, object]) -> tuple[MemoryManager, Monitor, FakeUsage]:
    config: Config = parse_config(
        {
            "caches": {"budget_mb": 60, "low_water": 0.5, "entries": caches or {"scratch": {"max_mb": 100}}},
            "cleanup": {"interval": 0.02, "malloc_trim": True},
            "models": {"idle_seconds": 3600},
        }
    )
    usage = FakeUsage()
    monitor = Monitor(MemoryLimit(LIMIT, "config", {"config": LIMIT}), hysteresis=0.05, sampler=usage)
    manager = MemoryManager(config, monitor, state_dir=tmp_path)
    usage.manager = manager
    return manager, monitor, usage


def fill(manager: MemoryManager, name: str, mb: int) -> None:
    cache = manager.cache(name)
    for i in range(mb):
        cache.put((name, i), np.zeros(MB // 8 - 14))  # just under 1 MB with the header


def action_names(report: dict[str, object]) -> list[str]:
    return [a["action"] for a in report["actions"]]  # type: ignore[attr-defined,index]


def test_parse_level() -> None:
    assert parse_level("Pressure") is PressureLevel.PRESSURE
    assert parse_level(3) is PressureLevel.CRITICAL
    with pytest.raises(ValueError, match="expected one of normal, gc, pressure, critical"):
        parse_level("panic")


def test_ladder_steps_per_level(tmp_path: Path) -> None:
    manager, _, _ = make(tmp_path)
    assert action_names(manager.run_ladder("normal")) == []
    assert action_names(manager.run_ladder("gc")) == ["gc_collect"]
    fill(manager, "scratch", 50)
    report = manager.run_ladder("pressure")
    assert action_names(report)[:4] == ["purge_expired", "shrink_caches", "evict_idle_models", "gc_collect"]
    shrink = report["actions"][1]
    assert shrink["freed_bytes"] >= 19 * MB  # 50 MB down to half of the 60 MB budget
    assert manager.cache("scratch").bytes <= 30 * MB
    assert not manager.admission.paused
    report = manager.run_ladder("critical")
    assert "clear_caches" in action_names(report) and "evict_all_models" in action_names(report)
    assert manager.cache("scratch").bytes == 0
    assert report["admission_paused"] is True and manager.admission.paused
    stats = manager.ladder.stats()
    assert stats["actions"]["shrink_caches"]["count"] == 1
    assert stats["actions"]["clear_caches"]["freed_bytes"] >= 29 * MB
    assert stats["runs"] == {"normal": 1, "gc": 1, "pressure": 1, "critical": 1}
    assert len(stats["recent"]) == 1 + 5 + len(report["actions"])  # gc, pressure, critical steps


def test_pinned_cache_is_not_cleared_at_critical(tmp_path: Path) -> None:
    manager, _, _ = make(tmp_path, keep={"max_mb": 20, "pinned": True}, drop={"max_mb": 20})
    fill(manager, "keep", 10)
    fill(manager, "drop", 10)
    manager.run_ladder("critical")
    assert manager.cache("drop").bytes == 0
    assert 0 < manager.cache("keep").bytes <= 10 * MB  # shrunk to low water (half of 20 MB), kept


async def test_loop_walks_every_level_and_back(tmp_path: Path) -> None:
    manager, monitor, usage = make(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop))
    seen: list[PressureLevel] = []
    monitor.add_listener(lambda old, new: seen.append(new))

    async def eventually(condition: Callable[[], bool]) -> None:
        # The cleanup task reacts on its own schedule; a loaded machine may need more than a tick.
        await await_until(condition, what="the cleanup task to react")

    try:
        usage.other = 72 * MB  # gc
        monitor.sample()
        await eventually(lambda: manager.ladder.runs["gc"] >= 1)
        assert not manager.admission.paused

        fill(manager, "scratch", 60)
        usage.other = 25 * MB  # 85 MB: pressure; shrinking the cache brings it down
        monitor.sample()
        await eventually(lambda: manager.ladder.runs["pressure"] >= 1)
        await eventually(lambda: manager.cache("scratch").bytes <= 30 * MB)

        usage.other = 95 * MB  # critical, held outside caches: cleanup cannot fix it
        monitor.sample()
        await eventually(lambda: manager.ladder.runs["critical"] >= 1)
        await eventually(lambda: manager.admission.paused)
        admitted = asyncio.create_task(manager.admission.wait())
        await eventually(lambda: manager.admission.stats()["waiting"] == 1)
        assert not admitted.done()  # a new container waits here

        usage.other = 82 * MB  # below critical but not below pressure: still paused
        pressure_runs = manager.ladder.runs["pressure"]
        monitor.sample()
        await eventually(lambda: manager.ladder.runs["pressure"] > pressure_runs)  # it saw the new level
        assert manager.admission.paused and not admitted.done()

        usage.other = 10 * MB  # back to normal
        monitor.sample()
        await asyncio.wait_for(admitted, 2)
        assert not manager.admission.paused
        assert monitor.level is PressureLevel.NORMAL
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
    assert PressureLevel.CRITICAL in seen and seen[-1] is PressureLevel.NORMAL
    assert manager.admission.stats()["pauses"] == 1


async def test_loop_sweeps_expired_entries_on_its_interval(tmp_path: Path) -> None:
    config = parse_config({"cleanup": {"interval": 0.02, "ttl_sweep_interval": 0.05}, "caches": {"entries": {}}})
    usage = FakeUsage()
    monitor = Monitor(MemoryLimit(LIMIT, "config", {}), sampler=usage)
    manager = MemoryManager(config, monitor, state_dir=tmp_path)
    cache = manager.cache("short")
    cache.put("k", np.zeros(1000), ttl=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop))
    try:
        await await_until(lambda: cache.evictions["ttl"], what="the TTL sweep")
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
    assert cache.evictions["ttl"] == 1 and len(cache) == 0
    assert manager.ladder.counts["ttl_sweep"] >= 1


class TestAdmission:
    async def test_wait_returns_at_once_when_open(self) -> None:
        admission = Admission()
        await asyncio.wait_for(admission.wait(), 0.5)

    async def test_resume_from_another_thread_wakes_waiters(self) -> None:
        admission = Admission()
        admission.pause("test")
        waiters = [asyncio.create_task(admission.wait()) for _ in range(3)]
        await await_until(lambda: admission.stats()["waiting"] == 3, what="three waiters")
        assert not any(w.done() for w in waiters)
        await asyncio.to_thread(admission.resume)
        await asyncio.wait_for(asyncio.gather(*waiters), 1)
        assert admission.stats()["waiting"] == 0

    async def test_cancelled_waiter_is_forgotten(self) -> None:
        admission = Admission()
        admission.pause("test")
        waiter = asyncio.create_task(admission.wait())
        await await_until(lambda: admission.stats()["waiting"] == 1, what="the waiter")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.stats()["waiting"] == 0

    async def test_a_resume_from_another_thread_wakes_the_waiter(self) -> None:
        admission = Admission()
        admission.pause("test")
        waiter = asyncio.create_task(admission.wait())
        await await_until(lambda: admission.stats()["waiting"] == 1, what="the waiter")
        await asyncio.to_thread(admission.resume)  # the ladder resumes from a worker thread
        await asyncio.wait_for(waiter, 30)
        assert not admission.paused


def test_cache_budget_is_capped_at_the_gc_mark(tmp_path: Path) -> None:
    config = parse_config({"caches": {"budget_mb": 4096}})
    monitor = Monitor(MemoryLimit(LIMIT, "cgroup", {"cgroup": LIMIT}), sampler=FakeUsage())
    manager = MemoryManager(config, monitor, state_dir=tmp_path)
    assert manager.budget.total_bytes == int(0.7 * LIMIT)
    assert manager.caches_stats()["budget_source"] == "memory limit"


async def test_loop_trims_once_work_has_settled(tmp_path: Path) -> None:
    config = parse_config({"cleanup": {"interval": 0.01, "ttl_sweep_interval": 0.02},
                           "caches": {"entries": {}}})
    usage = FakeUsage()
    monitor = Monitor(MemoryLimit(LIMIT, "config", {}), sampler=usage)
    manager = MemoryManager(config, monitor, state_dir=tmp_path)
    if not manager.ladder.trim_enabled:
        pytest.skip("no malloc_trim in this libc")
    ladder = manager.ladder

    async def ticks(n: int) -> None:
        # The loop has ticked at least n more times (each tick may sweep; sweeps are counted).
        target = ladder.counts["ttl_sweep"] + n
        await await_until(lambda: ladder.counts["ttl_sweep"] >= target, what="cleanup ticks")

    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop))
    try:
        await ticks(3)
        assert ladder.counts["malloc_trim"] == 0, "no work yet: nothing to trim"
        grant = await manager.work.acquire("run-1", estimate=MB, minimum=MB)
        await ticks(3)
        assert ladder.counts["malloc_trim"] == 0, "work holds memory: not yet"
        grant.release()
        await await_until(lambda: ladder.counts["malloc_trim"] == 1, what="the trim after work")
        await ticks(3)
        assert ladder.counts["malloc_trim"] == 1, "once per settled batch of work, not every tick"
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
    assert [a["level"] for a in ladder.stats()["recent"] if a["action"] == "malloc_trim"] == ["normal"]
