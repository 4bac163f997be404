"""Smart search: the space is the grid, proposals are a function of the study, a resumed search is the same search."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from tradingd.trading.strategies import expand_grid
from tradingd.trading.strategy import StrategyConstraintError
from tradingd.workflows.search import Objectives, PhaseSearch, SearchStudy
from tradingd.workflows.search_space import ParameterSpace
from tradingd.workflows.spec import SearchSpec, SpecError, parse_spec

GRID: dict[str, list[Any]] = {
    "fast": [5, 10, 15, 20, 25, 30],
    "slow": [60, 20, 40, 80],  # unsorted on purpose: numeric axes are searched by rank
    "trend": [50, 100, 150],
    "stop_loss": [0.0, 0.02, 0.04],
    "take_profit": [0.05, 0.1],
}
SYMBOLS = ("AAA", "BBB")


def test_space_indexes_the_product_in_expand_grid_order() -> None:
    space = ParameterSpace("sma_trend_stops", GRID)
    assert len(space) == 6 * 4 * 3 * 3 * 2
    assert [space.raw(i) for i in range(len(space))] == expand_grid(GRID)
    index = space.index_of({"fast": 2, "slow": 3, "trend": 1, "stop_loss": 0, "take_profit": 1})
    assert space[index] == {"fast": 15, "slow": 80, "trend": 100, "stop_loss": 0.0, "take_profit": 0.1}
    with pytest.raises(StrategyConstraintError):
        space[space.index_of({"fast": 5, "slow": 1})]  # fast 30 >= slow 20
    with pytest.raises(IndexError):
        space.raw(len(space))


def test_a_search_spec_is_checked_value_by_value_and_may_exceed_the_grid_limit() -> None:
    huge = {"fast": {"min": 1, "max": 200}, "slow": {"min": 2, "max": 400}, "trend": {"min": 2, "max": 300},
            "stop_loss": {"min": 0, "max": 0.5, "step": 0.01}, "take_profit": {"min": 0, "max": 1, "step": 0.01}}
    spec = parse_spec({"type": "backtest", "strategy": {"name": "sma_trend_stops", "grid": huge},
                       "search": {"trials": 10}})
    assert spec.search is not None and spec.search.method == "tpe" and spec.search.batch == 16
    with pytest.raises(SpecError) as err:
        parse_spec({"type": "backtest", "strategy": {"name": "sma_trend_stops", "grid": {**huge, "stop_loss": [1.5]}},
                    "search": {"trials": 10}})
    assert "strategy.grid: strategy 'sma_trend_stops': parameter 'stop_loss' must be in [0.0, 1.0), got 1.5" in str(
        err.value)
    with pytest.raises(SpecError) as err:
        parse_spec({"type": "backtest", "strategy": {"name": "sma_crossover"}, "search": {"trials": 0}})
    assert "search.trials" in str(err.value)


def objective(params: dict[str, Any], symbol: str) -> float:
    """A smooth landscape with its peak inside the space (and one per symbol)."""
    shift = 0.0 if symbol == "AAA" else 0.5
    return -((params["fast"] - 15) / 10) ** 2 - ((params["trend"] - 100) / 50) ** 2 + params["take_profit"] + shift


class Evaluator:
    """Stands in for the containers; records what it computed."""

    def __init__(self, space: ParameterSpace) -> None:
        self.space = space
        self.computed: list[int] = []
        self.read: list[int] = []

    async def __call__(self, batch: int, indices: list[int], compute: bool) -> Objectives:
        (self.computed if compute else self.read).extend(indices)
        return {i: {s: objective(self.space[i], s) for s in SYMBOLS} for i in indices}


def make_search(db: Path, method: str, evaluator: Evaluator, *, stop_after: int | None = None) -> PhaseSearch:
    spec = SearchSpec(method=method, trials=40, batch=8, seed=11)  # type: ignore[arg-type]
    study = SearchStudy(db, "training@abc", spec, evaluator.space, maximize=True)
    batches: list[int] = []

    def should_stop() -> bool:
        return stop_after is not None and len(batches) >= stop_after

    async def on_batch(status: dict[str, Any], slots: int, evaluated: int) -> None:
        batches.append(evaluated)

    return PhaseSearch(study, symbols=SYMBOLS, evaluate=evaluator, should_stop=should_stop, on_batch=on_batch)


def trials_of(search: PhaseSearch) -> list[tuple[int, Any, Any]]:
    return [(r.number, r.params, r.value) for r in search.records]


# CMA-ES seeds each proposal with the trial's number, so an orphan (which takes a number) shifts
# its later proposals; without an orphan it resumes identically too (docs/workflows.md).
@pytest.mark.parametrize(("method", "orphan"), [
    pytest.param("tpe", True, marks=pytest.mark.slow), ("random", True),
    pytest.param("cmaes", False, marks=pytest.mark.slow)])
async def test_a_stopped_and_resumed_search_is_the_uninterrupted_search(tmp_path: Path, method: str,
                                                                        orphan: bool) -> None:
    space = ParameterSpace("sma_trend_stops", GRID)
    whole = make_search(tmp_path / "whole.db", method, Evaluator(space))
    assert await whole.run()
    assert len(whole.records) == 40 and whole.best() is not None

    evaluator = Evaluator(space)
    first = make_search(tmp_path / "resumed.db", method, evaluator, stop_after=2)
    assert not await first.run()
    computed_before = list(evaluator.computed)
    # A kill before the batch was told: the batch asked, nothing told (and, in the middle of the
    # next ask, a trial created without its parameters).
    study = first.study
    study.open()
    study.batch(2)
    if orphan:
        optuna.load_study(study_name=study.name, storage=f"sqlite:///{study.path}").ask()
    study.close()

    second = make_search(tmp_path / "resumed.db", method, evaluator)
    assert await second.run()
    assert [(p, v) for _, p, v in trials_of(second)] == [(p, v) for _, p, v in trials_of(whole)]
    assert len({r.number for r in second.records}) == 40
    # No set computed twice: the second attempt only read back what the first computed.
    assert len(evaluator.computed) == len(set(evaluator.computed))
    assert set(computed_before) <= set(evaluator.read)
    best_whole, best_second = whole.best(), second.best()
    assert best_whole is not None and best_second is not None
    assert (best_second.params, best_second.value) == (best_whole.params, best_whole.value)


async def test_repeats_and_rejected_sets_are_not_evaluated(tmp_path: Path) -> None:
    space = ParameterSpace("sma_trend_stops", {"fast": [10, 30], "slow": [20, 40], "trend": [100],
                                               "stop_loss": [0.02], "take_profit": [0.1]})
    evaluator = Evaluator(space)
    search = make_search(tmp_path / "tiny.db", "random", evaluator)
    assert await search.run()
    valid = {i for i in range(len(space)) if space.raw(i)["fast"] < space.raw(i)["slow"]}
    assert sorted(evaluator.computed) == sorted(valid)  # each at most once, though 40 trials were asked
    doc = search.document()
    assert doc["trials_done"] == 40 and doc["evaluated"] == len(valid) == len(doc["evaluations"])
    assert doc["invalid"] == sum(1 for t in doc["trials"] if t["index"] is None) > 0
    repeats = [t for t in doc["trials"] if t["note"] == "repeat"]
    assert repeats and all(t["value"] == search.values[t["index"]] for t in repeats)
    assert all(math.isfinite(e["value"]) for e in doc["evaluations"])
