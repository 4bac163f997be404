"""The README's command examples work as written in a fresh clone: every path they name exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
COMMANDS = [line.split("#")[0].strip() for block in re.findall(r"```sh\n(.*?)```", README, re.S)
            for line in block.splitlines() if line.startswith(".venv/bin/tradingd ")]
CREATED = {"var/store"}  # outputs the examples create


def test_the_readme_has_tradingd_examples() -> None:
    assert any(" data import " in c for c in COMMANDS) and any(" run-workflow " in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_path_in_an_example_exists(command: str) -> None:
    for word in shlex.split(command)[2:]:
        if word.startswith("-") or "/" not in word or word in CREATED:
            continue
        assert list(REPO.glob(word)), f"README: `{command}` names {word}, which is not in the repository"


@pytest.mark.slow
def test_the_data_import_example_imports(tmp_path: Path) -> None:
    example = next(c for c in COMMANDS if " data import " in c and "--overwrite" not in c)
    args = [tmp_path / "store" if w == "var/store" else w for w in shlex.split(example)[1:]]
    paths = [str(p) for w in args for p in (sorted(REPO.glob(w)) if isinstance(w, str) and "*" in w else [w])]
    done = subprocess.run([sys.executable, "-m", "tradingd", *paths], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "imported 9 symbols" in done.stdout, done.stderr
    again = subprocess.run([sys.executable, "-m", "tradingd", *paths], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 1 and "add --overwrite to replace it" in again.stderr
