"""Caches, models and the cleanup ladder through the real HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from tradingd.config import Config
from tradingd.supervisor import Supervisor

from tests.conftest import base_url

MB = 1024 * 1024


@pytest.fixture
async def sup(make_config: Callable[..., Config]) -> AsyncIterator[Supervisor]:
    # A long cleanup interval: the loop must not resume admission behind the test's back.
    config = make_config(
        cleanup={"interval": 30},
        caches={"entries": {"indicators": {"max_mb": 64, "persistent": True}, "scratch": {"max_mb": 64}}},
    )
    async with Supervisor(config) as supervisor:
        yield supervisor


def auth(sup: Supervisor) -> dict[str, str]:
    return {"Authorization": f"Bearer {sup.api_token}"}


async def test_admin_cleanup_requires_the_token(sup: Supervisor, http: aiohttp.ClientSession) -> None:
    url = f"{base_url(sup)}/admin/cleanup"
    async with http.post(url, json={"level": "gc"}) as resp:
        assert resp.status == 401
    async with http.post(url, json={"level": "gc"}, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 403
    async with http.post(url, json={"level": "panic"}, headers=auth(sup)) as resp:
        assert resp.status == 400
        assert "expected one of normal, gc, pressure, critical" in (await resp.json())["error"]
    async with http.post(url, json=["gc"], headers=auth(sup)) as resp:
        assert resp.status == 400


async def test_admin_cleanup_frees_and_reports(sup: Supervisor, http: aiohttp.ClientSession) -> None:
    scratch = sup.memory.cache("scratch")
    for i in range(40):
        scratch.put(i, np.ones(MB // 8))
    async with http.post(f"{base_url(sup)}/admin/cleanup", json={"level": "pressure"}, headers=auth(sup)) as resp:
        assert resp.status == 200
        report = await resp.json()
    assert report["level"] == "pressure"
    actions = {a["action"]: a for a in report["actions"]}
    assert {"purge_expired", "shrink_caches", "evict_idle_models", "gc_collect"} <= set(actions)
    assert actions["shrink_caches"]["freed_bytes"] >= 40 * MB - 0.6 * 64 * MB - MB
    assert scratch.bytes <= 0.6 * 64 * MB
    assert not report["admission_paused"]


async def test_critical_pauses_admission_and_ready_says_so(sup: Supervisor, http: aiohttp.ClientSession) -> None:
    url = base_url(sup)
    sup.memory.cache("scratch").put("x", np.ones(MB))
    async with http.post(f"{url}/admin/cleanup", json={"level": "critical"}, headers=auth(sup)) as resp:
        report = await resp.json()
    assert report["admission_paused"] is True
    assert "clear_caches" in {a["action"] for a in report["actions"]}
    assert len(sup.memory.cache("scratch")) == 0
    async with http.get(f"{url}/ready") as resp:
        assert resp.status == 503
        assert "admission paused" in (await resp.json())["reason"]
    sup.memory.admission.resume()
    async with http.get(f"{url}/ready") as resp:
        assert resp.status == 200


async def test_stats_and_metrics_show_caches_models_cleanup(
    sup: Supervisor, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url = base_url(sup)
    cache = sup.memory.cache("indicators")
    await asyncio.to_thread(cache.get_or_compute, ("AAPL", "sma", 20), lambda: np.ones(2 * MB // 8))
    cache.get(("AAPL", "sma", 20))
    sup.memory.models.register("ml:AAPL", {"weights": np.arange(10)})
    sup.memory.run_ladder("gc")
    sup.stats.refresh()
    async with http.get(f"{url}/stats") as resp:
        stats = await resp.json()
    ind = stats["caches"]["caches"]["indicators"]
    assert ind["entries"] == 1 and ind["bytes"] >= 2 * MB and ind["hits"] == 1 and ind["misses"] == 1
    assert stats["caches"]["budget_bytes"] == 512 * MB
    assert stats["models"]["known"] == 1 and stats["models"]["resident"] == 1
    assert stats["cleanup"]["actions"]["gc_collect"]["count"] >= 1
    assert stats["admission"]["paused"] is False
    work = stats["work"]
    assert 0 < work["capacity_bytes"] <= work["pressure_bytes"] and work["granted_bytes"] == 0
    assert work["waiting"] == [] and work["largest_estimate_error"] == 0.0
    async with http.get(f"{url}/metrics") as resp:
        body = await resp.text()
    for line in (
        'tradingd_cache_bytes{cache="indicators"}',
        'tradingd_cache_entries{cache="indicators"} 1.0',
        'tradingd_cache_hits_total{cache="indicators"} 1.0',
        'tradingd_cache_misses_total{cache="indicators"} 1.0',
        'tradingd_cache_evictions_total{cache="indicators",reason="ttl"} 0.0',
        "tradingd_models_resident 1.0",
        'tradingd_cleanup_actions_total{action="gc_collect"}',
        "tradingd_cleanup_freed_bytes_total",
        "tradingd_admission_paused 0.0",
        "tradingd_work_budget_bytes",
        "tradingd_work_granted_bytes 0.0",
        "tradingd_work_waiting 0.0",
    ):
        assert line in body, line


async def test_persistent_cache_survives_a_restart(make_config: Callable[..., Config]) -> None:
    config = make_config(caches={"entries": {"indicators": {"persistent": True}}})
    async with Supervisor(config) as first:
        first.memory.cache("indicators").put("k", np.arange(1000))
    async with Supervisor(config) as second:
        np.testing.assert_array_equal(second.memory.cache("indicators").get("k"), np.arange(1000))
