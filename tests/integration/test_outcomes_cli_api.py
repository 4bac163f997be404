"""The outcome journal over HTTP and on the CLI; ``tradingd data import``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml
from tradingd.api import parse_similar_query
from tradingd.cli import main
from tradingd.config import Config
from tradingd.storage.outcomes import TradeOutcome
from tradingd.supervisor import Supervisor
from tradingd.trading.loaders import load_sample_data, sample_data_dir
from tradingd.workflows.datastore import load_store

from tests.conftest import base_url


def outcome(i: int, *, strategy: str, regime: str, ret: float) -> TradeOutcome:
    return TradeOutcome(
        run_id="r1",
        strategy=strategy,
        symbol="SYM01",
        params={"fast": i},
        side=1,
        entry_time=f"2020-01-{i + 1:02d}T00:00:00",
        exit_time=f"2020-02-{i + 1:02d}T00:00:00",
        entry_price=100.0,
        exit_price=100.0 * (1 + ret),
        pnl=1000.0 * ret,
        ret=ret,
        regime=regime,
        features=(float(i), float(i % 3), 0.0, 0.0, 0.0, 0.0),
    )


async def test_outcomes_endpoints(make_config: Callable[..., Config], http: aiohttp.ClientSession) -> None:
    async with Supervisor(make_config()) as sup:
        assert sup.outcomes is not None
        sup.outcomes.append_many(
            [
                outcome(i, strategy="sma_crossover" if i % 2 else "momentum", regime="trending", ret=0.01 * i)
                for i in range(6)
            ]
        )
        url = base_url(sup)
        async with http.get(f"{url}/outcomes/summary") as resp:
            assert resp.status == 200
            summary = await resp.json()
        assert summary["outcomes"] == 6
        assert summary["by_strategy"]["sma_crossover"]["trades"] == 3
        assert summary["by_regime"]["trending"]["trades"] == 6
        # The count is taken off the loop by the monitor task, so /stats shows it within a tick or two.
        deadline = time.monotonic() + 30
        while True:
            async with http.get(f"{url}/stats") as resp:
                section = (await resp.json())["outcomes"]
            if section["outcomes"] == 6 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert section == {"enabled": True, "outcomes": 6, "max_outcomes": 100_000, "pending_containers": 0,
                           "write_failures": 0, "last_error": None, "appended": 0}
        async with http.get(f"{url}/outcomes/similar", params={"features": "4,1,0,0,0,0", "k": "2"}) as resp:
            assert resp.status == 200
            similar = await resp.json()
        assert similar["outcomes"][0]["params"]["fast"] == 4
        assert len(similar["outcomes"]) == 2
        for bad in ({"features": "a,b"}, {}, {"features": "1,2,0,0,0,0", "k": "0"}, {"features": "1,2"}):
            async with http.get(f"{url}/outcomes/similar", params=bad) as resp:
                assert resp.status == 400
                assert "error" in await resp.json()


async def test_journal_survives_restart_and_cli_reads_it(
    make_config: Callable[..., Config],
    config_dict: Callable[..., dict[str, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with Supervisor(make_config()) as sup:
        assert sup.outcomes is not None
        sup.outcomes.append_many([outcome(i, strategy="momentum", regime="ranging", ret=-0.02) for i in range(3)])
    async with Supervisor(make_config()) as sup:
        assert sup.outcomes is not None and sup.outcomes.count() == 3
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config_dict()))
    assert main(["outcomes", "--config", str(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["by_regime"]["ranging"]["trades"] == 3
    assert main(["outcomes", "--config", str(cfg), "--similar", "1,1,0,0,0,0", "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert "momentum" in out and "ranging" in out


def test_outcomes_cli_without_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"paths": {"state_dir": str(tmp_path / "s")}}))
    assert main(["outcomes", "--config", str(cfg)]) == 1
    assert "no journal" in capsys.readouterr().err


def test_data_import_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert main(["data", "import", str(sample_data_dir()), "--store", str(store)]) == 0
    assert "imported 10 symbols" in capsys.readouterr().out
    original = load_sample_data()["SYM03"]
    mapped = load_store(store, ["SYM03"])["SYM03"]
    assert np.array_equal(mapped.close, original.close) and mapped.version == original.version
    # A second import without --overwrite refuses and leaves the store as it was.
    assert main(["data", "import", str(sample_data_dir()), "--store", str(store)]) == 1
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n2020-01-01,1,2,0.5,1.5,10\n2020-01-02,1,0.5,2,1.5,10\n")
    assert main(["data", "import", str(bad), "--store", str(tmp_path / "store2")]) == 1
    err = capsys.readouterr().err
    assert "bad.csv" in err and "row 2" in err
    assert not (tmp_path / "store2").exists()


def test_one_shot_runs_record_their_trades_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "one_shot",
                "type": "backtest",
                "data": {"source": "sample", "symbols": ["SYM04"]},
                "strategy": {"name": "sma_crossover", "grid": {"fast": [10], "slow": [50]}},
            }
        )
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"paths": {"state_dir": str(tmp_path / "s"), "results_dir": str(tmp_path / "r")}}))
    assert main(["run-workflow", str(spec), "--config", str(cfg), "--run-id", "once"]) == 0
    capsys.readouterr()
    assert main(["outcomes", "--config", str(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcomes"] > 0 and set(summary["by_strategy"]) == {"sma_crossover"}
    # Resuming the finished run does not record its trades twice.
    assert main(["run-workflow", str(spec), "--config", str(cfg), "--run-id", "once"]) == 0
    capsys.readouterr()
    assert main(["outcomes", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcomes"] == summary["outcomes"]


def test_keyed_outcomes_are_recorded_once(tmp_path: Path) -> None:
    from dataclasses import replace

    from tradingd.storage.outcomes import OutcomeJournal

    journal = OutcomeJournal(tmp_path / "j.sqlite")
    try:
        first = [
            replace(outcome(i, strategy="momentum", regime="ranging", ret=0.01), key=f"r/p/c/0/{i}") for i in range(3)
        ]
        assert journal.append_many(first) == 3
        # A container re-run after a crash sends the same trades again, plus one unkeyed outcome.
        assert journal.append_many([*first, outcome(9, strategy="momentum", regime="ranging", ret=0.0)]) == 1
        assert journal.count() == 4
    finally:
        journal.close()


def test_similar_query_parsing() -> None:
    assert parse_similar_query({"features": "0.5, -1,2e-3,0,0,0", "k": "3"}) == ([0.5, -1.0, 0.002, 0, 0, 0], 3)
    assert parse_similar_query({"features": "1,0,0,0,0,0"}) == ([1.0, 0, 0, 0, 0, 0], 10)
    six = "1,0,0,0,0,0"
    for bad, message in (
        ({}, "required"),
        ({"features": "a,b,c,d,e,f"}, "numbers"),
        ({"features": "1,2"}, "must hold 6 numbers"),
        ({"features": "nan,0,0,0,0,0"}, "finite"),
        ({"features": "1e154,0,0,0,0,0"}, "no larger than"),
        ({"features": six, "k": "x"}, "integer"),
        ({"features": six, "k": "0"}, "between"),
        ({"features": six, "k": "9" * 5000}, "between"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_similar_query(bad)
