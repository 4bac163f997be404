"""The sections of a workflow spec, and the names that become paths.

Each section is a frozen pydantic model with ``extra="forbid"``
(:class:`StrictModel`); :class:`~tradingd.workflows.spec.WorkflowSpec` puts them
together and :func:`~tradingd.workflows.spec.parse_spec` validates the whole.
Names that will become part of a path are :data:`SafeName`: checked against
:data:`SAFE_NAME` and :data:`MAX_NAME_LENGTH` as they are parsed.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EVENT_TYPES",
    "MAX_NAME_LENGTH",
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
    "ResultsStorage",
    "RetentionPolicy",
    "SafeName",
    "SearchSpec",
    "SelectionSpec",
    "StrategySpec",
    "StrictModel",
    "TrainTestSpec",
    "WalkForwardSpec",
    "check_safe_name",
]

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME_LENGTH = 100
SAMPLE_SOURCE = "sample"

EventType = Literal["FILL", "POSITION_OPEN", "POSITION_CLOSE", "PORTFOLIO_UPDATE"]
EVENT_TYPES: tuple[EventType, ...] = ("FILL", "POSITION_OPEN", "POSITION_CLOSE", "PORTFOLIO_UPDATE")
RetentionPolicy = Literal["trade_complete", "sliding_window", "minimal"]
ResultsStorage = Literal["memory", "disk"]
PhaseKind = Literal["backtest", "training", "testing"]


def check_safe_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is safe as one path component, else raise ``ValueError``."""
    if isinstance(value, str) and len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not allowed: use letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return value


def _safe(value: str) -> str:
    return check_safe_name(value)


SafeName = Annotated[str, AfterValidator(_safe)]


class StrictModel(BaseModel):
    """Frozen, and an unknown key is an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GridRange(StrictModel):
    """An inclusive arithmetic range of grid values: ``{min: 5, max: 50, step: 5}``."""

    min: float
    max: float
    step: float = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> GridRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if (self.max - self.min) / self.step > 1_000_000:
            raise ValueError("range has more than a million values")
        return self

    def values(self) -> list[int | float]:
        count = math.floor((self.max - self.min) / self.step + 1e-9) + 1
        is_int = all(float(v).is_integer() for v in (self.min, self.max, self.step))
        if is_int:
            return [int(self.min + i * self.step) for i in range(count)]
        # Round away binary noise (0.1 + 0.2) so the grid prints and hashes as written.
        return [round(self.min + i * self.step, 12) for i in range(count)]


GridValue = GridRange | list[Any] | str | int | float | bool


class DataSpec(StrictModel):
    """Which market data: the bundled sample or a CSV/Parquet file or directory."""

    source: str = Field(default=SAMPLE_SOURCE, min_length=1)
    symbols: list[SafeName] | None = Field(default=None, min_length=1)
    timeframe: str | None = None
    start: date | datetime | None = None
    end: date | datetime | None = None

    @model_validator(mode="after")
    def _range(self) -> DataSpec:
        if self.start is not None and self.end is not None and _as_datetime(self.end) < _as_datetime(self.start):
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        if self.symbols is not None and len(set(self.symbols)) != len(self.symbols):
            raise ValueError("symbols are listed more than once")
        return self

    @property
    def is_sample(self) -> bool:
        return self.source == SAMPLE_SOURCE


def _as_datetime(value: date | datetime) -> datetime:
    """Naive UTC, as the loaders index bars: a date, a naive and an aware time compare without error."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


class StrategySpec(StrictModel):
    """A strategy name and its parameter grid (cartesian product of the values)."""

    name: str = Field(min_length=1)
    grid: dict[str, GridValue] = Field(default_factory=dict)
    skip_invalid: bool = Field(
        default=True, description="drop grid combinations the strategy rejects (e.g. fast >= slow)"
    )

    def grid_lists(self) -> dict[str, list[Any]]:
        """The grid with ranges expanded and scalars wrapped, in key order."""
        out: dict[str, list[Any]] = {}
        for key, value in self.grid.items():
            if isinstance(value, GridRange):
                out[key] = value.values()
            elif isinstance(value, list):
                out[key] = list(value)
            else:
                out[key] = [value]
        return out


class BacktestSpec(StrictModel):
    """Execution model and costs, passed to the engine's ``BacktestConfig``."""

    fill: Literal["close", "next_open"] = "close"
    commission: float = Field(default=0.001, ge=0, lt=1)
    slippage_bps: float = Field(default=0.0, ge=0, lt=10_000)
    direction: Literal["long_only", "long_short"] = "long_only"
    initial_equity: float = Field(default=10_000.0, gt=0)


class PhaseOverride(StrictModel):
    """Settings a phase may override; unset keys inherit."""

    results_storage: ResultsStorage | None = None
    event_tracing: list[EventType] | None = None
    retention_policy: RetentionPolicy | None = None
    retention_window: int | None = Field(default=None, ge=1, le=1_000_000)
    track_equity: bool | None = None


class TrainTestSpec(StrictModel):
    """Split each symbol's bars: the first part trains, the rest tests."""

    train_fraction: float = Field(default=0.7, gt=0, lt=1)
    split_date: date | datetime | None = Field(default=None, description="first bar of the testing part")


class WalkForwardSpec(StrictModel):
    """Rolling (or anchored) windows of train_bars then test_bars, moved by step_bars."""

    train_bars: int = Field(ge=10)
    test_bars: int = Field(ge=2)
    step_bars: int | None = Field(default=None, ge=1, description="default: test_bars")
    anchored: bool = False
    max_windows: int | None = Field(default=None, ge=1, le=999)


class SelectionSpec(StrictModel):
    """How training results become the testing grid."""

    top: int = Field(default=1, ge=1, le=1000)
    scope: Literal["per_symbol", "across_symbols"] = "per_symbol"


class OverfittingSpec(StrictModel):
    """The overfitting statistics of sweep and training phases (docs/engine.md)."""

    enabled: bool = True
    blocks: int = Field(default=16, ge=2, le=24, description="CSCV blocks S (even): C(S, S/2) splits")

    @model_validator(mode="after")
    def _even(self) -> OverfittingSpec:
        if self.blocks % 2:
            raise ValueError(f"overfitting.blocks must be even, got {self.blocks}")
        return self


class ExecutionSpec(StrictModel):
    """How a phase is cut into containers and a container into compute batches."""

    chunk_size: int = Field(default=100, ge=1, le=1_000_000, description="combinations per container")
    batch_size: int = Field(default=25, ge=1, le=100_000, description="combinations per executor call")


class SearchSpec(StrictModel):
    """Smart search instead of the full grid: the grid still defines the space.

    ``trials`` parameter sets are proposed by an Optuna sampler (``method``),
    ``batch`` at a time; each batch is evaluated as one vectorized sweep per
    symbol. The study lives in the state dir, so a killed run resumes it.
    """

    method: Literal["tpe", "cmaes", "random"] = "tpe"
    trials: int = Field(ge=1, le=100_000, description="parameter sets proposed in all")
    batch: int = Field(default=16, ge=1, le=10_000, description="parameter sets per sweep")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class OutcomeFilterSpec(StrictModel):
    """Skip (or scale) an entry when the most similar past trades, closed before it, did badly.

    Applies to testing phases (train/test and walk-forward); see docs/workflows.md.
    """

    k: int = Field(default=20, ge=1, le=10_000, description="neighbours consulted per entry")
    min_neighbours: int = Field(default=5, ge=1, le=10_000,
                                description="fewer eligible past trades than this: the entry is taken")
    statistic: Literal["expectancy", "win_rate"] = "expectancy"
    threshold: float = Field(default=0.0, description="enter only when the statistic is >= this")
    action: Literal["skip", "scale"] = "skip"
    scale: float = Field(default=0.5, gt=0, lt=1, description="position fraction kept by action: scale")
