"""A downsampled history of a few series, so the dashboard can show hours and not minutes.

The monitor's ring buffer holds the last few hundred raw samples (minutes);
this keeps one bucket per ``resolution`` seconds for ``span`` seconds (hours)
in a bounded deque. Byte series keep the bucket's peak (a spike must stay
visible when zoomed out); rates and percentages keep its mean.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["DownsampledHistory"]


class DownsampledHistory:
    """Buckets of ``resolution`` seconds over ``span`` seconds; ``peak`` series keep the max, others the mean."""

    def __init__(self, series: tuple[str, ...], *, peak: frozenset[str], resolution: float = 30.0,
                 span: float = 6 * 3600.0) -> None:
        if resolution <= 0 or span < resolution:
            raise ValueError("need 0 < resolution <= span")
        self.series = series
        self.peak = peak
        self.resolution = resolution
        self.span = span
        self._buckets: deque[tuple[float, dict[str, float | None]]] = deque(maxlen=math.ceil(span / resolution))
        self._sums: dict[str, tuple[float, int]] = {}

    def __repr__(self) -> str:
        return f"<DownsampledHistory {len(self._buckets)} buckets of {self.resolution:g} s>"

    def __len__(self) -> int:
        return len(self._buckets)

    def add(self, when: float, values: Mapping[str, float | int | None]) -> None:
        """Fold one sample taken at ``when`` (Unix seconds) into its bucket."""
        start = math.floor(when / self.resolution) * self.resolution
        if not self._buckets or self._buckets[-1][0] < start:
            self._buckets.append((start, dict.fromkeys(self.series)))
            self._sums = {}
        elif self._buckets[-1][0] > start:
            return  # the clock stepped back: drop the sample rather than rewrite the past
        bucket = self._buckets[-1][1]
        for name in self.series:
            value = values.get(name)
            if value is None or not math.isfinite(value):
                continue
            if name in self.peak:
                current = bucket[name]
                bucket[name] = value if current is None else max(current, float(value))
            else:
                total, count = self._sums.get(name, (0.0, 0))
                self._sums[name] = (total + value, count + 1)
                bucket[name] = (total + value) / (count + 1)

    def as_dict(self) -> dict[str, Any]:
        """Columns: ``time`` (bucket starts) and one list per series (``None`` where nothing was sampled)."""
        out: dict[str, Any] = {"resolution_seconds": self.resolution, "span_seconds": self.span,
                               "time": [start for start, _ in self._buckets]}
        for name in self.series:
            out[name] = [None if (v := b[name]) is None else round(v, 3) for _, b in self._buckets]
        return out
