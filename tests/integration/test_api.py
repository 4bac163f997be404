"""The HTTP API on a real port, answered by a real client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import aiohttp
from tradingd.config import Config
from tradingd.supervisor import Supervisor

from tests.conftest import base_url


async def test_health_ready_stats(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    url = base_url(supervisor)
    async with http.get(f"{url}/health") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert (await resp.json())["status"] == "ok"
    async with http.get(f"{url}/ready") as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"status": "ready"}
    async with http.get(f"{url}/stats") as resp:
        assert resp.status == 200
        stats = await resp.json()
    mem = stats["memory"]
    assert mem["rss_bytes"] > 10 * 2**20
    assert 0 < mem["anon_rss_bytes"] <= mem["rss_bytes"]
    assert mem["limit_source"] in {"config", "cgroup", "physical"}
    assert mem["limit_bytes"] == mem["limit_candidates"][mem["limit_source"]]
    assert stats["daemon"]["pid"] > 0 and stats["daemon"]["version"]
    assert stats["loop"]["healthy"] is True
    assert len(stats["gc"]["counts"]) == 3


async def test_stats_is_a_refreshed_snapshot(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    url = base_url(supervisor)
    async with http.get(f"{url}/stats") as resp:
        first = (await resp.json())["snapshot_time"]
    async with http.get(f"{url}/stats") as resp:
        assert (await resp.json())["snapshot_time"] == first, "served from the snapshot, not per request"
    await asyncio.sleep(0.5)  # monitor_interval is 0.2 s in tests
    async with http.get(f"{url}/stats") as resp:
        later = await resp.json()
    assert later["snapshot_time"] > first
    assert len(later["memory"]["history"]["used_bytes"]) >= 2


async def test_metrics_prometheus_text(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url(supervisor)}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        body = await resp.text()
    for name in (
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "tradingd_memory_limit_bytes{source=",
        "tradingd_memory_anon_rss_bytes",
        "tradingd_memory_pressure_level 0.0",
        "tradingd_event_loop_lag_seconds",
        'tradingd_build_info{version="',
    ):
        assert name in body, name


async def test_unknown_path_and_wrong_method_are_json(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    url = base_url(supervisor)
    async with http.get(f"{url}/no/such/thing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert "error" in await resp.json()
    async with http.post(f"{url}/health") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        assert "error" in await resp.json()
        assert "GET" in resp.headers["Allow"]


async def test_health_turns_503_when_the_loop_stalls(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    async with Supervisor(make_config(http={"loop_lag_threshold": 0.3})) as sup:
        url = base_url(sup)
        answers: list[tuple[int, dict[str, object]]] = []

        def probe() -> None:  # a client outside the loop asks while the loop is blocked
            time.sleep(0.2)
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
            except urllib.error.HTTPError as err:
                answers.append((err.code, json.loads(err.read())))

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.8)  # noqa: ASYNC251 -- block the event loop on purpose
        await asyncio.to_thread(prober.join)
        assert answers and answers[0][0] == 503
        assert answers[0][1]["status"] == "stalled" and "error" in answers[0][1]
        await asyncio.sleep(0.6)
        async with http.get(f"{url}/health") as resp:
            assert resp.status == 200


async def test_ready_is_503_while_stopping(make_config: Callable[..., Config], http: aiohttp.ClientSession) -> None:
    sup = Supervisor(make_config())
    await sup.start()
    url = base_url(sup)
    # A task that takes a while to finish keeps the shutdown in its draining step.
    sup.spawn(asyncio.sleep(1.0), name="slow-work")
    stopping = asyncio.ensure_future(sup.shutdown())
    await asyncio.sleep(0.1)
    async with http.get(f"{url}/ready") as resp:
        assert resp.status == 503
        assert (await resp.json())["reason"] == "stopping"
    await stopping
    assert not (sup.state_dir / "tradingd.lock").exists()


async def test_root_serves_the_self_contained_dashboard(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url(supervisor)}/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    assert "<title>tradingd</title>" in page and 'getJSON("stats")' in page  # it polls the JSON endpoints
    # Works offline: nothing is fetched from another origin.
    for external in ("http://", "https://", "//cdn"):
        assert f'src="{external}' not in page and f"href=\"{external}" not in page
