"""`tradingd run-workflow` (one-shot, progress output) and `tradingd submit` (to a running daemon)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tradingd.supervisor import Supervisor

from tests.conftest import REPO, base_url

SPEC: dict[str, Any] = {
    "name": "cli_study",
    "type": "train_test",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02"], "start": "2020-01-01"},
    "strategy": {"name": "momentum", "grid": {"lookback": [5, 10, 20, 40], "threshold": [0.0, 0.01]}},
    "execution": {"chunk_size": 2, "batch_size": 1},
}


def write(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def tradingd(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradingd", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, **kwargs)


def config_file(tmp_path: Path) -> Path:
    return write(tmp_path, "cfg.yaml", {"paths": {"state_dir": str(tmp_path / "state"),
                                                  "results_dir": str(tmp_path / "results")}})


@pytest.mark.slow
def test_run_workflow_prints_plain_progress_lines_and_writes_results(tmp_path: Path) -> None:
    result = tradingd("run-workflow", str(write(tmp_path, "s.yaml", SPEC)), "--config", str(config_file(tmp_path)),
                      "--run-id", "cli-1")
    assert result.returncode == 0, result.stderr
    assert "run cli-1 completed: 10/10 containers" in result.stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("run cli-1: ")]
    assert progress and "\r" not in result.stderr
    assert progress[-1] == "run cli-1: completed, 10/10 containers (100%), phase testing"
    assert (tmp_path / "results" / "cli-1" / "testing" / "aggregate_results.json").is_file()
    # The same id again: already completed, nothing redone.
    again = tradingd("run-workflow", str(tmp_path / "s.yaml"), "--config", str(tmp_path / "cfg.yaml"),
                     "--run-id", "cli-1")
    assert again.returncode == 0 and "run cli-1 completed" in again.stdout


@pytest.mark.slow
def test_run_workflow_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tradingd", "run-workflow", str(write(tmp_path, "s.yaml", SPEC)),
             "--config", str(config_file(tmp_path))],
            stdout=subprocess.PIPE, stderr=follower, timeout=60, cwd=REPO, check=False,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    output = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "10/10" in output and "#" * 24 in output
    draws = output.split("\r\x1b[K")
    # The bar names what the run is doing: the phase, and the reports once containers are done.
    # (A short phase may end between two redraws, so one phase's name is enough to see it named.)
    assert any(d.startswith(("training [", "testing [")) for d in draws)
    assert any(d.startswith("writing reports… [") for d in draws), draws
    # What the terminal shows: every log line on its own line, none glued to the bar.
    screen = [line.split("\r\x1b[K")[-1] for line in output.replace("\r\n", "\n").split("\n")]
    logged = [line for line in screen if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line)]
    assert any(" completed in " in line for line in logged), screen  # logged while the bar was shown
    for line in logged:
        assert "[#" not in line and "[-" not in line and "ETA" not in line, f"a log line in the bar: {line!r}"


def test_run_workflow_reports_spec_errors_with_key_paths(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", {**SPEC, "execution": {"chunk_sise": 3}})
    result = tradingd("run-workflow", str(bad), "--config", str(config_file(tmp_path)))
    assert result.returncode == 2
    assert f"{bad}: execution.chunk_sise: unknown key" in result.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


async def test_submit_sends_the_spec_with_the_state_dir_token(supervisor: Supervisor, tmp_path: Path) -> None:
    spec = write(tmp_path, "s.yaml", SPEC)
    config = config_file(tmp_path)  # same state dir as the fixture: the token file is found there
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tradingd", "submit", str(spec), "--url", base_url(supervisor), "--config", str(config),
        "--run-id", "submitted", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_API_TOKEN")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("submitted run submitted (")
    run = supervisor.workflows.queue.get("submitted")
    assert run.task is not None
    await asyncio.wait_for(asyncio.shield(run.task), 60)
    assert run.status == "completed"
    manifest = json.loads((run.layout.manifest).read_text())
    assert manifest["spec"]["strategy"]["name"] == "momentum"

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tradingd", "submit", str(spec), "--url", base_url(supervisor), "--token", "wrong",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "rejected the token" in err.decode()


async def test_run_workflow_submits_to_the_daemon_that_holds_the_state_dir(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    spec = write(tmp_path, "s.yaml", SPEC)
    # The fixture's daemon: same state and results dirs, and the port it really listens on.
    config = write(tmp_path, "cfg.yaml", {"paths": {"state_dir": str(supervisor.state_dir),
                                                    "results_dir": str(supervisor.results_dir)},
                                          "http": {"host": "127.0.0.1", "port": supervisor.port}})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tradingd", "run-workflow", str(spec), "--config", str(config), "--run-id", "remote-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_API_TOKEN")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert f"holds the state dir {supervisor.state_dir}; submitting the run to it" in err.decode()
    assert "run remote-1: completed, 10/10 containers (100%), phase testing" in err.decode()
    assert "run remote-1 completed: 10/10 containers" in out.decode()
    run = supervisor.runs.get("remote-1")  # the daemon ran it: one writer per run directory
    assert run.status == "completed" and run.source == "api"


@pytest.mark.slow
def test_ctrl_c_interrupts_run_workflow_through_the_supervisor_and_the_run_resumes(tmp_path: Path) -> None:
    many = {**SPEC, "name": "many", "type": "backtest",
            "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03", "SYM04", "SYM05"]},
            "strategy": {"name": "sma_crossover", "grid": {"fast": {"min": 2, "max": 21}, "slow": [50, 100, 150]}},
            "execution": {"chunk_size": 1, "batch_size": 1}}  # 300 small containers
    spec, config = write(tmp_path, "many.yaml", many), config_file(tmp_path)
    containers = tmp_path / "results" / "many-1" / "backtest" / "containers"
    proc = subprocess.Popen([sys.executable, "-m", "tradingd", "run-workflow", str(spec), "--config", str(config),
                             "--run-id", "many-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (containers.is_dir() and any(containers.glob("*.json"))):
            assert proc.poll() is None and time.monotonic() < deadline, "no container finished"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert "run many-1 interrupted" in out and "resume with: tradingd run-workflow" in out
    assert "stopping gracefully" in err and "Traceback" not in err
    assert not (tmp_path / "state" / "tradingd.lock").exists()
    done_before = len(list(containers.glob("*.json")))
    assert 0 < done_before < 300

    again = tradingd("run-workflow", str(spec), "--config", str(config), "--run-id", "many-1")
    assert again.returncode == 0, again.stderr
    assert "run many-1 completed: 300/300 containers" in again.stdout
    assert len(list(containers.glob("*.json"))) == 300
