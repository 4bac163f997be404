"""The HTTP API on a real port, answered by a real client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from tradingd.config import Config
from tradingd.supervisor import Supervisor

from tests.conftest import await_until, base_url


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


    async def refreshed() -> dict[str, Any] | None:
        async with http.get(f"{url}/stats") as resp:
            stats: dict[str, Any] = await resp.json()
        return stats if stats["snapshot_time"] > first else None

    later = await await_until(refreshed, what="the monitor to refresh the snapshot")
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
        sent = threading.Event()
        answers: list[bytes] = []

        def probe() -> None:  # a client outside the loop asks while the loop is blocked
            with socket.create_connection(("127.0.0.1", sup.port), timeout=10) as conn:
                conn.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                sent.set()
                answers.append(conn.makefile("rb").read())

        prober = threading.Thread(target=probe)
        prober.start()
        # Block the event loop on purpose, until the request waits in the socket and for
        # longer than the lag threshold.
        blocked = time.monotonic()
        assert sent.wait(10)
        time.sleep(max(0.0, 0.8 - (time.monotonic() - blocked)))  # noqa: ASYNC251
        await asyncio.to_thread(prober.join)
        head, _, body = answers[0].partition(b"\r\n\r\n")
        assert head.split()[1] == b"503", head
        stalled = json.loads(body)
        assert stalled["status"] == "stalled" and "error" in stalled

        async def health() -> bool:
            async with http.get(f"{url}/health") as resp:
                return resp.status == 200

        await await_until(health, what="/health to recover")


async def test_ready_is_503_while_stopping(make_config: Callable[..., Config], http: aiohttp.ClientSession) -> None:
    sup = Supervisor(make_config(graceful_timeout=60.0))  # the drain waits for us, not for a clock
    await sup.start()
    url = base_url(sup)
    # A task that has not finished keeps the shutdown in its draining step.
    release = asyncio.Event()
    sup.spawn(release.wait(), name="slow-work")
    stopping = asyncio.ensure_future(sup.shutdown())

    async def ready_status() -> tuple[int, dict[str, Any]] | None:
        async with http.get(f"{url}/ready") as resp:
            return (resp.status, await resp.json()) if resp.status != 200 else None

    status, body = await await_until(ready_status, what="/ready to turn 503")
    assert status == 503 and body["reason"] == "stopping"
    assert not stopping.done()
    release.set()
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
