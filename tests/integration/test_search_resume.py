"""A daemon SIGKILLed in the middle of a smart search resumes it: same trials, same best, nothing run twice."""

from __future__ import annotations

import asyncio
import io
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tradingd.cli.workflows import run_workflow_once
from tradingd.config import parse_config
from tradingd.workflows.runs import startup_run_id
from tradingd.workflows.spec import load_spec_file

from tests.conftest import DaemonProcess
from tests.integration.test_resume import get_json, manifest, wait_for, write_spec

SEARCH: dict[str, Any] = {
    "name": "search_resume",
    "type": "train_test",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02", "SYM03"]},
    "strategy": {"name": "sma_trend_stops", "grid": {
        "fast": {"min": 5, "max": 50, "step": 5}, "slow": {"min": 60, "max": 240, "step": 20},
        "trend": {"min": 50, "max": 250, "step": 50}, "stop_loss": {"min": 0.0, "max": 0.1, "step": 0.02},
        "take_profit": {"min": 0.04, "max": 0.2, "step": 0.04}}},
    "search": {"method": "tpe", "trials": 160, "batch": 8, "seed": 3},
    "event_tracing": [],
}


def batch_files(root: Path) -> dict[str, tuple[int, int]]:
    """Completed batch result files: name -> (inode, mtime), which change if a file is written again."""
    out = {}
    for path in (root / "training" / "containers").glob("*-s*.json"):
        try:
            if json.loads(path.read_text()).get("status") == "completed":
                stat = path.stat()
                out[path.name] = (stat.st_ino, stat.st_mtime_ns)
        except (OSError, ValueError):
            continue
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_search_resumes_to_the_same_trials_and_best(
    tmp_path: Path, write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess]
) -> None:
    spec_path = write_spec(tmp_path, SEARCH)
    config = write_config(startup_workflows=["specs/search_resume.yaml"])
    run_id = startup_run_id(load_spec_file(spec_path))
    root = tmp_path / "results" / run_id

    first = daemon_process(config)
    port = first.wait_listening()
    wait_for(lambda: len(batch_files(root)) >= 12, 120, "four batches of three containers")
    search = get_json(port, f"/runs/{run_id}")["progress"].get("search")
    first.proc.kill()
    assert first.wait(timeout=10) == -signal.SIGKILL
    before = batch_files(root)
    assert search is not None and search["trials_done"] >= 8 and search["best"] is not None
    assert manifest(root)["status"] == "running" and len(before) < 60
    assert (tmp_path / "state" / "search" / f"{run_id}.db").exists()

    second = daemon_process(config)
    port = second.wait_listening()
    wait_for(lambda: manifest(root).get("status") == "completed", 240, "the resumed run to complete")
    run = get_json(port, f"/runs/{run_id}")
    assert run["status"] == "completed" and run["attempts"] == 2
    assert run["progress"]["search"]["trials_done"] == 160
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0
    after = batch_files(root)
    # Nothing that completed before the kill was evaluated again.
    assert {name: after[name] for name in before} == before

    clean_config = parse_config({"paths": {"state_dir": str(tmp_path / "clean-state"),
                                           "results_dir": str(tmp_path / "clean")}})
    clean = asyncio.run(run_workflow_once(clean_config, load_spec_file(spec_path), run_id=run_id,
                                          out=io.StringIO()))
    assert clean.status == "completed"
    resumed_doc = json.loads((root / "training" / "search.json").read_text())
    clean_doc = json.loads((tmp_path / "clean" / run_id / "training" / "search.json").read_text())
    assert resumed_doc["best"] == clean_doc["best"]
    assert [(t["params"], t["value"]) for t in resumed_doc["trials"]] == [
        (t["params"], t["value"]) for t in clean_doc["trials"]]
    for phase in ("training", "testing"):
        assert (root / phase / "aggregate_results.json").read_bytes() == (
            tmp_path / "clean" / run_id / phase / "aggregate_results.json").read_bytes(), phase
