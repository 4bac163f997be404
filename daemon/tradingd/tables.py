"""Plain-text tables and value formatting for the CLI (and the reports).

One renderer for every table the ``tradingd`` commands print: columns are
aligned, numbers right-aligned, missing values shown as ``—`` (``-`` in plain
mode). On a TTY, headers are bold and the pressure level is coloured; when
stdout is a pipe or a file the output is plain ASCII, so it greps and diffs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Style",
    "finite_number",
    "fmt_bytes",
    "fmt_duration",
    "fmt_number",
    "fmt_percent",
    "fmt_time",
    "render_kv",
    "render_table",
]

_LEVEL_COLOURS = {"normal": "32", "gc": "36", "pressure": "33", "critical": "31"}


@dataclass(frozen=True)
class Style:
    """How to draw: ``tty`` turns on ANSI bold/colour and Unicode rules."""

    tty: bool = False

    @property
    def missing(self) -> str:
        return "—" if self.tty else "-"

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.tty else text

    def level(self, level: str) -> str:
        colour = _LEVEL_COLOURS.get(level)
        return f"\x1b[{colour}m{level}\x1b[0m" if self.tty and colour else level

    def rule(self, width: int) -> str:
        return ("─" if self.tty else "-") * width


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


def _is_numeric(cell: str) -> bool:
    stripped = cell.rstrip("%").split(" ")[0]
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def _visible_len(cell: str) -> int:
    # ANSI escapes take no columns; strip them for width measurement.
    out, skipping = 0, False
    for char in cell:
        if char == "\x1b":
            skipping = True
        elif skipping and char == "m":
            skipping = False
        elif not skipping:
            out += 1
    return out


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    style: Style = Style(),
    title: str | None = None,
    empty: str = "(none)",
) -> str:
    """Aligned columns; numeric-looking cells right-aligned; ``None`` shown as missing."""
    cells = [[style.missing if value is None else str(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], _visible_len(cell))
    numeric = [
        bool(cells) and all(_is_numeric(row[i]) or row[i] == style.missing for row in cells)
        for i in range(len(headers))
    ]
    lines: list[str] = []
    if title:
        lines.append(style.bold(title))
    lines.append("  ".join(style.bold(h.rjust(w) if numeric[i] else h.ljust(w)) for i, (h, w) in enumerate(
        zip(headers, widths, strict=True))).rstrip())
    lines.append("  ".join(style.rule(w) for w in widths))
    if not cells:
        lines.append(empty)
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            pad = widths[i] - _visible_len(cell)
            parts.append(" " * pad + cell if numeric[i] else cell + " " * pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_kv(pairs: Mapping[str, Any], *, style: Style = Style(), title: str | None = None) -> str:
    """``key  value`` lines, keys aligned; ``None`` shown as missing."""
    width = max((len(k) for k in pairs), default=0)
    lines = [style.bold(title)] if title else []
    for key, value in pairs.items():
        lines.append(f"{key.ljust(width)}  {style.missing if value is None else value}")
    return "\n".join(lines)
