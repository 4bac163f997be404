"""How much working memory a container needs, from its shape alone, before it runs.

A container's peak is what it holds for its whole life (metric rows, kept
trades, equity curves), plus the largest transient on top of that: one
batch's sweep working set and its output, or, at teardown, the result
document being serialised, or the closed trades handed to the journal.
``estimate`` is that peak when nothing limits the sweep; ``minimum`` is the
same with the sweep in its smallest block (one combination). The memory
budget grants something between the two, and the container runs its sweep
with ``chunk_bytes`` = grant minus what it holds (:meth:`Footprint.chunk_bytes`).

The constants are bytes measured with tracemalloc on the bundled workloads
(tests/integration/test_memory_footprint.py keeps them honest; docs/memory.md lists them).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tradingd.trading.engine import estimate_sweep
from tradingd.trading.strategies import get_strategy
from tradingd.workflows.spec import PhaseSettings

__all__ = ["OVERHEAD_BYTES", "REPORT_BYTES", "Footprint", "container_footprint", "estimate_container", "sweep_estimate"]

# A fixed allowance for the batch's Python objects, small arrays and per-call overhead.
OVERHEAD_BYTES = 512 * 1024
# Drawing a phase's report beside the container file being read back (that part is sized
# from the files, ``file_work``): heatmap and plots, and matplotlib's import on first use
# when the file work runs in the daemon (~25 MB).
REPORT_BYTES = 48 * 2**20
# One metrics row as held in the container: {"index", "params": {...}, "metrics": {16 floats}}.
ROW_BYTES = 1_200
# One kept trade (a folded trade_complete record, a dict of ~14 fields) and its JSON text.
TRADE_BYTES = 950
TRADE_JSON_BYTES = 350
# The engine's records of a batch's kept trades, beside their dicts while the batch is turned
# into events: the kernel's trade tables (~74 bytes a trade) and each combination's
# ``TradeRecords`` (~90 bytes a trade, ~1.2 kB of arrays).
RECORD_BYTES = 200
RECORDS_PER_COMBINATION = 1536
# One equity value kept as a Python float in a list, and as JSON text.
EQUITY_CELL_BYTES = 32
EQUITY_JSON_BYTES = 22
# One timestamp string of the equity index (object + list slot).
TIME_BYTES = 90
# One streamed event (dict) before it is encoded, and its JSON Lines bytes.
EVENT_BYTES = 500
# One metrics row and its parameters entry as JSON text (indent 2).
ROW_JSON_BYTES = 600
# Serialising the document peaks at this many times the file's size: it is encoded and
# written in pieces (storage.json_pieces), so the peak is the largest piece and the file
# buffer (0.05x measured for a 6 MB result with equity curves; json.dumps(indent=2) was 6.3x).
DOCUMENT_PEAK_FACTOR = 0.25

# Fitting one model (trainable strategies without models): a fixed part plus the
# feature matrix and the estimator's copies of it, per bar and feature (lag).
TRAIN_FIXED_BYTES = 4 * 2**20
TRAIN_CELL_BYTES = 48
# scikit-learn (and the parts of scipy it pulls in) is imported on the first fit:
# a one-time cost, charged to the container that pays it.
SKLEARN_IMPORT_BYTES = 56 * 2**20


def sweep_estimate(strategy: str, params: Sequence[Mapping[str, Any]], n_bars: int,
                   metrics: Sequence[str] | None = None) -> tuple[int, int]:
    """``(estimate, minimum)`` working bytes of one ``run_sweep`` over ``params`` (the engine's own figures)."""
    return estimate_sweep(strategy, params, n_bars, metrics)


@dataclass(frozen=True)
class Footprint:
    """A container's working bytes: what it holds, the sweep's share, and the bounds.

    The peak comes during its last batch, on top of what the earlier batches
    left (``held``): the sweep (with the engine's records of the batch's
    trades, which grow while it runs), then the batch's output beside its
    copy in the container (``batch`` and ``batch_held``), then, at teardown,
    the document being written.
    """

    held: int        # results kept from every batch but the last (rows, trades, equity)
    transient: int   # the largest transient after the sweeps: the document being written, the trade hand-off
    sweep: int       # one batch's sweep working set when nothing limits it
    sweep_min: int   # ... in its smallest block (one combination)
    training: int = 0  # fitting one model inside the sweep (trainable strategies without models)
    batch: int = 0       # one batch's output (rows, trade dicts, events, the engine's records)
    batch_held: int = 0  # ... what the container keeps of it (the last batch's share of the results)
    records: int = 0     # the engine's records of one batch's kept trades, beside its sweep

    def _peak(self, sweep: int) -> int:
        during = sweep + self.training + self.records
        return OVERHEAD_BYTES + self.held + max(during, self.batch + self.batch_held,
                                                self.batch_held + self.transient)

    @property
    def estimate(self) -> int:
        return self._peak(self.sweep)

    @property
    def minimum(self) -> int:
        return self._peak(self.sweep_min)

    def chunk_bytes(self, granted: int) -> int:
        """The sweep's ``chunk_bytes`` under a grant of ``granted`` bytes (never below its minimum)."""
        return max(self.sweep_min, granted - OVERHEAD_BYTES - self.held - self.training - self.records)


def _trades_per_combination(strategy: str, params: Sequence[Mapping[str, Any]], n_bars: int) -> float:
    """Expected closed trades per combination: about one per warm-up length of bars.

    A crossover or vote flips roughly once per indicator window, so bars over
    the (mean) warm-up, the longest window, is the usual count; measured on the
    bundled workloads it is within ~1.3x of the real count.
    """
    if not params or n_bars <= 0:
        return 0.0
    strat = get_strategy(strategy)
    total = 0
    for p in params:
        try:
            total += int(strat.warmup(strat.validate_params(p)))
        except (ValueError, KeyError, TypeError):
            total += 20
    return min(n_bars / 2, n_bars / max(total / len(params), 2.0))


def estimate_container(*, strategy: str, params: Sequence[Mapping[str, Any]], n_bars: int, batch_size: int,
                       keeps_trades: bool, events_per_trade: int, streams_events: bool, track_equity: bool,
                       journals_trades: bool, trains: bool = False,
                       metrics: Sequence[str] | None = None) -> Footprint:
    """The footprint of a container of ``params`` over ``n_bars`` bars, run in batches of ``batch_size``.

    ``keeps_trades``: the result keeps closed trades (``trade_complete``);
    ``events_per_trade``: trade events traced per closed trade (FILL counts two);
    ``streams_events``: a batch's events are collected for the event file
    (else they are folded one by one); ``track_equity``: every equity curve is kept;
    ``journals_trades``: closed trades are also handed to the outcome journal;
    ``trains``: the sweep fits one model per combination (no models attached).
    """
    k = len(params)
    n = max(int(n_bars), 0)
    batch = max(1, min(int(batch_size), k or 1))
    trades = _trades_per_combination(strategy, params, n) if events_per_trade else 0.0
    per_combo_held = ROW_BYTES + (trades * TRADE_BYTES if keeps_trades else 0.0)
    per_combo_held += n * EQUITY_CELL_BYTES if track_equity else 0.0
    equity_times = n * TIME_BYTES if track_equity else 0
    records = batch * (trades * RECORD_BYTES + RECORDS_PER_COMBINATION) if keeps_trades else 0.0
    batch_out = batch * (ROW_BYTES + trades * ((events_per_trade * EVENT_BYTES if streams_events else 0.0)
                                               + (TRADE_BYTES if keeps_trades else 0.0))) + records
    batch_out += batch * n * (EQUITY_CELL_BYTES + 8) if track_equity else 0.0
    document = k * (ROW_JSON_BYTES + (trades * TRADE_JSON_BYTES if keeps_trades else 0.0)
                    + (n * EQUITY_JSON_BYTES if track_equity else 0.0))
    hand_off = k * trades * (TRADE_BYTES + 100) if (journals_trades and keeps_trades) else 0.0
    transient = int(max(DOCUMENT_PEAK_FACTOR * document, hand_off))
    sweep, sweep_min = sweep_estimate(strategy, params[:batch], n, metrics)
    features = max((int(p.get("lags", 10)) for p in params), default=10)
    training = TRAIN_FIXED_BYTES + n * (features + 1) * TRAIN_CELL_BYTES if trains else 0
    if trains and "sklearn" not in sys.modules:
        training += SKLEARN_IMPORT_BYTES
    return Footprint(held=int((k - batch) * per_combo_held + equity_times), transient=transient, sweep=sweep,
                     sweep_min=sweep_min, training=training, batch=int(batch_out),
                     batch_held=int(batch * per_combo_held), records=int(records))


def container_footprint(settings: PhaseSettings, *, strategy: str, params: Sequence[Mapping[str, Any]], n_bars: int,
                        batch_size: int, streams_events: bool, journals: bool, trained: bool) -> Footprint:
    """:func:`estimate_container` for a container with these phase ``settings``.

    ``journals``: closed trades go to the outcome journal; ``trained``: models
    are attached (a trainable strategy without them fits one per combination).
    """
    traced = settings.event_tracing
    events = 2 * ("FILL" in traced) + ("POSITION_OPEN" in traced) + ("POSITION_CLOSE" in traced)
    keeps = events > 0 and settings.retention_policy == "trade_complete"
    return estimate_container(
        strategy=strategy, params=params, n_bars=n_bars, batch_size=batch_size, keeps_trades=keeps,
        events_per_trade=events, streams_events=streams_events, track_equity=settings.track_equity,
        journals_trades=keeps and journals, trains=not trained and get_strategy(strategy).trainable)
