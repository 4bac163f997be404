"""Work on a phase's result files (aggregation, reports), granted working memory like a container.

Aggregating a phase parses every container file of it, one after another,
and drawing its report reads them back again: parsing a result document
peaks at ~3.9x its size (text and objects, traced on the squeeze workload's
20 MB SMA documents), so the grant is sized from the largest file of the
phase, plus a fixed part for what the call keeps or draws.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from tradingd.workflows.container_memory import WorkBudget, WorkGrant

__all__ = ["PARSE_FACTOR", "file_work_bytes", "granted"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Parsing a JSON result document peaks at this many times its size (measured 3.85x).
PARSE_FACTOR = 4.0


def _largest(containers: Path) -> int:
    largest = 0
    for path in containers.glob("*.json"):
        try:
            largest = max(largest, path.stat().st_size)
        except OSError:
            continue  # not written (failed or cancelled containers): nothing to parse
    return largest


def file_work_bytes(largest_file: int, fixed: int) -> int:
    """Working bytes of a call that parses files of at most ``largest_file`` bytes, one at a time."""
    return fixed + int(PARSE_FACTOR * largest_file)


async def granted(work: WorkBudget | None, owner: str, containers: Path, fixed: int,
                  call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` under a grant for parsing the files in ``containers`` (one at a time) plus ``fixed``.

    Without a budget, or when the limit is too small to ever grant it (logged),
    the call runs ungranted: a phase's files are worth finishing.
    """
    grant: WorkGrant | None = None
    if work is not None:
        estimate = file_work_bytes(await asyncio.to_thread(_largest, containers), fixed)
        try:
            grant = await work.acquire(owner, estimate=estimate, minimum=estimate)
        except MemoryError as exc:  # GrantRefused
            log.warning("%s: running without a memory grant: %s", owner, exc)
    try:
        return await call()
    finally:
        if grant is not None:
            grant.release()
