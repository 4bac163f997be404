"""The work budget: grants between minimum and estimate, first come first served, shrink and grow."""

from __future__ import annotations

import asyncio

import pytest
from tradingd.memory.grants import GrantRefused, MemoryBudget
from tradingd.memory.monitor import PressureLevel

MB = 1024 * 1024


def budget(capacity_mb: int = 100, **kwargs: object) -> MemoryBudget:
    return MemoryBudget(limit_bytes=1000 * MB, pressure_bytes=(capacity_mb + 50) * MB, baseline_bytes=50 * MB,
                        **kwargs)  # type: ignore[arg-type]


async def test_a_grant_is_the_estimate_when_it_fits_and_is_released() -> None:
    work = budget()
    grant = await work.acquire("a", estimate=30 * MB, minimum=5 * MB)
    assert grant.bytes == 30 * MB and work.granted_bytes == 30 * MB
    grant.release()
    grant.release()  # idempotent
    assert work.granted_bytes == 0 and work.stats()["granted_total"] == 1


async def test_a_minimum_above_capacity_fails_at_once_naming_limit_and_estimate() -> None:
    work = budget(capacity_mb=100)
    with pytest.raises(GrantRefused, match=r"estimate 300\.0 MB.*memory limit of 1000 MB allows at most 100\.0 MB"):
        await work.acquire("big", estimate=300 * MB, minimum=200 * MB)
    assert work.stats()["refused_total"] == 1


async def test_waiters_are_served_in_submission_order_and_get_at_least_their_minimum() -> None:
    work = budget(capacity_mb=100)
    first = await work.acquire("first", estimate=90 * MB, minimum=60 * MB)
    order: list[str] = []

    async def ask(name: str, estimate: int, minimum: int) -> int:
        grant = await work.acquire(name, estimate=estimate * MB, minimum=minimum * MB)
        order.append(name)
        return grant.bytes

    big = asyncio.create_task(ask("big", 80, 50))
    small = asyncio.create_task(ask("small", 5, 1))  # fits now, but must not overtake "big"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == [] and [w["owner"] for w in work.stats()["waiting"]] == ["big", "small"]
    first.release()
    assert await big == 80 * MB
    assert await small == 5 * MB
    assert order == ["big", "small"]
    assert work.granted_bytes == 85 * MB


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    work = budget(capacity_mb=100)
    held = await work.acquire("held", estimate=100 * MB, minimum=100 * MB)
    waiting = asyncio.create_task(work.acquire("w", estimate=50 * MB, minimum=50 * MB))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert work.stats()["waiting"] == []
    held.release()
    assert work.granted_bytes == 0


async def test_caches_yield_to_grants() -> None:
    cache_bytes = [60 * MB]

    def reclaim(wanted: int) -> int:
        freed = min(wanted, cache_bytes[0])
        cache_bytes[0] -= freed
        return freed

    work = budget(capacity_mb=100, held_above_floor=lambda: cache_bytes[0], reclaim=reclaim)
    grant = await work.acquire("a", estimate=70 * MB, minimum=10 * MB)
    assert grant.bytes == 70 * MB
    assert cache_bytes[0] == 30 * MB and work.stats()["reclaimed_bytes_total"] == 30 * MB


async def test_critical_shrinks_grants_blocks_admission_and_normal_grows_them_back() -> None:
    work = budget(capacity_mb=100)
    grant = await work.acquire("a", estimate=40 * MB, minimum=10 * MB)
    work.on_level(PressureLevel.CRITICAL)
    assert grant.bytes == 20 * MB and work.stats()["shrinks_total"] == 1
    waiting = asyncio.create_task(work.acquire("b", estimate=10 * MB, minimum=1 * MB))
    await asyncio.sleep(0)
    assert not waiting.done()  # nobody new is granted at critical
    work.on_level(PressureLevel.NORMAL)
    assert grant.bytes == 40 * MB
    assert (await waiting).bytes == 10 * MB


async def test_observe_keeps_the_largest_error_per_kind() -> None:
    work = budget()
    work.observe("sma/backtest", estimate=100, peak=80)
    work.observe("sma/backtest", estimate=100, peak=110)
    work.observe("ml/training", estimate=100, peak=50)
    stats = work.stats()
    assert stats["estimate_errors"]["sma/backtest"]["largest_error"] == -0.2
    assert stats["largest_estimate_error"] == 0.5
