"""ManagedCache: LRU, TTL, byte budgets, single flight, sweeps, persistence."""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from tradingd.memory.cache import CacheBudget, ManagedCache

from tests.conftest import wait_until

KB = 1024
MB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def array_kb(kb: int) -> np.ndarray:
    return np.zeros(kb * KB // 8)


def test_get_put_hits_misses_and_repr() -> None:
    cache = ManagedCache("indicators", ttl=60)
    assert cache.get("a") is None
    cache.put("a", array_kb(100))
    assert cache.get("a") is not None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)
    assert 100 * KB <= stats["bytes"] < 101 * KB
    assert repr(cache) == "<ManagedCache indicators 1 entries 0.1 MB>"


def test_max_entries_evicts_least_recently_used() -> None:
    cache = ManagedCache("c", max_entries=3)
    for key in "abc":
        cache.put(key, key)
    cache.get("a")  # a is now most recent; b is the LRU
    cache.put("d", "d")
    assert cache.keys() == ["c", "a", "d"]
    assert cache.evictions["lru"] == 1


def test_max_bytes_evicts_by_size_and_rejects_oversize() -> None:
    cache = ManagedCache("c", max_bytes=1 * MB)
    for i in range(20):
        cache.put(i, array_kb(100))
    assert cache.bytes <= 1 * MB
    assert len(cache) == 10  # 10 * (100 KB + array header) fits in 1 MB, 11 do not
    assert cache.evictions["size"] == 10
    assert cache.put("huge", array_kb(2048)) is False
    assert cache.stats()["rejected"] == 1 and "huge" not in cache


def test_shared_budget_evicts_the_globally_oldest_entry() -> None:
    budget = CacheBudget(1 * MB)
    a = ManagedCache("a", budget=budget)
    b = ManagedCache("b", budget=budget)
    a.put("old", array_kb(400))
    b.put("mid", array_kb(400))
    a.put("new", array_kb(400))  # over budget: "old" (least recent in any cache) goes
    assert "old" not in a and "mid" in b and "new" in a
    assert budget.used_bytes <= budget.total_bytes
    assert a.evictions["size"] == 1 and b.evictions["size"] == 0


def test_ttl_expiry_on_access() -> None:
    clock = FakeClock()
    cache = ManagedCache("c", ttl=10, clock=clock)
    cache.put("k", "v")
    cache.put("short", "v", ttl=1)
    clock.now += 5
    assert cache.get("k") == "v"
    assert cache.get("short") is None
    clock.now += 6
    assert cache.get("k") is None
    assert cache.evictions["ttl"] == 2


def test_purge_expired_releases_memory_without_access() -> None:
    clock = FakeClock()
    cache = ManagedCache("c", ttl=10, clock=clock)
    value = array_kb(1024)
    ref = weakref.ref(value)
    cache.put("k", value)
    cache.put("keep", array_kb(10), ttl=100)
    del value
    gc.collect()
    assert ref() is not None  # the cache holds it
    clock.now += 11
    assert ref() is not None  # expired, but nobody touched it yet
    freed = cache.purge_expired()
    assert ref() is None  # released by the sweep alone
    assert freed >= 1 * MB
    assert cache.evictions["ttl"] == 1 and len(cache) == 1
    assert cache.stats()["hits"] == 0 and cache.stats()["misses"] == 0


def test_replaced_key_keeps_later_deadline() -> None:
    clock = FakeClock()
    cache = ManagedCache("c", ttl=10, clock=clock)
    cache.put("k", 1)
    clock.now += 8
    cache.put("k", 2)  # new deadline: now + 10
    clock.now += 5
    assert cache.purge_expired() == 0
    assert cache.get("k") == 2


def test_purge_with_default_and_custom_ttls() -> None:
    clock = FakeClock()
    cache = ManagedCache("c", ttl=10, clock=clock)
    cache.put("default", 1)
    cache.put("short", 2, ttl=1)
    cache.put("to_custom", 3)
    cache.put("to_custom", 3, ttl=100)  # a later put with its own TTL wins
    cache.put("to_default", 4, ttl=1)
    cache.put("to_default", 4)  # and a later default put wins over an earlier custom TTL
    clock.now += 5
    cache.purge_expired()
    assert cache.keys() == ["default", "to_custom", "to_default"]
    clock.now += 6
    cache.purge_expired()
    assert cache.keys() == ["to_custom"]
    clock.now += 100
    cache.purge_expired()
    assert len(cache) == 0 and cache.evictions["ttl"] == 4


def test_budgets_hold_under_concurrent_threads() -> None:
    budget = CacheBudget(3 * MB)
    caches = [ManagedCache(f"c{i}", budget=budget, max_bytes=2 * MB, max_entries=30) for i in range(3)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                cache = rng.choice(caches)
                key = rng.randrange(100)
                if cache.get(key) is None:
                    cache.put(key, array_kb(rng.choice((8, 32, 128))))
                if rng.random() < 0.01:
                    cache.shrink_to(0.5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert budget.used_bytes <= budget.total_bytes
    for cache in caches:
        assert cache.bytes <= 2 * MB and len(cache) <= 30
        # byte accounting matches the entries actually held
        assert cache.bytes == sum(entry[1] for entry in cache._data.values())  # [value, nbytes, ...]


def test_single_flight_under_50_threads() -> None:
    cache = ManagedCache("c")
    calls = 0
    calls_lock = threading.Lock()
    barrier = threading.Barrier(50)
    results: list[object] = []

    def compute() -> np.ndarray:
        nonlocal calls
        with calls_lock:
            calls += 1
        time.sleep(0.2)
        return np.arange(10)

    def caller() -> None:
        barrier.wait()
        results.append(cache.get_or_compute("k", compute))

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1
    assert len(results) == 50 and all(r is results[0] for r in results)
    stats = cache.stats()
    assert stats["misses"] == 1 and stats["hits"] + stats["coalesced"] == 49


def test_compute_error_reaches_waiters_and_is_not_cached() -> None:
    cache = ManagedCache("c")
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def compute() -> int:
        time.sleep(0.1)
        raise ValueError("boom")

    def caller() -> None:
        barrier.wait()
        try:
            cache.get_or_compute("k", compute)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 5
    assert "k" not in cache
    assert cache.get_or_compute("k", lambda: 3) == 3


class Interrupted(BaseException):
    """A leader interrupted mid-compute (what a KeyboardInterrupt or SystemExit would be)."""


def test_interrupted_leader_hands_over_to_a_waiter() -> None:
    cache = ManagedCache("c")
    computing, release = threading.Event(), threading.Event()

    def interrupted() -> str:
        computing.set()
        if not release.wait(30):
            raise TimeoutError("never released")
        raise Interrupted

    def leader() -> None:
        with pytest.raises(Interrupted):
            cache.get_or_compute("k", interrupted)

    leading = threading.Thread(target=leader)
    leading.start()
    assert computing.wait(30)
    results: list[str] = []
    waiting = threading.Thread(target=lambda: results.append(cache.get_or_compute("k", lambda: "fast")))
    waiting.start()
    wait_until(lambda: cache.stats()["coalesced"] == 1, what="the second caller to join the flight")
    release.set()
    leading.join(30)
    waiting.join(30)
    assert results == ["fast"] and cache.get("k") == "fast"


def test_shrink_to_low_water_keeps_most_recent() -> None:
    cache = ManagedCache("c", max_bytes=1 * MB)
    for i in range(8):
        cache.put(i, array_kb(100))
    cache.get(0)
    freed = cache.shrink_to(0.3)
    assert cache.bytes <= 0.3 * MB
    assert freed >= 500 * KB
    assert cache.keys() == [6, 7, 0]  # the three most recently used fit under 0.3 MB
    assert cache.evictions["pressure"] == 5


def test_pinned_cache_survives_pressure_clear() -> None:
    pinned = ManagedCache("p", pinned=True)
    plain = ManagedCache("q")
    for cache in (pinned, plain):
        cache.put("k", array_kb(10))
    assert pinned.clear("pressure") == 0 and len(pinned) == 1
    assert plain.clear("pressure") > 0 and len(plain) == 0
    assert pinned.clear("pressure", force=True) > 0 and len(pinned) == 0


def test_export_import_skips_expired() -> None:
    clock = FakeClock()
    source = ManagedCache("c", ttl=100, clock=clock)
    source.put("long", np.arange(5))
    source.put("short", np.arange(3), ttl=5)
    entries = source.export_entries()
    assert {e[0] for e in entries} == {"long", "short"}
    # pretend the entries were saved 10 s ago: "short" has expired since
    aged = [(k, v, expires - 10) for k, v, expires in entries]
    target = ManagedCache("c", ttl=100)
    assert target.import_entries(aged) == 1
    assert np.array_equal(target.get("long"), np.arange(5))
    assert target.get("short") is None


def test_persistent_cache_roundtrip_through_manager(tmp_path: Path) -> None:
    from tradingd.config import parse_config
    from tradingd.memory.manager import MemoryManager
    from tradingd.memory.monitor import MemoryLimit, Monitor

    config = parse_config({"caches": {"entries": {"indicators": {"persistent": True, "ttl": 3600}, "scratch": {}}}})
    monitor = Monitor(MemoryLimit(1 << 30, "config", {}))
    first = MemoryManager(config, monitor, state_dir=tmp_path)
    assert first.persist() == {}  # never saves before loading
    assert first.load_persisted() == {}
    first.cache("indicators").put(("AAPL", "sma", 20), np.linspace(0, 1, 1000))
    first.cache("scratch").put("x", 1)
    written = first.persist()
    assert set(written) == {"indicators"} and written["indicators"] > 0

    second = MemoryManager(config, Monitor(MemoryLimit(1 << 30, "config", {})), state_dir=tmp_path)
    assert second.load_persisted() == {"indicators": 1}
    assert np.array_equal(second.cache("indicators").get(("AAPL", "sma", 20)), np.linspace(0, 1, 1000))
    assert second.cache("scratch").get("x") is None


def test_tampered_cache_file_is_quarantined(tmp_path: Path) -> None:
    from tradingd.config import parse_config
    from tradingd.memory.manager import MemoryManager
    from tradingd.memory.monitor import MemoryLimit, Monitor

    config = parse_config({"caches": {"entries": {"indicators": {"persistent": True}}}})
    manager = MemoryManager(config, Monitor(MemoryLimit(1 << 30, "config", {})), state_dir=tmp_path)
    manager.load_persisted()
    manager.cache("indicators").put("k", np.arange(100))
    manager.persist()
    path = tmp_path / "caches" / "indicators.cache"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = MemoryManager(config, Monitor(MemoryLimit(1 << 30, "config", {})), state_dir=tmp_path)
    assert fresh.load_persisted() == {}
    assert not path.exists() and any((tmp_path / "quarantine").iterdir())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ManagedCache("c", ttl=0)
    with pytest.raises(ValueError):
        ManagedCache("c").shrink_to(1.5)
    with pytest.raises(ValueError):
        CacheBudget(0)
