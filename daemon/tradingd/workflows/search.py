"""Smart search: an Optuna study proposes parameter sets, a batch at a time, and vectorized sweeps score them.

A phase with ``search`` (training and backtest phases) does not sweep the
whole grid. For batch ``b`` the study is asked for ``batch`` trials; their
parameter sets become one container per symbol (the usual container path:
executor, admission, atomic result file), and each trial is told the mean of
its objective over the symbols. Then the next batch is asked.

Resuming after a crash, even SIGKILL, gives the run an uninterrupted one
would have made:

- The study is Optuna's RDB storage on SQLite, one file per run under the
  state dir (``<state_dir>/search/<run_id>.db``), one study per phase and
  spec fingerprint.
- Every ask uses a fresh sampler seeded from ``(seed, batch, position)``, and
  samplers only look at finished trials (and, for TPE's constant liar, the
  running trials of the same batch), so the proposal for a given slot is a
  function of the study's history, not of the process that asks.
- A trial left without all its parameters (killed inside ``ask``) is failed
  and not counted; the slot is asked again, with the same seed.
- A batch's containers that completed before the crash are not run again
  (their result files are the record); told trials are never told again.

Parameter sets already evaluated (samplers do propose repeats in discrete
spaces) are told their earlier value without a second evaluation; sets the
strategy rejects (fast >= slow) are failed without one. Every SQLite call
runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, CmaEsSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from tradingd.trading.strategy import StrategyConstraintError
from tradingd.workflows.search_space import ParameterSpace
from tradingd.workflows.spec import SearchSpec

__all__ = ["SEARCH_FORMAT", "BatchEvaluator", "Objectives", "PhaseSearch", "SearchStudy", "TrialRecord"]

log = logging.getLogger(__name__)

SEARCH_FORMAT = "tradingd-search/1"

# Objective values per product index and symbol (None: no finite value), for one batch.
Objectives = dict[int, dict[str, float | None]]
# (batch number, indices to evaluate, whether to compute missing results) -> objectives of those indices.
BatchEvaluator = Callable[[int, list[int], bool], Awaitable[Objectives]]


@dataclass(frozen=True)
class TrialRecord:
    """One trial as ``search.json`` lists it."""

    number: int
    batch: int
    state: str  # complete | fail | running
    index: int | None
    params: dict[str, Any] | None
    value: float | None
    evaluated: bool  # False: a repeat of an earlier set, or a set the strategy rejects
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "batch": self.batch, "state": self.state, "index": self.index,
                "params": self.params, "value": self.value, "evaluated": self.evaluated, "note": self.note}


def _sampler(method: str, seed: int, batch: int) -> BaseSampler:
    if method == "random":
        return RandomSampler(seed=seed)
    if method == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # One generation per batch; with_margin keeps CMA-ES from collapsing on discrete axes.
            return CmaEsSampler(seed=seed, popsize=max(batch, 2), with_margin=True,
                                warn_independent_sampling=False)
    # The constant liar spreads one batch's proposals instead of stacking them on one mode.
    return TPESampler(seed=seed, multivariate=True, constant_liar=True)


class SlotSampler(BaseSampler):
    """The study's one sampler: a fresh, freshly seeded sampler for every slot it is pointed at.

    One study object (and Optuna's trial cache with it) serves the whole
    search; only the sampler behind it changes from slot to slot.
    """

    def __init__(self, method: str, batch: int) -> None:
        self.method = method
        self.batch = batch
        self.inner: BaseSampler = _sampler(method, 0, batch)

    def seat(self, seed: int) -> None:
        self.inner = _sampler(self.method, seed, self.batch)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        pass  # seeds come from the slot, never from the process


def _relaxed_sync(connection: Any, record: Any) -> None:
    connection.execute("PRAGMA synchronous=NORMAL")


def slot_seed(seed: int, batch: int, position: int) -> int:
    """The sampler seed of one slot of one batch (independent of which process asks)."""
    return int(np.random.SeedSequence([seed, batch, position]).generate_state(1)[0] >> 1)


class SearchStudy:
    """The Optuna study of one phase, in SQLite. Every method blocks: call it off the event loop."""

    def __init__(self, path: Path, name: str, search: SearchSpec, space: ParameterSpace, *, maximize: bool) -> None:
        self.path = path
        self.name = name
        self.search = search
        self.space = space
        self.direction: Literal["maximize", "minimize"] = "maximize" if maximize else "minimize"
        self.axes = space.searched_axes()
        self.distributions: dict[str, BaseDistribution] = {
            axis.name: IntDistribution(0, len(axis.values) - 1) if axis.numeric
            else CategoricalDistribution(tuple(range(len(axis.values))))
            for axis in self.axes
        }
        self._storage: optuna.storages.RDBStorage | None = None
        self._study_obj: optuna.Study | None = None
        self._sampler = SlotSampler(search.method, search.batch)

    def __repr__(self) -> str:
        return f"<SearchStudy {self.name} {self.search.method} in {self.path}>"

    def open(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is too many for a daemon log
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Optuna commits a dozen times per trial; fsyncing each made asking a batch take seconds.
        # WAL with synchronous=NORMAL survives a killed process (what resume needs); after a power
        # loss the last trials may be gone, and are asked again with the same seeds, while their
        # containers' result files (fsynced) keep them from being evaluated twice.
        with closing(sqlite3.connect(self.path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
        self._storage = optuna.storages.RDBStorage(f"sqlite:///{self.path}",
                                                   engine_kwargs={"connect_args": {"timeout": 60}})
        sqlalchemy.event.listen(self._storage.engine, "connect", _relaxed_sync)
        self._storage.engine.dispose()  # connections opened from now on get the pragma
        self._study_obj = optuna.create_study(study_name=self.name, storage=self._storage, direction=self.direction,
                                              sampler=self._sampler, load_if_exists=True)

    def close(self) -> None:
        self._study_obj = None
        if self._storage is not None:
            self._storage.remove_session()
            self._storage.engine.dispose()
            self._storage = None

    def _study(self) -> optuna.Study:
        if self._study_obj is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._study_obj

    def n_batches(self) -> int:
        return -(-self.search.trials // self.search.batch)

    def batch_size(self, batch: int) -> int:
        return min(self.search.batch, self.search.trials - batch * self.search.batch)

    def slots(self) -> list[FrozenTrial]:
        """The trials that hold a slot, in order: every trial with all its parameters.

        A trial without them was interrupted inside ``ask``: it is failed here
        and its slot is asked again.
        """
        study = self._study()
        slots = []
        for trial in study.get_trials(deepcopy=False):
            if set(trial.params) == set(self.distributions):
                slots.append(trial)
            elif trial.state == TrialState.RUNNING:
                log.info("search %s: trial %d was interrupted while asked; failing it", self.name, trial.number)
                study.tell(trial.number, state=TrialState.FAIL)
        return slots

    def batch(self, batch: int) -> list[FrozenTrial]:
        """The trials of ``batch``, asking for the slots not asked yet."""
        start, size = batch * self.search.batch, self.batch_size(batch)
        found = self.slots()[start:start + size]
        if len(found) == size:
            return found
        for position in range(len(found), size):
            self._sampler.seat(slot_seed(self.search.seed, batch, position))
            self._study().ask(self.distributions)
        return self.slots()[start:start + size]

    def tell(self, number: int, value: float | None) -> None:
        """Finish trial ``number`` (no value: failed); a finished trial is left as it is."""
        study = self._study()
        if value is None:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(number, value, skip_if_finished=True)

    def index_of(self, trial: FrozenTrial) -> int:
        positions = {axis.name: axis.position(int(trial.params[axis.name])) for axis in self.axes}
        return self.space.index_of(positions)


def _mean(values: Mapping[str, float | None], symbols: Sequence[str]) -> float | None:
    found = [values.get(s) for s in symbols]
    if not found or any(v is None for v in found):
        return None
    return math.fsum(v for v in found if v is not None) / len(found)


class PhaseSearch:
    """Runs one phase's search to the end (or until ``should_stop``); see the module docstring."""

    def __init__(self, study: SearchStudy, *, symbols: Sequence[str], evaluate: BatchEvaluator,
                 should_stop: Callable[[], bool],
                 on_batch: Callable[[dict[str, Any], int, int], Awaitable[None]]) -> None:
        self.study = study
        self.symbols = list(symbols)
        self._evaluate = evaluate
        self._should_stop = should_stop
        self._on_batch = on_batch  # (status, slots planned in the batch, sets evaluated in it)
        self.records: list[TrialRecord] = []
        self.by_index: dict[int, dict[str, float | None]] = {}
        self.values: dict[int, float | None] = {}  # product index -> told value
        self.invalid = 0

    def __repr__(self) -> str:
        return f"<PhaseSearch {self.study.name} {len(self.records)}/{self.study.search.trials} trials>"

    async def run(self) -> bool:
        """Every batch in order; False if it stopped early because the daemon is stopping."""
        await asyncio.to_thread(self.study.open)
        try:
            for batch in range(self.study.n_batches()):
                if self._should_stop():
                    return False
                await self._run_batch(batch)
            return True
        finally:
            await asyncio.to_thread(self.study.close)

    async def _run_batch(self, batch: int) -> None:
        trials = await asyncio.to_thread(self.study.batch, batch)
        plan: list[tuple[FrozenTrial, int | None, str | None]] = []
        fresh: list[int] = []
        for trial in trials:
            index = self.study.index_of(trial)
            try:
                self.study.space[index]
            except StrategyConstraintError as exc:
                plan.append((trial, None, str(exc)))
                continue
            if index in self.values or index in fresh:
                plan.append((trial, index, "repeat"))
                continue
            fresh.append(index)
            plan.append((trial, index, None))
        # A batch told in an earlier attempt only needs its results read back; never run twice.
        told = all(t.state != TrialState.RUNNING for t in trials)
        objectives = await self._evaluate(batch, fresh, not told) if fresh else {}
        self.by_index.update(objectives)
        for new in fresh:
            self.values[new] = _mean(objectives.get(new, {}), self.symbols)
        for trial, where, note in plan:
            value = self.values.get(where) if where is not None else None
            if trial.state == TrialState.RUNNING:
                await asyncio.to_thread(self.study.tell, trial.number, value)
            elif trial.state == TrialState.COMPLETE:
                value = trial.value
            else:
                value = None  # failed in an earlier attempt: stays failed
            if where is None:
                self.invalid += 1
            self.records.append(TrialRecord(
                number=trial.number, batch=batch, state="complete" if value is not None else "fail",
                index=where, params=self.study.space[where] if where is not None else None, value=value,
                evaluated=note is None, note=note))
        await self._on_batch(self.status(), len(trials), len(fresh))

    def best(self) -> TrialRecord | None:
        done = [r for r in self.records if r.value is not None]
        if not done:
            return None
        sign = -1.0 if self.study.direction == "maximize" else 1.0
        assert all(r.value is not None for r in done)
        return min(done, key=lambda r: (sign * float(r.value or 0.0), r.number))

    def evaluated_sets(self) -> tuple[list[int], list[dict[str, Any]]]:
        """The distinct parameter sets evaluated so far: their grid indices and parameters (the trials)."""
        indices = sorted(self.values)
        return indices, [self.study.space[i] for i in indices]

    def status(self) -> dict[str, Any]:
        """What ``/runs`` shows while the search runs and ``phase_summary.json`` keeps."""
        best = self.best()
        search = self.study.search
        return {
            "phase": self.study.name.split("@")[0],
            "method": search.method,
            "seed": search.seed,
            "batch": search.batch,
            "trials_total": search.trials,
            "trials_done": len(self.records),
            "batches_done": len({r.batch for r in self.records}),
            "batches_total": self.study.n_batches(),
            "evaluated": len(self.values),
            "invalid": self.invalid,
            "space_size": self.study.space.size,
            "best": None if best is None else {"trial": best.number, "value": best.value, "index": best.index,
                                               "params": best.params},
        }

    def document(self) -> dict[str, Any]:
        """``search.json``: the study's every trial and the objective per symbol of every evaluated set."""
        return {
            "format": SEARCH_FORMAT,
            **self.status(),
            "space": {name: values for name, values in zip(self.study.space.names, self.study.space.values,
                                                           strict=True)},
            "direction": self.study.direction,
            "trials": [r.as_dict() for r in self.records],
            "evaluations": [
                {"index": index, "params": self.study.space[index], "value": self.values.get(index),
                 "by_symbol": {s: self.by_index.get(index, {}).get(s) for s in self.symbols}}
                for index in sorted(self.values)
            ],
        }

