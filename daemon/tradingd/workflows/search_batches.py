"""A search's batches as containers: batch ``b`` is one container per symbol, ``<symbol>-s<b:04d>``.

:class:`ContainerBatches` is the :data:`~tradingd.workflows.search.BatchEvaluator`
the sequencer gives a :class:`~tradingd.workflows.search.PhaseSearch`: it runs
a batch's containers through the usual path (admission, executor, atomic
result file), skips those whose completed result file holds exactly the
batch's parameter sets, and reads the objectives back from the files.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tradingd.workflows.container import Container, load_completed
from tradingd.workflows.progress import Progress
from tradingd.workflows.search import Objectives

__all__ = ["ContainerBatches", "completed_batch", "read_objectives"]


class ContainerBatches:
    """Evaluates a search's batches with real containers; see the module docstring."""

    def __init__(self, *, symbols: Sequence[str], make: Callable[[str, str, list[int]], Container],
                 run: Callable[[list[Container]], Awaitable[None]], fingerprint: str, objective: str,
                 progress: Progress, container_ids: list[str]) -> None:
        self.symbols = list(symbols)
        self._make = make  # (symbol, container id, indices) -> container
        self._run = run
        self.fingerprint = fingerprint
        self.objective = objective
        self.progress = progress
        self.container_ids = container_ids  # the phase's list: every batch's containers join it
        self.resumed = 0

    def __repr__(self) -> str:
        return f"<ContainerBatches {len(self.container_ids)} containers, {self.resumed} resumed>"

    async def __call__(self, batch: int, indices: list[int], compute: bool) -> Objectives:
        containers = [self._make(symbol, f"{symbol}-s{batch:04d}", indices) for symbol in self.symbols]
        self.container_ids.extend(c.id for c in containers)
        docs = await asyncio.to_thread(self._results, containers)
        todo = [c for c in containers if docs[c.symbol] is None]
        self.resumed += len(containers) - len(todo)
        for container in containers:
            if docs[container.symbol] is not None:
                self.progress.skip(container.work_units)
        if compute and todo:
            await self._run(todo)
            docs = await asyncio.to_thread(self._results, containers)
        return read_objectives(docs, self.objective)

    def _results(self, containers: Sequence[Container]) -> dict[str, dict[str, Any] | None]:
        return {c.symbol: completed_batch(c.path, container_id=c.id, fingerprint=self.fingerprint,
                                          indices=c.indices) for c in containers}


def completed_batch(path: Path, *, container_id: str, fingerprint: str,
                    indices: Sequence[int]) -> dict[str, Any] | None:
    """The completed result at ``path`` if it holds exactly ``indices`` (a batch is never run twice)."""
    doc = load_completed(path, container_id=container_id, fingerprint=fingerprint)
    if doc is None or [int(p.get("index", -1)) for p in doc.get("parameters") or []] != list(indices):
        return None
    return doc


def read_objectives(docs: Mapping[str, dict[str, Any] | None], objective: str) -> Objectives:
    """``{index: {symbol: value}}`` from the batch's result documents by symbol (None: no finite value)."""
    out: Objectives = {}
    for symbol, doc in docs.items():
        for row in (doc or {}).get("metrics") or []:
            value = (row.get("metrics") or {}).get(objective)
            finite = isinstance(value, int | float) and math.isfinite(value)
            out.setdefault(int(row["index"]), {})[symbol] = float(value) if finite and value is not None else None
    return out
