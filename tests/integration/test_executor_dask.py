"""The Dask executor on a LocalCluster of two worker processes: same results tree as one machine,
a worker killed mid-run, cancelled runs cancel their futures, per-worker memory in stats."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from tradingd.config import ExecutorConfig
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.rules import SmaCrossover
from tradingd.trading.strategies import register_strategy
from tradingd.workflows.container import RunServices
from tradingd.workflows.dask_executor import DaskExecutor
from tradingd.workflows.executor import Executor
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.process_executor import ProcessExecutor
from tradingd.workflows.runs import RunQueue, WorkflowRun
from tradingd.workflows.spec import WorkflowSpec, parse_spec, parse_spec_text
from tradingd.workflows.thread_executor import ThreadExecutor

# One LocalCluster for the module; its asynchronous client lives on the module's event loop.
from tests.conftest import await_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

SLOW_SECONDS = 0.15


class SlowSma(SmaCrossover):
    """An SMA crossover that takes its time, so a test can act while tasks run."""

    name = "slow_sma"

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Any:
        time.sleep(SLOW_SECONDS)
        return super().positions(data, grid, cache=cache, models=models)


register_strategy(SlowSma())
PRELOAD = (__name__,)  # every Dask worker, including restarted ones, imports this module first


def sample_study() -> WorkflowSpec:
    """The bundled study, its grid thinned so four executors run it in seconds."""
    text = resources.files("tradingd").joinpath("defaults/workflows/sample_study.yaml").read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    spec["strategy"]["grid"] = {"fast": {"min": 5, "max": 50, "step": 5}, "slow": {"min": 20, "max": 200, "step": 20}}
    return parse_spec_text(yaml.safe_dump(spec), source="bundled:sample_study (thinned)")


def slow_study(symbols: int = 4, fast: int = 20) -> WorkflowSpec:
    return parse_spec({
        "name": "slow_study",
        "type": "train_test",
        "data": {"source": "sample", "symbols": [f"SYM{i:02d}" for i in range(1, symbols + 1)]},
        "strategy": {"name": "slow_sma", "grid": {"fast": {"min": 5, "max": fast, "step": 5},
                                                  "slow": {"min": 40, "max": 100, "step": 20}}},
        "objective": "sharpe",
        "backtest": {"fill": "next_open", "commission": 0.001},
        "selection": {"top": 2, "scope": "per_symbol"},
        "execution": {"chunk_size": 8, "batch_size": 4},
    }, source="test")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[DaskExecutor]:
    executor = DaskExecutor(n_workers=2, threads_per_worker=1, preload=PRELOAD, stats_interval=0.5,
                            connect_timeout=60)
    await executor.start()
    yield executor
    await executor.close(30.0)



async def worker_pids(executor: DaskExecutor) -> dict[str, int]:
    pids: dict[str, int] = await executor.client.run(os.getpid, on_error="ignore")
    return pids


async def run_workflow(spec: WorkflowSpec, executor: Executor, results_dir: Path, run_id: str = "run") -> Path:
    run = WorkflowRun(spec, run_id, results_dir)
    await run.execute(RunServices(executor=executor), lambda: False)
    assert run.status == "completed", run.error
    return results_dir / run_id


VOLATILE = {"timings", "memory", "created_at", "started_at", "finished_at", "progress", "attempts", "version"}


def results_tree(root: Path) -> dict[str, Any]:
    """Every file of a run, with wall-clock and memory figures removed."""
    tree: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            tree[name] = {k: v for k, v in doc.items() if k not in VOLATILE} if name != "manifest.json" else (
                doc["status"], doc["symbols"], doc["grid"], [p["status"] for p in doc["phases"]])
        else:
            tree[name] = path.read_bytes()
    return tree


@pytest.mark.slow
async def test_the_sample_study_gives_the_same_results_tree_on_thread_process_and_dask(
        cluster: DaskExecutor, tmp_path: Path) -> None:
    spec = sample_study()
    thread = ThreadExecutor(2)
    process = ProcessExecutor(2, max_tasks_per_child=10, data_dir=tmp_path / "data")
    # kind: dask with a scheduler address: connect to the running cluster, as to one started by `dask scheduler`.
    remote = create_executor(ExecutorConfig.model_validate(
        {"kind": "dask", "dask": {"scheduler_address": cluster.client.scheduler.address}}))
    try:
        trees = {}
        for name, executor in (("thread", thread), ("process", process), ("dask-local", cluster),
                               ("dask-address", remote)):
            trees[name] = results_tree(await run_workflow(spec, executor, tmp_path / name))
    finally:
        await asyncio.gather(thread.close(10.0), process.close(10.0), remote.close(10.0))
    reference = trees.pop("thread")
    assert any(name.endswith("aggregate_results.json") for name in reference)
    assert any(name.startswith("training/events/") for name in reference)
    for name, tree in trees.items():
        assert tree.keys() == reference.keys(), name
        for file in reference:
            assert tree[file] == reference[file], f"{name}: {file}"
    # Closing an executor that connected to a cluster leaves the cluster running.
    assert await cluster.client.submit(sum, [1, 2], pure=False) == 3


async def test_stats_show_per_worker_memory(cluster: DaskExecutor) -> None:
    await cluster.refresh_stats()
    stats = cluster.stats()
    assert stats["kind"] == "dask" and stats["connected"] and stats["local_cluster"]
    assert stats["n_workers"] == 2 and stats["total_threads"] == 2 and stats["max_workers"] == 2
    for worker in stats["workers"]:
        assert worker["memory_bytes"] > 10 * 2**20 and worker["peak_memory_bytes"] >= worker["memory_bytes"]
        assert isinstance(worker["pid"], int) and worker["pid"] != os.getpid()
        assert worker["memory_limit_bytes"] > 0
    assert stats["workers_memory_bytes"] == sum(w["memory_bytes"] for w in stats["workers"])
    json.dumps(stats)  # /stats serves it as JSON


async def _executing_worker(executor: DaskExecutor) -> str:
    """The address of a worker running a task right now (once a few tasks are done)."""
    busy: list[str] = []

    async def running() -> bool:
        processing: dict[str, Any] = await executor.client.processing()
        busy[:] = [address for address, keys in processing.items() if keys]
        return bool(busy) and executor.stats()["completed"] >= 3

    await await_until(running)
    return busy[0]


@pytest.mark.slow
async def test_a_worker_killed_mid_run_is_replaced_and_the_run_completes_identically(
        cluster: DaskExecutor, tmp_path: Path) -> None:
    spec = slow_study()
    thread = ThreadExecutor(2)
    try:
        reference = results_tree(await run_workflow(spec, thread, tmp_path / "thread"))
    finally:
        await thread.close(10.0)
    run = asyncio.create_task(run_workflow(spec, cluster, tmp_path / "dask"))
    address = await _executing_worker(cluster)
    victim = (await worker_pids(cluster))[address]
    os.kill(victim, signal.SIGKILL)
    assert not run.done()
    tree = results_tree(await run)
    assert tree == reference
    # The nanny started a new worker process in its place.

    async def replaced() -> bool:
        pids = await worker_pids(cluster)
        return len(pids) == 2 and victim not in pids.values()

    await await_until(replaced)


def _scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


async def test_cancelling_a_run_cancels_its_futures(cluster: DaskExecutor, tmp_path: Path) -> None:
    queue = RunQueue(tmp_path, RunServices(executor=cluster))
    before = cluster.stats()["cancelled"]
    run = queue.submit(slow_study(symbols=6, fast=40))
    await _executing_worker(cluster)
    assert cluster.stats()["active"] > 0
    await queue.cancel(run.id)
    assert run.status == "cancelled"
    assert cluster.stats()["active"] == 0 and cluster.stats()["cancelled"] > before
    # The scheduler forgets the cancelled tasks: nothing is left queued or running for this run.

    async def forgotten() -> bool:
        left: int = await cluster.client.run_on_scheduler(_scheduler_tasks)
        return left == 0

    await await_until(forgotten)
    await queue.close(1.0)
