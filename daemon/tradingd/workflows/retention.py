"""Retention: which finished runs the results directory keeps, and removing the rest.

Bounds (``retention`` in the config, any of them ``null`` to switch it off):
``max_runs`` runs in all, none finished more than ``max_age_days`` ago, and at
most ``max_bytes`` of results. When a bound is exceeded the oldest *finished*
runs (completed, failed, cancelled) go first; queued, running, interrupted and
pinned runs (``<run>/pinned``, ``POST /runs/{id}/pin``) are never removed, even
if that leaves a bound exceeded.

Removing a run is atomic: its directory is renamed into ``<results>/.trash/``
(one rename: the run is wholly there or wholly gone) and only then deleted;
whatever a crash left in the trash is deleted at the next pass. With the run
go the model files its phases trained (keys listed in its phase summaries, and
any the registry still holds under the run's prefix).

Everything here that touches disk is blocking and runs in a worker thread
(:class:`Retention` hands it to ``asyncio.to_thread``); the event loop only
takes snapshots of the run registry and forgets removed runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tradingd.config import RetentionConfig
from tradingd.storage.atomic import atomic_write_text, fsync_dir
from tradingd.workflows.layout import PHASE_SUMMARY, read_json

__all__ = [
    "PIN_FILE",
    "TRASH_DIR",
    "AdmissionGate",
    "DiskGuard",
    "ModelFiles",
    "Retention",
    "RunRecord",
    "RunView",
    "choose_victims",
    "dir_bytes",
    "empty_trash",
    "is_pinned",
    "remove_run_dir",
    "run_model_keys",
    "set_pinned",
]

log = logging.getLogger(__name__)

PIN_FILE = "pinned"
TRASH_DIR = ".trash"
_REMOVABLE = frozenset({"completed", "failed", "cancelled"})
_DAY = 86_400.0


class AdmissionGate(Protocol):
    """``memory.admission.Admission`` as the disk guard sees it."""

    def pause(self, reason: str, *, source: str = ...) -> None: ...

    def resume(self, *, source: str = ...) -> None: ...


class ModelFiles(Protocol):
    """``memory.models.ModelRegistry`` as retention sees it."""

    def keys(self, prefix: str = "") -> list[str]: ...

    def forget(self, keys: Iterable[str]) -> int: ...


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What retention needs to know about one run."""

    run_id: str
    status: str
    finished_at: float
    nbytes: int
    pinned: bool

    @property
    def removable(self) -> bool:
        return self.status in _REMOVABLE and not self.pinned


def choose_victims(records: Sequence[RunRecord], policy: RetentionConfig, now: float) -> list[str]:
    """Ids of the runs to remove, oldest first, so that every bound holds as far as it can."""
    candidates = sorted((r for r in records if r.removable), key=lambda r: (r.finished_at, r.run_id))
    victims: list[str] = []
    runs_left = len(records)
    bytes_left = sum(r.nbytes for r in records)
    for record in candidates:
        too_old = policy.max_age_days is not None and now - record.finished_at > policy.max_age_days * _DAY
        too_many = policy.max_runs is not None and runs_left > policy.max_runs
        too_big = policy.max_bytes is not None and bytes_left > policy.max_bytes
        if not (too_old or too_many or too_big):
            break  # candidates are oldest first: every later one is younger and the bounds hold
        victims.append(record.run_id)
        runs_left -= 1
        bytes_left -= record.nbytes
    return victims


def dir_bytes(root: Path, *, exclude: Path | None = None) -> int:
    """Bytes of the files under ``root`` (0 if it is gone), not counting the ``exclude`` subtree."""
    total = 0
    for folder, dirs, files in os.walk(root):
        if exclude is not None:
            dirs[:] = [d for d in dirs if Path(folder, d) != exclude]
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def is_pinned(run_dir: Path) -> bool:
    return (run_dir / PIN_FILE).exists()


def set_pinned(run_dir: Path, pinned: bool) -> None:
    """Pin (retention never removes it) or unpin the run in ``run_dir``."""
    marker = run_dir / PIN_FILE
    if pinned:
        atomic_write_text(marker, "pinned by POST /runs/{id}/pin\n")
    else:
        marker.unlink(missing_ok=True)


def remove_run_dir(results_dir: Path, run_id: str) -> bool:
    """Move ``<results>/<run_id>`` into the trash in one rename, then delete it. False if absent."""
    trash = results_dir / TRASH_DIR
    trash.mkdir(exist_ok=True)
    target = trash / f"{run_id}.{secrets.token_hex(4)}"
    try:
        os.rename(results_dir / run_id, target)
    except FileNotFoundError:
        return False
    fsync_dir(results_dir)
    shutil.rmtree(target, ignore_errors=True)
    return True


def empty_trash(results_dir: Path) -> int:
    """Delete what an interrupted removal left in the trash; returns the entries deleted."""
    trash = results_dir / TRASH_DIR
    if not trash.is_dir():
        return 0
    entries = list(trash.iterdir())
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    return len(entries)


def run_model_keys(run_dir: Path) -> set[str]:
    """Model keys the phases of the run in ``run_dir`` recorded in their summaries."""
    keys: set[str] = set()
    try:
        phases = [p for p in run_dir.iterdir() if p.is_dir()]
    except OSError:
        return keys
    for phase in phases:
        models = (read_json(phase / PHASE_SUMMARY) or {}).get("models")
        if isinstance(models, dict):
            for per_symbol in models.values():
                if isinstance(per_symbol, dict):
                    keys.update(str(k) for k in per_symbol.values())
    return keys


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as the loop sees it when a pass starts (taken on the loop, used in the thread)."""

    run_id: str
    status: str
    finished_at: float


class Retention:
    """Runs retention passes for one results directory; at most one pass at a time.

    ``snapshot`` lists the runs the daemon knows (on the loop), ``forget``
    drops a removed run from the daemon's registry, ``models`` (optional) loses
    the removed runs' model files, ``on_idle`` (optional) runs in the thread
    after a pass when no run is active (the executor prunes its data stores).
    """

    def __init__(
        self,
        results_dir: Path,
        policy: RetentionConfig,
        *,
        snapshot: Callable[[], list[RunView]],
        forget: Callable[[str], None],
        models: ModelFiles | None = None,
        on_idle: Callable[[], object] | None = None,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.results_dir = results_dir
        self.state_dir = state_dir
        self.state_bytes = 0
        self.policy = policy
        self._snapshot = snapshot
        self._forget = forget
        self._models = models
        self._on_idle = on_idle
        self._clock = clock
        self._sizes: dict[str, int] = {}  # finished runs do not change size
        self._lock = asyncio.Lock()
        self.passes = 0
        self.removed_runs = 0
        self.removed_bytes = 0
        self.kept_bytes = 0
        self.last_pass_seconds = 0.0

    def __repr__(self) -> str:
        return f"<Retention {self.passes} passes, {self.removed_runs} runs removed, {self.kept_bytes} bytes kept>"

    async def prune(self) -> list[str]:
        """One pass: remove what the policy says must go. Returns the removed run ids."""
        async with self._lock:
            views = self._snapshot()
            idle = all(v.status in _REMOVABLE for v in views)
            removed = await asyncio.to_thread(self._prune_blocking, views, idle)
            for run_id in removed:
                self._forget(run_id)
            return removed

    def _prune_blocking(self, views: list[RunView], idle: bool) -> list[str]:
        started = time.perf_counter()
        empty_trash(self.results_dir)
        records = [self._record(view) for view in views]
        victims = choose_victims(records, self.policy, self._clock())
        sizes = {r.run_id: r.nbytes for r in records}
        removed: list[str] = []
        for run_id in victims:
            run_dir = self.results_dir / run_id
            keys = run_model_keys(run_dir)
            if self._models is not None:
                keys.update(self._models.keys(f"{run_id}:"))
            if remove_run_dir(self.results_dir, run_id):
                removed.append(run_id)
                self.removed_bytes += sizes.get(run_id, 0)
            if self._models is not None and keys:
                self._models.forget(keys)
            self._sizes.pop(run_id, None)
        if removed:
            log.info("retention: removed %d run(s): %s", len(removed), ", ".join(removed))
        if idle and self._on_idle is not None:
            self._on_idle()
        if self.state_dir is not None:  # models, caches, executor data, the journal
            self.state_bytes = dir_bytes(self.state_dir, exclude=self.results_dir)
        self.removed_runs += len(removed)
        self.kept_bytes = sum(sizes.values()) - sum(sizes.get(r, 0) for r in removed)
        self.passes += 1
        self.last_pass_seconds = time.perf_counter() - started
        return removed

    def _record(self, view: RunView) -> RunRecord:
        run_dir = self.results_dir / view.run_id
        finished = view.status in _REMOVABLE
        nbytes = self._sizes.get(view.run_id) if finished else None
        if nbytes is None:
            nbytes = dir_bytes(run_dir)
            if finished:
                self._sizes[view.run_id] = nbytes
        return RunRecord(view.run_id, view.status, view.finished_at, nbytes, is_pinned(run_dir))

    def stats(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "max_runs": policy.max_runs,
            "max_age_days": policy.max_age_days,
            "max_bytes": policy.max_bytes,
            "passes": self.passes,
            "removed_runs": self.removed_runs,
            "removed_bytes": self.removed_bytes,
            "kept_bytes": self.kept_bytes,
            "state_bytes": self.state_bytes,
            "last_pass_seconds": round(self.last_pass_seconds, 4),
        }


class DiskGuard:
    """Free space on the state and results filesystems against ``disk.min_free_mb``.

    :meth:`check` (blocking: ``statvfs``) pauses admission with ``source="disk"``
    while the free space of either filesystem is below the minimum, and
    releases it once both are above it again.
    """

    def __init__(self, paths: Sequence[Path], min_free_bytes: int, admission: AdmissionGate | None) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.min_free_bytes = min_free_bytes
        self._admission = admission
        self.low = False
        self.free_bytes: int | None = None
        self.total_bytes: int | None = None
        self.low_events = 0

    def __repr__(self) -> str:
        return f"<DiskGuard free={self.free_bytes} min={self.min_free_bytes}{' LOW' if self.low else ''}>"

    def check(self) -> bool:
        """Read free space now; pause or release admission; True while space is low."""
        readings = []
        for path in self.paths:
            try:
                readings.append(shutil.disk_usage(path))
            except OSError:
                continue
        if not readings:
            return self.low
        tightest = min(readings, key=lambda usage: usage.free)
        self.free_bytes, self.total_bytes = int(tightest.free), int(tightest.total)
        low = tightest.free < self.min_free_bytes
        if low and not self.low:
            self.low_events += 1
            log.warning("disk: %d MB free, below disk.min_free_mb (%d MB)", tightest.free // 2**20,
                        self.min_free_bytes // 2**20)
            if self._admission is not None:
                self._admission.pause(f"disk space low ({tightest.free // 2**20} MB free, minimum "
                                      f"{self.min_free_bytes // 2**20} MB)", source="disk")
        elif not low and self.low and self._admission is not None:
            self._admission.resume(source="disk")
        self.low = low
        return low

    def stats(self) -> dict[str, Any]:
        return {
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
            "min_free_bytes": self.min_free_bytes,
            "low": self.low,
            "low_events": self.low_events,
        }
