"""Nothing is lost: reports after a SIGKILL, trades after a full disk, a damaged journal rebuilt.

Real components throughout: a daemon subprocess killed with SIGKILL, a state
directory on a tmpfs this test mounts (as root; skipped otherwise) and fills,
SQLite files damaged byte by byte.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tradingd.config import Config
from tradingd.storage.outcomes import OutcomeJournal
from tradingd.supervisor import Supervisor
from tradingd.workflows.outcome_sink import outcomes_from_result
from tradingd.workflows.recovery import open_journal, recover_files
from tradingd.workflows.runs import startup_run_id
from tradingd.workflows.spec import load_spec_file, parse_spec

from tests.conftest import DaemonProcess, await_until, base_url, wait_until

TOKEN = "durability-test-token-0123456789abcdef"
TRADES_SPEC: dict[str, Any] = {
    "name": "trades",
    "type": "backtest",
    "data": {"source": "sample", "symbols": ["SYM01", "SYM02"], "start": "2018-01-01"},
    "strategy": {"name": "sma_crossover", "grid": {"fast": [5, 10, 20], "slow": [30, 60]}},
    "event_tracing": ["POSITION_CLOSE"],
    "retention_policy": "trade_complete",
    "execution": {"chunk_size": 3, "batch_size": 3},
}


def result_trades(results: Path) -> int:
    """Trades the completed result files hold (what the journal must contain)."""
    total = 0
    for path in results.glob("*/*/containers/*.json"):
        total += len(outcomes_from_result(json.loads(path.read_bytes())))
    return total


# --- a completed run whose report was lost -------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_after_completed_then_restart_writes_the_missing_report(
    tmp_path: Path, write_config: Callable[..., Path], daemon_process: Callable[..., DaemonProcess]
) -> None:
    spec_path = tmp_path / "specs" / "trades.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(yaml.safe_dump(TRADES_SPEC))
    config = write_config(startup_workflows=["specs/trades.yaml"])
    root = tmp_path / "results" / startup_run_id(load_spec_file(spec_path))
    manifest = root / "manifest.json"

    def status() -> str | None:
        try:
            return str(json.loads(manifest.read_bytes())["status"])
        except (OSError, ValueError, KeyError):
            return None

    first = daemon_process(config)
    first.wait_listening()
    wait_until(lambda: status() == "completed", within=90, what="the run to complete")
    # Completed only after the report: it is there the moment the manifest says so.
    assert (root / "report.html").is_file()
    first.proc.kill()
    assert first.wait(timeout=10) == -signal.SIGKILL
    # What an older daemon (or a lost file) leaves: a completed run without its report, and a
    # temp file of an atomic write that a SIGKILL interrupted.
    (root / "report.html").unlink()
    (root / "backtest" / "report.html").unlink()
    leftover = root / ".manifest.json.k1ll3dXy.tmp"
    leftover.write_text("{")

    second = daemon_process(config)
    second.wait_listening()
    wait_until(lambda: (root / "report.html").is_file() or None, within=60, what="the report to be restored")
    assert (root / "backtest" / "report.html").is_file()
    assert "its report was missing; written again" in second.log()
    assert not leftover.exists()
    assert status() == "completed"
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0


# --- a full disk ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "8m") -> Iterator[Path]:
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def manifest_status(run_dir: Path) -> str | None:
    try:
        return str(json.loads((run_dir / "manifest.json").read_bytes())["status"])
    except (OSError, ValueError, KeyError):
        return None


async def stats_outcomes(http: aiohttp.ClientSession, sup: Supervisor) -> dict[str, Any]:
    async with http.get(f"{base_url(sup)}/stats") as resp:
        section: dict[str, Any] = (await resp.json())["outcomes"]
        return section


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_full_state_dir_keeps_trades_in_the_outbox_until_space_returns(
    tmp_path: Path, make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    with small_tmpfs(tmp_path / "state") as state:
        # The disk guard would pause admission on this small disk; the outbox is what is under test.
        config = make_config(startup_workflows=[], disk={"min_free_mb": 0})
        async with Supervisor(config) as sup:
            filler = fill(state)
            run = sup.runs.submit(parse_spec(TRADES_SPEC), run_id="full")
            await await_until(lambda: run.finished, within=60, what="the run to finish")
            # The backtest is fine (its results live elsewhere); its trades wait for the journal.
            assert run.status == "completed"
            section = await stats_outcomes(http, sup)
            assert section["write_failures"] >= 1 and section["pending_containers"] >= 1
            assert "full" in str(section["last_error"]).lower()
            assert list((config.results_dir / "full").glob("*/containers/*.journal-pending"))
            expected = result_trades(config.results_dir)
            assert expected > 20
            filler.unlink()

            async def journaled() -> dict[str, Any] | None:
                found = await stats_outcomes(http, sup)
                return found if found["pending_containers"] == 0 and found["outcomes"] == expected else None

            await await_until(journaled, within=30, what="the outbox to drain into the journal")
            assert sup.outcomes is not None and sup.outcomes.count() == expected
            assert not list((config.results_dir / "full").glob("*/containers/*.journal-pending"))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_run_failed_on_a_full_disk_resumes_on_request_once_space_is_back(
    tmp_path: Path, make_config: Callable[..., Config], http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADINGD_API_TOKEN", TOKEN)
    with small_tmpfs(tmp_path / "disk") as disk:
        config = make_config(startup_workflows=[], disk={"min_free_mb": 0},
                             paths={"state_dir": str(disk / "state"), "results_dir": str(disk / "results")})
        async with Supervisor(config) as sup:
            url = base_url(sup)
            filler = fill(disk)
            run = sup.runs.submit(parse_spec(TRADES_SPEC), run_id="enospc")
            await await_until(lambda: run.finished, within=60, what="the run to fail")
            async with http.get(f"{url}/runs/enospc") as resp:
                seen = await resp.json()
            assert seen["status"] == "failed"
            assert "No space left" in seen["manifest_error"]  # the API says why the manifest lags
            filler.unlink()
            # The manifest catches up with the API once there is space.
            await await_until(lambda: manifest_status(config.results_dir / "enospc") == "failed" or None,
                              within=30, what="the manifest to say failed")
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{url}/runs/enospc/resume") as resp:
                assert resp.status == 401
            async with http.post(f"{url}/runs/enospc/resume", headers=headers) as resp:
                assert resp.status == 202
            await await_until(lambda: run.status == "completed" or None, within=60, what="the resumed run")
            async with http.post(f"{url}/runs/enospc/resume", headers=headers) as resp:
                assert resp.status == 409 and "completed" in (await resp.json())["error"]
            # The final manifest is written by the writer thread just after the run settles.
            await await_until(lambda: manifest_status(config.results_dir / "enospc") == "completed" or None,
                              within=30, what="the manifest to say completed")
            manifest = json.loads((config.results_dir / "enospc" / "manifest.json").read_bytes())
            assert manifest["status"] == "completed" and manifest["attempts"] == 2
            assert (config.results_dir / "enospc" / "report.html").is_file()
            expected = result_trades(config.results_dir)
            await await_until(lambda: (sup.outcomes is not None and sup.outcomes.count() == expected) or None,
                              within=30, what="every trade journaled")


# --- a damaged journal ------------------------------------------------------------------------


@pytest.fixture
async def journal_with_trades(tmp_path: Path, make_config: Callable[..., Config]) -> tuple[Path, Path, int]:
    """A state dir whose journal holds a run's trades, copied while open (as a crash leaves it, WAL and all)."""
    config = make_config(startup_workflows=[])
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    async with Supervisor(config, serve=False) as sup:
        run = sup.runs.submit(parse_spec({**TRADES_SPEC, "data": {**TRADES_SPEC["data"],
                                                                    "symbols": ["SYM01", "SYM02", "SYM03"]}}),
                              run_id="j")
        await await_until(lambda: run.finished, within=60, what="the run")
        assert sup.outcomes is not None
        count = sup.outcomes.count()
        for name in ("outcomes.sqlite", "outcomes.sqlite-wal"):
            shutil.copy(config.state_dir / name, crashed / name)
    assert count == result_trades(config.results_dir) > 50
    return crashed / "outcomes.sqlite", config.results_dir, count


def current_frames(wal: bytes) -> list[int]:
    """Offsets of the WAL's frames of the current generation (their salts match the header's)."""
    page_size, salts = struct.unpack(">I", wal[8:12])[0], wal[16:24]
    offsets, offset = [], 32
    while offset + 24 + page_size <= len(wal) and wal[offset + 8:offset + 16] == salts:
        offsets.append(offset)
        offset += 24 + page_size
    return offsets


def reopen(path: Path, results: Path) -> OutcomeJournal:
    return open_journal(path.parent, results, 100_000)


def test_a_damaged_wal_is_quarantined_and_the_journal_rebuilt(
    journal_with_trades: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    path, results, count = journal_with_trades
    wal = path.with_name("outcomes.sqlite-wal")
    data = bytearray(wal.read_bytes())
    frames = current_frames(bytes(data))
    assert len(frames) >= 3, "the crash copy has committed frames in its WAL"
    victim = frames[len(frames) // 2] + 24 + 100
    data[victim:victim + 64] = bytes(b ^ 0xFF for b in data[victim:victim + 64])  # flipped bits in a committed page
    wal.write_bytes(bytes(data))
    # What SQLite alone makes of it: fewer trades, and no error.
    probe = path.parent / "probe"
    probe.mkdir()
    for name in ("outcomes.sqlite", "outcomes.sqlite-wal"):
        shutil.copy(path.parent / name, probe / name)
    with contextlib.closing(sqlite3.connect(probe / "outcomes.sqlite")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] < count
    with caplog.at_level(logging.WARNING):
        journal = reopen(path, results)
    try:
        assert journal.count() == count
    finally:
        journal.close()
    assert any("outcome journal rebuilt" in r.getMessage() and "fails its checksum" in r.getMessage()
               and f"{count} trade(s) recovered" in r.getMessage() for r in caplog.records)
    quarantined = sorted(p.name for p in (path.parent / "quarantine").iterdir())
    assert any(name.startswith("outcomes.sqlite.") and not name.endswith("-wal") for name in quarantined)
    assert any(name.endswith("-wal") for name in quarantined)


def test_a_zero_byte_journal_is_rebuilt_from_the_results(
    journal_with_trades: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    path, results, count = journal_with_trades
    path.write_bytes(b"")
    path.with_name("outcomes.sqlite-wal").unlink()
    with caplog.at_level(logging.WARNING):
        journal = reopen(path, results)
    try:
        assert journal.count() == count
    finally:
        journal.close()
    assert any("empty while result files hold trades" in r.getMessage() for r in caplog.records)


def test_a_garbled_journal_is_quarantined_not_a_traceback(
    journal_with_trades: tuple[Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    path, results, count = journal_with_trades
    path.with_name("outcomes.sqlite-wal").unlink()
    path.write_bytes(os.urandom(8192))
    with caplog.at_level(logging.WARNING):
        journal = reopen(path, results)
    try:
        assert journal.count() == count
        journal.append_many([])  # writable
    finally:
        journal.close()
    assert [r for r in caplog.records if "outcome journal rebuilt" in r.getMessage()]
    assert list((path.parent / "quarantine").glob("outcomes.sqlite.*"))


def test_a_sound_journal_is_left_alone(journal_with_trades: tuple[Path, Path, int],
                                       caplog: pytest.LogCaptureFixture) -> None:
    path, results, count = journal_with_trades
    with caplog.at_level(logging.WARNING):
        journal = reopen(path, results)
    try:
        assert journal.count() == count
    finally:
        journal.close()
    assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert not (path.parent / "quarantine").exists()


def test_start_up_removes_temp_files_of_interrupted_writes(tmp_path: Path) -> None:
    state, results = tmp_path / "state", tmp_path / "results"
    (results / "r" / "p" / "containers").mkdir(parents=True)
    state.mkdir()
    leftovers = [state / ".api_token.abc123de.tmp", results / "r" / ".manifest.json.x_Y9z8q7.tmp",
                 results / "r" / "p" / "containers" / ".A-0000.json.q1w2e3r4.tmp"]
    keep = [results / "r" / "manifest.json", state / "notes.tmp", results / "r" / "p" / "containers" / "A.json"]
    marker = results / "r" / "p" / "containers" / "A.journal-pending"
    for path in [*leftovers, *keep, marker]:
        path.write_text("x")
    found = recover_files(state, results)
    assert found.temp_files_removed == 3 and found.journal_markers == [marker]
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
