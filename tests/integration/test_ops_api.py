"""GET /runs paging, the operator sections of /stats and /metrics, the state embedded in GET /."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tradingd.config import Config
from tradingd.prometheus import runs_families
from tradingd.storage.atomic import atomic_write_json
from tradingd.supervisor import Supervisor
from tradingd.workflows.spec import parse_spec
from tradingd.workflows.workflow_run import WorkflowRun

from tests.conftest import await_until, base_url


def save_finished(run: WorkflowRun, status: str) -> None:
    """Write the manifest of a run that ended with ``status``, as an earlier daemon left it."""
    run.mark_finished(status)
    run.layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.layout.manifest, run.manifest())


STATUSES = ["completed"] * 14 + ["cancelled", "failed"]


@pytest.fixture
async def daemon_with_runs(make_config: Callable[..., Config]) -> AsyncIterator[Supervisor]:
    config = make_config()
    spec = parse_spec({"name": "seeded", "type": "backtest", "data": {"source": "sample"},
                       "strategy": {"name": "sma_crossover", "grid": {"fast": [5], "slow": [50]}}}, source="test")
    for index, status in enumerate(STATUSES):
        run = WorkflowRun(spec, f"seeded-{index:02d}", config.results_dir, source="test")
        run.created_at = 1_764_000_000.0 + index
        run.error = "</script><script>alert(1)</script>" if status == "failed" else None
        save_finished(run, status)
    async with Supervisor(config) as sup:
        yield sup


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


async def test_the_first_scrape_counts_the_runs_on_disk(daemon_with_runs: Supervisor,
                                                        http: aiohttp.ClientSession) -> None:
    # The first request after start: no monitor tick has happened yet.
    async with http.get(f"{base_url(daemon_with_runs)}/metrics") as resp:
        text = await resp.text()
    runs = samples(text, "tradingd_runs")
    assert runs[(("status", "completed"),)] == 14
    assert runs[(("status", "cancelled"),)] == 1 and runs[(("status", "failed"),)] == 1
    assert samples(text, "tradingd_containers_finished_total") == {(): 0.0}, "earlier processes' work is not ours"
    marks = samples(text, "tradingd_memory_mark_bytes")
    assert marks[(("level", "gc"),)] < marks[(("level", "pressure"),)] < marks[(("level", "critical"),)]
    assert samples(text, "tradingd_healthy") == {(): 1.0}

    # The disk figures come from the retention task's first check (the workflow service's section).
    async def disk_free() -> float | None:
        async with http.get(f"{base_url(daemon_with_runs)}/metrics") as resp:
            return samples(await resp.text(), "tradingd_disk_free_bytes").get(())

    assert await await_until(disk_free, what="the disk figures") > 0


def test_no_runs_series_while_starting() -> None:
    snap: dict[str, Any] = {"daemon": {"state": "starting"}, "runs": {"by_status": {}, "containers_running": 0}}
    assert list(runs_families(snap)) == []
    snap["daemon"]["state"] = "running"
    assert next(f.name for f in runs_families(snap)) == "tradingd_runs"


async def test_runs_filter_and_page(daemon_with_runs: Supervisor, http: aiohttp.ClientSession) -> None:
    url = base_url(daemon_with_runs)
    async with http.get(f"{url}/runs?limit=5&offset=10") as resp:
        body = await resp.json()
    assert [r["id"] for r in body["runs"]] == [f"seeded-{i:02d}" for i in range(5, 0, -1)]
    assert body["total"] == 16 and body["offset"] == 10 and body["limit"] == 5
    assert body["counts"] == {"completed": 14, "cancelled": 1, "failed": 1}
    async with http.get(f"{url}/runs?status=failed,cancelled") as resp:
        body = await resp.json()
    assert [r["status"] for r in body["runs"]] == ["failed", "cancelled"] and body["total"] == 2
    async with http.get(f"{url}/runs") as resp:
        assert len((await resp.json())["runs"]) == 16, "no limit: every run, as before"
    for bad in ("limit=x", "offset=-1", "limit=-2"):
        async with http.get(f"{url}/runs?{bad}") as resp:
            assert resp.status == 400 and "error" in await resp.json(), bad


async def test_the_page_embeds_the_current_state_safely(daemon_with_runs: Supervisor,
                                                        http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url(daemon_with_runs)}/") as resp:
        html = await resp.text()
    assert html.count("</script>") == 1, "a run's error cannot close the page's script"
    embedded = re.search(r"const INITIAL = (.*?);\n", html)
    assert embedded is not None
    initial = json.loads(embedded.group(1))
    assert initial["stats"]["memory"]["used_bytes"] > 0
    assert len(initial["runs"]["runs"]) == 16 and initial["runs"]["counts"]["failed"] == 1
    failed = next(r for r in initial["runs"]["runs"] if r["status"] == "failed")
    assert failed["error"] == "</script><script>alert(1)</script>"
    for section in ("cpu", "throughput", "history", "log"):
        assert section in initial["stats"], section
