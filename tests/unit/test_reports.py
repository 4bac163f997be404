"""Phase and run reports: files on disk, PNGs that decode, one heatmap cell per combination.

The phases are produced by the real workflow code (a small sweep on the bundled
sample data, ~0.1 s), so the reports are tested against the results layout as
it is actually written.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread
from tradingd.config import ExecutorConfig
from tradingd.reports import publish_phase_report, write_phase_report, write_run_report
from tradingd.reports.heatmap import build_heatmap
from tradingd.reports.phase_data import Combination, load_phase
from tradingd.workflows.container import RunServices
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.runs import WorkflowRun
from tradingd.workflows.spec import parse_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID = {"fast": [5, 10, 20], "slow": [30, 60, 90, 120]}
SYMBOLS = ["SYM01", "SYM02"]


async def run_workflow(results_dir: Path, run_id: str, kind: str = "train_test", **extra: Any) -> Path:
    """Run a small real workflow to completion and return its run directory."""
    raw: dict[str, Any] = {
        "name": run_id, "type": kind, "data": {"source": "sample", "symbols": SYMBOLS},
        "strategy": {"name": "sma_crossover", "grid": extra.pop("grid", GRID)}, **extra,
    }
    executor = create_executor(ExecutorConfig(max_workers=2))
    try:
        run = WorkflowRun(parse_spec(raw), run_id, results_dir)
        await run.execute(RunServices(executor=executor), lambda: False)
    finally:
        await executor.close(10.0)
    assert run.status == "completed", run.error
    return results_dir / run_id


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_png(path: Path) -> None:
    width, height = png_size(path)
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width) and width > 300 and height > 200
    assert pixels.std() > 0.01, f"{path.name} is a blank image"


async def test_training_phase_report_and_heatmap_cells(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "study")
    report = write_phase_report(run_dir / "training")

    html = report.html.read_text()
    assert report.html == run_dir / "training" / "report.html" and report.status == "completed"
    assert "This phase failed" not in html
    assert {"heatmap", "returns"} <= set(report.plots)
    for path in report.plots.values():
        assert f'src="{path.name}"' in html
        assert_png(path)
    heatmap = report.heatmap
    assert heatmap is not None
    assert (heatmap.x_name, heatmap.y_name) == ("fast", "slow")
    assert heatmap.x_values == GRID["fast"] and heatmap.y_values == GRID["slow"]
    assert heatmap.filled == 12 and 'data-heatmap-cells="12"' in html
    # Each cell is that combination's objective averaged over the symbols, from the container files.
    per_combo: dict[tuple[int, int], list[float]] = {}
    for path in (run_dir / "training" / "containers").glob("*.json"):
        for row in json.loads(path.read_text())["metrics"]:
            per_combo.setdefault((row["params"]["fast"], row["params"]["slow"]), []).append(row["metrics"]["sharpe"])
    assert len(per_combo) == 12 and all(len(v) == len(SYMBOLS) for v in per_combo.values())
    for (fast, slow), values in per_combo.items():
        cell = heatmap.cells[GRID["slow"].index(slow)][GRID["fast"].index(fast)]
        assert cell == pytest.approx(sum(values) / len(values))


async def test_testing_phase_report_leads_with_the_methods_out_of_sample_result(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "study", selection={"top": 2, "scope": "per_symbol"})
    report = write_phase_report(run_dir / "testing")
    assert {"equity", "oos_strip"} <= set(report.plots)
    assert_png(report.plots["equity"])
    assert_png(report.plots["oos_strip"])
    training = json.loads((run_dir / "training" / "aggregate_results.json").read_text())
    testing = json.loads((run_dir / "testing" / "aggregate_results.json").read_text())
    # The selection is the one training handed over, in training's order.
    assert testing["selection"]["by_symbol"] == training["selection"]["by_symbol"]
    oos = json.loads((run_dir / "testing" / "phase_summary.json").read_text())["out_of_sample"]
    assert [r["index"] for r in oos["per_symbol"]] == [training["selection"]["by_symbol"][s][0] for s in SYMBOLS]
    html = report.html.read_text()
    # The headline comes first; the best single cell is labelled and comes after it.
    assert html.index('id="oos-headline"') < html.index('id="best-cell"') < html.index("Ranking of single cells")
    assert f"over {len(SYMBOLS)} symbols" in html
    assert "not the method&#x27;s result" in html
    assert "buy_and_hold.json" not in html and (run_dir / "testing" / "buy_and_hold.json").is_file()


async def test_training_phase_report_shows_overfitting_statistics(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "study", overfitting={"blocks": 8})
    summary = json.loads((run_dir / "training" / "phase_summary.json").read_text())
    stats = summary["overfitting"]
    assert stats["n_trials"] == 12 and stats["blocks"] == 8 and stats["splits"] == 70
    assert 0.0 <= stats["pbo"] <= 1.0 and 0.0 <= stats["psr"] <= 1.0 and 0.0 <= stats["dsr"] <= stats["psr"]
    assert set(stats["per_symbol"]) == set(SYMBOLS)
    assert summary["results"]["overfitting"]["pbo"] == stats["pbo"]
    report = write_phase_report(run_dir / "training")
    assert_png(report.plots["pbo_logits"])
    html = report.html.read_text()
    assert 'id="overfitting-headline"' in html and "12 trials" in html
    assert report.heatmap is not None and len(report.heatmap.selected) >= 1
    run_html = write_run_report(run_dir).html.read_text()
    assert run_html.index('id="oos-headline"') < run_html.index('id="overfitting"') < run_html.index("<h2>Phases")


def test_heatmap_folds_a_third_parameter() -> None:
    combos = [
        Combination({"fast": f, "slow": s, "t": t}, {"sharpe": f + s / 10 + t}, sym, i)
        for i, (f, s, t) in enumerate(itertools.product([5, 10], [30, 50, 70], [0.0, 0.5]))
        for sym in ("AAA", "BBB")
    ]
    heatmap = build_heatmap(combos, "sharpe")
    assert heatmap is not None and heatmap.filled == 6
    assert heatmap.folded == ["t (best)", "symbols (mean)"]
    assert heatmap.cells[0][0] == pytest.approx(5 + 3 + 0.5)
    lower = build_heatmap([Combination(c.params, {"max_drawdown": c.metrics["sharpe"]}, c.symbol) for c in combos],
                          "max_drawdown")
    assert lower is not None and lower.cells[0][0] == pytest.approx(5 + 3 + 0.0), "smaller is better"


async def test_no_heatmap_with_a_single_swept_parameter(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "bt", kind="backtest", grid={"fast": [5, 10, 20], "slow": [50]})
    report = write_phase_report(run_dir / "backtest")
    assert report.heatmap is None and "heatmap" not in report.plots
    assert "fewer than two swept parameters" in report.html.read_text()


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_failed_phase_report_says_it_failed(tmp_path: Path) -> None:
    phase_dir = tmp_path / "run-1" / "training"
    _write(phase_dir / "phase_summary.json",
           {"format": "tradingd-phase/1", "phase": "training", "kind": "training", "status": "failed",
            "objective": "sharpe", "containers": {"total": 2, "completed": 1, "failed": 1}})
    _write(phase_dir / "containers" / "SYM01-0000.json",
           {"container_id": "SYM01-0000", "symbol": "SYM01", "status": "failed", "parameters": [], "metrics": [],
            "error": {"type": "StrategyError", "message": "sma_crossover: slow <= fast"}})
    (phase_dir / "containers" / "SYM02-0000.json").write_text("{ torn")
    report = write_phase_report(phase_dir)
    html = report.html.read_text()
    assert report.status == "failed" and report.plots == {}
    assert 'id="failure"' in html and "This phase failed." in html
    assert "SYM01-0000: StrategyError: sma_crossover: slow &lt;= fast" in html


def test_phase_without_summary_uses_the_given_status(tmp_path: Path) -> None:
    phase_dir = tmp_path / "run-1" / "testing"
    (phase_dir / "containers").mkdir(parents=True)
    assert "phase_summary.json is missing" in write_phase_report(phase_dir).html.read_text()
    report = write_phase_report(phase_dir, status="failed", error="PlanError: too few bars")
    assert report.status == "failed" and "too few bars" in report.html.read_text()


@pytest.mark.slow
async def test_walk_forward_run_report_stitches_out_of_sample_equity(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "wf", kind="walk_forward",
                                 walk_forward={"train_bars": 400, "test_bars": 200, "max_windows": 3})
    report = write_run_report(run_dir)
    assert report.windows == 3
    assert_png(report.plots["oos_equity"])
    html = report.html.read_text()
    assert "stitched across 3 windows" in html
    assert html.index("window-000-training/report.html") < html.index("window-002-testing/report.html")


async def test_report_without_matplotlib_is_written_and_logs_one_line(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "study")
    for png in run_dir.rglob("*.png"):  # drawn when the run finished, with matplotlib present
        png.unlink()
    script = (
        "import logging, sys; sys.modules['matplotlib'] = None; logging.basicConfig(level=logging.WARNING)\n"
        "from tradingd.reports import write_phase_report, write_run_report\n"
        f"r = write_phase_report({str(run_dir / 'training')!r}); write_phase_report({str(run_dir / 'testing')!r})\n"
        f"write_run_report({str(run_dir)!r}); print(sorted(r.plots))\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
    assert done.stderr.count("matplotlib is not installed") == 1, done.stderr
    assert "plots skipped: matplotlib is not installed" in (run_dir / "training" / "report.html").read_text()
    assert not list(run_dir.rglob("*.png"))


@pytest.mark.slow
async def test_publish_draws_off_the_event_loop(tmp_path: Path) -> None:
    run_dir = await run_workflow(tmp_path, "big", kind="backtest",
                                 grid={"fast": list(range(2, 40, 2)), "slow": list(range(40, 200, 10))})
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    report = await publish_phase_report(run_dir / "backtest")
    elapsed = time.monotonic() - started
    task.cancel()
    assert report is not None and report.heatmap is not None and report.heatmap.filled == 19 * 16
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # Plotting takes ~0.5 s here; drawn on the loop, one gap would be most of it. A loaded
    # machine stretches every gap a little, hence the generous floor.
    assert elapsed > 0.1 and max(gaps) < max(0.25, elapsed / 2), "the loop was blocked while plotting"


async def test_publish_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert await publish_phase_report(not_a_dir / "phase") is None
    assert "could not write the report for phase" in caplog.text
    assert load_phase(not_a_dir / "phase").status == "missing"
