"""The method's out-of-sample result and the overfitting section of a sweep (workflows level)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tradingd.config import ExecutorConfig
from tradingd.storage.atomic import atomic_write_json
from tradingd.trading.data import MarketData
from tradingd.trading.strategies import expand_valid_grid
from tradingd.workflows.container import RunServices
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.layout import RunLayout
from tradingd.workflows.out_of_sample import BEST_CELL_LABEL, method_result, phase_headline, stitch_walk_forward
from tradingd.workflows.overfitting import overfitting_summary, sweep_block_moments
from tradingd.workflows.runs import WorkflowRun
from tradingd.workflows.spec import parse_spec


def _row(symbol: str, index: int, sharpe: float) -> dict[str, object]:
    return {"symbol": symbol, "index": index, "params": {"p": index}, "metrics": {"sharpe": sharpe,
                                                                                  "total_return": sharpe / 10}}


def test_method_result_uses_the_handed_top_not_the_best_test_cell() -> None:
    rows = [_row("A", 1, 2.0), _row("A", 2, -1.0), _row("B", 5, -0.5), _row("B", 6, 3.0), _row("C", 9, 0.25)]
    handed = {"A": [2, 1], "B": [5, 6], "C": [9]}  # training ranked 2 first on A, 5 first on B
    best = max(rows, key=lambda r: r["metrics"]["sharpe"])  # type: ignore[index]
    oos = method_result(rows, handed, "sharpe", best)
    assert [(r["symbol"], r["index"], r["objective"]) for r in oos["per_symbol"]] == [
        ("A", 2, -1.0), ("B", 5, -0.5), ("C", 9, 0.25)]
    assert oos["n_symbols"] == 3
    assert oos["mean"] == pytest.approx((-1.0 - 0.5 + 0.25) / 3)
    assert oos["median"] == -0.5
    assert oos["share_positive"] == pytest.approx(1 / 3)
    assert oos["metrics"]["total_return"]["mean"] == pytest.approx((-0.1 - 0.05 + 0.025) / 3)
    # Every handed selection, not only the top one.
    assert oos["all_selected"]["n"] == 5
    assert oos["all_selected"]["mean"] == pytest.approx((2.0 - 1.0 - 0.5 + 3.0 + 0.25) / 5)
    # The best cell is there, labelled, and not the headline.
    assert oos["best_cell"]["objective"] == 3.0 and oos["best_cell"]["label"] == BEST_CELL_LABEL
    headline = phase_headline({"out_of_sample": oos}, None)
    assert headline["out_of_sample"]["mean"] == oos["mean"]


def _trending(n: int, seed: int) -> MarketData:
    """Persistent up and down regimes: a moving-average crossover has a real edge here."""
    rng = np.random.default_rng(seed)
    regime = np.sign(np.sin(2 * np.pi * np.arange(n) / 160.0) + 1e-9)
    close = 100.0 * np.exp(np.cumsum(0.006 * regime + rng.normal(0.0, 0.01, n)))
    return _data("TREND", close)


def _walk(n: int, seed: int) -> MarketData:
    rng = np.random.default_rng(seed)
    return _data("WALK", 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n))))


def _data(symbol: str, close: np.ndarray) -> MarketData:  # type: ignore[type-arg]
    times = np.datetime64("2010-01-01", "ns") + np.arange(len(close)) * np.timedelta64(1, "D")
    return MarketData.from_arrays(symbol, times, close, close, close, close, np.ones(len(close)))


GRID = {"fast": list(range(2, 30, 3)), "slow": list(range(10, 120, 8))}


def _select(data: MarketData, n_blocks: int = 16) -> dict[str, object]:
    grid, _ = expand_valid_grid("sma_crossover", GRID, skip_invalid=True)
    moments = sweep_block_moments(data, "sma_crossover", grid, {"commission": 0.0005}, n_blocks,
                                  budget_bytes=2**20)  # small chunks: many of them
    best = int(np.argmax(moments.sharpe()))
    return overfitting_summary({data.symbol: moments}, {data.symbol: best}, scope="per_symbol",
                               periods_per_year={data.symbol: 252.0})


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sweep_on_a_random_walk_does_not_look_significant(seed: int) -> None:
    summary = _select(_walk(1500, seed))
    row = summary["per_symbol"]["WALK"]  # type: ignore[index]
    assert row["n_trials"] > 100
    assert summary["dsr"] < 0.95
    assert summary["dsr_significant_share"] == 0.0
    assert summary["splits"] == math.comb(16, 8)


def test_a_sweep_with_a_planted_edge_is_significant() -> None:
    summary = _select(_trending(1500, 3))
    assert summary["dsr"] > 0.95
    assert summary["pbo"] < 0.2
    assert sum(summary["logit_histogram"]["counts"]) == math.comb(16, 8)  # type: ignore[index]


def test_walk_forward_stitching_chains_windows_and_keeps_buy_and_hold(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "wf")
    windows = []
    closes = []
    for w, (curve, close) in enumerate([([100.0, 110.0], [10.0, 11.0]), ([100.0, 90.0, 99.0], [20.0, 10.0, 20.0])]):
        phase = layout.phase(f"window-{w:03d}-testing")
        phase.containers_dir.mkdir(parents=True)
        atomic_write_json(phase.container("A-0000"), {"symbol": "A", "status": "completed",
                                                      "equity": {"curves": {"3": curve}}})
        windows.append((phase, {"A": [3]}))
        closes.append(np.array(close))
    out = stitch_walk_forward(windows, {"A": closes}, initial_equity=100.0, periods_per_year={"A": 252.0})
    strategy = out["per_symbol"]["A"]["strategy"]
    # Window 0: 100 -> 110 (+10 %); window 1 starts again at 100: -10 %, then +10 %: 1.1 * 0.9 * 1.1 = 1.089.
    assert strategy["bars"] == 5
    assert strategy["total_return"] == pytest.approx(1.1 * 0.9 * 1.1 - 1)
    assert strategy["max_drawdown"] == pytest.approx(0.1)
    hold = out["per_symbol"]["A"]["buy_and_hold"]
    assert hold["total_return"] == pytest.approx(1.1 * 0.5 * 2.0 - 1)
    assert out["pooled"]["strategy"]["total_return"] == pytest.approx(strategy["total_return"])
    assert out["pooled_curves"]["strategy"][-1] == pytest.approx(1.089)
    assert out["window_bars"] == [2, 3] and out["missing"] == []


async def _run(results_dir: Path, run_id: str, **spec: Any) -> WorkflowRun:
    raw: dict[str, Any] = {"name": run_id, "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03"]},
                           "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10, 20], "slow": [30, 60, 90]}},
                           "selection": {"top": 2}, "overfitting": {"blocks": 8}, **spec}
    executor = create_executor(ExecutorConfig(max_workers=2))
    try:
        run = WorkflowRun(parse_spec(raw), run_id, results_dir)
        await run.execute(RunServices(executor=executor), lambda: False)
    finally:
        await executor.close(10.0)
    assert run.status == "completed", run.error
    return run


@pytest.mark.slow
async def test_train_test_headline_is_each_symbols_training_pick_tested(tmp_path: Path) -> None:
    run = await _run(tmp_path, "tt", type="train_test")
    root = tmp_path / "tt"
    handed = json.loads((root / "training" / "aggregate_results.json").read_text())["selection"]["by_symbol"]
    tested = {}
    for path in (root / "testing" / "containers").glob("*.json"):
        doc = json.loads(path.read_text())
        for row in doc["metrics"]:
            tested[(doc["symbol"], row["index"])] = row["metrics"]["sharpe"]
    expected = [tested[(symbol, indices[0])] for symbol, indices in sorted(handed.items())]
    summary = json.loads((root / "testing" / "phase_summary.json").read_text())
    assert summary["out_of_sample"]["mean"] == pytest.approx(sum(expected) / len(expected))
    assert summary["out_of_sample"]["best_cell"]["objective"] == max(tested.values())
    described = run.describe(detail=True)
    assert described["results"]["out_of_sample"]["mean"] == summary["out_of_sample"]["mean"]
    assert described["phases"][0]["results"]["overfitting"]["n_trials"] == 9
    training = json.loads((root / "training" / "phase_summary.json").read_text())["overfitting"]
    assert training["splits"] == math.comb(8, 4) and set(training["per_symbol"]) == set(handed)


@pytest.mark.slow
async def test_walk_forward_run_reports_the_stitched_out_of_sample_result(tmp_path: Path) -> None:
    run = await _run(tmp_path, "wf", type="walk_forward",
                     walk_forward={"train_bars": 400, "test_bars": 200, "max_windows": 2})
    stitched = json.loads((tmp_path / "wf" / "out_of_sample.json").read_text())
    assert stitched["windows"] == 2 and stitched["window_bars"] == [200, 200]
    assert set(stitched["per_symbol"]) == {"SYM01", "SYM02", "SYM03"}
    assert stitched["pooled"]["strategy"]["bars"] == 400
    assert len(stitched["pooled_curves"]["buy_and_hold"]) == 400
    described = run.describe(detail=True)
    assert described["out_of_sample"]["pooled"] == stitched["pooled"]
    assert "pooled_curves" not in described["out_of_sample"]
    headline = described["results"]
    assert headline["out_of_sample"]["stitched"] is True
    assert headline["out_of_sample"]["mean"] == stitched["sharpe_across_symbols"]["mean"]
    assert headline["overfitting"]["phases"] == 2
    manifest = json.loads((tmp_path / "wf" / "manifest.json").read_text())
    assert manifest["out_of_sample"]["pooled"] == stitched["pooled"]
