"""What the HTTP API accepts: bounded names, report paths, queries, and JSON it can always send.

Each check turns hostile input (over-long names, NUL bytes, non-finite or
huge numbers) into ``None`` or a ``ValueError`` fit for a 400, so a handler
never reaches the filesystem or the JSON encoder with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tradingd.trading.regime import FEATURE_NAMES
from tradingd.workflows.spec import MAX_NAME_LENGTH, SAFE_NAME

__all__ = [
    "MAX_FEATURE_MAGNITUDE",
    "MAX_REPORT_PATH",
    "REPORT_TYPES",
    "clip",
    "finite_json",
    "is_run_id",
    "parse_similar_query",
    "report_file",
]

REPORT_TYPES = {".html": "text/html", ".png": "image/png", ".json": "application/json"}
MAX_REPORT_PATH = 1024
MAX_FEATURE_MAGNITUDE = 1e9


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, for echoing client input in an error."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by ``None`` (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_json(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(value) for value in obj]
    return obj


def is_run_id(value: str) -> bool:
    """Whether ``value`` could name a run (a safe path component of bounded length)."""
    return len(value) <= MAX_NAME_LENGTH and SAFE_NAME.fullmatch(value) is not None


def report_file(run_root: Path, relative: str) -> Path | None:
    """The report file ``relative`` inside ``run_root``, or None (outside, wrong type, absent, bad name).

    Does file-system calls: run it off the event loop.
    """
    if len(relative) > MAX_REPORT_PATH or "\x00" in relative:
        return None
    try:
        root = run_root.resolve()
        target = (root / relative).resolve()
        if target.is_relative_to(root) and target.suffix in REPORT_TYPES and target.is_file():
            return target
    except (OSError, ValueError):  # a name too long for the filesystem, an embedded NUL
        pass
    return None


def parse_similar_query(query: Mapping[str, str], *, max_k: int = 1000) -> tuple[list[float], int]:
    """Parse ``features=0.1,0.2,...&k=10`` (the query of ``GET /outcomes/similar``).

    Exactly one number per market feature (:data:`FEATURE_NAMES`), each finite
    and within :data:`MAX_FEATURE_MAGNITUDE` (so distances stay finite).
    Raises ValueError with a message fit for a 400 answer.
    """
    raw = query.get("features", "").strip()
    if not raw:
        raise ValueError("query parameter 'features' is required: comma-separated numbers")
    count = raw.count(",") + 1
    if count != len(FEATURE_NAMES):
        raise ValueError(f"'features' must hold {len(FEATURE_NAMES)} numbers ({', '.join(FEATURE_NAMES)}), got {count}")
    try:
        features = [float(x) for x in raw.split(",")]
    except ValueError:
        raise ValueError(f"'features' must be comma-separated numbers, got {clip(raw)!r}") from None
    if not all(math.isfinite(x) and abs(x) <= MAX_FEATURE_MAGNITUDE for x in features):
        raise ValueError(f"'features' must be finite numbers no larger than {MAX_FEATURE_MAGNITUDE:g} in magnitude")
    k_text = query.get("k", "10")
    try:
        k = int(k_text) if len(k_text) <= 12 else max_k + 1
    except ValueError:
        raise ValueError(f"'k' must be an integer, got {clip(k_text)!r}") from None
    if not 1 <= k <= max_k:
        raise ValueError(f"'k' must be between 1 and {max_k}")
    return features, k
