"""The state dir is 0700 and every state file 0600, whatever the umask (issue 12)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tradingd.config import Config
from tradingd.storage.statedir import secure_state_files
from tradingd.supervisor import Supervisor


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)  # the worst case: everything created world-writable unless we say otherwise
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose_paths(state_dir: Path) -> list[str]:
    """Every path under the state dir (results aside) that others could read."""
    found = [] if mode(state_dir) == 0o700 else [f"{state_dir} {mode(state_dir):o}"]
    for path in state_dir.rglob("*"):
        if "results" in path.relative_to(state_dir).parts[:1]:
            continue
        if path.is_symlink():
            continue
        wanted = 0o700 if path.is_dir() else 0o600
        if mode(path) & ~wanted:
            found.append(f"{path.relative_to(state_dir)} {mode(path):o}")
    return found


async def test_state_dir_and_files_are_private_whatever_the_umask(
    make_config: Callable[..., Config], open_umask: None
) -> None:
    config = make_config()
    async with Supervisor(config) as sup:
        assert sup.outcomes is not None
        sup.memory.cache("indicators").put("k", np.arange(10.0))
        sup.memory.models.register("m", {"w": np.arange(3.0)})
        assert loose_paths(config.state_dir) == []
        names = {p.name for p in config.state_dir.iterdir()}
        assert {"api_token", "secret.key", "outcomes.sqlite", "tradingd.lock"} <= names, names
    # After the stop: persisted caches, the journal after its checkpoint.
    assert (config.state_dir / "caches" / "indicators.cache").exists()
    assert loose_paths(config.state_dir) == []


def test_existing_loose_state_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "caches").mkdir(parents=True)
    for path, loose in ((state, 0o755), (state / "caches", 0o777)):
        os.chmod(path, loose)
    for name in ("outcomes.sqlite", "api_token", "caches/indicators.cache"):
        (state / name).write_text("x")
        os.chmod(state / name, 0o644)
    (tmp_path / "elsewhere").write_text("y")
    os.chmod(tmp_path / "elsewhere", 0o644)
    (state / "link").symlink_to(tmp_path / "elsewhere")
    assert secure_state_files(state) == 5  # models/ and quarantine/ are created 0700
    assert loose_paths(state) == []
    assert mode(tmp_path / "elsewhere") == 0o644  # a symlink's target is not ours to change
