"""Torn writes are impossible: SIGKILL a writer at random moments, the file is old or new."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tradingd.storage.atomic import atomic_create_bytes, atomic_write_bytes, atomic_write_json

SIZE = 4 * 1024 * 1024  # big enough that a kill often lands mid-write

WRITER = f"""
import sys
from tradingd.storage.atomic import atomic_write_bytes
target = sys.argv[1]
n = 0
while True:
    atomic_write_bytes(target, (b"A" if n % 2 else b"B") * {SIZE})
    if n == 0:  # the kill lands inside the loop of writes, however slow the machine
        print("ready", flush=True)
    n += 1
"""


def test_sigkill_at_random_points_never_leaves_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"O" * SIZE)
    rng = random.Random(1234)
    contents: set[bytes] = set()
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env={**os.environ})
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        data = target.read_bytes()
        assert len(data) == SIZE, f"torn file: {len(data)} bytes"
        assert data in (b"O" * SIZE, b"A" * SIZE, b"B" * SIZE), "mixed content"
        contents.add(data[:1])
    # The writer really did replace the file between kills (the test exercised something).
    assert contents & {b"A", b"B"}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"v": float("nan")})
    assert json.loads(target.read_text()) == {"v": 1}

    with pytest.raises(TypeError):
        atomic_write_bytes(target, 12345)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_create_only_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    assert atomic_create_bytes(target, b"first", mode=0o600)
    assert not atomic_create_bytes(target, b"second", mode=0o600)
    assert target.read_bytes() == b"first"
    assert (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]
