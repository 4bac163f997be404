"""A container's working memory: its estimate, its grant from the work budget, its measured peak.

The container asks for a grant in setup (between its footprint's minimum and
estimate), reads the grant at each batch boundary to size the sweep
(``chunk_bytes``: the grant may have shrunk under critical pressure, or grown
back), records estimate, grant and peak in its result file and hands the
grant back in teardown. See docs/memory.md.
"""

from __future__ import annotations

import tracemalloc
from typing import Any, Protocol

from tradingd.workflows.footprint import Footprint

__all__ = ["ContainerMemory", "WorkBudget", "WorkGrant"]


class WorkGrant(Protocol):
    """``memory.grants.Grant``: bytes granted to one container (may shrink under pressure)."""

    @property
    def bytes(self) -> int: ...

    wait_seconds: float

    def release(self) -> None: ...


class WorkBudget(Protocol):
    """``memory.grants.MemoryBudget``: containers' working memory, granted first come, first served."""

    async def acquire(self, owner: str, *, estimate: int, minimum: int) -> WorkGrant: ...

    def observe(self, kind: str, *, estimate: int, peak: int) -> None: ...


class ContainerMemory:
    """One container's grant and measurements (used on the event loop only)."""

    def __init__(self, work: WorkBudget | None, run_id: str, phase: str, container_id: str, strategy: str) -> None:
        self.work = work
        self.owner = f"{run_id}/{phase}/{container_id}"
        # What estimate errors are grouped by: strategy and phase kind (``sma_crossover/backtest``).
        self.kind = f"{strategy}/{phase.rsplit('-', 1)[-1]}"
        self.footprint: Footprint | None = None
        self.grant: WorkGrant | None = None
        self._chunks: list[int] = []
        self._traced_from: int | None = None

    async def acquire(self, footprint: Footprint) -> None:
        """Wait for a grant (raises ``GrantRefused`` at once if the limit can never cover the minimum)."""
        self.footprint = footprint
        if tracemalloc.is_tracing():  # tests and benches measure the true peak
            tracemalloc.reset_peak()
            self._traced_from = tracemalloc.get_traced_memory()[0]
        if self.work is not None:
            self.grant = await self.work.acquire(self.owner, estimate=footprint.estimate, minimum=footprint.minimum)

    def chunk_bytes(self) -> int | None:
        """The next batch's sweep budget: the grant as it is now, less what the container holds."""
        if self.grant is None or self.footprint is None:
            return None
        chunk = self.footprint.chunk_bytes(self.grant.bytes)
        self._chunks.append(chunk)
        return chunk

    def batch_budget(self) -> dict[str, int | None]:
        """``chunk_bytes`` and ``grant_bytes`` for the next ``BatchTask`` (None without a grant)."""
        chunk = self.chunk_bytes()
        return {"chunk_bytes": chunk, "grant_bytes": self.grant.bytes if self.grant is not None else None}

    def peak(self) -> int | None:
        """Traced bytes above the start, at their highest (None unless tracemalloc traces)."""
        if self._traced_from is None or not tracemalloc.is_tracing():
            return None
        return max(0, tracemalloc.get_traced_memory()[1] - self._traced_from)

    def record(self, peak_rss: int) -> dict[str, Any]:
        """The result file's ``memory`` section.

        ``peak_bytes`` is measured by tracemalloc when it is tracing (tests and
        benches turn it on; it costs too much for production) and covers the
        container up to its result document (not the document's own write).
        """
        out: dict[str, Any] = {"peak_rss_bytes": peak_rss}
        if self.footprint is not None:
            out["estimate_bytes"] = self.footprint.estimate
            out["minimum_bytes"] = self.footprint.minimum
        if self.grant is not None:
            out["granted_bytes"] = self.grant.bytes
            out["grant_wait_seconds"] = round(self.grant.wait_seconds, 6)
            out["chunk_bytes"] = {"min": min(self._chunks, default=0), "max": max(self._chunks, default=0)}
        peak = self.peak()
        if peak is not None:
            out["peak_bytes"] = peak
        return out

    def release(self, *, completed: bool) -> None:
        """Record the measured peak against the estimate, then hand the grant back (idempotent)."""
        grant, self.grant = self.grant, None
        if grant is None:
            return
        peak = self.peak()  # now including the document's serialisation
        if completed and peak is not None and self.work is not None and self.footprint is not None:
            self.work.observe(self.kind, estimate=self.footprint.estimate, peak=peak)
        grant.release()
