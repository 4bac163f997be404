"""Retention and free disk space on a real daemon: runs beyond the bounds go, pinned ones stay,
/runs pages, /stats shows disk use, low disk space pauses admission (/ready 503 with the reason)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tradingd.config import Config
from tradingd.supervisor import Supervisor

from tests.conftest import await_until, base_url

SMALL: dict[str, Any] = {
    "name": "tiny",
    "type": "backtest",
    "data": {"source": "sample", "symbols": ["SYM01"], "start": "2020-01-01"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5], "slow": [30]}},
}


async def request(http: aiohttp.ClientSession, sup: Supervisor, method: str, path: str,
                  body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {sup.api_token}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    async with http.request(method, f"{base_url(sup)}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def finished(http: aiohttp.ClientSession, sup: Supervisor, run_id: str) -> bool:
    status, body = await request(http, sup, "GET", f"/runs/{run_id}")
    return status == 404 or body["status"] not in ("queued", "running")


def run_dirs(results: Path) -> set[str]:
    return {p.name for p in results.iterdir() if (p / "manifest.json").exists()}


@pytest.mark.slow
async def test_runs_beyond_max_runs_go_oldest_first_and_pinned_stay(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    config = make_config(retention={"max_runs": 2}, disk={"check_interval": 0.2})
    async with Supervisor(config) as sup:
        ids = []
        for i in range(5):
            status, created = await request(http, sup, "POST", f"/runs?run_id=tiny-{i}", SMALL)
            assert status == 201, created
            ids.append(created["id"])
            await await_until(lambda rid=created["id"]: finished(http, sup, rid), what=f"run {i} finished")
            if i == 0:
                status, pinned = await request(http, sup, "POST", f"/runs/{ids[0]}/pin")
                assert status == 200 and pinned == {"id": ids[0], "pinned": True}

        async def kept() -> bool:
            status, listing = await request(http, sup, "GET", "/runs")
            return status == 200 and listing["total"] == 2 and run_dirs(config.results_dir) == {ids[0], ids[4]}

        await await_until(kept, what="retention down to the pinned and the newest run")
        status, listing = await request(http, sup, "GET", "/runs?limit=1&offset=1&status=completed")
        assert status == 200 and listing["total"] == 2 and [r["id"] for r in listing["runs"]] == [ids[0]]
        status, _ = await request(http, sup, "GET", f"/runs/{ids[1]}")
        assert status == 404
        status, bad = await request(http, sup, "GET", "/runs?limit=x")
        assert status == 400 and "limit" in bad["error"]

        async def disk_stats() -> dict[str, Any] | None:  # the /stats snapshot refreshes on its own cadence
            _, stats = await request(http, sup, "GET", "/stats")
            return stats["disk"] if stats["disk"]["retention"]["removed_runs"] == 3 else None

        disk = await await_until(disk_stats, what="/stats disk.retention.removed_runs 3")
        assert disk["free_bytes"] > 0 and disk["results_bytes"] > 0 and disk["low"] is False
        assert disk["retention"]["max_runs"] == 2
        assert not (config.results_dir / ".trash").exists() or not any((config.results_dir / ".trash").iterdir())

    # A new daemon on the same results: the same two runs, no more.
    async with Supervisor(make_config(retention={"max_runs": 2})) as sup:
        status, listing = await request(http, sup, "GET", "/runs")
        assert {r["id"] for r in listing["runs"]} == {ids[0], ids[4]}


async def test_low_disk_space_pauses_admission(make_config: Callable[..., Config],
                                               http: aiohttp.ClientSession) -> None:
    # More free space than any disk has: always "low".
    async with Supervisor(make_config(disk={"min_free_mb": 2**40, "check_interval": 0.2})) as sup:
        async def not_ready() -> dict[str, Any] | None:
            async with http.get(f"{base_url(sup)}/ready") as resp:
                body = await resp.json()
                return body if resp.status == 503 else None

        body = await await_until(not_ready, what="/ready 503")
        assert "disk space low" in json.dumps(body)
        status, refused = await request(http, sup, "POST", "/runs", SMALL)
        assert status == 503 and "disk space low" in refused["error"]

        async def stats_say_low() -> bool:  # the /stats snapshot refreshes on its own cadence
            _, stats = await request(http, sup, "GET", "/stats")
            return stats["disk"]["low"] is True and stats["admission"]["paused"] is True

        await await_until(stats_say_low, what="/stats disk.low")
