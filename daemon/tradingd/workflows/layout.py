"""Where a run's files live under the results directory (DESIGN §4).

::

    <results>/<run-id>/manifest.json
    <results>/<run-id>/<phase>/containers/<container-id>.json
    <results>/<run-id>/<phase>/containers/<container-id>.journal-pending   (trades not yet journaled)
    <results>/<run-id>/<phase>/events/<container-id>.jsonl
    <results>/<run-id>/<phase>/aggregate_results.json
    <results>/<run-id>/<phase>/phase_summary.json

Every component is checked with :func:`check_safe_name` before a path is
built from it, so no name can climb out of the results directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradingd.workflows.spec import check_safe_name

__all__ = ["JOURNAL_PENDING", "PhaseLayout", "RunLayout", "read_json"]

MANIFEST = "manifest.json"
AGGREGATE = "aggregate_results.json"
PHASE_SUMMARY = "phase_summary.json"
JOURNAL_PENDING = ".journal-pending"


@dataclass(frozen=True)
class RunLayout:
    """The directory of one run."""

    results_dir: Path
    run_id: str

    def __post_init__(self) -> None:
        check_safe_name(self.run_id, "run id")

    @property
    def root(self) -> Path:
        return self.results_dir / self.run_id

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def phase(self, name: str) -> PhaseLayout:
        check_safe_name(name, "phase name")
        return PhaseLayout(self.root / name)


@dataclass(frozen=True)
class PhaseLayout:
    """The directory of one phase of a run."""

    root: Path

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def events_dir(self) -> Path:
        return self.root / "events"

    @property
    def aggregate(self) -> Path:
        return self.root / AGGREGATE

    @property
    def summary(self) -> Path:
        return self.root / PHASE_SUMMARY

    def container(self, container_id: str) -> Path:
        check_safe_name(container_id, "container id")
        return self.containers_dir / f"{container_id}.json"

    def journal_marker(self, container_id: str) -> Path:
        """Present while the container's trades are in its result file but not yet in the journal."""
        check_safe_name(container_id, "container id")
        return self.containers_dir / f"{container_id}{JOURNAL_PENDING}"

    def events(self, container_id: str) -> Path:
        check_safe_name(container_id, "container id")
        return self.events_dir / f"{container_id}.jsonl"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
