"""The live progress bar: log lines go above it, never into it; it names the stage."""

from __future__ import annotations

import io
import logging
from typing import Any

from tradingd.cli.progress import WRITING_REPORTS, ProgressPrinter, render_progress


class Terminal(io.StringIO):
    """A StringIO that says it is a TTY, and what a terminal would show for what was written to it."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        # Each line shows what follows its last "clear line" (\r ESC[K); \r alone returns to column 0.
        return [line.split("\r\x1b[K")[-1] for line in self.getvalue().split("\n")]


def view(done: int, total: int, *, status: str = "running", phase: str = "training", **extra: Any) -> dict[str, Any]:
    phases = [{"name": phase, "status": "running" if status == "running" else status}]
    percent = 100.0 * done / total if total else 0.0
    return {"id": "r1", "status": status, "phases": phases,
            "progress": {"done": done, "total": total, "percent": percent, "eta_seconds": 3.0}, **extra}


def test_log_lines_print_above_the_bar_never_into_it() -> None:
    term = Terminal()
    handler = logging.StreamHandler(term)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO
    try:
        printer = ProgressPrinter(term)
        printer.show(view(1, 4))
        logging.getLogger("tradingd.reports").info("wrote report.html")
        printer.show(view(3, 4))
        logging.getLogger("tradingd.runs").warning("a warning\nover two lines")
        printer.show(view(4, 4, status="completed", stage=WRITING_REPORTS))
        printer.close()
        assert handler.stream is term, "the handler writes to the terminal again after the bar"
    finally:
        root.removeHandler(handler)
        root.level = old_level
    screen = term.screen()
    assert screen[0] == "INFO tradingd.reports: wrote report.html"
    assert screen[1] == "WARNING tradingd.runs: a warning"
    assert screen[2] == "over two lines"
    assert screen[3].startswith("writing reports… [########################] 4/4 100.0%")
    assert screen[4] == ""
    for line in screen[:3]:
        assert "[" not in line and "%" not in line, f"a log line shares the bar's line: {line!r}"


def test_the_bar_names_the_stage() -> None:
    bar = render_progress(view(1, 4, phase="testing"), bar=True)
    assert bar.startswith("testing [######------------------] 1/4  25.0% ETA 3s")
    loading = render_progress({**view(0, 0), "phases": [], "progress": {"done": 0, "total": 0, "percent": 0.0}},
                              bar=True)
    assert loading.startswith("loading data [")
    plain = render_progress(view(4, 4, status="completed", stage=WRITING_REPORTS), bar=False)
    assert plain == "run r1: completed, 4/4 containers (100%), writing reports"


def test_plain_output_has_no_escape_codes() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out)
    printer.show(view(1, 4))
    printer.show(view(4, 4, status="completed"), final=True)
    printer.close()
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    assert out.getvalue().splitlines()[0] == "run r1: running, 1/4 containers (25%), phase training, ETA 3s"
