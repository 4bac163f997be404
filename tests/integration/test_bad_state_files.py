"""Damaged token and secret files stop start-up with exit 2 and one line naming the file (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tradingd.auth import GENERATED_TOKEN_LENGTH, TokenError, check_token, resolve_api_token
from tradingd.config import Config
from tradingd.storage.codec import SecretError, load_or_create_secret

REPO = Path(__file__).resolve().parents[2]
GOOD_TOKEN = "0123456789abcdef" * 4


def damage(kind: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        path.write_text(GOOD_TOKEN[:40] + "\n")
    elif kind == "non-utf8":
        path.write_bytes(b"\xff\xfe" + os.urandom(30))
    elif kind == "malformed":
        path.write_text("Z" * GENERATED_TOKEN_LENGTH)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "unreadable":
        path.mkdir()  # a directory where the file should be: unreadable as a file, even for root
    elif kind == "wrong-length":
        path.write_bytes(os.urandom(31))


@pytest.mark.parametrize("kind", ["truncated", "non-utf8", "malformed", "empty", "unreadable"])
def test_damaged_state_token_is_one_token_error(make_config: Callable[..., Config], kind: str) -> None:
    config = make_config()
    path = config.state_dir / "api_token"
    damage(kind, path)
    with pytest.raises(TokenError) as caught:
        resolve_api_token(config, config.state_dir)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_generated_token_has_a_fixed_shape_and_is_read_back(make_config: Callable[..., Config]) -> None:
    config = make_config()
    env_token = os.environ.pop("TRADINGD_API_TOKEN", None)
    try:
        token = resolve_api_token(config, config.state_dir)
        assert len(token) == GENERATED_TOKEN_LENGTH and set(token) <= set("0123456789abcdef")
        assert resolve_api_token(config, config.state_dir) == token
    finally:
        if env_token is not None:
            os.environ["TRADINGD_API_TOKEN"] = env_token


@pytest.mark.parametrize(
    ("token", "problem"),
    [("", "empty"), ("short", "8-4096"), ("with space inside", "8-4096"), ("héllo-wörld-token", "8-4096"),
     ("line-one\nline-two", "one line")],
)
def test_operator_token_must_be_usable_in_a_header(token: str, problem: str) -> None:
    with pytest.raises(TokenError, match=problem):
        check_token(token, "http.token_file /etc/tradingd/token")


def test_operator_token_file_damage(make_config: Callable[..., Config], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    damage("non-utf8", token_file)
    config = make_config(http={"token_file": str(token_file)})
    with pytest.raises(TokenError, match="not UTF-8"):
        resolve_api_token(config, config.state_dir)


@pytest.mark.parametrize("kind", ["wrong-length", "empty", "unreadable"])
def test_damaged_secret_is_one_secret_error(tmp_path: Path, kind: str) -> None:
    damage(kind, tmp_path / "secret.key")
    with pytest.raises(SecretError) as caught:
        load_or_create_secret(tmp_path)
    assert str(tmp_path / "secret.key") in str(caught.value) and "\n" not in str(caught.value)


def run_daemon(config_dict: Callable[..., dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(logging={"level": "WARNING"})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_API_TOKEN")}
    return subprocess.run([sys.executable, "-m", "tradingd", "run", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind"), [("api_token", "truncated"), ("secret.key", "wrong-length")])
def test_daemon_exits_2_with_one_line(
    config_dict: Callable[..., dict[str, Any]], tmp_path: Path, name: str, kind: str
) -> None:
    path = tmp_path / "state" / name
    damage(kind, path)
    result = run_daemon(config_dict, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if str(path) in line]
    assert len(lines) == 1 and lines[0].startswith("tradingd: "), result.stderr
