"""The models of a trainable strategy's selections, for one run.

A training phase trains a model for each selected (symbol, combination); the
testing phase after it tests those models. Models live in the memory room's
registry (kept on disk, demoted when idle, never while leased), or in the
run's own dict when the daemon has no registry. Training is seeded, so a
model retrained after a restart (or after the registry lost it) is the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from tradingd.trading.data import MarketData
from tradingd.workflows.compute import train_model
from tradingd.workflows.container import ModelStore, RunServices

__all__ = ["PhaseModels"]

log = logging.getLogger(__name__)


class PhaseModels:
    """Trains, finds and leases the models of one run's phases."""

    def __init__(self, *, run_id: str, fingerprint: str, services: RunServices, strategy: str,
                 grid: Sequence[Mapping[str, Any]], bars: Callable[[str, str], MarketData]) -> None:
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.services = services
        self.strategy = strategy
        self.grid = grid
        self._bars = bars  # (phase, symbol) -> the bars that phase trains on
        self.keys: dict[str, dict[str, dict[str, str]]] = {}  # phase -> symbol -> index -> registry key

    def __repr__(self) -> str:
        return f"<PhaseModels run={self.run_id} phases={sorted(self.keys)}>"

    def key(self, phase: str, symbol: str, index: int) -> str:
        return f"{self.run_id}:{phase}:{symbol}:{index}:{self.fingerprint}"

    async def train_selected(self, phase: str, selection: Mapping[str, list[int]]) -> None:
        """Train (or find) the model of every selected combination of ``phase``."""
        keys: dict[str, dict[str, str]] = {}
        for symbol, indices in selection.items():
            for index in indices:
                await self.get(phase, symbol, index, None)
                keys.setdefault(symbol, {})[str(index)] = self.key(phase, symbol, index)
        self.keys[phase] = keys

    async def get(self, phase: str, symbol: str, index: int, leases: ExitStack | None) -> Any:
        """The model trained in ``phase`` for (symbol, index): from the registry, or trained now.

        With ``leases``, the model is leased from the registry until the stack closes.
        """
        key = self.key(phase, symbol, index)
        registry = self.services.models
        if key in self.services.local_models:
            return self.services.local_models[key]
        if registry is not None:
            try:
                model = await asyncio.to_thread(_find_model, registry, key)
            except KeyError as exc:  # ModelUnavailable: the file is gone or failed its check
                log.warning("model %s unavailable (%s); retraining", key, exc)
                model = None
            if model is not None:
                return _leased(registry, key, leases, model)
        model = await self.services.executor.submit(train_model, self._bars(phase, symbol), self.strategy,
                                                    self.grid[index])
        if registry is None:
            self.services.local_models[key] = model
            return model
        await asyncio.to_thread(registry.register, key, model)
        return _leased(registry, key, leases, model)


def _find_model(registry: ModelStore, key: str) -> Any:
    """The registry's model for ``key`` (reloaded from disk if need be), or None if it has none."""
    return registry.get(key) if key in registry else None


def _leased(registry: ModelStore, key: str, leases: ExitStack | None, model: Any) -> Any:
    """``model``, leased from ``registry`` until ``leases`` closes.

    Cheap on the loop: we hold ``model``, so the registry finds it live and
    only counts the lease (no reload).
    """
    if leases is None:
        return model
    return leases.enter_context(registry.use(key))
