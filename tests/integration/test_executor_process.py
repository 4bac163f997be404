"""The process executor: same results as in-process, recycled workers, leaks contained, lost workers replaced."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from tradingd.config import ExecutorConfig
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.rules import SmaCrossover
from tradingd.trading.strategies import get_strategy, register_strategy
from tradingd.trading.strategy import StrategyError
from tradingd.workflows.compute import BatchOutput, BatchTask, TraceConfig, run_batch, train_model
from tradingd.workflows.datastore import store_location
from tradingd.workflows.executor import ExecutorClosed
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.process_executor import ProcessExecutor, WorkerLost
from tradingd.workflows.process_worker import RemoteTraceback
from tradingd.workflows.thread_executor import ThreadExecutor

from tests.conftest import await_until

pytestmark = pytest.mark.timeout(90)

LEAK_BYTES = 16 * 2**20
# Grows in whichever process runs the leaky strategy; must stay empty in the daemon.
LEAKED: list[bytes] = []


class LeakySma(SmaCrossover):
    """An SMA crossover that keeps 16 MB forever on every call: code we 'do not control'."""

    name = "leaky_sma"

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Any:
        LEAKED.append(b"\x01" * LEAK_BYTES)
        return super().positions(data, grid, cache=cache, models=models)


register_strategy(LeakySma())
PRELOAD = (__name__,)  # workers import this module, which registers the strategy


def worker_pid_after(seconds: float, started: str | None = None) -> int:
    """Sleep in the worker (after creating the file ``started``, when given); the worker's pid."""
    if started is not None:
        Path(started).touch()
    time.sleep(seconds)
    return os.getpid()


def is_mapped(data: MarketData) -> bool:
    return store_location(data) is not None


def rss() -> int:
    return psutil.Process().memory_info().rss


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False



@pytest.fixture(scope="module")
def sample() -> dict[str, MarketData]:
    return load_sample_data(["SYM01", "SYM02", "SYM03"])


def task(data: MarketData, strategy: str = "sma_crossover", start: int = 0) -> BatchTask:
    params = ({"fast": 5, "slow": 20}, {"fast": 10, "slow": 50}, {"fast": 20, "slow": 100})
    return BatchTask(
        data=data,
        strategy=strategy,
        indices=tuple(range(start, start + len(params))),
        params=params,
        backtest={"fill": "next_open", "commission": 0.001, "slippage_bps": 1.0},
        trace=TraceConfig(types=("FILL", "POSITION_OPEN", "POSITION_CLOSE"), policy="trade_complete", window=0,
                          stream=True, track_equity=True),
    )


@pytest.fixture
async def make_executor(tmp_path: Path) -> AsyncIterator[Callable[..., ProcessExecutor]]:
    made: list[ProcessExecutor] = []

    def make(max_workers: int = 2, **kwargs: Any) -> ProcessExecutor:
        kwargs.setdefault("data_dir", tmp_path / "data")
        executor = ProcessExecutor(max_workers, preload=PRELOAD, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.close(10.0)


def same_output(a: BatchOutput, b: BatchOutput) -> None:
    assert a.rows == b.rows
    assert a.trace == b.trace and a.events == b.events
    assert a.equity.keys() == b.equity.keys() and a.equity_times == b.equity_times
    assert all(np.array_equal(a.equity[k], b.equity[k]) for k in a.equity)


@pytest.mark.slow
async def test_batches_give_the_same_output_as_in_process(make_executor: Callable[..., ProcessExecutor],
                                                          sample: dict[str, MarketData]) -> None:
    executor = make_executor()
    tasks = [task(sample[s].slice(0, 1200)) for s in sample] + [task(sample[s].slice(1200, 2500)) for s in sample]
    outputs = await asyncio.gather(*(executor.submit(run_batch, t, None) for t in tasks))
    for t, out in zip(tasks, outputs, strict=True):
        same_output(out, run_batch(t))
    # The bars went through the store: imported once per distinct slice, mapped in the worker.
    stats = executor.stats()
    assert stats["data_imported"] == len(tasks) and stats["completed"] == len(tasks)
    assert await executor.submit(is_mapped, sample["SYM01"]) is True
    # A model trained in a worker predicts what one trained here does.
    ml = get_strategy("ml_classifier")
    params = ml.validate_params({})
    remote = await executor.submit(train_model, sample["SYM02"].slice(0, 1500), "ml_classifier", params)
    local = train_model(sample["SYM02"].slice(0, 1500), "ml_classifier", params)
    test_bars = sample["SYM02"].slice(1500, 2500)
    assert np.array_equal(ml.positions(test_bars, [params], models=[remote]),
                          ml.positions(test_bars, [params], models=[local]), equal_nan=True)


@pytest.mark.slow
async def test_workers_are_replaced_after_max_tasks_per_child(make_executor: Callable[..., ProcessExecutor],
                                                              sample: dict[str, MarketData]) -> None:
    executor = make_executor(2, max_tasks_per_child=2)
    assert all(w["pid"] is None for w in executor.stats()["workers"])  # nothing runs before it is needed
    executor.start()
    # Worker RSS right after start (a worker shows its pid once it is ready), before any leak.
    await await_until(lambda: all(w["pid"] for w in executor.stats()["workers"]))
    first_pids = {w["pid"] for w in executor.stats()["workers"]}
    fresh_worker = max(w["rss_bytes"] for w in executor.stats()["workers"])
    daemon_before = rss()
    n_tasks = 20
    outputs = await asyncio.gather(*(executor.submit(run_batch, task(sample["SYM01"], "leaky_sma", i * 3), None)
                                     for i in range(n_tasks)))
    assert [row["index"] for out in outputs for row in out.rows] == list(range(n_tasks * 3))
    # A slot retires its worker just after handing back the last result, then starts another.
    await await_until(lambda: all(w["tasks"] < 2 and w["pid"] for w in executor.stats()["workers"]))
    stats = executor.stats()
    # Each worker retired after 2 tasks: at least (20 - 2 leftovers per slot) / 2 retirements.
    assert stats["recycled"]["tasks"] >= (n_tasks - 2 * 2) // 2 and stats["recycled"]["rss"] == 0
    assert stats["workers_started"] == 2 + stats["recycled"]["tasks"]
    assert all(w["tasks"] < 2 for w in stats["workers"])
    assert first_pids.isdisjoint({w["pid"] for w in stats["workers"]})
    # The leak (20 x 16 MB = 320 MB) stayed in the workers, and each worker held at most two leaks.
    assert LEAKED == []
    assert rss() - daemon_before < 64 * 2**20
    assert stats["peak_worker_rss_bytes"] < fresh_worker + 2 * LEAK_BYTES + 64 * 2**20


async def test_the_same_strategy_in_threads_grows_the_daemon(sample: dict[str, MarketData]) -> None:
    # The contrast that makes the test above meaningful: in-process, the leak is the daemon's.
    executor = ThreadExecutor(2)
    try:
        await asyncio.gather(*(executor.submit(run_batch, task(sample["SYM01"], "leaky_sma"), None)
                               for _ in range(3)))
        assert len(LEAKED) == 3
    finally:
        LEAKED.clear()
        await executor.close(5.0)


async def test_a_worker_over_its_rss_limit_is_replaced(make_executor: Callable[..., ProcessExecutor],
                                                       sample: dict[str, MarketData]) -> None:
    probe = make_executor(1)
    await probe.submit(run_batch, task(sample["SYM01"]), None)
    base_mb = probe.stats()["workers"][0]["rss_bytes"] / 2**20
    executor = make_executor(1, max_tasks_per_child=1000, max_worker_rss_mb=base_mb + 40)
    for i in range(8):
        await executor.submit(run_batch, task(sample["SYM01"], "leaky_sma", i), None)
    stats = executor.stats()
    # 16 MB per task over a 40 MB allowance: replaced after the third leak, twice in eight tasks.
    assert stats["recycled"] == {"tasks": 0, "rss": 2, "grant": 0}
    assert stats["workers"][0]["tasks"] == 2


async def test_a_worker_past_the_grant_passed_with_its_task_is_recycled(
        make_executor: Callable[..., ProcessExecutor], sample: dict[str, MarketData]) -> None:
    executor = make_executor(1, max_tasks_per_child=1000)
    for i in range(8):
        granted = dataclasses.replace(task(sample["SYM01"], "leaky_sma", i), grant_bytes=1)
        await executor.submit(run_batch, granted, None)
    stats = executor.stats()
    # 16 MB kept per task (more on a fresh worker's first), a grant of nothing and the 32 MiB margin:
    # a worker lasts two or three tasks.
    assert stats["recycled"]["grant"] in (2, 3) and stats["recycled"]["rss"] == stats["recycled"]["tasks"] == 0
    assert stats["workers"][0]["tasks"] <= 2


async def test_a_killed_worker_fails_only_its_task_and_is_replaced(
        make_executor: Callable[..., ProcessExecutor], tmp_path: Path) -> None:
    executor = make_executor(1)
    started = tmp_path / "started"
    running = asyncio.ensure_future(executor.submit(worker_pid_after, 30.0, str(started)))
    await await_until(started.exists)
    victim = executor.stats()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerLost, match=str(victim)):
        await running
    assert await executor.submit(worker_pid_after, 0.0) not in (victim, os.getpid())
    stats = executor.stats()
    assert stats["lost"] == 1 and stats["failed"] == 1 and stats["completed"] == 1


async def test_errors_come_back_with_their_type_and_the_worker_traceback(
        make_executor: Callable[..., ProcessExecutor], sample: dict[str, MarketData]) -> None:
    executor = make_executor(1)
    with pytest.raises(StrategyError, match="no_such_strategy") as caught:
        await executor.submit(run_batch, task(sample["SYM01"], "no_such_strategy"), None)
    assert isinstance(caught.value.__cause__, RemoteTraceback) and "get_strategy" in caught.value.__cause__.text
    with pytest.raises(Exception, match="pickle"):
        await executor.submit(worker_pid_after, lambda: None)  # an argument that cannot be sent
    assert executor.stats()["failed"] == 2 and executor.stats()["lost"] == 0


async def test_close_refuses_work_joins_every_process_and_removes_its_own_data_dir(
        sample: dict[str, MarketData]) -> None:
    before = children()
    executor = ProcessExecutor(2)
    await executor.submit(run_batch, task(sample["SYM01"]), None)
    await await_until(lambda: all(w["pid"] for w in executor.stats()["workers"]))
    pids = {w["pid"] for w in executor.stats()["workers"]}
    assert pids <= children()
    data_dir = executor.data_dir
    assert data_dir.is_dir() and any(data_dir.iterdir())
    await asyncio.gather(executor.close(10.0), executor.close(10.0))
    await executor.close(10.0)  # idempotent
    with pytest.raises(ExecutorClosed):
        executor.submit(worker_pid_after, 0.0)
    assert not data_dir.exists()
    # Workers are joined (reaped, not zombies), and nothing else it started (no forkserver, no
    # resource tracker) outlives it.
    assert not any(alive(pid) for pid in pids)
    assert children() - before == set()


@pytest.mark.slow
async def test_idle_prune_deletes_the_imported_stores_and_they_come_back_on_demand(
        make_executor: Callable[..., ProcessExecutor], sample: dict[str, MarketData]) -> None:
    executor = make_executor()
    first = await executor.submit(run_batch, task(sample["SYM01"]), None)
    stores = list(executor.data_dir.iterdir())
    assert stores
    assert await asyncio.to_thread(executor.prune_data) == len(stores)
    assert list(executor.data_dir.iterdir()) == []
    # The same bars again: stored again, and the answer is the same.
    again = await executor.submit(run_batch, task(sample["SYM01"]), None)
    same_output(first, again)
    assert [p.name for p in executor.data_dir.iterdir()] == [p.name for p in stores]


async def test_close_kills_a_worker_still_busy_after_the_timeout(
        make_executor: Callable[..., ProcessExecutor], tmp_path: Path) -> None:
    executor = make_executor(1)
    started = tmp_path / "started"
    running = asyncio.ensure_future(executor.submit(worker_pid_after, 60.0, str(started)))
    await await_until(started.exists)
    victim = executor.stats()["workers"][0]["pid"]
    await executor.close(0.5)
    assert not alive(victim)
    with pytest.raises(WorkerLost, match=str(victim)):
        await running


async def test_config_builds_a_process_executor() -> None:
    executor = create_executor(ExecutorConfig.model_validate(
        {"kind": "process", "max_workers": 1, "process": {"max_tasks_per_child": 7, "max_worker_rss_mb": 512}}))
    try:
        assert isinstance(executor, ProcessExecutor) and not executor.shares_memory
        stats = executor.stats()
        assert (stats["kind"], stats["max_workers"], stats["max_tasks_per_child"], stats["max_worker_rss_mb"]) == (
            "process", 1, 7, 512)
        assert np.isclose(await executor.submit(float, "2.5"), 2.5)
    finally:
        await executor.close(10.0)
