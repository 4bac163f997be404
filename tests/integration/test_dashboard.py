"""The dashboard at GET /, in a real headless Chromium (Debian's, driven by Playwright).

Locally the browser tests skip (with the reason) when Chromium or Playwright is
missing; under CI (``CI=true``) they fail instead, so a broken CI image cannot
pass silently. Screenshots land in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from tradingd.config import Config
from tradingd.storage.atomic import atomic_write_json
from tradingd.supervisor import Supervisor
from tradingd.workflows.spec import parse_spec
from tradingd.workflows.workflow_run import WorkflowRun

from tests.conftest import REPO, await_until, base_url


def save_finished(run: WorkflowRun, status: str) -> None:
    """Write the manifest of a run that ended with ``status``, as an earlier daemon left it."""
    run.mark_finished(status)
    run.layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.layout.manifest, run.manifest())


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
                            offscale: document.getElementById('mem-offscale').textContent,
                            yMax: Number(s.dataset.yMax),
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
    # Scaled to the data: a few hundred MiB of a many-GiB limit fills the chart; the marks above it are named.
    limit = supervisor.monitor.limit.bytes
    assert first["yMax"] < 0.5 * limit and first["marks"] == []
    assert all(name in first["offscale"] for name in ("gc", "pressure", "critical", "limit"))
    await page.click("#scale")
    zoomed_out = await chart_state(page)
    assert zoomed_out["marks"] == ["mark-gc", "mark-pressure", "mark-critical", "mark-limit"]
    assert zoomed_out["offscale"] == "" and zoomed_out["yMax"] >= limit
    await page.click("#scale")
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
    # Folded: only actions that freed bytes are rows; the rest are one counted line.
    listed = await page.eval_on_selector_all("#cleanup-body tbody tr", "rows => rows.map(r => r.cells[3].innerText)")
    assert listed and all(not freed.startswith("0 B") for freed in listed), listed
    noop = await page.inner_text("#cleanup-noop")
    assert "not listed" in noop and "clear_caches" not in noop
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


# ~1 s: two symbols, four combinations, one set for both symbols.
RESULT_SPEC = {
    "name": "dash-result", "type": "train_test", "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [30, 60]}},
    "selection": {"top": 1, "scope": "across_symbols"},
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
    assert first["cells"][2] == "running" and first["href"] == f"runs/{run_id}"
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
        "(id) => document.querySelector(`tr[data-run-id=\"${id}\"]`)?.cells[2].innerText === 'completed'",
        arg=run_id, timeout=30_000)
    done = await run_row(page, run_id)
    assert done["done"] == done["total"] and done["width"] == pytest.approx(100.0)
    async with http.get(f"{url}/{done['href']}") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "completed"


async def result_cell(page: Any, run_id: str) -> dict[str, Any]:
    """The run's result cell: sparkline points, headline, selection and the full text on hover."""
    cell: dict[str, Any] = await page.evaluate(
        """(id) => { const r = document.querySelector(`tr[data-run-id="${id}"] .result`);
                     return r && { points: (r.querySelector('svg.spark polyline')?.getAttribute('points') || '')
                                             .split(' ').filter(Boolean).length,
                                   headline: r.querySelector('.headline').textContent,
                                   selection: r.querySelector('.selection')?.textContent ?? null,
                                   title: r.title }; }""",
        run_id,
    )
    return cell


async def test_first_paint_shows_a_finished_runs_result(supervisor: Supervisor, http: aiohttp.ClientSession,
                                                        page: Any) -> None:
    url = base_url(supervisor)
    async with http.post(f"{url}/runs", json=RESULT_SPEC,
                         headers={"Authorization": f"Bearer {supervisor.api_token}"}) as resp:
        assert resp.status == 201, await resp.text()
        run_id = (await resp.json())["id"]

    async def summary() -> dict[str, Any] | None:
        async with http.get(f"{url}/runs/{run_id}") as resp:
            body = await resp.json()
        return body.get("summary") if body["status"] == "completed" else None

    expected = await await_until(summary, what="the run to complete with a summary")
    await page.goto(f"{url}/?interval=60000")  # no poll: what shows came embedded in the page
    result = await result_cell(page, run_id)
    assert result["points"] == len(expected["equity"]) >= 2, "the equity sparkline"
    assert result["headline"] == expected["headline"] and result["headline"].startswith("OOS sharpe mean ")
    assert result["selection"] == f"selected {expected['selection']}" and "fast=" in result["selection"]
    assert result["title"] == f"{expected['headline']} — selected {expected['selection']}"
    overflow = await page.eval_on_selector(
        "#runs", "s => s.querySelector('table').getBoundingClientRect().width - s.clientWidth")
    assert overflow <= 0, f"the runs table is {overflow} px wider than its card"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-summary.png"), full_page=True)


# --- results, filters, paging, history, log tail (a daemon with finished runs on disk and a running study) ---

LONG_ERROR = "data failed to load: </script><!-- " + "a very long explanation of what went wrong " * 20
SEEDED_COMPLETED = 25


def seed_runs(results_dir: Path) -> None:
    """Finished runs on disk, as an earlier daemon left them: completed, one failed, one cancelled."""
    spec = parse_spec({"name": "seeded", "type": "backtest", "data": {"source": "sample"},
                       "strategy": {"name": "sma_crossover", "grid": {"fast": [5], "slow": [50]}}}, source="test")
    for index in range(SEEDED_COMPLETED + 2):
        run = WorkflowRun(spec, f"seeded-{index:02d}", results_dir, source="test")
        run.created_at = run.started_at = 1_764_000_000.0 + index
        if index == SEEDED_COMPLETED:
            run.error = LONG_ERROR
        status = {SEEDED_COMPLETED: "failed", SEEDED_COMPLETED + 1: "cancelled"}.get(index, "completed")
        save_finished(run, status)


@pytest.fixture
async def seeded_supervisor(make_config: Callable[..., Config]) -> AsyncIterator[Supervisor]:
    config = make_config()
    config.results_dir.mkdir(parents=True)
    seed_runs(config.results_dir)
    async with Supervisor(config) as sup:
        yield sup


async def test_first_paint_shows_embedded_state(seeded_supervisor: Supervisor, page: Any) -> None:
    # A poll interval of a minute: whatever the page shows right after load came embedded in it.
    await page.goto(f"{base_url(seeded_supervisor)}/?interval=60000")
    assert await page.evaluate("document.body.dataset.initial") == "1"
    assert await page.evaluate("document.body.dataset.refreshes") is None, "no poll has happened yet"
    assert (await page.inner_text("#mem-used")).endswith("MiB")
    assert await page.eval_on_selector("#mem-chart", "s => Number(s.dataset.samples)") >= 1
    rows = await page.query_selector_all("#runs-body tr[data-run-id]")
    assert len(rows) == 20, "the first page of runs is embedded"
    assert "1–20 of 27" in await page.inner_text("#runs-page")
    # The failed run's error held "</script><!--": the page still parsed and shows it as text.
    failed = await page.query_selector('tr[data-status="failed"]')
    assert failed is None or "</script>" in (await failed.inner_text())


async def page_shows(page: Any, text: str) -> None:
    await page.wait_for_function("(t) => document.getElementById('runs-page').textContent.includes(t)", arg=text,
                                 timeout=10_000)


async def row_statuses(page: Any) -> list[str]:
    statuses: list[str] = await page.eval_on_selector_all("#runs-body tr[data-run-id]",
                                                          "rows => rows.map(r => r.dataset.status)")
    return statuses


@pytest.mark.slow
async def test_dashboard_shows_results_filters_pages_history_and_log(
    seeded_supervisor: Supervisor, http: aiohttp.ClientSession, page: Any
) -> None:
    sup = seeded_supervisor
    url = base_url(sup)
    async with http.post(f"{url}/runs", json=PROGRESS_SPEC,
                         headers={"Authorization": f"Bearer {sup.api_token}"}) as resp:
        assert resp.status == 201, await resp.text()
        run_id = (await resp.json())["id"]
    logging.getLogger("tradingd.test").warning("disk almost full on /var/lib/tradingd (a test warning)")
    await page.goto(f"{url}/?interval=300")
    await page.wait_for_function(
        "(id) => document.querySelector(`tr[data-run-id=\"${id}\"]`)?.dataset.status === 'running'",
        arg=run_id, timeout=15_000)

    # Status colours: running, completed, failed and cancelled are four different colours.
    colours = await page.evaluate(
        """() => Object.fromEntries(['running', 'completed', 'failed', 'cancelled', 'interrupted', 'queued'].map(s => {
             const el = document.createElement('span'); el.className = `status s-${s}`; document.body.append(el);
             const c = getComputedStyle(el).backgroundColor; el.remove(); return [s, c]; }))""")
    assert len(set(colours.values())) == 6, colours
    # One evaluate (query and read together): the table is re-rendered on every poll.
    running = await page.evaluate(
        "(id) => { const e = document.querySelector(`tr[data-run-id=\"${id}\"] .status`);"
        " return e && e.textContent === 'running' ? getComputedStyle(e).backgroundColor : 'not running'; }", run_id)
    assert running in (colours["running"], "not running")

    # Long text is cut, with the full text on hover; the table stays inside its card.
    failed_cell = await page.evaluate(
        "() => { const tr = document.querySelector('tr[data-status=\"failed\"]');"
        " const td = tr && [...tr.cells].find(c => c.title && c.title.startsWith('data failed'));"
        " return td && { title: td.title, width: td.getBoundingClientRect().width }; }")
    assert failed_cell is not None and failed_cell["title"] == LONG_ERROR and failed_cell["width"] < 500
    overflow = await page.eval_on_selector(
        "#runs", "s => s.querySelector('table').getBoundingClientRect().width - s.clientWidth")
    widths = await page.eval_on_selector_all("#runs-body th", "ths => ths.map(t => [t.innerText, t.offsetWidth])")
    assert overflow <= 0, f"the runs table is {overflow} px wider than its card: {widths}"

    # ISO dates; a report link for finished runs.
    started = await page.eval_on_selector_all("#runs-body tr[data-run-id]",
                                              "rows => rows.map(r => r.cells[7].innerText)")
    assert started and all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", s) for s in started), started
    assert await page.query_selector('tr[data-status="completed"] a.report') is not None

    # Filter by status, then page through all runs.
    await page.click('#runs-filter button[data-status="failed"]')
    await page.wait_for_function(
        "[...document.querySelectorAll('#runs-body tr[data-run-id]')].every(r => r.dataset.status === 'failed')",
        timeout=10_000)
    assert await row_statuses(page) == ["failed"]
    await page.click('#runs-filter button[data-status="cancelled"]')
    await page.wait_for_function("document.querySelector('#runs-body tr[data-run-id]')?.dataset.status === 'cancelled'",
                                 timeout=10_000)
    await page.click('#runs-filter button[data-status=""]')
    await page_shows(page, "1–20 of 28")
    await page.click("#runs-next")
    await page_shows(page, "21–28 of 28")
    assert len(await row_statuses(page)) == 8
    assert not await page.is_disabled("#runs-prev") and await page.is_disabled("#runs-next")
    await page.click("#runs-prev")
    await page_shows(page, "1–20 of 28")

    # The log tail, CPU and disk, and hours of history.
    await page.wait_for_function("document.getElementById('log-body').innerText.includes('disk almost full')",
                                 timeout=10_000)
    assert "WARNING" in await page.inner_text('#log-body tr[data-level="WARNING"]')
    for card in ("#log", "#outcomes", "#host"):
        spill = await page.eval_on_selector(card, "s => s.scrollWidth - s.clientWidth")
        assert spill <= 0, f"{card} is {spill} px wider than its card"
    assert (await page.inner_text("#cpu-process")).endswith("%")
    await page.wait_for_function("document.querySelector('#disk-body .disk-free')", timeout=10_000)
    assert "free" in await page.inner_text("#disk-body") and "tradingd keeps" in await page.inner_text("#disk-body")
    await page.click('#mem-tools button[data-range="21600"]')
    chart = await page.eval_on_selector("#mem-chart", "s => [s.dataset.range, Number(s.dataset.samples)]")
    assert chart[0] == "21600" and chart[1] >= 1, chart

    # The study ends: throughput counted, its trades in the outcome journal by strategy and regime.
    await page.wait_for_function(
        "(id) => document.querySelector(`tr[data-run-id=\"${id}\"]`)?.dataset.status === 'completed'",
        arg=run_id, timeout=60_000)
    await page.wait_for_function("Number(document.getElementById('tp-total').textContent.replace(/,/g, '')) > 0",
                                 timeout=10_000)
    await page.wait_for_function("document.querySelector('#outcomes-strategy tr[data-strategy=\"sma_crossover\"]')",
                                 timeout=20_000)
    assert await page.query_selector("#outcomes-regime tr[data-regime]") is not None
    assert re.search(r"\d%", await page.inner_text('#outcomes-strategy tr[data-strategy="sma_crossover"]'))

    # The study's result: its out-of-sample headline, the selection, an equity sparkline.
    await page.wait_for_function("(id) => document.querySelector(`tr[data-run-id=\"${id}\"] .result svg.spark`)",
                                 arg=run_id, timeout=10_000)
    result = await result_cell(page, run_id)
    assert result["headline"].startswith("OOS sharpe mean ") and result["selection"].startswith("selected per symbol")
    # An older daemon's run has only "results": a headline is still put together from it.
    assert await page.evaluate(
        "runSummary({ id: 'x', results: { out_of_sample: { objective: 'sharpe', mean: 0.4213, n_symbols: 2 } } })"
        ".headline") == "OOS sharpe mean 0.42 · 2 symbols"
    assert await page.evaluate("runSummary({ id: 'y', results: {} })") is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-results.png"), full_page=True)
