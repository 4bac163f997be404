"""The trade-outcome journal: every closed trade of every run, in SQLite (WAL).

Containers append from many threads (a connection per thread) and worker
processes (their own journal object on the same file) at once; SQLite's WAL
mode lets readers proceed while one writer commits, and ``busy_timeout`` makes
concurrent writers queue instead of failing. Each ``append_many`` is one
transaction with ``synchronous=FULL``: once it returns, the trades survive a
crash or power loss. The journal keeps at most ``max_outcomes`` rows (oldest
culled in the same transaction).

Queries: :meth:`OutcomeJournal.summary` (performance by strategy and by
regime) and :meth:`OutcomeJournal.similar` (k nearest past outcomes to a
feature vector: Euclidean distance after standardising each feature by the
journal's mean and standard deviation, brute force in numpy over an in-memory
mirror that is refreshed incrementally from the database before each query).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["JOURNAL_FILE", "OutcomeJournal", "TradeOutcome", "salvage_outcomes"]

log = logging.getLogger(__name__)

JOURNAL_FILE = "outcomes.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY,
    recorded_at REAL NOT NULL,
    run_id TEXT NOT NULL,
    strategy TEXT NOT NULL,
    symbol TEXT NOT NULL,
    params TEXT NOT NULL,
    side INTEGER NOT NULL,
    entry_time TEXT NOT NULL,
    exit_time TEXT NOT NULL,
    entry_price REAL NOT NULL,
    exit_price REAL NOT NULL,
    pnl REAL NOT NULL,
    ret REAL NOT NULL,
    regime TEXT NOT NULL,
    features BLOB NOT NULL,
    trade_key TEXT
)
"""
# The lowest and highest id, each an index lookup: SQLite only reads the end of the rowid
# b-tree for a lone MIN() or MAX(); "SELECT MIN(id), MAX(id)" scans the whole table
# (~10 ms at 100,000 outcomes, 25-60 ms on a busy machine, on every monitor tick).
_ID_SPAN = "SELECT (SELECT MIN(id) FROM outcomes), (SELECT MAX(id) FROM outcomes)"
_COLUMNS = (
    "run_id, strategy, symbol, params, side, entry_time, exit_time, entry_price, exit_price, pnl, ret, regime, features"
)


@dataclass(frozen=True)
class TradeOutcome:
    """One closed trade, as the container that closed it records it."""

    run_id: str
    strategy: str
    symbol: str
    params: Mapping[str, Any]
    side: int  # +1 long, -1 short
    entry_time: str  # ISO 8601
    exit_time: str
    entry_price: float
    exit_price: float
    pnl: float
    ret: float  # fractional return of the trade
    regime: str  # see tradingd.trading.regime
    features: Sequence[float] = field(default_factory=tuple)
    # Identifies the trade across re-runs (e.g. run/phase/container/combination/entry bar):
    # a container re-run after a crash appends its trades again, and the journal keeps one copy.
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/inf become None)."""
        out = asdict(self)
        out["params"] = dict(self.params)
        out["features"] = [_finite(v) for v in self.features]
        for key in ("entry_price", "exit_price", "pnl", "ret"):
            out[key] = _finite(out[key])
        return out


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class _Mirror:
    """Feature vectors and returns held in memory for kNN (refreshed by id)."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.features: list[npt.NDArray[np.float64]] = []
        self.max_id = 0


class OutcomeJournal:
    """Durable, capped, concurrently appendable journal of trade outcomes."""

    def __init__(self, path: Path, *, max_outcomes: int = 100_000, busy_timeout: float = 30.0) -> None:
        if max_outcomes < 1:
            raise ValueError("max_outcomes must be at least 1")
        self.path = Path(path)
        self.max_outcomes = max_outcomes
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _connections, _mirror and _closed
        self._closed = False
        self._mirror = _Mirror()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        with conn:
            conn.execute(_SCHEMA)
            conn.execute("CREATE INDEX IF NOT EXISTS outcomes_strategy ON outcomes(strategy)")
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS outcomes_trade_key ON outcomes(trade_key)")
            self._cull(conn)
        self._refresh()
        log.info("outcome journal %s: %d outcomes loaded", self.path, self.count())

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._mirror.ids)} outcomes"
        return f"<OutcomeJournal {self.path.name} {state} max {self.max_outcomes}>"

    def count(self) -> int:
        """Outcomes in the journal now, including those other writers just appended.

        Cheap enough for every stats refresh: ids are assigned in order and only
        ever leave from the low end (see ``_cull``), so the id span is the count.
        """
        lo, hi = self._conn().execute(_ID_SPAN).fetchone()
        return 0 if lo is None else int(hi - lo + 1)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("outcome journal is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def append_many(self, records: Iterable[TradeOutcome]) -> int:
        """Append outcomes in one durable transaction; returns how many were new.

        An outcome whose ``key`` is already in the journal is skipped.
        """
        now = time.time()
        rows = [
            (
                now,
                r.run_id,
                r.strategy,
                r.symbol,
                json.dumps(dict(r.params), sort_keys=True, default=str),
                int(r.side),
                r.entry_time,
                r.exit_time,
                float(r.entry_price),
                float(r.exit_price),
                float(r.pnl),
                float(r.ret),
                r.regime,
                np.asarray(r.features, dtype="<f8").tobytes(),
                r.key,
            )
            for r in records
        ]
        if not rows:
            return 0
        conn = self._conn()
        with conn:  # one transaction: all of them or none
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO outcomes (recorded_at, {_COLUMNS}, trade_key) VALUES ({', '.join('?' * 15)})",
                rows,
            )
            added = conn.total_changes - before
            self._cull(conn)
        return added

    def _cull(self, conn: sqlite3.Connection) -> None:
        """Delete all but the newest ``max_outcomes`` rows, inside the caller's transaction."""
        lo, hi = conn.execute(_ID_SPAN).fetchone()
        if lo is None or hi - lo + 1 <= self.max_outcomes:
            return  # ids only ever leave from the low end, so the span bounds the count
        conn.execute(
            "DELETE FROM outcomes WHERE id <= (SELECT id FROM outcomes ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (self.max_outcomes,),
        )

    def _refresh(self) -> _Mirror:
        """Bring the in-memory mirror up to date with the database."""
        conn = self._conn()
        with self._lock:
            mirror = self._mirror
            new = conn.execute(
                "SELECT id, features FROM outcomes WHERE id > ? ORDER BY id", (mirror.max_id,)
            ).fetchall()
            (lo,) = conn.execute("SELECT MIN(id) FROM outcomes").fetchone()
            keep = mirror.ids >= (lo if lo is not None else mirror.max_id + 1)
            ids = np.concatenate((mirror.ids[keep], np.array([i for i, _ in new], dtype=np.int64)))
            feats = [f for f, k in zip(mirror.features, keep, strict=True) if k]
            feats += [np.frombuffer(blob, dtype="<f8") for _, blob in new]
            mirror.ids, mirror.features = ids, feats
            if new:
                mirror.max_id = int(new[-1][0])
            return mirror

    def summary(self) -> dict[str, Any]:
        """Performance by strategy and by regime: trades, win rate, mean/total return and pnl."""
        conn = self._conn()
        group = (
            "SELECT {key}, COUNT(*), SUM(ret > 0), AVG(ret), SUM(ret), SUM(pnl), MIN(ret), MAX(ret)"
            " FROM outcomes GROUP BY {key} ORDER BY {key}"
        )

        def rows(key: str) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for name, n, wins, mean, total, pnl, worst, best in conn.execute(group.format(key=key)):
                out[str(name)] = {
                    "trades": int(n),
                    "win_rate": float(wins) / n,
                    "mean_return": _finite(mean),
                    "total_return": _finite(total),
                    "total_pnl": _finite(pnl),
                    "worst_return": _finite(worst),
                    "best_return": _finite(best),
                }
            return out

        return {
            "outcomes": self.count(),
            "max_outcomes": self.max_outcomes,
            "by_strategy": rows("strategy"),
            "by_regime": rows("regime"),
        }

    def similar(self, features: Sequence[float], k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` past outcomes nearest to ``features`` (same length only), nearest first.

        Each result is the outcome's JSON plus ``distance`` (in standardised
        units). Ties are broken by age (older first).
        """
        query = np.asarray(features, dtype=np.float64)
        mirror = self._refresh()
        if k < 1 or query.ndim != 1:
            raise ValueError("k must be >= 1 and features a flat vector")
        picked = [i for i, f in enumerate(mirror.features) if f.size == query.size]
        if not picked:
            return []
        matrix = np.vstack([mirror.features[i] for i in picked])
        mean = matrix.mean(axis=0)
        std = matrix.std(axis=0)
        std[std == 0] = 1.0
        dist = np.sqrt((((matrix - mean) / std - (query - mean) / std) ** 2).sum(axis=1))
        order = np.argsort(dist, kind="stable")[:k]
        ids = [int(mirror.ids[picked[i]]) for i in order]
        by_id = self._fetch(ids)
        return [{**by_id[i], "distance": float(dist[o])} for i, o in zip(ids, order, strict=True) if i in by_id]

    def _fetch(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        conn = self._conn()
        marks = ", ".join("?" * len(ids))
        out: dict[int, dict[str, Any]] = {}
        for row in conn.execute(f"SELECT id, {_COLUMNS} FROM outcomes WHERE id IN ({marks})", list(ids)):
            rid, run_id, strategy, symbol, params, side, entry, exit_, ep, xp, pnl, ret, regime, blob = row
            outcome = TradeOutcome(
                run_id,
                strategy,
                symbol,
                json.loads(params),
                side,
                entry,
                exit_,
                ep,
                xp,
                pnl,
                ret,
                regime,
                tuple(np.frombuffer(blob, dtype="<f8").tolist()),
            )
            out[int(rid)] = {"id": int(rid), **outcome.to_json()}
        return out

    def close(self) -> None:
        """Close every thread's connection (idempotent); later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("closing an outcome journal connection failed: %s", exc)


def salvage_outcomes(path: Path) -> list[TradeOutcome]:
    """Every outcome still readable from a (damaged) journal file, best effort; never raises."""
    out: list[TradeOutcome] = []
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error:
        return out
    try:
        rows = conn.execute(f"SELECT {_COLUMNS}, trade_key FROM outcomes ORDER BY id")
        for row in rows:
            run_id, strategy, symbol, params, side, entry, exit_, ep, xp, pnl, ret, regime, blob, key = row
            out.append(TradeOutcome(run_id, strategy, symbol, json.loads(params), side, entry, exit_, ep, xp, pnl,
                                    ret, regime, tuple(np.frombuffer(blob, dtype="<f8").tolist()), key))
    except (sqlite3.Error, ValueError, TypeError):
        pass  # what was read before the damage is kept
    finally:
        conn.close()
    return out
