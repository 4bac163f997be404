"""A workflow whose data source is a memory-mapped store gives the same results as the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tradingd.cli import main
from tradingd.trading.loaders import sample_data_dir


def spec(source: str) -> dict[str, object]:
    return {
        "name": "store_check",
        "type": "train_test",
        "data": {"source": source, "symbols": ["SYM02", "SYM05"], "start": "2016-01-01", "end": "2021-12-31"},
        "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10, 20], "slow": [50, 100]}},
        "objective": "sharpe",
        "backtest": {"fill": "close", "commission": 0.001},
    }


def run(tmp_path: Path, name: str, source: str) -> Path:
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec(source)))
    config = tmp_path / f"{name}-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"paths": {"state_dir": str(tmp_path / name / "state"), "results_dir": str(tmp_path / name / "results")}}
        )
    )
    assert main(["run-workflow", str(tmp_path / f"{name}.yaml"), "--config", str(config), "--run-id", "r"]) == 0
    return tmp_path / name / "results" / "r"


def test_store_source_equals_file_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert main(["data", "import", str(sample_data_dir()), "--store", str(store)]) == 0
    from_files = run(tmp_path, "files", str(sample_data_dir()))
    from_store = run(tmp_path, "store", str(store))
    for phase in ("training", "testing"):
        a = json.loads((from_files / phase / "aggregate_results.json").read_text())
        b = json.loads((from_store / phase / "aggregate_results.json").read_text())
        assert a == b, phase
        names = sorted(p.name for p in (from_files / phase / "containers").glob("*.json"))
        assert names == sorted(p.name for p in (from_store / phase / "containers").glob("*.json"))
        for name in names:
            rows_a = json.loads((from_files / phase / "containers" / name).read_text())["metrics"]
            rows_b = json.loads((from_store / phase / "containers" / name).read_text())["metrics"]
            assert rows_a == rows_b, f"{phase}/{name}"


def test_unknown_symbol_in_store_fails_the_run_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    assert main(["data", "import", str(sample_data_dir() / "SYM01.csv.gz"), "--store", str(store)]) == 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec(str(store)), "type": "backtest"}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"state_dir": str(tmp_path / "s"), "results_dir": str(tmp_path / "r")}}))
    assert main(["run-workflow", str(tmp_path / "bad.yaml"), "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "symbol 'SYM02' is not in the store" in captured.out + captured.err
