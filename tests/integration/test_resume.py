"""A real daemon killed mid-run resumes to the same aggregates; a second SIGINT forces exit."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tradingd.cli.workflows import run_workflow_once
from tradingd.config import parse_config
from tradingd.workflows.runs import startup_run_id
from tradingd.workflows.spec import load_spec_file

from tests.conftest import DaemonProcess

# ~100 training containers on 5 symbols: long enough to be killed in the middle.
STUDY: dict[str, Any] = {
    "name": "resume_study",
    "type": "train_test",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03", "SYM04", "SYM05"]},
    "strategy": {"name": "sma_crossover", "grid": {"fast": {"min": 2, "max": 30}, "slow": {"min": 35, "max": 100}}},
    "backtest": {"fill": "next_open", "commission": 0.001},
    "selection": {"top": 3},
    "event_tracing": [],
    "execution": {"chunk_size": 100, "batch_size": 50},
}
# One container per symbol, each several seconds of compute: a slow shutdown.
SLOW: dict[str, Any] = {
    "name": "slow_study",
    "type": "backtest",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03"]},
    "strategy": {"name": "sma_crossover", "grid": {"fast": {"min": 2, "max": 100}, "slow": {"min": 101, "max": 300}}},
    "event_tracing": [],
    "execution": {"chunk_size": 20000, "batch_size": 20000},
}


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "specs" / f"{spec['name']}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def not_ready_reason(port: int) -> str | None:
    """Why ``/ready`` says 503, or None while it says 200."""
    try:
        get_json(port, "/ready")
    except urllib.error.HTTPError as err:
        reason: str = json.loads(err.read())["reason"]
        return reason
    return None


def manifest(root: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_run_then_restart_resumes_to_identical_aggregates(
    tmp_path: Path, write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess]
) -> None:
    spec_path = write_spec(tmp_path, STUDY)
    config = write_config(startup_workflows=["specs/resume_study.yaml"])
    run_id = startup_run_id(load_spec_file(spec_path))
    root = tmp_path / "results" / run_id
    training = root / "training" / "containers"

    first = daemon_process(config)
    first.wait_listening()
    wait_for(lambda: len(list(training.glob("*.json"))) >= 15, 60, "15 training containers")
    first.proc.kill()
    assert first.wait(timeout=10) == -signal.SIGKILL
    done_before = len(list(training.glob("*.json")))
    assert manifest(root)["status"] == "running" and done_before < 100

    second = daemon_process(config)
    port = second.wait_listening()
    wait_for(lambda: manifest(root).get("status") == "completed", 120, "the resumed run to complete")
    run = get_json(port, f"/runs/{run_id}")
    assert run["status"] == "completed" and run["attempts"] == 2
    assert run["progress"]["skipped"] >= done_before - 2  # at most the in-flight ones re-ran
    assert f"resuming run {run_id}" in second.log()
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0

    clean_config = parse_config({"paths": {"state_dir": str(tmp_path / "clean-state"),
                                           "results_dir": str(tmp_path / "clean")}})
    clean = asyncio.run(run_workflow_once(clean_config, load_spec_file(spec_path), run_id=run_id,
                                          out=io.StringIO()))
    assert clean.status == "completed"
    for phase in ("training", "testing"):
        resumed_bytes = (root / phase / "aggregate_results.json").read_bytes()
        clean_bytes = (tmp_path / "clean" / run_id / phase / "aggregate_results.json").read_bytes()
        assert resumed_bytes == clean_bytes, f"{phase} aggregates differ"
    assert sorted(p.name for p in training.glob("*.json")) == sorted(
        p.name for p in (tmp_path / "clean" / run_id / "training" / "containers").glob("*.json"))


def test_second_sigint_during_a_slow_shutdown_forces_exit(
    tmp_path: Path, write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess]
) -> None:
    write_spec(tmp_path, SLOW)
    config = write_config(startup_workflows=["specs/slow_study.yaml"], graceful_timeout=60.0)
    daemon = daemon_process(config)
    port = daemon.wait_listening()
    wait_for(lambda: any(r["progress"]["running"] > 0 for r in get_json(port, "/runs")["runs"]), 30,
             "a running container")
    daemon.signal(signal.SIGINT)
    # The first SIGINT waits for in-flight containers (graceful_timeout 60 s), still answering HTTP.
    wait_for(lambda: not_ready_reason(port) == "stopping", 30, "/ready to say stopping")
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGINT)
    # Only the second signal ends it: the exit code and the log line say so, long before 60 s.
    assert daemon.wait(timeout=15) == 128 + signal.SIGINT
    assert "forcing exit" in daemon.log()
