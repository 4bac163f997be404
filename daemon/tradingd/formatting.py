"""Value formatting shared by the CLI tables and the HTML reports.

Every function takes anything and returns a string: a value that is not a
finite number (``None``, NaN, a bool where a number belongs) becomes the
``missing`` marker, so a table or report never shows ``nan`` or crashes on a
field an older daemon did not record.
"""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = [
    "PERCENT_METRICS", "finite_number", "fmt_amount", "fmt_bytes", "fmt_count", "fmt_duration", "fmt_metric",
    "fmt_number", "fmt_percent", "fmt_time",
]


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool); else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def fmt_bytes(value: Any, missing: str = "-") -> str:
    """``1536`` → ``1.5 KiB``; anything not a number → ``missing``."""
    number = finite_number(value)
    if number is None:
        return missing
    sign = "-" if number < 0 else ""
    number = abs(number)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if number < 1024 or unit == "GiB":
            return f"{sign}{number:.0f} {unit}" if unit == "B" else f"{sign}{number:.1f} {unit}"
        number /= 1024
    return missing  # unreachable: the loop returns at GiB


def fmt_duration(seconds: Any, missing: str = "-") -> str:
    """``3725`` → ``1h02m``; ``42.5`` → ``42s``; ``0.0123`` → ``12.3ms``."""
    number = finite_number(seconds)
    if number is None or number < 0:
        return missing
    if number < 1:
        return f"{number * 1000:.1f}ms"
    whole = round(number)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def fmt_percent(fraction: Any, missing: str = "-", digits: int = 1) -> str:
    """``0.4567`` → ``45.7%``."""
    number = finite_number(fraction)
    return missing if number is None else f"{number * 100:.{digits}f}%"


def fmt_number(value: Any, missing: str = "-", digits: int = 4) -> str:
    """Integers as they are; floats with ``digits`` significant digits; strings unchanged."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    number = finite_number(value)
    if number is None:
        return missing
    return f"{number:.{digits}g}"


def fmt_time(epoch: Any, missing: str = "-") -> str:
    """Unix seconds → local ``YYYY-MM-DD HH:MM:SS``."""
    number = finite_number(epoch)
    if number is None or number <= 0:
        return missing
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(number))


# Metrics that are fractions and read as percentages (as the HTML reports show them).
PERCENT_METRICS = frozenset({"total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure",
                             "mean_return", "best_return", "worst_return", "ret"})
COUNT_METRICS = frozenset({"n_trades", "trades", "max_drawdown_duration"})


def fmt_amount(value: Any, missing: str = "-", digits: int = 2) -> str:
    """Money and other large amounts with thousands separators: ``2730000`` → ``2,730,000.00``."""
    number = finite_number(value)
    return missing if number is None else f"{number:,.{digits}f}"


def fmt_count(value: Any, missing: str = "-") -> str:
    """Whole numbers with thousands separators: ``16619`` → ``16,619``."""
    number = finite_number(value)
    return missing if number is None else f"{round(number):,}"


def fmt_metric(name: str, value: Any, missing: str = "-") -> str:
    """A metric as the HTML reports show it: fractions as percent (2 digits), counts whole, ratios with
    4 significant digits; a large amount with thousands separators rather than ``2.73e+06``."""
    if name in PERCENT_METRICS:
        return fmt_percent(value, missing, digits=2)
    if name in COUNT_METRICS:
        return fmt_count(value, missing)
    number = finite_number(value)
    if number is not None and abs(number) >= 10_000:
        return fmt_amount(number, missing)
    return fmt_number(value, missing)
