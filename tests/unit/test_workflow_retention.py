"""Retention: which runs go, atomic removal, model files, the disk guard (real files, real registry)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from tradingd.config import RetentionConfig
from tradingd.memory.admission import Admission
from tradingd.memory.models import ModelRegistry
from tradingd.storage.atomic import atomic_write_json
from tradingd.workflows.retention import (
    TRASH_DIR,
    DiskGuard,
    Retention,
    RunRecord,
    RunView,
    choose_victims,
    dir_bytes,
    empty_trash,
    is_pinned,
    remove_run_dir,
    set_pinned,
)

DAY = 86_400.0
NOW = 1_000 * DAY


def record(run_id: str, age_days: float, nbytes: int = 10, status: str = "completed",
           pinned: bool = False) -> RunRecord:
    return RunRecord(run_id, status, NOW - age_days * DAY, nbytes, pinned)


def policy(**bounds: int | float | None) -> RetentionConfig:
    return RetentionConfig(**{"max_runs": None, "max_age_days": None, "max_bytes": None, **bounds})


def test_each_bound_removes_oldest_finished_runs_first() -> None:
    runs = [record("d", 1), record("a", 40), record("c", 2), record("b", 30)]
    assert choose_victims(runs, policy(), NOW) == []
    assert choose_victims(runs, policy(max_runs=2), NOW) == ["a", "b"]
    assert choose_victims(runs, policy(max_age_days=10), NOW) == ["a", "b"]
    assert choose_victims(runs, policy(max_bytes=25), NOW) == ["a", "b"]
    assert choose_victims(runs, policy(max_runs=3, max_age_days=35), NOW) == ["a"]


def test_active_and_pinned_runs_are_never_removed() -> None:
    runs = [
        record("old-running", 50, status="running"),
        record("old-queued", 49, status="queued"),
        record("old-interrupted", 48, status="interrupted"),
        record("old-pinned", 47, pinned=True),
        record("failed", 20, status="failed"),
        record("cancelled", 10, status="cancelled"),
        record("new", 1),
    ]
    # Even with every bound at its tightest, only finished, unpinned runs go.
    tightest = policy(max_runs=1, max_age_days=0.5, max_bytes=0)
    assert choose_victims(runs, tightest, NOW) == ["failed", "cancelled", "new"]


def make_run(results: Path, run_id: str, *, model_keys: Sequence[str] = (), nbytes: int = 1000) -> Path:
    root = results / run_id
    atomic_write_json(root / "manifest.json", {"run_id": run_id})
    (root / "train" / "containers").mkdir(parents=True)
    (root / "train" / "containers" / "c1.json").write_bytes(b"x" * nbytes)
    summary = {"models": {"SYM01": {str(i): key for i, key in enumerate(model_keys)}}} if model_keys else {}
    atomic_write_json(root / "train" / "phase_summary.json", summary)
    return root


def test_removal_is_one_rename_and_the_trash_is_emptied(tmp_path: Path) -> None:
    results = tmp_path / "results"
    make_run(results, "r1")
    assert remove_run_dir(results, "r1") is True
    assert not (results / "r1").exists() and list((results / TRASH_DIR).iterdir()) == []
    assert remove_run_dir(results, "r1") is False
    # A crash between the rename and the delete leaves the run only in the trash: deleted next pass.
    make_run(results, "r2")
    os.rename(results / "r2", results / TRASH_DIR / "r2.dead")
    assert empty_trash(results) == 1 and list((results / TRASH_DIR).iterdir()) == []


def test_pin_marker(tmp_path: Path) -> None:
    root = make_run(tmp_path, "r1")
    assert not is_pinned(root)
    set_pinned(root, True)
    assert is_pinned(root)
    set_pinned(root, False)
    set_pinned(root, False)
    assert not is_pinned(root)


def test_dir_bytes_excludes_a_subtree(tmp_path: Path) -> None:
    make_run(tmp_path / "results", "r1", nbytes=5000)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.model").write_bytes(b"m" * 300)
    assert dir_bytes(tmp_path, exclude=tmp_path / "results") == 300
    assert dir_bytes(tmp_path) >= 5300
    assert dir_bytes(tmp_path / "missing") == 0


async def test_pass_removes_runs_their_models_and_forgets_them(tmp_path: Path) -> None:
    results = tmp_path / "state" / "results"
    models = ModelRegistry(tmp_path / "state" / "models", secret=b"s" * 32)
    views = []
    for i in range(5):
        run_id = f"run{i}"
        keys = [f"{run_id}:train:SYM01:{j}:fp" for j in range(2)]
        for j, key in enumerate(keys):
            models.register(key, {"run": i, "index": j})
        make_run(results, run_id, model_keys=keys[:1])  # one key only in the registry, one in the summary too
        views.append(RunView(run_id, "completed", NOW - (10 - i) * DAY))
    views.append(RunView("active", "running", NOW - 20 * DAY))
    make_run(results, "active")
    set_pinned(results / "run1", True)
    forgotten: list[str] = []
    idle_calls: list[int] = []
    retention = Retention(results, policy(max_runs=3), snapshot=lambda: list(views), forget=forgotten.append,
                          models=models, on_idle=lambda: idle_calls.append(1), state_dir=tmp_path / "state",
                          clock=lambda: NOW)

    removed = await retention.prune()

    assert removed == ["run0", "run2", "run3"] == forgotten
    assert sorted(p.name for p in results.iterdir() if p.name != TRASH_DIR) == ["active", "run1", "run4"]
    assert sorted(models.keys()) == [f"run{i}:train:SYM01:{j}:fp" for i in (1, 4) for j in range(2)]
    assert len(list(models.directory.glob("*.model"))) == 4
    assert idle_calls == []  # a run is still active: the executor keeps its data
    stats = retention.stats()
    assert stats["removed_runs"] == 3 and stats["kept_bytes"] > 0 and stats["state_bytes"] > 0

    views[:] = [v for v in views if v.run_id in ("run1", "run4")]
    assert await retention.prune() == []
    assert idle_calls == [1]


async def test_disk_guard_pauses_and_releases_admission(tmp_path: Path) -> None:
    admission = Admission()
    huge = DiskGuard([tmp_path], 1 << 62, admission)
    assert huge.check() is True
    assert admission.paused and "disk space low" in (admission.reason or "")
    # Memory pressure ending does not reopen a gate the disk holds.
    admission.pause("critical memory pressure")
    admission.resume()
    assert admission.paused and admission.held_by("disk")
    huge.min_free_bytes = 0
    assert huge.check() is False
    assert not admission.paused and admission.reason is None
    stats = huge.stats()
    assert stats["free_bytes"] is not None and stats["free_bytes"] > 0 and stats["low_events"] == 1
    await asyncio.wait_for(admission.wait(), 1)


@pytest.mark.parametrize("min_free", [0, 1 << 62])
def test_disk_guard_without_admission(tmp_path: Path, min_free: int) -> None:
    assert DiskGuard([tmp_path, tmp_path / "missing"], min_free, None).check() is (min_free > 0)
