"""Containers: teardown writes the result file on success, on a strategy exception and on cancellation."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from tradingd.memory.grants import GrantRefused, MemoryBudget
from tradingd.trading import strategies
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.strategy import Strategy
from tradingd.workflows.container import ClosedTrades, Container, RunServices, load_completed
from tradingd.workflows.layout import RunLayout
from tradingd.workflows.spec import PhaseSettings
from tradingd.workflows.thread_executor import ThreadExecutor

ENTERED = threading.Event()
RELEASE = threading.Event()


MB = 1024 * 1024


class _Constant(Strategy):
    param_names: ClassVar[tuple[str, ...]] = ("n",)

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"n": self._int(params, "n", 0)}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return 0

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
        # Alternate long and flat every n+1 bars: some trades per combination.
        bars = np.arange(data.n_bars)[:, None]
        periods = np.array([p["n"] + 1 for p in grid])[None, :]
        return ((bars // periods) % 2 == 0).astype(np.float64)


class Exploding(_Constant):
    name = "test_exploding"

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
        if any(p["n"] == 13 for p in grid):
            raise RuntimeError("unlucky parameter 13")
        return super().positions(data, grid)


class Blocking(_Constant):
    name = "test_blocking"

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
        ENTERED.set()
        RELEASE.wait(10)
        return super().positions(data, grid)


@pytest.fixture(autouse=True)
def test_strategies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered for this module's tests only, so other tests see the shipped registry."""
    for strategy in (Exploding(), Blocking()):
        monkeypatch.setitem(strategies._REGISTRY, strategy.name, strategy)

DISK = PhaseSettings("disk", ("POSITION_OPEN", "POSITION_CLOSE"), "minimal", 100, False)
MEMORY = PhaseSettings("memory", ("FILL", "POSITION_OPEN", "POSITION_CLOSE"), "trade_complete", 100, True)


@pytest.fixture
async def services() -> AsyncIterator[RunServices]:
    executor = ThreadExecutor(2)
    yield RunServices(executor=executor)
    RELEASE.set()
    await executor.close(10.0)


@pytest.fixture
def make_container(tmp_path: Path, services: RunServices) -> Callable[..., Container]:
    data = load_sample_data(["SYM01"])["SYM01"].slice(0, 400)

    def make(strategy: str, params: list[dict[str, Any]], settings: PhaseSettings = DISK,
             batch_size: int = 2) -> Container:
        return Container(
            container_id="SYM01-0000",
            run_id="run-1",
            phase="training",
            layout=RunLayout(tmp_path, "run-1").phase("training"),
            data=data,
            strategy=strategy,
            indices=list(range(len(params))),
            params=params,
            backtest={"commission": 0.001},
            settings=settings,
            fingerprint="f" * 16,
            services=services,
            batch_size=batch_size,
        )

    return make


def read(container: Container) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(container.path.read_text())
    return result


async def test_success_writes_metrics_events_and_timings(make_container: Callable[..., Container]) -> None:
    container = make_container("sma_crossover", [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 40},
                                                 {"fast": 20, "slow": 60}])
    async with container:
        await container.run()
    doc = read(container)
    assert doc["status"] == "completed" and container.status == "completed"
    assert [row["index"] for row in doc["metrics"]] == [0, 1, 2]
    assert set(doc["metrics"][0]["metrics"]) >= {"total_return", "sharpe", "max_drawdown", "n_trades"}
    assert doc["timings"]["batches"] == doc["timings"]["batches_done"] == 2
    assert doc["timings"]["finished_at"] >= doc["timings"]["started_at"] > 0
    assert doc["memory"]["peak_rss_bytes"] > 10 * 2**20
    # Disk storage: every traced event is in the stream, the result keeps counters only (minimal).
    events_file = container.layout.events("SYM01-0000")
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    counts = doc["events"]["counts"]
    assert len(lines) == counts["POSITION_OPEN"] + counts["POSITION_CLOSE"] > 0
    assert doc["events"]["file"] == "events/SYM01-0000.jsonl" and "trades" not in doc["events"]
    assert not events_file.with_name("SYM01-0000.jsonl.part").exists()
    assert load_completed(container.path, container_id="SYM01-0000", fingerprint="f" * 16) is not None
    assert load_completed(container.path, container_id="SYM01-0000", fingerprint="0" * 16) is None


async def test_memory_storage_keeps_trades_and_equity_and_feeds_the_sink(
    make_container: Callable[..., Container], services: RunServices
) -> None:
    received: list[ClosedTrades] = []

    class Recorder:
        def prepare(self, batch: ClosedTrades) -> list[dict[str, Any]]:
            received.append(batch)
            return [{"key": str(i)} for i in range(len(batch.trades))]

        def stage(self, marker: Path) -> None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_bytes(b"")

        def commit(self, marker: Path, batch: ClosedTrades, entries: list[dict[str, Any]]) -> None:
            marker.unlink()

    services.journal = Recorder()
    container = make_container("test_exploding", [{"n": 5}, {"n": 8}], settings=MEMORY)
    async with container:
        await container.run()
    doc = read(container)
    trades = doc["events"]["trades"]
    assert len(trades) == doc["events"]["counts"]["POSITION_CLOSE"] > 10
    assert len(doc["equity"]["curves"]["0"]) == len(doc["equity"]["timestamps"]) == 400
    assert not container.layout.events("SYM01-0000").exists()  # memory storage: no stream
    assert len(received) == 1 and received[0].container_id == "SYM01-0000"
    assert len(received[0].trades) == len(trades) and received[0].trades[0]["params"] == {"n": 5}
    # The result file carries one journal entry per trade (what a journal rebuild reads); the marker is gone.
    assert len(doc["journal"]) == len(trades)
    assert not container.layout.journal_marker("SYM01-0000").exists()


async def test_strategy_exception_writes_failed_with_the_error(make_container: Callable[..., Container]) -> None:
    container = make_container("test_exploding", [{"n": 3}, {"n": 4}, {"n": 13}])
    with pytest.raises(RuntimeError, match="unlucky"):
        async with container:
            await container.run()
    doc = read(container)
    assert doc["status"] == "failed" == container.status
    assert doc["error"]["type"] == "RuntimeError" and "unlucky parameter 13" in doc["error"]["message"]
    assert any("positions" in frame for frame in doc["error"]["traceback"])
    # The batch that ran before the failure is kept.
    assert [row["index"] for row in doc["metrics"]] == [0, 1]
    assert doc["timings"]["batches_done"] == 1
    assert container.layout.events("SYM01-0000").exists()
    assert load_completed(container.path, container_id="SYM01-0000", fingerprint="f" * 16) is None


async def test_cancellation_writes_cancelled_while_compute_is_in_its_thread(
    make_container: Callable[..., Container],
) -> None:
    ENTERED.clear()
    RELEASE.clear()
    container = make_container("test_blocking", [{"n": 1}, {"n": 2}, {"n": 3}])

    async def work() -> None:
        async with container:
            await container.run()

    task = asyncio.create_task(work())
    assert await asyncio.to_thread(ENTERED.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    doc = read(container)
    assert doc["status"] == "cancelled" == container.status
    assert doc["metrics"] == [] and doc["timings"]["batches_done"] == 0
    RELEASE.set()


async def test_setup_failure_still_writes_the_result(make_container: Callable[..., Container], tmp_path: Path) -> None:
    container = make_container("sma_crossover", [{"fast": 5, "slow": 20}])
    # The events directory cannot be created: a file sits where it should be.
    container.layout.root.mkdir(parents=True)
    (container.layout.root / "events").write_text("in the way")
    with pytest.raises(OSError):
        async with container:
            await container.run()
    doc = read(container)
    assert doc["status"] == "failed" and doc["error"]["type"] in {"FileExistsError", "NotADirectoryError"}


async def test_a_grant_sizes_the_sweep_and_lands_in_the_result(make_container: Callable[..., Container],
                                                              services: RunServices) -> None:
    services.work = MemoryBudget(limit_bytes=1024 * MB, pressure_bytes=800 * MB, baseline_bytes=100 * MB)
    container = make_container("sma_crossover", [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 40}])
    async with container:
        await container.run()
    memory = read(container)["memory"]
    assert memory["granted_bytes"] == memory["estimate_bytes"] >= memory["minimum_bytes"] > 0
    assert 0 < memory["chunk_bytes"]["min"] <= memory["chunk_bytes"]["max"] < memory["granted_bytes"]
    assert services.work.stats()["granted_bytes"] == 0  # released in teardown
    assert services.work.stats()["granted_total"] == 1


async def test_a_container_the_limit_can_never_hold_fails_at_once_naming_limit_and_estimate(
        make_container: Callable[..., Container], services: RunServices) -> None:
    services.work = MemoryBudget(limit_bytes=64 * MB, pressure_bytes=51 * MB, baseline_bytes=int(50.9 * MB))
    container = make_container("sma_crossover", [{"fast": 5, "slow": 20}])
    with pytest.raises(GrantRefused):
        async with container:
            await container.run()
    doc = read(container)
    assert doc["status"] == "failed" and doc["error"]["type"] == "GrantRefused"
    assert "memory limit of 64 MB" in doc["error"]["message"] and "estimate" in doc["error"]["message"]
    assert doc["metrics"] == []
