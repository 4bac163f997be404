"""Read a phase (and a run) back from the results directory, for reports and the CLI.

Reports depend only on the results layout (DESIGN §4), never on live objects:

    <run>/manifest.json
    <run>/<phase>/phase_summary.json       status, kind, window, objective
    <run>/<phase>/aggregate_results.json   selection (by_params), ranking, best_by_symbol
    <run>/<phase>/containers/<id>.json     metrics rows, equity curves, trade records, errors
    <run>/<phase>/events/<id>.jsonl        POSITION_CLOSE events (trade returns, disk storage)
    <run>/<phase>/buy_and_hold.json        the symbols' buy-and-hold growth over the phase's bars
    <run>/out_of_sample.json               walk-forward: the stitched out-of-sample summary

The readers are tolerant: a missing or unreadable file, or a field not there,
leaves that part empty and the report says so. docs/dashboard.md lists the
fields read ("What the reports read").
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tradingd.formatting import finite_number

__all__ = [
    "Combination",
    "EquityCurve",
    "PhaseData",
    "RunData",
    "TradeReturn",
    "higher_is_better",
    "load_phase",
    "load_run",
    "read_json",
]

log = logging.getLogger(__name__)

# Objectives where smaller wins; the trading package's table wins when importable.
_LOWER_IS_BETTER = {"volatility", "max_drawdown", "max_drawdown_duration"}
# Bound the event-file scan: a report must not read gigabytes of events.
_MAX_EVENT_BYTES = 64 * 2**20


def higher_is_better(objective: str | None) -> bool:
    """Whether a larger value of ``objective`` is better (unknown names: yes)."""
    try:
        from tradingd.trading.metrics import HIGHER_IS_BETTER
    except ImportError:  # reports must work without the trading package
        return objective not in _LOWER_IS_BETTER
    return HIGHER_IS_BETTER.get(objective or "", objective not in _LOWER_IS_BETTER)


def read_json(path: Path) -> Any:
    """The parsed file, or ``None`` when it is missing or not valid JSON (logged)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Combination:
    """One evaluated parameter combination on one symbol; ``index`` is its place in the grid."""

    params: dict[str, Any]
    metrics: dict[str, Any]
    symbol: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class EquityCurve:
    """An equity series; ``times`` are ISO strings (or ``None``: plotted by bar number)."""

    values: list[float]
    times: list[Any] | None = None
    symbol: str | None = None
    index: int | None = None


@dataclass(frozen=True)
class TradeReturn:
    """The return of one closed trade of one combination."""

    ret: float
    symbol: str | None
    index: int | None


@dataclass
class PhaseData:
    """Everything a phase report shows, normalised from the files on disk."""

    name: str
    path: Path
    status: str = "unknown"
    error: str | None = None
    kind: str | None = None
    window: int | None = None
    objective: str | None = None
    best_index: int | None = None
    best_params: dict[str, Any] | None = None
    best_metrics: dict[str, Any] | None = None
    best_symbol: str | None = None
    source_phase: str | None = None
    selection_by_symbol: dict[str, list[int]] = field(default_factory=dict)
    combinations: list[Combination] = field(default_factory=list)
    equity: list[EquityCurve] = field(default_factory=list)
    trades: list[TradeReturn] = field(default_factory=list)
    containers: dict[str, int] = field(default_factory=dict)
    container_errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    selection_scope: str | None = None
    report_top: int | None = None
    out_of_sample: dict[str, Any] = field(default_factory=dict)  # testing: the method's result
    overfitting: dict[str, Any] = field(default_factory=dict)  # sweeps: PSR, DSR, PBO
    buy_and_hold: dict[str, list[float]] = field(default_factory=dict)  # symbol -> growth of 1 per bar

    @property
    def failed(self) -> bool:
        return self.status in {"failed", "cancelled", "interrupted", "error"}

    def _is_selected(self, symbol: str | None, index: int | None) -> bool:
        return index == self.best_index and (self.best_symbol is None or symbol in {None, self.best_symbol})

    def selected_equity(self) -> EquityCurve | None:
        """The equity curve of the selection, else the first one recorded."""
        for curve in self.equity:
            if self._is_selected(curve.symbol, curve.index):
                return curve
        return self.equity[0] if self.equity else None

    def selected_cells(self) -> list[Combination]:
        """Each symbol's top-ranked selection (what the next phase tests first, or was handed)."""
        lookup = {(c.symbol, c.index): c for c in self.combinations}
        found = (lookup.get((symbol, indices[0])) for symbol, indices in sorted(self.selection_by_symbol.items())
                 if indices)
        return [c for c in found if c is not None]

    def method_equity(self) -> tuple[EquityCurve, EquityCurve | None] | None:
        """Equal-weight equity of every symbol's top-ranked selection, and buy-and-hold of the same symbols.

        Each curve is scaled to start at 1 before averaging (a portfolio that
        splits its capital equally and does not rebalance). Only the selection
        counts: picking by this phase's own results would look ahead.
        """
        curves: list[EquityCurve] = []
        holds: list[list[float]] = []
        for symbol, indices in sorted(self.selection_by_symbol.items()):
            found = next((c for c in self.equity if indices and c.symbol == symbol and c.index == indices[0]), None)
            if found is not None and found.values and found.values[0] > 0:
                curves.append(found)
                hold = self.buy_and_hold.get(symbol)
                if hold and len(hold) == len(found.values):
                    holds.append(hold)
        if not curves:
            return None
        length = min(len(c.values) for c in curves)
        mean = [sum(c.values[i] / c.values[0] for c in curves) / len(curves) for i in range(length)]
        times = curves[0].times[:length] if curves[0].times else None
        only = curves[0].symbol if len(curves) == 1 else None
        benchmark = None
        if len(holds) == len(curves):
            benchmark = EquityCurve([sum(h[i] for h in holds) / len(holds) for i in range(length)], times, only)
        return EquityCurve(mean, times, only, None), benchmark

    def selected_trade_returns(self) -> tuple[list[float], bool]:
        """Trade returns of the selection if any were recorded, else of every combination; and which."""
        own = [t.ret for t in self.trades if self._is_selected(t.symbol, t.index)]
        if own:
            return own, True
        return [t.ret for t in self.trades], False


@dataclass
class RunData:
    """A run's manifest and its phases, in the order they ran."""

    run_id: str
    path: Path
    manifest: dict[str, Any]
    phases: list[PhaseData]
    out_of_sample: dict[str, Any] = field(default_factory=dict)  # walk-forward: out_of_sample.json

    @property
    def status(self) -> str:
        return str(self.manifest.get("status") or "unknown")

    @property
    def workflow_type(self) -> str | None:
        spec = _dict(self.manifest.get("spec"))
        value = self.manifest.get("type") or spec.get("type")
        return str(value) if value else None


# --- reading the pieces ------------------------------------------------------------


def _read_container(phase: PhaseData, container: Mapping[str, Any]) -> None:
    symbol = str(container["symbol"]) if container.get("symbol") else None
    status = str(container.get("status") or "unknown")
    phase.containers[status] = phase.containers.get(status, 0) + 1
    error = _dict(container.get("error"))
    if error and status != "completed":
        name = container.get("container_id", "?")
        phase.container_errors.append(f"{name}: {error.get('type', 'error')}: {error.get('message', '')}".rstrip(": "))
    for row in _list(container.get("metrics")):
        row = _dict(row)
        params, metrics = row.get("params"), row.get("metrics")
        if isinstance(params, Mapping) and isinstance(metrics, Mapping):
            phase.combinations.append(Combination(dict(params), dict(metrics), symbol, _int(row.get("index"))))
    equity = _dict(container.get("equity"))
    times = _list(equity.get("timestamps")) or None
    for key, values in _dict(equity.get("curves")).items():
        numbers = [finite_number(v) for v in _list(values)]
        if numbers and all(v is not None for v in numbers):
            series = [v for v in numbers if v is not None]
            aligned = times if times is not None and len(times) == len(series) else None
            phase.equity.append(EquityCurve(series, aligned, symbol, int(key) if str(key).isdigit() else None))
    for trade in _list(_dict(container.get("events")).get("trades")):
        trade = _dict(trade)
        ret = finite_number(trade.get("return", trade.get("ret")))
        if ret is not None:
            phase.trades.append(TradeReturn(ret, symbol, _int(trade.get("combo"))))


def _read_event_trades(phase: PhaseData, events_dir: Path) -> None:
    """Trade returns from POSITION_CLOSE events (phases with disk storage)."""
    budget = _MAX_EVENT_BYTES
    for path in sorted(events_dir.glob("*.jsonl")):
        symbol = path.stem.rsplit("-", 1)[0]
        try:
            with path.open("rb") as stream:
                for line in stream:
                    budget -= len(line)
                    if budget < 0:
                        log.info("event files of %s are large; trade returns sampled from the first %d MB",
                                 phase.path, _MAX_EVENT_BYTES // 2**20)
                        return
                    if b'"POSITION_CLOSE"' not in line:
                        continue
                    event = _dict(json.loads(line))
                    ret = finite_number(event.get("return"))
                    if ret is not None:
                        phase.trades.append(TradeReturn(ret, symbol, _int(event.get("combo"))))
        except (OSError, ValueError) as exc:
            log.warning("cannot read events %s: %s", path, exc)


def _select(phase: PhaseData, aggregate: Mapping[str, Any]) -> None:
    """The selection: the best parameter set across symbols (what the next phase tests)."""
    ranking = [_dict(r) for r in _list(aggregate.get("ranking"))]
    by_params = [_dict(r) for r in _list(aggregate.get("by_params"))]
    if by_params and _int(by_params[0].get("index")) is not None:
        phase.best_index = _int(by_params[0].get("index"))
        phase.best_params = _dict(by_params[0].get("params"))
    elif ranking:
        phase.best_index = _int(ranking[0].get("index"))
        phase.best_params = _dict(ranking[0].get("params"))
    if phase.best_index is None:
        return
    # Its metrics on the symbol where it did best (the ranking is best first, but only its top rows).
    ranked = [r for r in ranking if _int(r.get("index")) == phase.best_index]
    if ranked:
        phase.best_metrics = _dict(ranked[0].get("metrics"))
        phase.best_symbol = str(ranked[0]["symbol"]) if ranked[0].get("symbol") else None
        return
    candidates = [c for c in phase.combinations if c.index == phase.best_index]
    if candidates:
        sign = 1.0 if higher_is_better(phase.objective) else -1.0

        def score(c: Combination) -> float:
            value = finite_number(c.metrics.get(phase.objective or ""))
            return -math.inf if value is None else sign * value

        best = max(candidates, key=score)
        phase.best_metrics, phase.best_symbol = dict(best.metrics), best.symbol


def load_phase(phase_dir: Path, *, status: str | None = None, error: str | None = None) -> PhaseData:
    """Read one phase directory; never raises for missing or malformed files.

    ``status`` and ``error`` override what the files say (for a phase that
    failed before it could write its summary).
    """
    phase_dir = Path(phase_dir)
    summary = _dict(read_json(phase_dir / "phase_summary.json"))
    aggregate = _dict(read_json(phase_dir / "aggregate_results.json"))
    phase = PhaseData(name=str(summary.get("phase") or phase_dir.name), path=phase_dir, summary=summary)
    phase.status = status or str(summary.get("status") or ("unknown" if summary else "missing"))
    phase.error = error or (str(summary["error"]) if summary.get("error") else None)
    phase.kind = str(summary.get("kind") or aggregate.get("kind") or "") or None
    phase.window = _int(summary.get("window"))
    phase.objective = str(summary.get("objective") or aggregate.get("objective") or "") or None
    phase.source_phase = str(summary.get("source_phase") or "") or None
    phase.report_top = _int(summary.get("report_top"))
    phase.out_of_sample = _dict(summary.get("out_of_sample"))
    phase.overfitting = _dict(summary.get("overfitting"))
    phase.selection_scope = str(_dict(aggregate.get("selection")).get("scope") or "") or None
    for symbol, curve in _dict(_dict(read_json(phase_dir / "buy_and_hold.json")).get("curves")).items():
        numbers = [finite_number(v) for v in _list(curve)]
        if numbers and all(v is not None for v in numbers):
            phase.buy_and_hold[str(symbol)] = [v for v in numbers if v is not None]
    for symbol, indices in _dict(_dict(aggregate.get("selection")).get("by_symbol")).items():
        phase.selection_by_symbol[str(symbol)] = [i for i in map(_int, _list(indices)) if i is not None]
    containers_dir = phase_dir / "containers"
    for path in sorted(containers_dir.glob("*.json")) if containers_dir.is_dir() else []:
        _read_container(phase, _dict(read_json(path)))
    if not phase.trades and (phase_dir / "events").is_dir():
        _read_event_trades(phase, phase_dir / "events")
    if not phase.combinations:
        # No container files (cleaned up?): the aggregate's top rows are all there is.
        for row in _list(aggregate.get("ranking")):
            row = _dict(row)
            if isinstance(row.get("params"), Mapping) and isinstance(row.get("metrics"), Mapping):
                phase.combinations.append(Combination(dict(row["params"]), dict(row["metrics"]),
                                                      str(row.get("symbol") or "") or None, _int(row.get("index"))))
    _select(phase, aggregate)
    return phase


def _phase_order(run_dir: Path, manifest: Mapping[str, Any]) -> list[Path]:
    names: list[str] = []
    phases = manifest.get("phases")
    if isinstance(phases, list):
        for item in phases:
            name = item.get("name") if isinstance(item, Mapping) else item
            if isinstance(name, str) and name not in names:
                names.append(name)
    elif isinstance(phases, Mapping):
        names = [str(k) for k in phases]
    found = [run_dir / n for n in names if (run_dir / n).is_dir()]
    # Phases on disk but not (yet) in the manifest come last, in name order (window-000-...).
    extra = [
        p for p in run_dir.iterdir()
        if p.is_dir() and p not in found and ((p / "phase_summary.json").exists() or (p / "containers").is_dir())
    ]
    return found + sorted(extra, key=lambda p: p.name)


def load_run(run_dir: Path) -> RunData:
    """Read a run directory: manifest plus every phase found, in run order."""
    run_dir = Path(run_dir)
    manifest = _dict(read_json(run_dir / "manifest.json"))
    phases = [load_phase(p) for p in _phase_order(run_dir, manifest)] if run_dir.is_dir() else []
    return RunData(run_id=str(manifest.get("run_id") or manifest.get("id") or run_dir.name), path=run_dir,
                   manifest=manifest, phases=phases, out_of_sample=_dict(read_json(run_dir / "out_of_sample.json")))
