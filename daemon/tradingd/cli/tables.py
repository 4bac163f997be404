"""Plain-text tables for the CLI (values are formatted by :mod:`tradingd.formatting`).

One renderer for every table the ``tradingd`` commands print: columns are
aligned, numbers right-aligned, missing values shown as ``—`` (``-`` in plain
mode). On a TTY, headers are bold and the pressure level is coloured; when
stdout is a pipe or a file the output is plain ASCII, so it greps and diffs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Style", "render_kv", "render_table"]

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


def _is_numeric(cell: str) -> bool:
    stripped = cell.rstrip("%").split(" ")[0].replace(",", "")  # 1,234.50 and 12.5% are numbers
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
