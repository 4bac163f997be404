"""Search and outcome-filter runs end to end: the files, the selection hand-off, the side-by-side figures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tradingd.workflows.container import RunServices
from tradingd.workflows.process_executor import ProcessExecutor
from tradingd.workflows.runs import WorkflowRun
from tradingd.workflows.spec import parse_spec
from tradingd.workflows.thread_executor import ThreadExecutor

SPACE = {"fast": [5, 10, 20, 30], "slow": [40, 80, 120], "trend": [50, 150], "stop_loss": [0.0, 0.05],
         "take_profit": [0.05, 0.1, 0.2]}


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[RunServices]:
    executor = ThreadExecutor(2)
    yield RunServices(executor=executor, search_dir=tmp_path / "state" / "search")
    await executor.close(10.0)


def read(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.slow
async def test_a_searched_train_test_run_records_every_trial_and_tests_its_selection(
        tmp_path: Path, services: RunServices) -> None:
    spec = parse_spec({
        "type": "train_test", "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
        "strategy": {"name": "sma_trend_stops", "grid": SPACE},
        "search": {"method": "random", "trials": 20, "batch": 8, "seed": 5},
        "event_tracing": [],
    })
    run = WorkflowRun(spec, "searched", tmp_path / "results")
    await run.execute(services, lambda: False)
    assert run.status == "completed", run.error
    training = tmp_path / "results" / "searched" / "training"
    doc = read(training / "search.json")
    assert doc["trials_done"] == 20 and doc["batches_total"] == 3 and len(doc["trials"]) == 20
    assert (tmp_path / "state" / "search" / "searched.db").exists()
    # Every evaluated set is a row of the phase's containers (one container per symbol per batch).
    containers = sorted(p.name for p in (training / "containers").glob("*.json"))
    assert containers == [f"{s}-s{b:04d}.json" for s in ("SYM01", "SYM02") for b in range(3)]
    aggregate = read(training / "aggregate_results.json")
    assert aggregate["rows"] == 2 * doc["evaluated"]
    by_index = {e["index"]: e for e in doc["evaluations"]}
    for row in aggregate["by_params"]:
        assert row["mean_objective"] == pytest.approx(by_index[row["index"]]["value"])
    summary = read(training / "phase_summary.json")
    assert summary["search"]["best"] == doc["best"] and summary["search"]["file"] == "search.json"
    assert run.describe()["progress"]["search"]["trials_done"] == 20
    report = (training / "report.html").read_text()
    assert 'id="search"' in report and f"{doc['evaluated']} parameter sets evaluated" in report
    # Testing tests what training selected, by the search space's index.
    selection = aggregate["selection"]
    tested = read(tmp_path / "results" / "searched" / "testing" / "containers" / "SYM01-0000.json")
    assert [p["index"] for p in tested["parameters"]] == selection["by_symbol"]["SYM01"]
    assert tested["parameters"][0]["params"] == selection["params"][str(selection["by_symbol"]["SYM01"][0])]


@pytest.mark.slow
async def test_an_outcome_filtered_walk_forward_reports_both_sides(tmp_path: Path, services: RunServices) -> None:
    spec = parse_spec({
        "type": "walk_forward", "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03"]},
        "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [20, 40]}},
        "walk_forward": {"train_bars": 1000, "test_bars": 500, "max_windows": 2},
        "outcome_filter": {"k": 5, "min_neighbours": 3, "threshold": 0.0},
        "event_tracing": [],
    })
    run = WorkflowRun(spec, "filtered", tmp_path / "results")
    await run.execute(services, lambda: False)
    assert run.status == "completed", run.error
    for window in ("window-000-testing", "window-001-testing"):
        summary = read(tmp_path / "results" / "filtered" / window / "phase_summary.json")
        effect = summary["outcome_filter"]
        assert effect["tested"] == 3 and effect["entries"] > 0 and 0 <= effect["skipped"] <= effect["entries"]
        sharpe = effect["across_symbols"]["sharpe"]
        assert sharpe["filtered"]["n"] == sharpe["unfiltered"]["n"] == 3
        assert effect["objective_change"] == pytest.approx(sharpe["filtered"]["mean"] - sharpe["unfiltered"]["mean"])
        container = read(tmp_path / "results" / "filtered" / window / "containers" / "SYM01-0000.json")
        row = container["metrics"][0]
        assert set(row["outcome_filter"]) == {"entries", "skipped", "scaled"}
        assert row["unfiltered_metrics"].keys() == row["metrics"].keys()
        report = (tmp_path / "results" / "filtered" / window / "report.html").read_text()
        assert "Outcome filter: filtered vs unfiltered" in report and f"{effect['skipped']} skipped" in report
    run_report = (tmp_path / "results" / "filtered" / "report.html").read_text()
    assert "Outcome filter, per testing phase" in run_report and "window-001-testing" in run_report
    # Training phases are never filtered.
    training = read(tmp_path / "results" / "filtered" / "window-000-training" / "phase_summary.json")
    assert "outcome_filter" not in training


@pytest.mark.slow
async def test_the_outcome_filter_gives_the_same_figures_in_worker_processes(tmp_path: Path,
                                                                           services: RunServices) -> None:
    doc = {
        "type": "walk_forward", "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
        "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [20, 40]}},
        "walk_forward": {"train_bars": 1000, "test_bars": 500, "max_windows": 1},
        "outcome_filter": {"k": 5, "min_neighbours": 3}, "event_tracing": [],
    }
    effects = []
    processes = ProcessExecutor(2)
    try:
        for name, executor_services in (("threads", services), ("processes", RunServices(executor=processes))):
            run = WorkflowRun(parse_spec(doc), name, tmp_path / "results")
            await run.execute(executor_services, lambda: False)
            assert run.status == "completed", run.error
            summary = read(tmp_path / "results" / name / "window-000-testing" / "phase_summary.json")
            effects.append(summary["outcome_filter"])
    finally:
        await processes.close(10.0)
    assert effects[0] == effects[1] and effects[0]["entries"] > 0
