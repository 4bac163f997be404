"""No state file runs code, and no damaged cache or model file crashes the daemon (issue 12)."""

from __future__ import annotations

import logging
import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tradingd.config import Config
from tradingd.memory.models import ModelRegistry, ModelUnavailable
from tradingd.storage.codec import MAGIC, read_state
from tradingd.storage.legacy import LegacyPickleRefused, load_legacy_pickle
from tradingd.supervisor import Supervisor

SECRET = b"k" * 32


class _Payload:
    """Pickles to ``os.system(command)``: what an attacker would drop into the state dir."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(f"touch {marker}"), protocol=4)


async def test_malicious_cache_pickle_never_runs_at_start(
    make_config: Callable[..., Config], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    marker = tmp_path / "pwned"
    cache_file = config.state_dir / "caches" / "indicators.cache"
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(malicious_pickle(marker))
    with caplog.at_level(logging.WARNING, logger="tradingd.storage.codec"):
        async with Supervisor(config) as sup:
            assert sup.memory.cache("indicators").stats()["entries"] == 0
    assert not marker.exists()
    assert not cache_file.exists() or cache_file.read_bytes().startswith(MAGIC)  # persisted anew on stop
    quarantined = list((config.state_dir / "quarantine").iterdir())
    assert [p.name.split(".cache")[0] for p in quarantined] == ["indicators"]
    lines = [r.getMessage() for r in caplog.records if "indicators.cache" in r.getMessage()]
    assert len(lines) == 1 and "system" in lines[0], lines


def test_malicious_model_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    registry = ModelRegistry(tmp_path / "models", secret=SECRET)
    registry.register("ml:SYM01", {"weights": np.arange(3.0)})
    path = next((tmp_path / "models").iterdir())
    path.write_bytes(malicious_pickle(marker))
    fresh = ModelRegistry(tmp_path / "models", secret=SECRET)
    with pytest.raises(ModelUnavailable):
        fresh.get("ml:SYM01")
    assert not marker.exists()
    assert not path.exists() and len(list((tmp_path / "quarantine").iterdir())) == 1


@pytest.mark.parametrize(
    "value",
    [
        {"a": np.arange(5), "b": np.float64(1.5), "when": pd.Timestamp("2020-01-01", tz="UTC")},
        pd.DataFrame({"x": np.arange(5.0), "s": list("abcde")}, index=pd.date_range("2020", periods=5)),
        pd.Series(np.arange(3.0), name="close"),
        [(1, 2.0, "s", b"b", frozenset({3}), None, True, 1j)],
    ],
    ids=["dict-of-numpy", "frame", "series", "builtins"],
)
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_legacy_numpy_pandas_and_builtins_still_load(value: object, protocol: int) -> None:
    back = load_legacy_pickle(pickle.dumps(value, protocol=protocol))
    assert pickle.dumps(back, protocol=5) == pickle.dumps(value, protocol=5)


@pytest.mark.parametrize(
    "payload",
    [
        (eval, ("1",)),
        (getattr, ("text", "upper")),
        (pd.eval, ("1 + 1",)),
        (np.load, ("/dev/null",)),
        (__import__, ("os",)),
        (pd.HDFStore, ("/tmp/clobbered.h5", "w")),
        (np.memmap, ("/tmp/clobbered.bin", np.uint8, "w+", 0, (1,))),
        (pd.ExcelWriter, ("/tmp/clobbered.xlsx",)),
    ],
    ids=["eval", "getattr", "pandas.eval", "numpy.load", "import", "HDFStore", "memmap", "ExcelWriter"],
)
def test_restricted_unpickler_refuses_callables(payload: tuple[object, tuple[object, ...]]) -> None:
    class Reduce:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return payload

    with pytest.raises(LegacyPickleRefused):
        load_legacy_pickle(pickle.dumps(Reduce(), protocol=4))


def test_random_and_byte_flipped_state_files_are_quarantined(tmp_path: Path) -> None:
    rng = random.Random(12)
    registry = ModelRegistry(tmp_path / "models", secret=SECRET)
    registry.register("m", {"w": np.arange(100.0)})
    good = next((tmp_path / "models").iterdir()).read_bytes()
    samples: list[bytes] = [b"", b"\x80", b"\x80\x04junk", bytes(rng.randrange(256) for _ in range(4096))]
    samples += [b"\x80" + bytes(rng.randrange(256) for _ in range(200)) for _ in range(20)]
    for _ in range(40):
        flipped = bytearray(good)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        samples.append(bytes(flipped))
    for i, data in enumerate(samples):
        path = tmp_path / "caches" / f"c{i}.cache"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        assert read_state(path, secret=SECRET, quarantine_dir=tmp_path / "quarantine") is None, i
        assert not path.exists() or data == b""
