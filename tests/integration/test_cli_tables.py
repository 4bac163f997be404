"""``tradingd status | runs | results`` against a live daemon and a results directory."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tradingd.cli.tables import Style, render_table
from tradingd.formatting import fmt_bytes, fmt_duration
from tradingd.supervisor import Supervisor

from tests.conftest import await_until, base_url
from tests.unit.test_reports import run_workflow


async def tradingd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real CLI in a subprocess (stdout is a pipe: plain text)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tradingd", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_tables_from_a_live_daemon(supervisor: Supervisor) -> None:
    cache = supervisor.memory.cache("indicators")
    for i in range(3):
        cache.put(("SYM", i), np.ones(10_000))
    cache.get(("SYM", 0))
    cache.get(("SYM", 99))
    supervisor.stats.refresh()  # what the monitor does on its next tick
    code, out, err = await tradingd("status", "--url", base_url(supervisor))
    assert code == 0, err
    assert "\x1b[" not in out, "plain text when stdout is not a TTY"
    for title in ("Memory", "Caches", "Models", "Cleanup", "Runs"):
        assert f"\n{title}" in f"\n{out}", title
    level = supervisor.monitor.level.label
    assert f"level      {level}" in out
    row = next(line for line in out.splitlines() if line.startswith("indicators"))
    cells = row.split()
    assert cells[1] == "3", row  # entries
    assert "50.0%" in row  # one hit, one miss
    limit = fmt_bytes(supervisor.monitor.limit.bytes)
    assert f"limit      {limit} (from {supervisor.monitor.limit.source})" in out


async def test_status_with_the_right_and_a_wrong_token(supervisor: Supervisor) -> None:
    url = base_url(supervisor)
    assert supervisor.api_token
    code, _, err = await tradingd("status", "--url", url, "--token", supervisor.api_token)
    assert code == 0, err
    code, out, err = await tradingd("status", "--url", url, "--token", "not-the-token")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"tradingd: the daemon at {url} rejected the token (invalid bearer token)"]


async def test_unreachable_daemon_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    for command in ("status", "runs"):
        code, out, err = await tradingd(command, "--url", url)
        assert code == 1 and out == ""
        assert err.strip().splitlines() == [f"tradingd: cannot reach the daemon at {url}: connection refused"]


SMALL_SPEC = {
    "name": "cli-demo", "type": "train_test", "data": {"source": "sample", "symbols": ["SYM01", "SYM02"]},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10], "slow": [30, 60]}},
}


async def test_runs_lists_the_daemons_runs(supervisor: Supervisor, http: aiohttp.ClientSession) -> None:
    url = base_url(supervisor)
    async with http.post(f"{url}/runs", json=SMALL_SPEC,
                         headers={"Authorization": f"Bearer {supervisor.api_token}"}) as resp:
        assert resp.status == 201, await resp.text()
        run_id = (await resp.json())["id"]


    async def finished() -> dict[str, Any] | None:
        async with http.get(f"{url}/runs/{run_id}") as resp:
            run: dict[str, Any] = await resp.json()
        return run if run["status"] not in ("queued", "running") else None

    run = await await_until(finished, what=f"run {run_id} to finish")
    total = run["progress"]["total"]
    assert run["status"] == "completed" and total > 0
    code, out, err = await tradingd("runs", "--url", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Runs"
    assert lines[1].split() == ["run", "workflow", "type", "status", "strategy", "progress", "eta", "started"]
    row = next(line for line in lines if line.startswith(run_id))
    assert row.split()[1:5] == ["cli-demo", "train_test", "completed", "sma_crossover"]
    assert f"{total}/{total} (100%)" in row
    code, out, _ = await tradingd("status", "--url", url)
    assert code == 0 and run_id in out


async def test_results_from_the_results_dir(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    run_dir = await run_workflow(results_dir, "study-1")
    code, out, err = await tradingd("results", "study-1", "--results-dir", str(results_dir))
    assert code == 0, err
    assert "\x1b[" not in out
    assert "status  completed" in out and "type    train_test" in out
    lines = out.splitlines()
    best = json.loads((run_dir / "training" / "aggregate_results.json").read_text())["by_params"][0]["params"]
    row = next(line for line in lines if line.startswith("training "))
    assert "completed" in row and "sharpe" in row
    assert f"fast={best['fast']}, slow={best['slow']}" in row, row
    # Testing leads with the method's result (each symbol's training selection), not the best test cell.
    oos = json.loads((run_dir / "testing" / "phase_summary.json").read_text())["out_of_sample"]
    headline = next(line for line in lines if line.startswith("out of sample (testing): "))
    assert f"mean sharpe {oos['mean']:.4g} over {oos['n_symbols']} symbols" in headline
    assert lines.index(headline) < lines.index("Phases")
    row = next(line for line in lines if line.startswith("testing "))
    assert f"{oos['mean']:.4g} (mean of {oos['n_symbols']})" in row, row
    assert any(line.startswith("overfitting (training): PSR ") for line in lines)


async def test_results_of_a_failed_run_name_the_failure(tmp_path: Path) -> None:
    run_dir = tmp_path / "results" / "broken"
    (run_dir / "training" / "containers").mkdir(parents=True)
    (run_dir / "training" / "phase_summary.json").write_text(json.dumps(
        {"phase": "training", "kind": "training", "status": "failed", "objective": "sharpe"}))
    (run_dir / "training" / "containers" / "SYM01-0000.json").write_text(json.dumps(
        {"container_id": "SYM01-0000", "status": "failed", "error": {"type": "DataError", "message": "row 3: NaN"}}))
    (run_dir / "manifest.json").write_text(json.dumps(
        {"run_id": "broken", "status": "failed", "type": "train_test", "phases": [{"name": "training"}]}))
    code, out, err = await tradingd("results", "broken", "--results-dir", str(tmp_path / "results"))
    assert code == 0, err
    assert "status  failed" in out
    assert "training: failed: SYM01-0000: DataError: row 3: NaN" in out


async def test_results_finds_the_results_dir_through_the_config(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    await run_workflow(tmp_path / "results", "study-1")
    config = write_config()
    code, out, err = await tradingd("results", "study-1", "--config", str(config))
    assert code == 0, err
    assert "train_test" in out


async def test_results_errors(tmp_path: Path) -> None:
    code, _, err = await tradingd("results", "nope", "--results-dir", str(tmp_path))
    assert code == 1 and err.strip() == f"tradingd: no results for run nope under {tmp_path}"
    code, _, err = await tradingd("results", "../etc", "--results-dir", str(tmp_path))
    assert code == 2 and "invalid run id '../etc'" in err


def test_table_rendering_plain_and_tty() -> None:
    rows = [["indicators", 3, "1.5 KiB", None], ["features", 120, "12.0 MiB", "ttl 2"]]
    plain = render_table(["cache", "entries", "bytes", "evictions"], rows, style=Style(tty=False), title="Caches")
    assert plain.splitlines() == [
        "Caches",
        "cache       entries     bytes  evictions",
        "----------  -------  --------  ---------",
        "indicators        3   1.5 KiB  -",
        "features        120  12.0 MiB  ttl 2",
    ]
    tty = render_table(["cache", "entries"], [["a", None]], style=Style(tty=True))
    assert "\x1b[1m" in tty and "—" in tty and "─" in tty
    assert fmt_duration(3725) == "1h02m" and fmt_duration(None) == "-" and fmt_bytes(2**30) == "1.0 GiB"
