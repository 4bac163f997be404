"""A run's ``summary`` (headline, selection, equity sparkline) on a real daemon, and after a restart."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tradingd.config import Config
from tradingd.supervisor import Supervisor
from tradingd.workflows.run_summary import EQUITY_POINTS, downsample, params_text, run_summary

from tests.conftest import await_until, base_url
from tests.integration.test_runs_api import get, post, wait_status

TRAIN_TEST: dict[str, Any] = {
    "name": "summary_study",
    "type": "train_test",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02"], "start": "2019-01-01"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [30, 60]}},
    "selection": {"top": 1, "scope": "across_symbols"},
}
WALK_FORWARD: dict[str, Any] = {
    "name": "summary_wf",
    "type": "walk_forward",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM03"], "start": "2019-01-01"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [30, 60]}},
    "walk_forward": {"train_bars": 300, "test_bars": 100, "max_windows": 3},
}
BACKTEST: dict[str, Any] = {
    "name": "summary_sweep",
    "type": "backtest",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02"], "start": "2021-01-01"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [30, 60]}},
}


def assert_sparkline(summary: dict[str, Any]) -> list[float]:
    equity = summary["equity"]
    assert 2 <= len(equity) <= EQUITY_POINTS and all(isinstance(v, float) and math.isfinite(v) for v in equity)
    assert len(json.dumps(summary)) < 600, "a few hundred bytes per run"
    return list(equity)


async def run_to_end(http: aiohttp.ClientSession, sup: Supervisor, spec: dict[str, Any]) -> dict[str, Any]:
    status, created = await post(http, sup, spec)
    assert status == 201, created
    body = await wait_status(http, sup, created["id"])
    assert body["status"] == "completed", body
    return body


async def test_train_test_summary_is_served_and_survives_a_restart(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    config = make_config()
    async with Supervisor(config) as sup:
        detail = await run_to_end(http, sup, TRAIN_TEST)
        summary = detail["summary"]
        assert summary["scope"] == "out_of_sample" and summary["source"] == "testing"
        assert summary["objective"] == "sharpe" and summary["headline"].startswith("OOS sharpe mean ")
        assert summary["headline"].endswith("2 symbols")
        # One set for every symbol (across_symbols): the one training ranked first, as the testing phase tested it.
        testing = json.loads((config.results_dir / detail["id"] / "testing" / "aggregate_results.json").read_text())
        handed = testing["selection"]["params"][str(testing["selection"]["by_symbol"]["SYM01"][0])]
        assert summary["selection"] == params_text(handed)
        assert summary["value"] == testing["out_of_sample"]["mean"] or math.isclose(
            summary["value"], testing["out_of_sample"]["mean"], rel_tol=1e-5)
        equity = assert_sparkline(summary)
        assert math.isclose(summary["total_return"], equity[-1] - 1.0, abs_tol=1e-3)
        status, listed = await get(http, sup, "/runs")
        assert status == 200 and listed["runs"][0]["summary"] == summary
        manifest = json.loads((config.results_dir / detail["id"] / "manifest.json").read_text())
        assert manifest["summary"] == summary
    async with Supervisor(config) as again:  # a restart serves it from the manifest, recomputing nothing
        status, body = await get(http, again, f"/runs/{detail['id']}")
        assert status == 200 and body["summary"] == summary
        async with http.get(f"{base_url(again)}/") as resp:
            page = await resp.text()
        assert json.dumps(summary["headline"])[1:-1].replace("<", "\\u003c") in page, "embedded in the first paint"


@pytest.mark.slow  # ~4 s: a run and two starts
async def test_a_run_finished_without_a_summary_is_summarised_at_start(
    make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    config = make_config()
    async with Supervisor(config) as sup:
        detail = await run_to_end(http, sup, TRAIN_TEST)
    # As a daemon that did not summarise runs left it.
    manifest_path = config.results_dir / detail["id"] / "manifest.json"
    manifest_path.write_text(json.dumps({k: v for k, v in json.loads(manifest_path.read_text()).items()
                                         if k != "summary"}))
    async with Supervisor(config) as upgraded:
        status, body = await get(http, upgraded, f"/runs/{detail['id']}")
        assert status == 200 and body["summary"] == detail["summary"]
        await await_until(lambda: json.loads(manifest_path.read_text()).get("summary"),
                          what="the manifest written again with the summary")
    assert json.loads(manifest_path.read_text())["summary"] == detail["summary"]


@pytest.mark.slow  # ~5 s: three windows, seven reports
async def test_walk_forward_summary_is_the_stitched_result(supervisor: Supervisor,
                                                           http: aiohttp.ClientSession) -> None:
    walk_run = await run_to_end(http, supervisor, WALK_FORWARD)
    walk = walk_run["summary"]
    assert walk["source"] == "walk_forward_stitched" and walk["objective"] == "sharpe"
    assert walk["headline"].startswith("OOS stitched sharpe ") and "3 windows, 2 symbols" in walk["headline"]
    assert walk["selection"].startswith("per window") or "=" in walk["selection"]
    stitched = json.loads((supervisor.config.results_dir / walk_run["id"] / "out_of_sample.json").read_text())
    assert math.isclose(walk["value"], stitched["pooled"]["strategy"]["sharpe"], rel_tol=1e-5)
    curve = stitched["pooled_curves"]["strategy"]
    equity = assert_sparkline(walk)
    assert math.isclose(equity[-1], curve[-1], rel_tol=1e-3) and len(curve) > EQUITY_POINTS
    # While it runs: the windows tested so far (here: as the manifest read after the first window).
    root = supervisor.config.results_dir / walk_run["id"]
    phases = json.loads((root / "manifest.json").read_text())["phases"]
    early = [{**p, "status": "pending"} if i > 1 else p for i, p in enumerate(phases)]
    partial = run_summary(root, early, run_type="walk_forward", objective="sharpe", initial_equity=10_000.0)
    assert partial is not None and partial["source"] == "testing" and partial["windows"] == {"tested": 1, "planned": 3}
    assert "(1 of 3 windows)" in partial["headline"] and len(assert_sparkline(partial)) == EQUITY_POINTS


async def test_backtest_summary_is_the_best_cell_in_sample(supervisor: Supervisor,
                                                           http: aiohttp.ClientSession) -> None:
    # A sweep has no out-of-sample result: its best cell, labelled in-sample, and that cell's equity.
    sweep = (await run_to_end(http, supervisor, BACKTEST))["summary"]
    assert sweep["scope"] == "in_sample" and sweep["headline"].startswith("in-sample best sharpe ")
    assert sweep["selection"].split(" ", 1)[0] == sweep["cell"]["symbol"] and "fast=" in sweep["selection"]
    # The phase recorded no curves (the default): the cell's curve was drawn again, as the recorded one would be.
    tracked = (await run_to_end(http, supervisor, {**BACKTEST, "name": "summary_tracked",
                                                    "phase_overrides": {"backtest": {"track_equity": True}}}))
    assert tracked["summary"]["selection"] == sweep["selection"]
    assert assert_sparkline(sweep) == assert_sparkline(tracked["summary"])
    assert math.isclose(sweep["equity"][-1] - 1.0, sweep["total_return"], abs_tol=1e-3)


def test_downsample_keeps_the_ends_and_at_most_equity_points_finite_values() -> None:
    curve = [1.0 + i / 1000 for i in range(1000)]
    curve[500] = math.nan
    points = downsample(curve)
    assert len(points) == EQUITY_POINTS and points[0] == 1.0 and points[-1] == 1.999
    assert all(math.isfinite(v) for v in points)
    assert downsample([1.0, 1.23456]) == [1.0, 1.235]
    assert params_text({"fast": 10, "z": 1.5, "model": "logistic"}) == "fast=10 z=1.5 model=logistic"


def test_phase_names_from_a_manifest_never_leave_the_run(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "containers").mkdir(parents=True)
    (outside / "aggregate_results.json").write_text(json.dumps({"ranking": [{"symbol": "X", "index": 0}]}))
    run_root = tmp_path / "run"
    run_root.mkdir()
    phases = [{"name": "../elsewhere", "kind": "backtest", "status": "completed"}]
    assert run_summary(run_root, phases, run_type="backtest", objective="sharpe", initial_equity=1.0) is None
