"""glibc's mmap threshold is fixed only under a tight memory limit, and the environment wins."""

from __future__ import annotations

import ctypes.util

import pytest
from tradingd.memory.heap import LEAN_LIMIT_BYTES, MMAP_THRESHOLD_BYTES, fix_mmap_threshold


def test_a_generous_limit_leaves_glibc_alone() -> None:
    assert fix_mmap_threshold(LEAN_LIMIT_BYTES) is None


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold(256 * 2**20) is None


@pytest.mark.skipif("musl" in (ctypes.util.find_library("c") or ""), reason="glibc only")
def test_a_tight_limit_fixes_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert fix_mmap_threshold(384 * 2**20) == MMAP_THRESHOLD_BYTES
