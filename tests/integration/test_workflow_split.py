"""A sweep split by combination blocks over worker processes gives the results of one unsplit sweep.

The workflow cuts a phase's grid into containers (``execution.chunk_size``
combinations) and each container into executor calls (``batch_size``); the
process executor runs them in other processes. Whatever the cut, every
combination's metrics, the aggregate and the selection are the same, and the
run's progress counts bar-combinations (the same total either way).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tradingd.workflows.container import RunServices
from tradingd.workflows.executor import Executor
from tradingd.workflows.process_executor import ProcessExecutor
from tradingd.workflows.runs import WorkflowRun
from tradingd.workflows.spec import WorkflowSpec, parse_spec

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def study(chunk_size: int, batch_size: int) -> WorkflowSpec:
    return parse_spec({
        "name": "split_study",
        "type": "train_test",
        "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
        "strategy": {"name": "sma_crossover", "grid": {"fast": {"min": 2, "max": 20, "step": 3},
                                                       "slow": {"min": 10, "max": 120, "step": 11}}},
        "objective": "sharpe",
        "backtest": {"fill": "next_open", "commission": 0.001},
        "selection": {"top": 3, "scope": "per_symbol"},
        "execution": {"chunk_size": chunk_size, "batch_size": batch_size},
    }, source="test")


async def run_workflow(spec: WorkflowSpec, executor: Executor, results_dir: Path) -> tuple[Path, WorkflowRun]:
    run = WorkflowRun(spec, "run", results_dir)
    await run.execute(RunServices(executor=executor), lambda: False)
    assert run.status == "completed", run.error
    return results_dir / "run", run


def combination_metrics(root: Path) -> dict[tuple[str, str, int], Any]:
    """Every combination's metrics, from every container file of every phase."""
    out: dict[tuple[str, str, int], Any] = {}
    for path in root.rglob("*.json"):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and "metrics" in doc and "symbol" in doc and isinstance(doc["metrics"], list):
            for row in doc["metrics"]:
                key = (path.relative_to(root).parts[0], str(doc["symbol"]), int(row["index"]))
                assert key not in out
                out[key] = row["metrics"]
    return out


def aggregates(root: Path) -> dict[str, Any]:
    """Each phase's aggregate document without its container counts (they depend on the cut)."""
    return {path.parent.name: {k: v for k, v in json.loads(path.read_text()).items() if k != "containers"}
            for path in root.rglob("aggregate_results.json")}


@pytest.mark.asyncio
async def test_a_sweep_split_over_worker_processes_equals_the_unsplit_sweep(tmp_path: Path) -> None:
    executor = ProcessExecutor(2, max_tasks_per_child=50, data_dir=tmp_path / "data")
    try:
        whole_root, whole = await run_workflow(study(chunk_size=10_000, batch_size=10_000), executor,
                                               tmp_path / "whole")
        split_root, split = await run_workflow(study(chunk_size=7, batch_size=3), executor, tmp_path / "split")
    finally:
        await asyncio.gather(executor.close(10.0))
    assert whole.progress.total == 4  # a container per phase and symbol
    assert split.progress.total > 3 * whole.progress.total
    reference = combination_metrics(whole_root)
    assert len(reference) > 100
    assert combination_metrics(split_root) == reference
    assert aggregates(split_root) == aggregates(whole_root)
    # Progress counts bar-combinations, however the grid was cut.
    assert split.progress.units_total == whole.progress.units_total
    assert split.progress.units_done == whole.progress.units_done == whole.progress.units_total > 0
