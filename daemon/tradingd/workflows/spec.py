"""Workflow specs: what to run, validated before anything touches the disk.

A spec is YAML (files, HTTP) or JSON (HTTP) mapping onto frozen pydantic
models with ``extra="forbid"`` (the sections are in
:mod:`tradingd.workflows.spec_sections`, re-exported here). :func:`parse_spec`
turns every problem into a :class:`SpecError` with one ``key.path: message``
line per problem. Every name that will become part of a path (the workflow
name, the run id, symbols) is checked against :data:`SAFE_NAME` while
parsing, before any path is built.

Per-phase settings resolve in three layers, later wins: the phase kind's
defaults (:data:`PHASE_DEFAULTS`), the spec's top-level settings (global
overrides), then ``phase_overrides`` by phase kind and finally by exact phase
name (walk-forward windows: ``window-002-testing``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from tradingd.config import describe_validation_error, yaml_error_line
from tradingd.trading.metrics import METRIC_NAMES
from tradingd.trading.strategies import check_search_space, expand_valid_grid, get_strategy
from tradingd.trading.strategy import StrategyError
from tradingd.workflows.spec_limits import DocumentTooComplex, check_tree, load_yaml
from tradingd.workflows.spec_sections import (
    EVENT_TYPES,
    MAX_NAME_LENGTH,
    SAFE_NAME,
    SAMPLE_SOURCE,
    BacktestSpec,
    DataSpec,
    EventType,
    ExecutionSpec,
    GridRange,
    GridValue,
    OutcomeFilterSpec,
    OverfittingSpec,
    PhaseKind,
    PhaseOverride,
    ResultsStorage,
    RetentionPolicy,
    SafeName,
    SearchSpec,
    SelectionSpec,
    StrategySpec,
    StrictModel,
    TrainTestSpec,
    WalkForwardSpec,
    check_safe_name,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_NAME_LENGTH",
    "PHASE_DEFAULTS",
    "SAFE_NAME",
    "SAMPLE_SOURCE",
    "BacktestSpec",
    "DataSpec",
    "EventType",
    "ExecutionSpec",
    "GridRange",
    "GridValue",
    "OutcomeFilterSpec",
    "OverfittingSpec",
    "PhaseKind",
    "PhaseOverride",
    "PhaseSettings",
    "ResultsStorage",
    "RetentionPolicy",
    "SafeName",
    "SearchSpec",
    "SelectionSpec",
    "SpecError",
    "StrategySpec",
    "TrainTestSpec",
    "WalkForwardSpec",
    "WorkflowSpec",
    "check_safe_name",
    "load_spec_file",
    "parse_spec",
    "parse_spec_text",
]

WorkflowType = Literal["backtest", "train_test", "walk_forward"]

_WINDOW_PHASE = re.compile(r"window-\d{3}-(training|testing)")


class SpecError(Exception):
    """An invalid workflow spec; ``lines`` holds one ``key.path: message`` per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class PhaseSettings:
    """What a phase records and where, after every override is applied."""

    results_storage: ResultsStorage
    event_tracing: tuple[EventType, ...]
    retention_policy: RetentionPolicy
    retention_window: int
    track_equity: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "results_storage": self.results_storage,
            "event_tracing": list(self.event_tracing),
            "retention_policy": self.retention_policy,
            "retention_window": self.retention_window,
            "track_equity": self.track_equity,
        }


_DEFAULT_TRACING: tuple[EventType, ...] = ("POSITION_OPEN", "POSITION_CLOSE")
PHASE_DEFAULTS: dict[PhaseKind, PhaseSettings] = {
    # Large grids: stream everything to disk, hold only counters in memory.
    "training": PhaseSettings("disk", _DEFAULT_TRACING, "minimal", 1000, False),
    # Few selected combinations: keep trades and the equity curve in the result.
    "testing": PhaseSettings("memory", _DEFAULT_TRACING, "trade_complete", 1000, True),
    "backtest": PhaseSettings("memory", _DEFAULT_TRACING, "trade_complete", 1000, False),
}


class WorkflowSpec(StrictModel):
    """A whole workflow: data, strategy, type, objective and what to record."""

    name: SafeName = "workflow"
    run_id: SafeName | None = None
    description: str = ""
    type: WorkflowType
    data: DataSpec = DataSpec()
    strategy: StrategySpec
    objective: str = "sharpe"
    backtest: BacktestSpec = BacktestSpec()
    # Global overrides of the per-phase defaults (unset: the phase default).
    results_storage: ResultsStorage | None = None
    event_tracing: list[EventType] | None = None
    retention_policy: RetentionPolicy | None = None
    retention_window: int | None = Field(default=None, ge=1, le=1_000_000)
    track_equity: bool | None = None
    phase_overrides: dict[str, PhaseOverride] = Field(default_factory=dict)
    train_test: TrainTestSpec | None = None
    walk_forward: WalkForwardSpec | None = None
    selection: SelectionSpec = SelectionSpec()
    execution: ExecutionSpec = ExecutionSpec()
    overfitting: OverfittingSpec = OverfittingSpec()
    report_top: int = Field(default=20, ge=1, le=10_000, description="rows kept in aggregate rankings")
    search: SearchSpec | None = None
    outcome_filter: OutcomeFilterSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> WorkflowSpec:
        if self.objective not in METRIC_NAMES:
            raise ValueError(f"objective {self.objective!r} is not a metric; choose one of {', '.join(METRIC_NAMES)}")
        if self.type == "walk_forward" and self.walk_forward is None:
            raise ValueError("a walk_forward workflow needs a walk_forward section (train_bars, test_bars)")
        if self.type != "walk_forward" and self.walk_forward is not None:
            raise ValueError(f"walk_forward section given for a {self.type} workflow")
        if self.type != "train_test" and self.train_test is not None:
            raise ValueError(f"train_test section given for a {self.type} workflow")
        if self.outcome_filter is not None and self.type == "backtest":
            raise ValueError("outcome_filter applies to testing phases: use a train_test or walk_forward workflow")
        kinds = self.phase_kinds()
        for key in self.phase_overrides:
            window = _WINDOW_PHASE.fullmatch(key)
            if key in kinds or (window and self.type == "walk_forward"):
                continue
            raise ValueError(
                f"phase_overrides: no phase {key!r} in a {self.type} workflow "
                f"(phase kinds: {', '.join(kinds)}" + (", or window-NNN-training|testing)" if window is None
                                                        and self.type == "walk_forward" else ")")
            )
        return self

    def phase_kinds(self) -> tuple[PhaseKind, ...]:
        if self.type == "backtest":
            return ("backtest",)
        return ("training", "testing")

    def phase_settings(self, kind: PhaseKind, name: str | None = None) -> PhaseSettings:
        """The resolved settings of one phase (defaults < global < kind override < name override)."""
        values = PHASE_DEFAULTS[kind].as_dict()
        layers: list[BaseModel] = [self]
        if kind in self.phase_overrides:
            layers.append(self.phase_overrides[kind])
        if name is not None and name != kind and name in self.phase_overrides:
            layers.append(self.phase_overrides[name])
        for layer in layers:
            for key in values:
                value = getattr(layer, key)
                if value is not None:
                    values[key] = value
        return PhaseSettings(
            results_storage=values["results_storage"],
            event_tracing=tuple(dict.fromkeys(values["event_tracing"])),
            retention_policy=values["retention_policy"],
            retention_window=int(values["retention_window"]),
            track_equity=bool(values["track_equity"]),
        )

    def snapshot(self) -> dict[str, Any]:
        """The spec as plain JSON data (what manifests store and resume re-reads)."""
        return self.model_dump(mode="json", exclude_none=True)

    def fingerprint(self) -> str:
        """A digest of what the spec computes (not its run id or description).

        Result files carry it; on resume a file with another fingerprint is stale.
        """
        # The overfitting statistics are computed after the containers, so they do not make results stale.
        data = self.model_dump(mode="json", exclude={"run_id", "description", "overfitting"})
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --- parsing -------------------------------------------------------------------


def parse_spec(raw: object, *, source: str = "<spec>", base_dir: Path | None = None) -> WorkflowSpec:
    """Validate an already-decoded spec document.

    A relative ``data.source`` path is made absolute against ``base_dir`` (the
    spec file's directory), so the run finds its data whatever the working
    directory of whoever resumes it.
    """
    if not isinstance(raw, dict):
        raise SpecError([f"{source}: a workflow spec must be a mapping (got {type(raw).__name__})"])
    try:
        check_tree(raw)
    except DocumentTooComplex as exc:
        raise SpecError([f"{source}: {exc}"]) from None
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([f"{source}: {line}" for line in describe_validation_error(exc)]) from None
    problems = _check_strategy(spec)
    if problems:
        raise SpecError([f"{source}: {line}" for line in problems])
    if not spec.data.is_sample:
        path = Path(spec.data.source).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": str(path.absolute())})})
    return spec


def _check_strategy(spec: WorkflowSpec) -> list[str]:
    """Unknown strategies, parameters and empty grids are spec errors, not run failures."""
    try:
        strategy = get_strategy(spec.strategy.name)
    except StrategyError as exc:
        return [f"strategy.name: {exc}"]
    unknown = sorted(set(spec.strategy.grid) - set(strategy.param_names))
    if unknown:
        return [
            f"strategy.grid.{name}: unknown parameter of {strategy.name} (known: {', '.join(strategy.param_names)})"
            for name in unknown
        ]
    try:
        if spec.search is not None:
            # A search space may be far larger than a grid we would expand: check each value instead.
            check_search_space(strategy.name, spec.strategy.grid_lists())
        else:
            expand_valid_grid(strategy.name, spec.strategy.grid_lists(), skip_invalid=spec.strategy.skip_invalid)
    except StrategyError as exc:
        return [f"strategy.grid: {exc}"]
    return []


def parse_spec_text(text: str, *, source: str = "<spec>", base_dir: Path | None = None) -> WorkflowSpec:
    """Parse YAML (JSON is a subset) within :data:`~tradingd.workflows.spec_limits.DEFAULT_LIMITS` and validate it."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError([yaml_error_line(exc, source)]) from None
    except DocumentTooComplex as exc:
        raise SpecError([f"{source}: {exc}"]) from None
    return parse_spec(raw, source=source, base_dir=base_dir)


def load_spec_file(path: Path | str) -> WorkflowSpec:
    """Read and validate a spec file; relative data paths resolve against its directory."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{file}: file not found"]) from None
    except IsADirectoryError:
        raise SpecError([f"{file}: is a directory, not a workflow spec"]) from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise SpecError([f"{file}: cannot read: {exc}"]) from None
    return parse_spec_text(text, source=str(file), base_dir=file.parent.absolute())
