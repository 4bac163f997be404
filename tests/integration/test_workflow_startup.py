"""The default config's startup study runs on `tradingd run` and leaves the DESIGN §4 tree."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tradingd.config import default_config_text

from tests.conftest import DaemonProcess, wait_until


def test_default_config_names_the_bundled_study() -> None:
    # (test_config.py checks that config/tradingd.yaml is byte-identical to the embedded default.)
    assert yaml.safe_load(default_config_text())["startup_workflows"] == ["bundled:sample_study"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_default_config_runs_the_sample_train_test_study(
    tmp_path: Path, daemon_process: Callable[..., DaemonProcess]
) -> None:
    config: dict[str, Any] = yaml.safe_load(default_config_text())
    config["http"]["port"] = 0
    config["paths"] = {"state_dir": str(tmp_path / "state"), "results_dir": str(tmp_path / "results")}
    path = tmp_path / "tradingd.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = daemon_process(path)
    port = daemon.wait_listening()

    deadline = time.monotonic() + 180  # the bundled study takes ~12 s here unloaded; a deadline, not a target
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as resp:
            runs = json.loads(resp.read())["runs"]
        if runs and runs[0]["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert len(runs) == 1 and runs[0]["status"] == "completed", runs
    assert runs[0]["type"] == "train_test" and runs[0]["source"] == "startup"
    summary = runs[0]["summary"]  # what the dashboard draws for it
    assert summary["headline"].startswith("OOS sharpe mean ") and summary["selection"]
    assert 2 <= len(summary["equity"]) <= 32
    root = tmp_path / "results" / runs[0]["id"]

    # The API shows the status as soon as the run ends; the writer lands the final manifest just after.
    wait_until(lambda: json.loads((root / "manifest.json").read_text())["status"] == "completed" or None,
               within=30, what="the final manifest")
    for phase in ("training", "testing"):
        for name in ("aggregate_results.json", "phase_summary.json"):
            assert (root / phase / name).is_file(), f"{phase}/{name}"
        containers = sorted((root / phase / "containers").glob("*.json"))
        assert len(containers) >= 10  # one or more per sample symbol
        assert {json.loads(p.read_text())["status"] for p in containers} == {"completed"}
    events = sorted((root / "training" / "events").glob("*.jsonl"))
    assert len(events) == len(list((root / "training" / "containers").glob("*.json")))
    first_event = json.loads(events[0].read_text().splitlines()[0])
    assert first_event["type"] in ("POSITION_OPEN", "POSITION_CLOSE")
    testing = json.loads((root / "testing" / "aggregate_results.json").read_text())
    assert len(testing["best_by_symbol"]) == 10
    for phase in ("training", "testing"):
        report = (root / phase / "report.html").read_text()
        assert "heatmap.png" in report and (root / phase / "heatmap.png").stat().st_size > 1000
    # The run's report follows its final manifest.
    while not (root / "report.html").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (root / "report.html").is_file()

    # The testing phase's closed trades went into the outcome journal.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/outcomes/summary", timeout=5) as resp:
        journal = json.loads(resp.read())
    assert journal["outcomes"] > 0 and set(journal["by_strategy"]) == {runs[0]["strategy"]}

    # A restart neither redoes nor duplicates the completed startup study.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    again = daemon_process(path)
    port = again.wait_listening()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as resp:
        assert [r["id"] for r in json.loads(resp.read())["runs"]] == [runs[0]["id"]]
    assert "is already completed" in again.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/outcomes/summary", timeout=5) as resp:
        assert json.loads(resp.read())["outcomes"] == journal["outcomes"], "reloaded, not duplicated"
    again.signal(signal.SIGTERM)
    assert again.wait(timeout=15) == 0


@pytest.mark.slow
def test_a_bad_startup_workflow_is_a_config_error(
    tmp_path: Path, write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess]
) -> None:
    (tmp_path / "bad.yaml").write_text("type: backtest\nstrategy: {name: momentum, grid: {lookbak: [5]}}\n")
    config = write_config(startup_workflows=["bad.yaml", "missing.yaml", "bundled:nope"])
    check = subprocess.run([sys.executable, "-m", "tradingd", "check-config", str(config)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 2
    lines = check.stderr.splitlines()
    assert f"{config}: startup_workflows.0: {tmp_path / 'bad.yaml'}: strategy.grid.lookbak: unknown parameter" \
        in lines[0]
    assert lines[1] == f"{config}: startup_workflows.1: {tmp_path / 'missing.yaml'}: file not found"
    assert lines[2].startswith(f"{config}: startup_workflows.2: bundled:nope: no bundled workflow 'nope'")
    daemon = daemon_process(config)
    assert daemon.wait(timeout=30) == 2
    assert "file not found" in daemon.log() and "Traceback" not in daemon.log()
    assert not (tmp_path / "state" / "tradingd.lock").exists()
