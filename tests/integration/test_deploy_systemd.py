"""systemd/tradingd.service: verifies clean, scores well, agrees with the daemon.

``systemd-analyze verify`` exits 0 even on unknown keys, so any output at all
counts as a failure. It also insists that ExecStart's binary exists, so the
unit is verified as a copy whose ExecStart points at this checkout's real
``tradingd`` console script; that is the only line changed.

In CI (``CI=true``) a missing ``systemd-analyze`` fails the tests; locally they
skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tradingd.config import Config

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tradingd.service"
INSTALLED_EXEC = "/opt/tradingd/bin/tradingd"
EXPOSURE_LIMIT = 2.0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found (apt-get install -y systemd)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; keys may repeat."""
    entries = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _service(text: str) -> dict[str, str]:
    """The [Service] keys, last assignment wins (as systemd reads scalars)."""
    return {key: value for section, key, value in _unit_entries(text) if section == "Service"}


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", value)
    assert match, f"unsupported time span {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "min": 60.0}[unit]


def _bytes(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value)
    assert match, f"unsupported size {value!r}"
    return float(match.group(1)) * (1 << (10 * "_KMGT".index(match.group(2) or "_")))


def _verifiable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at the real console script of this checkout."""
    console_script = Path(sys.executable).parent / "tradingd"
    assert console_script.exists(), f"{console_script} missing: is the package installed?"
    assert text.count(INSTALLED_EXEC) == 1
    copy = tmp_path / "tradingd.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(console_script)), encoding="utf-8")
    return copy


def _verify(unit: Path) -> str:
    """Everything ``systemd-analyze verify`` says about ``unit`` (empty means clean)."""
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not output:
        output = f"exit status {result.returncode}"
    return output


def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    copy = _verifiable_copy(tmp_path, UNIT.read_text(encoding="utf-8"))
    assert _verify(copy) == ""


def test_verify_check_catches_an_unknown_key(tmp_path: Path) -> None:
    # The check above is only worth something if a typo makes it fail.
    text = UNIT.read_text(encoding="utf-8").replace("WatchdogSec=", "WatchdogSecs=")
    output = _verify(_verifiable_copy(tmp_path, text))
    assert "Unknown key" in output and "WatchdogSecs" in output


def test_security_exposure_is_below_the_limit(tmp_path: Path) -> None:
    copy = _verifiable_copy(tmp_path, UNIT.read_text(encoding="utf-8"))
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.search(r"Overall exposure level for tradingd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure < EXPOSURE_LIMIT, result.stdout


def test_unit_has_notify_watchdog_restart_and_hardening() -> None:
    service = _service(UNIT.read_text(encoding="utf-8"))
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert _seconds(service["WatchdogSec"]) >= 10
    assert service["ExecStart"] == f"{INSTALLED_EXEC} run --config /etc/tradingd/tradingd.yaml"
    assert service["StateDirectory"] == "tradingd"
    assert service["User"] not in {"root", "0"}
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert service[key] == value, key
    filters = [v for s, k, v in _unit_entries(UNIT.read_text(encoding="utf-8")) if k == "SystemCallFilter"]
    assert "@system-service" in filters


def test_stop_timeout_covers_the_daemons_stop_sequence() -> None:
    service = _service(UNIT.read_text(encoding="utf-8"))
    defaults = Config()
    # The supervisor's stop steps, each bounded: graceful_timeout for running
    # work, 2 s for cancelled tasks, graceful_timeout + 2 s to persist caches,
    # shutdown_timeout + 1 s to close HTTP; plus 10 s for steps yet to come
    # (executor close) and slack.
    g = defaults.graceful_timeout
    needed = g + 2.0 + (g + 2.0) + defaults.http.shutdown_timeout + 1.0 + 10.0
    assert _seconds(service["TimeoutStopSec"]) >= needed
    # The watchdog must allow for a healthy loop's worst lag, twice over.
    assert _seconds(service["WatchdogSec"]) / 2 > 2 * defaults.http.loop_lag_threshold


def test_memory_high_sits_between_the_daemons_critical_mark_and_memory_max() -> None:
    service = _service(UNIT.read_text(encoding="utf-8"))
    high, limit = _bytes(service["MemoryHigh"]), _bytes(service["MemoryMax"])
    critical = Config().memory.thresholds.critical
    # The daemon's limit is MemoryMax (its cgroup's memory.max); its own
    # cleanup must act before the kernel starts throttling at MemoryHigh.
    assert critical * limit < high < limit
    assert high / limit <= 0.97
