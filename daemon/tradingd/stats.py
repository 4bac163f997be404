"""The one stats snapshot behind ``/stats``, ``/metrics`` and the sd_notify status.

Sections register a provider (a cheap, synchronous function returning a JSON-safe
mapping); the supervisor refreshes the snapshot on the monitor interval, so a
request only ever reads a finished dict and never walks the heap.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["StatsBoard", "StatsProvider", "gc_stats"]

log = logging.getLogger(__name__)

StatsProvider = Callable[[], Mapping[str, Any]]


class StatsBoard:
    """Named stats sections and the latest snapshot built from them."""

    def __init__(self) -> None:
        self._providers: dict[str, StatsProvider] = {}
        self._snapshot: dict[str, Any] = {"snapshot_time": None}

    def __repr__(self) -> str:
        return f"<StatsBoard sections={sorted(self._providers)}>"

    def register(self, section: str, provider: StatsProvider) -> None:
        """Add (or replace) a section; it appears from the next refresh on."""
        self._providers[section] = provider

    @property
    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot. Treat as read-only: it is shared by all readers."""
        return self._snapshot

    def refresh(self) -> dict[str, Any]:
        """Rebuild the snapshot from every provider; a failing section is reported, not fatal."""
        snapshot: dict[str, Any] = {}
        for section, provider in self._providers.items():
            try:
                snapshot[section] = dict(provider())
            except Exception as exc:  # a broken section must not take /stats down
                log.exception("stats section %s failed", section)
                snapshot[section] = {"error": f"{type(exc).__name__}: {exc}"}
        snapshot["snapshot_time"] = time.time()
        self._snapshot = snapshot
        return snapshot


def gc_stats() -> dict[str, Any]:
    """The ``gc`` section: the collector's counts and per-generation totals."""
    generations = gc.get_stats()
    return {
        "counts": list(gc.get_count()),
        "collections": [g["collections"] for g in generations],
        "collected": [g["collected"] for g in generations],
    }
