"""Aggregation and reports wait for a grant sized from the phase's container files."""

from __future__ import annotations

from pathlib import Path

from tradingd.memory.grants import MemoryBudget
from tradingd.workflows.file_work import PARSE_FACTOR, file_work_bytes, granted

MB = 1024 * 1024


def _phase(tmp_path: Path, sizes: list[int]) -> Path:
    containers = tmp_path / "containers"
    containers.mkdir()
    for i, size in enumerate(sizes):
        (containers / f"SYM01-{i:04d}.json").write_bytes(b" " * size)
    (containers / "notes.txt").write_bytes(b" " * (50 * MB // 10))  # not a result document
    return containers


async def test_the_grant_covers_parsing_the_largest_file_plus_what_the_call_keeps(tmp_path: Path) -> None:
    containers = _phase(tmp_path, [1 * MB, 3 * MB, 2 * MB])
    budget = MemoryBudget(limit_bytes=1000 * MB, pressure_bytes=800 * MB, baseline_bytes=100 * MB)
    seen: list[tuple[int, int]] = []

    async def call() -> str:
        seen.append((budget.granted_bytes, len(budget.stats()["grants"])))
        return "aggregated"

    assert await granted(budget, "run/phase/aggregate", containers, 5 * MB, call) == "aggregated"
    assert seen == [(file_work_bytes(3 * MB, 5 * MB), 1)]
    assert file_work_bytes(3 * MB, 5 * MB) == 5 * MB + int(PARSE_FACTOR * 3 * MB)
    assert budget.granted_bytes == 0  # released after the call


async def test_a_limit_too_small_to_ever_grant_it_still_gets_the_work_done(tmp_path: Path) -> None:
    containers = _phase(tmp_path, [40 * MB])
    budget = MemoryBudget(limit_bytes=200 * MB, pressure_bytes=160 * MB, baseline_bytes=100 * MB)

    async def call() -> int:
        return budget.granted_bytes

    assert await granted(budget, "run/phase/report", containers, 48 * MB, call) == 0
    assert budget.refused_total == 1
    assert await granted(None, "run/phase/report", containers, 48 * MB, call) == 0
