"""ModelRegistry: strong while used, weak when idle, reloaded from disk."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from tradingd.memory.models import ModelRegistry, ModelUnavailable

SECRET = b"s" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def trained_model() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return LogisticRegression().fit(x, y), rng.normal(size=(50, 5))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(tmp_path: Path, clock: FakeClock) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models", secret=SECRET, idle_seconds=60, clock=clock)


def test_register_persists_and_holds_strongly(registry: ModelRegistry, tmp_path: Path) -> None:
    model, _ = trained_model()
    ref = weakref.ref(model)
    registry.register("ml:AAPL", model)
    assert len(list((tmp_path / "models").iterdir())) == 1
    del model
    gc.collect()
    assert ref() is not None
    assert registry.get("ml:AAPL") is ref()
    stats = registry.stats()
    assert stats["resident"] == 1 and stats["resident_bytes"] > 0 and stats["registrations"] == 1


def test_idle_unreferenced_model_is_collected_and_reloaded_equal(registry: ModelRegistry, clock: FakeClock) -> None:
    model, x = trained_model()
    expected = model.predict_proba(x)
    ref = weakref.ref(model)
    registry.register("ml:AAPL", model)
    del model
    clock.now += 30
    assert registry.evict_idle() == 0  # not idle long enough
    clock.now += 31
    assert registry.evict_idle() > 0
    gc.collect()
    assert ref() is None
    stats = registry.stats()
    assert (stats["demotions"], stats["collections"], stats["resident"]) == (1, 1, 0)
    reloaded = registry.get("ml:AAPL")
    assert registry.stats()["reloads"] == 1
    np.testing.assert_array_equal(reloaded.predict_proba(x), expected)


def test_model_held_by_a_container_is_kept(registry: ModelRegistry, clock: FakeClock) -> None:
    model, x = trained_model()
    registry.register("ml:AAPL", model)
    in_use = registry.get("ml:AAPL")  # a running container's reference
    del model
    clock.now += 120
    registry.evict_idle()
    gc.collect()
    assert registry.stats()["demotions"] == 1 and registry.stats()["collections"] == 0
    assert registry.get("ml:AAPL") is in_use  # same object, no reload
    assert registry.stats()["reloads"] == 0
    assert in_use.predict(x).shape == (50,)


def test_leased_model_is_never_demoted(registry: ModelRegistry, clock: FakeClock) -> None:
    model, _ = trained_model()
    registry.register("ml:AAPL", model)
    del model
    with registry.use("ml:AAPL") as leased:
        clock.now += 1000
        assert registry.evict_idle(force=True) == 0
        assert registry.stats()["leased"] == 1
        ref = weakref.ref(leased)
        del leased
    # the lease refreshed last use: still not idle right after the block
    assert registry.evict_idle() == 0
    clock.now += 61
    assert registry.evict_idle() > 0
    gc.collect()
    assert ref() is None


def test_non_weakrefable_models(registry: ModelRegistry, clock: FakeClock) -> None:
    registry.register("plain", {"weights": np.arange(1000)})
    held = {"weights": np.arange(10)}
    registry.register("held", held)
    clock.now += 120
    registry.evict_idle()
    stats = registry.stats()
    # "plain" had no other holder: dropped; "held" is referenced elsewhere: kept strong
    assert stats["demotions"] == 1 and stats["strong"] == 1
    assert registry.get("held") is held
    np.testing.assert_array_equal(registry.get("plain")["weights"], np.arange(1000))
    assert registry.stats()["reloads"] == 1


def test_models_survive_a_restart(tmp_path: Path) -> None:
    model, x = trained_model()
    first = ModelRegistry(tmp_path / "models", secret=SECRET)
    first.register("ml:MSFT", model)
    second = ModelRegistry(tmp_path / "models", secret=SECRET)
    assert "ml:MSFT" in second
    np.testing.assert_array_equal(second.get("ml:MSFT").predict(x), model.predict(x))
    assert second.stats()["reloads"] == 1


def test_unknown_and_tampered(registry: ModelRegistry, clock: FakeClock, tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        registry.get("nope")
    model, _ = trained_model()
    registry.register("m", model)
    del model
    clock.now += 120
    registry.evict_idle()
    gc.collect()
    path = next((tmp_path / "models").iterdir())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable):
        registry.get("m")
    assert any((tmp_path / "quarantine").iterdir())


def test_concurrent_gets_reload_once(registry: ModelRegistry, clock: FakeClock) -> None:
    model, _ = trained_model()
    registry.register("m", model)
    del model
    clock.now += 120
    registry.evict_idle()
    gc.collect()
    barrier = threading.Barrier(10)
    got: list[object] = []

    def getter() -> None:
        barrier.wait()
        got.append(registry.get("m"))

    threads = [threading.Thread(target=getter) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.stats()["reloads"] == 1
    assert all(g is got[0] for g in got)


def test_key_cannot_escape_the_directory(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.register("../../etc/passwd", [1, 2, 3])
    files = list((tmp_path / "models").iterdir())
    assert len(files) == 1 and files[0].parent == tmp_path / "models"
