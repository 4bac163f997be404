"""The dashboard at GET /, in a real headless Chromium (Debian's, driven by Playwright).

Locally the browser tests skip (with the reason) when Chromium or Playwright is
missing; under CI (``CI=true``) they fail instead, so a broken CI image cannot
pass silently. Screenshots land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from tradingd.supervisor import Supervisor

from tests.conftest import REPO, await_until, base_url

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def chromium_path() -> str | None:
    """``$TRADINGD_CHROMIUM`` if set, else Debian's /usr/bin/chromium or chromium on PATH."""
    override = os.environ.get("TRADINGD_CHROMIUM")
    candidates = [override] if override else ["/usr/bin/chromium", shutil.which("chromium")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests need {reason} in CI (.ci/run installs them)")
    fix = "apt-get install chromium" if "chromium" in reason else "pip install playwright"
    pytest.skip(f"{reason} not available: {fix}")


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("Playwright for Python")
    executable = chromium_path()
    if executable is None:
        _unavailable("Debian's chromium (/usr/bin/chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 1000})
            yield await context.new_page()
        finally:
            await browser.close()


async def wait_refreshes(page: Any, at_least: int) -> int:
    await page.wait_for_function(f"Number(document.body.dataset.refreshes || 0) >= {at_least}", timeout=15_000)
    return int(await page.evaluate("Number(document.body.dataset.refreshes)"))


async def chart_state(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        """() => { const s = document.getElementById('mem-chart');
                   return { samples: Number(s.dataset.samples), last: Number(s.dataset.lastTime),
                            used: Number(s.dataset.lastUsed),
                            points: (s.querySelector('.series-used')?.getAttribute('points') || '').split(' ').length,
                            marks: [...s.querySelectorAll('line.mark')].map(l => l.classList[1]),
                            text: document.getElementById('mem-used').textContent,
                            level: document.getElementById('mem-level').textContent }; }"""
    )
    return result


async def test_dashboard_shows_live_memory_caches_and_cleanup(
    supervisor: Supervisor, http: aiohttp.ClientSession, page: Any
) -> None:
    url = base_url(supervisor)
    cache = supervisor.memory.cache("indicators")
    for i in range(4):
        cache.put(("SYM01", "sma", i), np.ones(50_000))
    assert cache.get(("SYM01", "sma", 0)) is not None
    await page.goto(f"{url}/?interval=300")
    assert await page.title() == "tradingd"
    first_refresh = await wait_refreshes(page, 1)
    first = await chart_state(page)
    assert first["samples"] >= 1 and first["text"].endswith("MiB")
    assert first["marks"] == ["mark-gc", "mark-pressure", "mark-critical", "mark-limit"]
    assert first["level"] == supervisor.monitor.level.label

    # Memory moves: hold 96 MiB of fresh pages; once the monitor has sampled them, two more
    # refreshes guarantee one that started after.
    ballast = np.ones(96 * 2**20 // 8)
    await await_until(lambda: supervisor.stats.snapshot["memory"]["used_bytes"] - first["used"] > 64 * 2**20,
                      what="the monitor to sample the ballast")
    await wait_refreshes(page, await wait_refreshes(page, first_refresh) + 2)
    second = await chart_state(page)
    assert second["last"] > first["last"], "the chart shows new samples"
    assert second["samples"] >= first["samples"]
    assert second["used"] - first["used"] > 64 * 2**20, (first, second)
    assert second["points"] >= 2
    del ballast

    row = await page.inner_text('tr[data-cache="indicators"]')
    assert row.split("\t")[1].strip() == "4" and "100.0%" in row

    # The cleanup ladder, run through the API, shows up with what it freed.
    async with http.post(f"{url}/admin/cleanup", json={"level": "critical"},
                         headers={"Authorization": f"Bearer {supervisor.api_token}"}) as resp:
        assert resp.status == 200
    await page.wait_for_function(
        "document.querySelector('#cleanup-body table') && "
        "document.querySelector('#cleanup-body').innerText.includes('clear_caches')", timeout=10_000)
    cleanup_text = await page.inner_text("#cleanup-body")
    assert "critical" in cleanup_text
    await page.wait_for_function(
        "document.querySelector('tr[data-cache=\"indicators\"] td:nth-child(2)').textContent === '0'", timeout=10_000)
    assert "pressure 4" in await page.inner_text('tr[data-cache="indicators"]')
    models_text = await page.inner_text("#models-body")
    assert "reloads" in models_text

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_dashboard_marks_missing_sections_and_a_stopped_daemon(supervisor: Supervisor, page: Any) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("registry unavailable")

    # A failing section is reported as {"error": ...} in /stats; the page shows "—" and renders the rest.
    supervisor.stats.register("models", broken)
    supervisor.stats.refresh()
    url = base_url(supervisor)
    await page.goto(f"{url}/?interval=300")
    refreshes = await wait_refreshes(page, 1)
    assert (await page.inner_text("#models-body")).strip() == "—"
    assert (await page.inner_text("#mem-used")).endswith("MiB")
    assert await page.query_selector('tr[data-cache="indicators"]') is not None
    await supervisor.shutdown()
    await page.wait_for_function("document.getElementById('conn').className === 'down'", timeout=10_000)
    assert "daemon unreachable" in await page.inner_text("#conn")
    await wait_refreshes(page, refreshes + 1)


# ~3 s on two cores: 10 sample symbols x ~400 combinations, many small containers.
PROGRESS_SPEC = {
    "name": "dash-demo", "type": "train_test", "data": {"source": "sample"},
    "strategy": {"name": "sma_crossover",
                 "grid": {"fast": {"min": 2, "max": 40, "step": 2}, "slow": {"min": 20, "max": 300, "step": 14}}},
    "execution": {"chunk_size": 40, "batch_size": 20},
}


async def run_row(page: Any, run_id: str) -> dict[str, Any]:
    row: dict[str, Any] = await page.evaluate(
        """(id) => { const tr = document.querySelector(`tr[data-run-id="${id}"]`);
                     if (!tr) return null;
                     const bar = tr.querySelector('.bar > span');
                     return { done: Number(tr.dataset.done), total: Number(tr.dataset.total),
                              width: bar ? parseFloat(bar.style.width) : null,
                              cells: [...tr.cells].map(c => c.innerText.trim()),
                              href: tr.querySelector('a')?.getAttribute('href') }; }""",
        run_id,
    )
    return row


@pytest.mark.slow
async def test_dashboard_shows_run_progress(supervisor: Supervisor, http: aiohttp.ClientSession, page: Any) -> None:
    url = base_url(supervisor)
    await page.goto(f"{url}/?interval=250")
    await wait_refreshes(page, 1)
    async with http.post(f"{url}/runs", json=PROGRESS_SPEC,
                         headers={"Authorization": f"Bearer {supervisor.api_token}"}) as resp:
        assert resp.status == 201, await resp.text()
        run_id = (await resp.json())["id"]
    await page.wait_for_function(
        "(id) => { const tr = document.querySelector(`tr[data-run-id=\"${id}\"]`);"
        " return tr && Number(tr.dataset.done) > 0 && Number(tr.dataset.done) < Number(tr.dataset.total); }",
        arg=run_id, timeout=15_000)
    first = await run_row(page, run_id)
    assert first["cells"][3] == "running" and first["href"] == f"runs/{run_id}"
    assert first["width"] == pytest.approx(100 * first["done"] / first["total"], abs=0.1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)
    await page.wait_for_function(
        "([id, before]) => { const tr = document.querySelector(`tr[data-run-id=\"${id}\"]`);"
        " return tr && Number(tr.dataset.done) > before; }",
        arg=[run_id, first["done"]], timeout=15_000)
    second = await run_row(page, run_id)
    assert second["done"] > first["done"], "progress moves between refreshes"
    assert second["width"] > first["width"]
    await page.wait_for_function(
        "(id) => document.querySelector(`tr[data-run-id=\"${id}\"]`)?.cells[3].innerText === 'completed'",
        arg=run_id, timeout=30_000)
    done = await run_row(page, run_id)
    assert done["done"] == done["total"] and done["width"] == pytest.approx(100.0)
    async with http.get(f"{url}/{done['href']}") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "completed"
