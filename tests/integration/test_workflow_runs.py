"""Runs end to end through the run queue: the results tree, selection hand-off, resume, cancel, drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from tradingd.memory.models import ModelRegistry
from tradingd.storage.outcomes import OutcomeJournal
from tradingd.trading import strategies
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.ml import MLClassifier
from tradingd.trading.regime import FEATURE_NAMES
from tradingd.trading.strategy import Strategy
from tradingd.workflows.container import RunServices
from tradingd.workflows.outcome_sink import JournalOutbox
from tradingd.workflows.runs import DuplicateRun, RunFinished, RunQueue, WorkflowRun
from tradingd.workflows.spec import WorkflowSpec, parse_spec
from tradingd.workflows.thread_executor import ThreadExecutor


class Sleepy(Strategy):
    """SMA-free and slow on purpose: each batch takes 0.15 s in its thread."""

    name = "test_sleepy"
    param_names: ClassVar[tuple[str, ...]] = ("n",)

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"n": self._int(params, "n", 1)}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return 0

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
        time.sleep(0.15)
        bars = np.arange(data.n_bars)[:, None]
        return ((bars // np.array([p["n"] for p in grid])[None, :]) % 2 == 0).astype(np.float64)


@pytest.fixture(autouse=True)
def sleepy_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered for this module's tests only, so other tests see the shipped registry."""
    monkeypatch.setitem(strategies._REGISTRY, Sleepy.name, Sleepy())


def study(**overrides: Any) -> WorkflowSpec:
    raw: dict[str, Any] = {
        "name": "study",
        "type": "train_test",
        "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03"], "start": "2018-01-01"},
        "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10, 20], "slow": [30, 60, 90]}},
        "selection": {"top": 2},
        "execution": {"chunk_size": 4, "batch_size": 2},
    }
    raw.update(overrides)
    return parse_spec(raw)


SLEEPY = {"name": "test_sleepy", "grid": {"n": {"min": 2, "max": 13}}}
TWO_SYMBOLS = {"source": "sample", "symbols": ["SYM01", "SYM02"], "start": "2018-01-01"}


@pytest.fixture
async def queue_for(tmp_path: Path) -> AsyncIterator[Callable[..., RunQueue]]:
    made: list[tuple[RunQueue, ThreadExecutor]] = []

    def make(results: str = "results", **services: Any) -> RunQueue:
        executor = ThreadExecutor(2)
        queue = RunQueue(tmp_path / results, RunServices(executor=executor, **services))
        made.append((queue, executor))
        return queue

    yield make
    for queue, executor in made:
        await queue.close(0.0)
        await executor.close(10.0)


async def eventually(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def finish(run: WorkflowRun) -> WorkflowRun:
    assert run.task is not None
    await asyncio.wait_for(asyncio.shield(run.task), 60)
    return run


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def aggregates(root: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(root.glob("*/aggregate_results.json"))}


async def test_train_test_writes_the_results_tree_and_tests_the_selection(
    queue_for: Callable[..., RunQueue], tmp_path: Path
) -> None:
    run = await finish(queue_for().submit(study(), run_id="tt"))
    assert run.status == "completed", run.error
    root = tmp_path / "results" / "tt"
    manifest = load(root / "manifest.json")
    assert manifest["status"] == "completed" and manifest["spec"]["name"] == "study"
    assert [p["name"] for p in manifest["phases"]] == ["training", "testing"]
    assert manifest["grid"] == {"size": 9, "dropped": 0}
    # 3 symbols x ceil(9 / 4) training containers, 3 x 1 testing containers.
    assert manifest["progress"]["done"] == manifest["progress"]["total"] == 12
    for phase in ("training", "testing"):
        assert (root / phase / "aggregate_results.json").is_file()
        assert load(root / phase / "phase_summary.json")["status"] == "completed"
    training_ids = sorted(p.stem for p in (root / "training" / "containers").glob("*.json"))
    assert training_ids == [f"SYM0{s}-000{c}" for s in (1, 2, 3) for c in (0, 1, 2)]
    assert len(list((root / "training" / "events").glob("*.jsonl"))) == 9  # training: disk storage
    assert not (root / "testing" / "events").exists()  # testing: memory storage
    selection = load(root / "training" / "aggregate_results.json")["selection"]["by_symbol"]
    for symbol in ("SYM01", "SYM02", "SYM03"):
        tested = load(root / "testing" / "containers" / f"{symbol}-0000.json")
        assert [row["index"] for row in tested["metrics"]] == selection[symbol]
        assert len(selection[symbol]) == 2
        assert tested["data"]["start"] > load(root / "training" / "containers" / f"{symbol}-0000.json")["data"]["end"]
        assert set(tested["equity"]["curves"]) == {str(i) for i in selection[symbol]}


async def test_ranking_follows_the_objective_and_its_direction(queue_for: Callable[..., RunQueue],
                                                               tmp_path: Path) -> None:
    run = await finish(queue_for().submit(study(type="backtest", objective="max_drawdown", selection={"top": 1}),
                                          run_id="bt"))
    agg = load(tmp_path / "results" / "bt" / "backtest" / "aggregate_results.json")
    assert agg["higher_is_better"] is False and agg["rows"] == 27
    values = [row["objective"] for row in agg["ranking"]]
    assert values == sorted(values)
    assert run.status == "completed"


@pytest.mark.slow
async def test_interrupted_run_resumes_and_matches_a_clean_run(queue_for: Callable[..., RunQueue],
                                                              tmp_path: Path) -> None:
    spec = study(strategy=SLEEPY, type="train_test", data=TWO_SYMBOLS)
    first = queue_for("interrupted")
    run = first.submit(spec, run_id="r")
    # Some containers done and some in flight, so the shutdown below has something to cancel.
    await eventually(lambda: run.progress.completed >= 2 and run.progress.running >= 1)
    await first.close(0.0)  # a shutdown with no grace: in-flight containers are cancelled
    assert run.status == "interrupted"
    cancelled = [p for p in (tmp_path / "interrupted" / "r" / "training" / "containers").glob("*.json")
                 if load(p)["status"] == "cancelled"]
    assert cancelled, "in-flight containers tear down as cancelled"
    assert load(tmp_path / "interrupted" / "r" / "manifest.json")["status"] == "interrupted"

    second = queue_for("interrupted")
    await second.start()
    resumed = await finish(second.get("r"))
    assert resumed.status == "completed" and resumed.attempts == 2
    assert resumed.progress.skipped >= 2

    clean = await finish(queue_for("clean").submit(spec, run_id="r"))
    assert clean.status == "completed"
    assert aggregates(tmp_path / "interrupted" / "r") == aggregates(tmp_path / "clean" / "r")
    assert set(aggregates(tmp_path / "clean" / "r")) == {"training", "testing"}


async def test_cancel_tears_running_containers_down_and_is_final(queue_for: Callable[..., RunQueue],
                                                                 tmp_path: Path) -> None:
    queue = queue_for()
    run = queue.submit(study(strategy=SLEEPY, type="backtest"), run_id="c")
    await eventually(lambda: run.progress.running >= 2)
    await queue.cancel("c")
    assert run.status == "cancelled"
    statuses = [load(p)["status"] for p in (tmp_path / "results" / "c" / "backtest" / "containers").glob("*.json")]
    assert "cancelled" in statuses
    # The phase ends too: cancelled, with its finish time, its files and a report that says so.
    manifest = load(tmp_path / "results" / "c" / "manifest.json")
    assert manifest["status"] == "cancelled" and manifest["finished_at"] is not None
    [phase] = manifest["phases"]
    assert phase["status"] == "cancelled" and phase["finished_at"] is not None
    phase_dir = tmp_path / "results" / "c" / "backtest"
    assert load(phase_dir / "phase_summary.json")["status"] == "cancelled"
    assert (phase_dir / "aggregate_results.json").is_file()
    assert "cancelled" in (phase_dir / "report.html").read_text()
    assert "cancelled" in (tmp_path / "results" / "c" / "report.html").read_text()
    with pytest.raises(RunFinished):
        await queue.cancel("c")
    assert queue_for().scan() == []  # cancelled runs are not resumed
    # ...until asked: a cancelled run resumes on request and keeps what it completed.
    resumed = queue.resume_run("c")
    await finish(resumed)
    assert resumed.status == "completed" and resumed.attempts == 2


async def test_drain_lets_in_flight_containers_finish(queue_for: Callable[..., RunQueue], tmp_path: Path) -> None:
    queue = queue_for()
    run = queue.submit(study(strategy=SLEEPY, type="backtest"), run_id="d")
    await eventually(lambda: run.progress.running >= 2)
    await queue.close(10.0)
    assert run.status == "interrupted"
    statuses = [load(p)["status"] for p in (tmp_path / "results" / "d" / "backtest" / "containers").glob("*.json")]
    assert statuses and set(statuses) == {"completed"}
    assert run.progress.done < run.progress.total
    assert [r.id for r in queue_for().scan()] == ["d"]
    assert load(tmp_path / "results" / "d" / "manifest.json")["phases"][0]["status"] == "interrupted"


@pytest.mark.slow
async def test_walk_forward_windows_write_separately(queue_for: Callable[..., RunQueue], tmp_path: Path) -> None:
    spec = study(type="walk_forward", walk_forward={"train_bars": 250, "test_bars": 100, "max_windows": 3},
                 selection={"top": 1, "scope": "across_symbols"})
    run = await finish(queue_for().submit(spec, run_id="wf"))
    assert run.status == "completed", run.error
    root = tmp_path / "results" / "wf"
    names = [f"window-{w:03d}-{kind}" for w in range(3) for kind in ("training", "testing")]
    assert sorted(aggregates(root)) == sorted(names)
    starts = [load(root / f"window-{w:03d}-testing" / "phase_summary.json")["data"]["SYM01"]["start"]
              for w in range(3)]
    assert starts == sorted(set(starts))
    for w in range(3):
        chosen = load(root / f"window-{w:03d}-training" / "aggregate_results.json")["selection"]["by_symbol"]
        assert len({tuple(v) for v in chosen.values()}) == 1  # across_symbols: the same for every symbol


async def test_ml_models_are_trained_once_registered_and_tested(
    queue_for: Callable[..., RunQueue], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path / "models", secret=b"k" * 32)
    # While a testing container computes, the cleanup ladder at its most forceful must not demote its model.
    while_testing: list[dict[str, Any]] = []
    positions = MLClassifier.positions

    def testing_positions(self: MLClassifier, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                          cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
        if models is not None:
            registry.evict_idle(force=True)
            while_testing.append(registry.stats())
        return positions(self, data, grid, cache=cache, models=models)

    monkeypatch.setattr(MLClassifier, "positions", testing_positions)
    spec = study(strategy={"name": "ml_classifier", "grid": {"model": ["logistic"], "lags": [2, 4], "seed": 1}},
                 data={"source": "sample", "symbols": ["SYM01"], "start": "2019-01-01"}, selection={"top": 1})
    run = await finish(queue_for(models=registry).submit(spec, run_id="ml"))
    assert run.status == "completed", run.error
    assert while_testing and all(s["leased"] == 1 and s["strong"] == 1 and s["demotions"] == 0 for s in while_testing)
    assert registry.stats()["leased"] == 0  # released once the phase's containers ended
    summary = load(tmp_path / "results" / "ml" / "training" / "phase_summary.json")
    (key,) = summary["models"]["SYM01"].values()
    assert key in registry and registry.registrations == 1
    tested = load(tmp_path / "results" / "ml" / "testing" / "containers" / "SYM01-0000.json")
    assert tested["status"] == "completed" and tested["metrics"][0]["metrics"]["n_trades"] > 0


async def test_bad_data_source_fails_the_run_with_the_path(queue_for: Callable[..., RunQueue], tmp_path: Path) -> None:
    run = await finish(queue_for().submit(study(data={"source": str(tmp_path / "nowhere.csv")}), run_id="bad"))
    assert run.status == "failed" and "nowhere.csv" in (run.error or "")
    assert load(tmp_path / "results" / "bad" / "manifest.json")["error"] == run.error


async def test_duplicate_ids_are_refused(queue_for: Callable[..., RunQueue]) -> None:
    queue = queue_for()
    await finish(queue.submit(study(), run_id="dup"))
    with pytest.raises(DuplicateRun):
        queue.submit(study(), run_id="dup")
    with pytest.raises(DuplicateRun):  # also when only the directory is left from an earlier daemon
        queue_for().submit(study(), run_id="dup")


async def test_cancel_stops_a_running_batch_in_its_thread(queue_for: Callable[..., RunQueue]) -> None:
    # One batch of ~20,000 combinations takes seconds; cancellation reaches it between engine chunks.
    spec = study(type="backtest", data={"source": "sample", "symbols": ["SYM01"]}, event_tracing=[],
                 strategy={"name": "sma_crossover", "grid": {"fast": {"min": 2, "max": 100},
                                                             "slow": {"min": 101, "max": 300}}},
                 execution={"chunk_size": 20000, "batch_size": 20000})
    queue = queue_for()
    run = queue.submit(spec, run_id="stop")
    executor = queue.services.executor
    await eventually(lambda: run.progress.running == 1 and executor.stats()["active"] == 1)  # the batch computes
    before = executor.stats()
    await queue.cancel("stop")
    await eventually(lambda: executor.stats()["active"] == 0)
    assert run.status == "cancelled"
    # The thread gave up its batch (the engine raised between chunks) instead of finishing it.
    after = executor.stats()
    assert after["completed"] == before["completed"] and after["failed"] == before["failed"] + 1


async def test_closed_trades_reach_the_outcome_journal(queue_for: Callable[..., RunQueue], tmp_path: Path) -> None:
    journal = OutcomeJournal(tmp_path / "outcomes.sqlite3")
    try:
        queue = queue_for(journal=JournalOutbox(journal))
        run = await finish(queue.submit(study(type="backtest"), run_id="j"))
        assert run.status == "completed"
        closes = sum(load(p)["events"]["counts"]["POSITION_CLOSE"]
                     for p in (tmp_path / "results" / "j" / "backtest" / "containers").glob("*.json"))
        assert journal.count() == closes > 50
        nearest = journal.similar([0.0] * len(FEATURE_NAMES), k=1)[0]
        assert nearest["run_id"] == "j" and nearest["strategy"] == "sma_crossover"
        assert set(nearest["params"]) == {"fast", "slow"} and nearest["regime"]
        # The same spec again (another run id): the trades are the same trades, journaled once.
        again = await finish(queue.submit(study(type="backtest"), run_id="j2"))
        assert again.status == "completed" and journal.count() == closes
        # Other costs are other trades.
        costly = await finish(queue.submit(study(type="backtest", backtest={"commission": 0.002}), run_id="j3"))
        assert costly.status == "completed" and journal.count() == 2 * closes
    finally:
        journal.close()
