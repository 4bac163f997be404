"""glibc malloc tuning (tradingd.memory.malloc), each checked in a fresh interpreter against glibc itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tradingd.memory.malloc import LEAN_MMAP_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD, malloc_trim_available

pytestmark = pytest.mark.skipif(not malloc_trim_available(), reason="not glibc")

_THRESHOLD_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "MALLOC_ARENA_MAX")


def _run(script: str, *args: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _THRESHOLD_ENV}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env={**clean, **env}, check=True, timeout=60).stdout.split()


ARENAS_SCRIPT = """
import ctypes, ctypes.util, sys, tempfile, threading
from tradingd.memory.malloc import limit_malloc_arenas

print(limit_malloc_arenas(None if sys.argv[1] == "none" else int(sys.argv[1])))
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.malloc.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
started = threading.Barrier(8)
done = threading.Barrier(9)

def work():
    started.wait()  # all alive at once: each new thread asks glibc for an arena
    libc.malloc(4096)
    done.wait()

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
done.wait()
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(out.name).read().count("<heap nr="))
for t in threads:
    t.join()
"""


@pytest.mark.parametrize(("limit", "arenas"), [("2", 2), ("none", None)])
def test_limit_malloc_arenas_caps_the_arenas_threads_get(limit: str, arenas: int | None) -> None:
    out = _run(ARENAS_SCRIPT, limit)
    assert out[0] == str(arenas)
    if arenas is None:
        assert int(out[1]) > 2, "glibc's default: threads get arenas of their own"
    else:
        assert int(out[1]) == arenas, "the main arena and one more, shared by every thread"


def test_malloc_arena_max_from_the_environment_wins() -> None:
    out = _run(ARENAS_SCRIPT, "2", MALLOC_ARENA_MAX="4")
    assert out == ["4", "4"]


THRESHOLDS_SCRIPT = """
import ctypes, ctypes.util, sys
from tradingd.memory.malloc import pin_malloc_thresholds

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

print({"pin": pin_malloc_thresholds, "lean": lambda: pin_malloc_thresholds(384 << 20)}.get(sys.argv[1], lambda: None)())
libc.free(libc.malloc(8 << 20))  # an mmap-ed block freed: glibc's dynamic threshold would now be 8 MiB
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)
print("mmap" if libc.mallinfo2().hblkhd - mapped >= 4 << 20 else "arena")
libc.free(block)
"""


def test_pinned_thresholds_do_not_move_when_a_large_block_is_freed() -> None:
    # glibc's own behaviour first, so the test shows what pinning changes: after a freed 8 MiB
    # block, a 4 MiB one comes from an arena (and stays there once freed).
    assert _run(THRESHOLDS_SCRIPT, "dynamic") == ["None", "arena"]
    assert _run(THRESHOLDS_SCRIPT, "pin") == [f"({MMAP_THRESHOLD},", f"{TRIM_THRESHOLD})", "mmap"]


def test_a_tight_limit_pins_a_lower_mmap_threshold() -> None:
    assert _run(THRESHOLDS_SCRIPT, "lean")[:2] == [f"({LEAN_MMAP_THRESHOLD},", f"{TRIM_THRESHOLD})"]


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "65536"}, {"MALLOC_TRIM_THRESHOLD_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}])
def test_thresholds_from_the_environment_win(env: dict[str, str]) -> None:
    assert _run(THRESHOLDS_SCRIPT, "pin", **env)[0] == "None"
