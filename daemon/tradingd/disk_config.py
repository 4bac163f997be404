"""The config sections that bound disk use: ``retention`` and ``disk`` (docs/config.md).

Kept out of config.py (which re-exports them) so that module stays one screenful per concern.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DiskConfig", "RetentionConfig"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetentionConfig(_Section):
    """How much history the results directory keeps.

    Finished runs (completed, failed, cancelled) go oldest first once any bound is
    exceeded; queued, running, interrupted and pinned runs are never removed.
    ``null`` switches a bound off.
    """

    max_runs: int | None = Field(default=500, ge=1)
    max_age_days: float | None = Field(default=90, gt=0)
    max_bytes: int | None = Field(default=800_000_000, ge=0)
    # Event streams (events/*.jsonl): bytes per phase of a run; beyond it containers stop
    # streaming (their summaries still count every event).
    max_event_bytes_per_phase: int | None = Field(default=8_000_000, ge=0)


class DiskConfig(_Section):
    """Free space below ``min_free_mb`` on the state or results filesystem pauses admission."""

    min_free_mb: float = Field(default=512, ge=0)
    check_interval: float = Field(default=10.0, gt=0, le=3600)
