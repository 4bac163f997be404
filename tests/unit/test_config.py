"""Config validation: one clear line per problem, naming the file and key path, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tradingd.cli import main
from tradingd.config import ConfigError, default_config_text, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

BAD_CONFIGS: list[tuple[str, str]] = [
    ("memory:\n  thresholds:\n    critical: 1.5\n", "memory.thresholds.critical: must be <= 1.0 (got 1.5)"),
    ("http:\n  port: eighty\n", "http.port: must be an integer (got 'eighty')"),
    ("http:\n  port: 70000\n", "http.port: must be <= 65535 (got 70000)"),
    ("http:\n  prot: 8080\n", "http.prot: unknown key"),
    ("bogus_section: {}\n", "bogus_section: unknown key"),
    ("memory:\n  limit_mb: -5\n", "memory.limit_mb: must be > 0.0 (got -5)"),
    (
        "memory:\n  thresholds: {gc: 0.9, pressure: 0.8, critical: 0.95}\n",
        "memory.thresholds: must satisfy gc < pressure",
    ),
    ("memory:\n  monitor_interval: fast\n", "memory.monitor_interval: must be a number (got 'fast')"),
    ("logging:\n  format: xml\n", "logging.format: must be one of 'json' or 'text' (got 'xml')"),
    ("logging:\n  level: LOUD\n", "logging.level: must be one of"),
    ("executor:\n  kind: gpu\n", "executor.kind: must be one of"),
    ("caches:\n  entries:\n    indicators: {max_mb: 0}\n", "caches.entries.indicators.max_mb: must be > 0.0 (got 0)"),
    (
        "caches:\n  entries:\n    indicators: {persistent: maybe}\n",
        "caches.entries.indicators.persistent: must be true or false",
    ),
    ("graceful_timeout: -1\n", "graceful_timeout: must be >= 0.0 (got -1)"),
    ("startup_workflows: sample.yaml\n", "startup_workflows: must be a list"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("memory: [1, 2\n", ":1:"),  # YAML syntax error names line and column
    ("http:\n\tport: 1\n", "YAML syntax error"),
    ("models:\n  idle_seconds: 0\n", "models.idle_seconds: must be > 0.0 (got 0)"),
    ("storage:\n  compression: {level: 12}\n", "storage.compression.level: must be <= 9 (got 12)"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_is_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}"), err
    assert expected in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_every_problem_gets_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("http: {port: x, extra: 1}\nmemory: {limit_mb: -1}\n")
    assert main(["check-config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope.yaml'}: file not found"


def test_unwritable_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    path = tmp_path / "cfg.yaml"
    path.write_text(f"paths:\n  state_dir: {blocker}/state\n  results_dir: {tmp_path}/results\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: paths.state_dir: {blocker} exists and is not a directory" in err


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("memory:\n  thresholds:\n    critical: 1.5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tradingd", "run", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{path}: memory.thresholds.critical: must be <= 1.0 (got 1.5)"


def test_embedded_default_equals_repo_config() -> None:
    assert (REPO / "config" / "tradingd.yaml").read_text() == default_config_text()
    embedded = load_config(None, check_paths=False)
    assert embedded.model_dump() == load_config(REPO / "config" / "tradingd.yaml", check_paths=False).model_dump()


def test_defaults_match_the_documented_values() -> None:
    config = parse_config({})
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8787)
    thresholds = config.memory.thresholds
    assert (thresholds.gc, thresholds.pressure, thresholds.critical) == (0.70, 0.80, 0.90)


def test_env_overrides_host_and_port() -> None:
    config = parse_config({}, environ={"TRADINGD_HTTP_HOST": "0.0.0.0", "TRADINGD_HTTP_PORT": "9000"})
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9000)
    with pytest.raises(ConfigError, match="TRADINGD_HTTP_PORT: must be an integer"):
        parse_config({}, environ={"TRADINGD_HTTP_PORT": "nine"})


def test_state_directory_env_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    config = parse_config({})
    assert config.state_dir == tmp_path / "sd"
    assert config.results_dir == tmp_path / "sd" / "results"
