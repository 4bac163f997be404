"""OutcomeJournal: concurrent writers, restart reload, cap, summary, kNN."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tradingd.storage.outcomes import OutcomeJournal, TradeOutcome


def outcome(i: int, *, strategy: str = "sma", regime: str = "trending", dims: int = 4, seed: int = 0) -> TradeOutcome:
    rng = np.random.default_rng(seed * 1_000_003 + i)
    ret = float(rng.normal(0.001, 0.02))
    return TradeOutcome(
        run_id=f"run-{seed}",
        strategy=strategy,
        symbol="SYM01",
        params={"fast": 5 + i % 3, "slow": 30},
        side=1 if i % 2 else -1,
        entry_time=f"2020-01-{1 + i % 28:02d}T00:00:00",
        exit_time=f"2020-02-{1 + i % 28:02d}T00:00:00",
        entry_price=100.0 + i,
        exit_price=(100.0 + i) * (1 + ret),
        pnl=ret * 1000,
        ret=ret,
        regime=regime,
        features=tuple(rng.normal(size=dims).tolist()),
    )


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outcomes.sqlite"


def test_wal_mode_and_restart_reload(journal_path: Path) -> None:
    journal = OutcomeJournal(journal_path)
    assert journal.append_many([outcome(i) for i in range(50)]) == 50
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        journal.append_many([outcome(0)])
    mode = sqlite3.connect(journal_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    reopened = OutcomeJournal(journal_path)
    assert reopened.count() == 50 and reopened.summary()["outcomes"] == 50
    prices = sorted(r["entry_price"] for r in reopened.similar([0.0] * 4, k=100))
    assert prices == [100.0 + i for i in range(50)]
    assert "50 outcomes" in repr(reopened)
    reopened.close()


def test_many_threads_append_at_once(journal_path: Path) -> None:
    journal = OutcomeJournal(journal_path)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def container(n: int) -> None:
        try:
            barrier.wait()
            for batch in range(10):
                journal.append_many([outcome(batch * 10 + j, seed=n) for j in range(10)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=container, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert journal.summary()["outcomes"] == 800
    journal.close()


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_storage_outcomes import outcome
from tradingd.storage.outcomes import OutcomeJournal
journal = OutcomeJournal(Path(sys.argv[1]))
for batch in range(20):
    journal.append_many([outcome(batch * 5 + j, seed=int(sys.argv[2])) for j in range(5)])
journal.close()
"""


def test_processes_and_threads_append_to_the_same_journal(journal_path: Path) -> None:
    journal = OutcomeJournal(journal_path)
    here = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(journal_path), str(n), here]) for n in (101, 102)]
    for batch in range(20):
        journal.append_many([outcome(batch * 5 + j, seed=7) for j in range(5)])
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    # The parent's mirror picks up rows written by other processes.
    assert journal.summary()["outcomes"] == 300
    assert len(journal.similar([0.0] * 4, k=300)) == 300
    journal.close()


def test_cap_culls_the_oldest(journal_path: Path) -> None:
    journal = OutcomeJournal(journal_path, max_outcomes=25)
    for batch in range(4):
        journal.append_many([outcome(batch * 10 + i) for i in range(10)])
    assert journal.summary()["outcomes"] == 25
    prices = sorted(r["entry_price"] for r in journal.similar([0.0] * 4, k=100))
    assert prices == [100.0 + i for i in range(15, 40)]
    journal.close()
    # A smaller cap applies at the next start.
    smaller = OutcomeJournal(journal_path, max_outcomes=5)
    assert smaller.count() == 5 and smaller.summary()["outcomes"] == 5
    smaller.close()


def test_summary_by_strategy_and_regime(journal_path: Path) -> None:
    journal = OutcomeJournal(journal_path)
    records = [
        outcome(i, strategy=s, regime=r)
        for i, (s, r) in enumerate(
            [("sma", "trending"), ("sma", "ranging"), ("ema", "volatile"), ("ema", "trending")] * 5
        )
    ]
    journal.append_many(records)
    summary = journal.summary()
    for key, attr in (("by_strategy", "strategy"), ("by_regime", "regime")):
        for name, stats in summary[key].items():
            rets = [r.ret for r in records if getattr(r, attr) == name]
            assert stats["trades"] == len(rets)
            assert stats["win_rate"] == sum(x > 0 for x in rets) / len(rets)
            assert math.isclose(stats["mean_return"], float(np.mean(rets)), rel_tol=1e-12)
            assert math.isclose(stats["total_pnl"], sum(r.pnl for r in records if getattr(r, attr) == name))
    assert set(summary["by_regime"]) == {"trending", "ranging", "volatile"}
    journal.close()


def test_similar_matches_a_brute_force_reference(journal_path: Path) -> None:
    journal = OutcomeJournal(journal_path)
    records = [outcome(i, dims=6, seed=3) for i in range(400)]
    records += [outcome(i, dims=3, seed=4) for i in range(20)]  # other feature sets are ignored
    journal.append_many(records)
    rng = np.random.default_rng(99)
    six = [r for r in records if len(r.features) == 6]
    matrix = np.array([r.features for r in six])
    mean, std = matrix.mean(axis=0), matrix.std(axis=0)
    for _ in range(5):
        query = rng.normal(size=6)
        got = journal.similar(query.tolist(), k=7)
        # Reference: a plain Python loop over standardised vectors.
        dists = []
        for idx, r in enumerate(six):
            d = math.sqrt(
                sum(((a - m) / s - (q - m) / s) ** 2 for a, q, m, s in zip(r.features, query, mean, std, strict=True))
            )
            dists.append((d, idx))
        expected = sorted(dists)[:7]
        assert [g["entry_price"] for g in got] == [six[i].entry_price for _, i in expected]
        assert [round(g["distance"], 9) for g in got] == [round(d, 9) for d, _ in expected]
    assert journal.similar([0.0] * 5, k=3) == []
    journal.close()


