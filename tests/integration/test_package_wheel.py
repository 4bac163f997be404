"""The installed wheel is `tradingd` and nothing else: no top-level `daemon` package to shadow
python-daemon (PEP 3143), and `import tradingd` works from it alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PROBE = """
import importlib.util, pathlib, sys
import tradingd
target = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(tradingd.__file__).resolve().is_relative_to(target), tradingd.__file__
spec = importlib.util.find_spec("daemon")
locations = [] if spec is None else [*(spec.submodule_search_locations or []), spec.origin or ""]
assert not any(pathlib.Path(p).resolve().is_relative_to(target) for p in locations if p), locations
print(tradingd.__version__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (an in-tree build would leave build/ behind)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "daemon", source / "daemon", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, timeout=150)
    (built,) = out.glob("tradingd-*.whl")
    return built


def test_the_wheel_holds_only_tradingd(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/", 1)[0] for name in archive.namelist()}
    dist_info = {name for name in top if name.endswith(".dist-info")}
    assert top - dist_info == {"tradingd"}, sorted(top)
    assert len(dist_info) == 1


def test_import_tradingd_works_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    assert not (target / "daemon").exists()
    # Only the installed copy on the path, run away from the checkout (whose daemon/ folder would
    # otherwise be importable as a namespace package from the current directory).
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(target)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
