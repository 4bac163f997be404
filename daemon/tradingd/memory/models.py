"""ML models: strong while used, weak when idle, reloaded from disk when gone.

``register`` writes the model to the state dir (the framed, authenticated
codec) and holds it strongly. A model nobody has asked for in
``idle_seconds`` is *demoted*: the registry keeps only a weak reference, so if
no container holds the model either, it is collected; the next ``get`` loads it
back from disk. A running container never loses its model: it holds the object
``get`` returned (a strong reference), or leases it with ``use``::

    with registry.use("ml-classifier:AAPL") as model:   # never demoted while inside
        predictions = model.predict(features)

Objects that do not support weak references (plain ``dict``, ``list``, tuples)
cannot be demoted to a weak reference. They are dropped on demotion only when
the registry holds the sole reference (checked with ``sys.getrefcount``);
otherwise they stay strong until the other holder lets go. scikit-learn
estimators and ordinary class instances support weak references.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tradingd.memory.sizeof import sizeof
from tradingd.storage.codec import CodecSettings, read_state, write_state

__all__ = ["ModelRegistry", "ModelUnavailable"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# getrefcount sees: the slot's attribute, our local name, and its own argument.
_SOLE_HOLDER_REFCOUNT = 3


class ModelUnavailable(KeyError):
    """The model was registered but its file is gone or failed its check."""


class _Slot:
    __slots__ = ("last_used", "leases", "load_lock", "nbytes", "path", "strong", "weak")

    def __init__(self, path: Path, now: float) -> None:
        self.path = path
        self.strong: object | None = None
        self.weak: weakref.ref[Any] | None = None
        self.last_used = now
        self.leases = 0
        self.nbytes = 0
        self.load_lock = threading.Lock()

    def live(self) -> object | None:
        if self.strong is not None:
            return self.strong
        return self.weak() if self.weak is not None else None


class ModelRegistry:
    """Persisted models held strongly while used and weakly once idle. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        secret: bytes | Callable[[], bytes],
        idle_seconds: float = 300.0,
        quarantine_dir: Path | None = None,
        settings: CodecSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.idle_seconds = idle_seconds
        # A provider lets the registry exist before the state dir is opened.
        self._secret_source = secret
        self._quarantine = quarantine_dir or self.directory.parent / "quarantine"
        self._settings = settings
        self._clock = clock
        # Re-entrant: a weakref callback may fire (collecting a model) in a
        # thread that already holds the lock.
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self.registrations = 0
        self.demotions = 0
        self.collections = 0
        self.reloads = 0

    def __repr__(self) -> str:
        resident, nbytes = self._resident()
        return f"<ModelRegistry {len(self._slots)} models {resident} resident {nbytes / 2**20:.1f} MB>"

    def __contains__(self, key: str) -> bool:
        return key in self._slots or self._path(key).exists()

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def _secret(self) -> bytes:
        source = self._secret_source
        return source if isinstance(source, bytes) else source()

    def _path(self, key: str) -> Path:
        # Keys are free text ("ml:AAPL:window-3"); the file name keeps a readable
        # prefix and a digest, so no key can escape the directory or collide.
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        readable = _SAFE.sub("_", key).strip("._")[:48] or "model"
        return self.directory / f"{readable}-{digest}.model"

    # --- register / get ------------------------------------------------------

    def register(self, key: str, model: object) -> None:
        """Persist ``model`` under ``key`` (replacing any previous one) and hold it strongly."""
        path = self._path(key)
        write_state(path, model, secret=self._secret, settings=self._settings)
        nbytes = _model_bytes(model)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(path, self._clock())
            slot.strong, slot.weak = model, None
            slot.nbytes = nbytes
            slot.last_used = self._clock()
            self.registrations += 1
        log.debug("registered model %s (%d bytes)", key, nbytes)

    def get(self, key: str) -> Any:
        """The model for ``key`` as a strong reference, reloading it if it was collected.

        Raises ``KeyError`` for an unknown key and :class:`ModelUnavailable` if
        its file is gone or fails its integrity check.
        """
        return self._acquire(key, lease=False)

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """Lease the model: it is never demoted while the block runs."""
        model = self._acquire(key, lease=True)
        try:
            yield model
        finally:
            with self._lock:
                slot = self._slots.get(key)
                if slot is not None:
                    slot.leases -= 1
                    slot.last_used = self._clock()

    def _acquire(self, key: str, *, lease: bool) -> Any:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                path = self._path(key)
                if not path.exists():
                    raise KeyError(key)
                slot = self._slots[key] = _Slot(path, self._clock())  # persisted by an earlier run
            model = self._promote(slot, lease)
            if model is not None:
                return model
        # Load outside the registry lock (it may take a while); the slot's own
        # lock makes concurrent getters of one key load it once.
        with slot.load_lock:
            with self._lock:
                model = self._promote(slot, lease)
                if model is not None:
                    return model
            loaded = read_state(slot.path, secret=self._secret, quarantine_dir=self._quarantine)
            if loaded is None:
                raise ModelUnavailable(key)
            nbytes = slot.nbytes or _model_bytes(loaded)
            with self._lock:
                slot.strong, slot.weak, slot.nbytes = loaded, None, nbytes
                slot.last_used = self._clock()
                slot.leases += 1 if lease else 0
                self.reloads += 1
            log.info("reloaded model %s from %s", key, slot.path.name)
            return loaded

    def _promote(self, slot: _Slot, lease: bool) -> object | None:
        model = slot.live()
        if model is None:
            return None
        slot.strong, slot.weak = model, None
        slot.last_used = self._clock()
        if lease:
            slot.leases += 1
        return model

    # --- eviction ------------------------------------------------------------

    def evict_idle(self, *, force: bool = False) -> int:
        """Demote models idle for ``idle_seconds`` (every unleased one with ``force``).

        Returns the bytes the registry stopped holding strongly; they are
        actually freed once no container holds the model either.
        """
        released = 0
        now = self._clock()
        with self._lock:
            for key, slot in self._slots.items():
                if slot.strong is None or slot.leases > 0:
                    continue
                if not force and now - slot.last_used < self.idle_seconds:
                    continue
                if self._demote(key, slot):
                    released += slot.nbytes
            # A slot whose model is gone is only a file name: drop it (the next use
            # finds the file again), so the slots do not grow with history.
            for key in [k for k, slot in self._slots.items() if slot.leases == 0 and slot.live() is None]:
                del self._slots[key]
        return released

    def keys(self, prefix: str = "") -> list[str]:
        """Keys of the models this registry holds a slot for, those starting with ``prefix``."""
        with self._lock:
            return [key for key in self._slots if key.startswith(prefix)]

    def forget(self, keys: Iterable[str]) -> int:
        """Drop ``keys`` (slot and file; retention removed their run). Returns the files removed.

        A model still leased keeps its slot and file: its run is in use.
        """
        removed = 0
        for key in keys:
            with self._lock:
                slot = self._slots.get(key)
                if slot is not None and slot.leases > 0:
                    continue
                self._slots.pop(key, None)
            try:
                self._path(key).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _demote(self, key: str, slot: _Slot) -> bool:
        model = slot.strong
        try:
            slot.weak = weakref.ref(model, self._collector(key))
        except TypeError:
            if sys.getrefcount(model) > _SOLE_HOLDER_REFCOUNT:
                return False  # someone else holds it and we cannot track it weakly: keep it
            slot.weak = None
            self.collections += 1  # freed as soon as ``model`` goes out of scope
        slot.strong = None
        self.demotions += 1
        del model
        return True

    def _collector(self, key: str) -> Callable[[weakref.ref[Any]], None]:
        def collected(ref: weakref.ref[Any]) -> None:
            with self._lock:
                slot = self._slots.get(key)
                if slot is not None and slot.weak is ref:
                    slot.weak = None
                self.collections += 1

        return collected

    # --- stats ---------------------------------------------------------------

    def _resident(self) -> tuple[int, int]:
        with self._lock:
            live = [slot for slot in self._slots.values() if slot.live() is not None]
            return len(live), sum(slot.nbytes for slot in live)

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-safe."""
        with self._lock:
            resident, nbytes = self._resident()
            return {
                "known": len(self._slots),
                "registrations": self.registrations,
                "resident": resident,
                "resident_bytes": nbytes,
                "strong": sum(1 for s in self._slots.values() if s.strong is not None),
                "leased": sum(1 for s in self._slots.values() if s.leases > 0),
                "demotions": self.demotions,
                "collections": self.collections,
                "reloads": self.reloads,
                "idle_seconds": self.idle_seconds,
            }


def _model_bytes(model: object) -> int:
    """Resident size: the larger of the structural estimate and the pickled size.

    Estimators built on extension types (trees) hide their arrays from
    :func:`sizeof`; their pickle does not.
    """
    estimate = sizeof(model)
    try:
        pickled = len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # an unpicklable model would not have been persisted either
        pickled = 0
    return max(estimate, pickled)
