"""ManagedCache against cachetools.TTLCache behind a lock, on the same key stream.

The stream is a get/put mix over numpy values: a Zipf-distributed key
popularity (hot keys hit, the tail misses), every miss followed by a put of
that key's value, plus 10 % unconditional puts (refreshes). Every cache has a
60 s TTL. Two scenarios, each with the same eviction rule on both sides so the
miss rates match and the work is the same:

- ``entries``: at most 1,000 entries. ManagedCache still measures every value
  and charges it to a (non-binding) 1 GB byte budget; the peer is a plain
  ``TTLCache(maxsize=1000)``.
- ``bytes``: a 64 MB byte budget that binds. The peer is
  ``TTLCache(maxsize=64 MB, getsizeof=nbytes)``.

Single thread and 4 threads (same total operations, split), best of 5,
contenders interleaved. Target: ManagedCache >= 2x the peer's throughput.

Run with the bench venv (cachetools is not a runtime dependency):

    .venv-bench/bin/python bench/cache_vs_cachetools.py [--ops 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tradingd.memory.cache import CacheBudget, ManagedCache
from tradingd.storage.atomic import atomic_write_text

try:
    import cachetools
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("cachetools is missing: run with .venv-bench/bin/python (pip install cachetools)")

RESULTS = Path(__file__).resolve().parent / "results" / "cache_vs_cachetools.md"
MAX_ENTRIES = 1_000
TTL = 60.0
MB = 1024 * 1024
BYTES_BUDGET = 64 * MB


def make_stream(ops: int, keys: int, seed: int = 7) -> tuple[list[int], list[bool], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    stream = (rng.zipf(1.2, ops) % keys).tolist()
    forced_put = (rng.random(ops) < 0.10).tolist()
    # 8-256 KB values, like indicator columns of a few thousand bars
    values = [np.zeros(int(n)) for n in rng.integers(1_000, 32_000, keys)]
    return stream, forced_put, values


Get = Callable[[int], Any]
Put = Callable[[int, Any], object]


def drive(get: Get, put: Put, stream: list[int], forced: list[bool], values: list[np.ndarray]) -> int:
    misses = 0
    for key, force in zip(stream, forced, strict=True):
        if force:
            put(key, values[key])
            continue
        if get(key) is None:
            misses += 1
            put(key, values[key])
    return misses


Factory = Callable[[], tuple[Get, Put, Callable[[], dict[str, Any]]]]


def ours(*, bytes_bound: bool) -> tuple[Get, Put, Callable[[], dict[str, Any]]]:
    if bytes_bound:
        cache = ManagedCache("bench", budget=CacheBudget(BYTES_BUDGET), ttl=TTL)
    else:
        cache = ManagedCache("bench", budget=CacheBudget(1024 * MB), max_entries=MAX_ENTRIES, ttl=TTL)
    return cache.get, cache.put, cache.stats


def peer(*, bytes_bound: bool) -> tuple[Get, Put, Callable[[], dict[str, Any]]]:
    if bytes_bound:
        cache: cachetools.TTLCache[int, Any] = cachetools.TTLCache(
            maxsize=BYTES_BUDGET, ttl=TTL, getsizeof=lambda v: int(v.nbytes)
        )
    else:
        cache = cachetools.TTLCache(maxsize=MAX_ENTRIES, ttl=TTL)
    lock = threading.Lock()

    def get(key: int) -> Any:
        with lock:
            return cache.get(key)

    def put(key: int, value: Any) -> None:
        with lock:
            try:
                cache[key] = value
            except ValueError:  # value larger than the whole cache
                pass

    return get, put, lambda: {"entries": len(cache)}


def run(
    factory: Factory,
    stream: list[int],
    forced: list[bool],
    values: list[np.ndarray],
    threads: int,
) -> tuple[float, int, dict[str, Any]]:
    get, put, stats = factory()
    chunks = [(stream[i::threads], forced[i::threads]) for i in range(threads)]
    misses = [0] * threads

    def worker(n: int) -> None:
        misses[n] = drive(get, put, chunks[n][0], chunks[n][1], values)

    started = time.perf_counter()
    if threads == 1:
        worker(0)
    else:
        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    elapsed = time.perf_counter() - started
    return len(stream) / elapsed, sum(misses), stats()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    stream, forced, values = make_stream(args.ops, args.keys)
    scenarios: dict[str, dict[str, Factory]] = {
        "entries": {"ManagedCache": lambda: ours(bytes_bound=False), "TTLCache": lambda: peer(bytes_bound=False)},
        "bytes": {"ManagedCache": lambda: ours(bytes_bound=True), "TTLCache": lambda: peer(bytes_bound=True)},
    }
    rows: list[tuple[str, int, float, float, float, float, float]] = []
    for scenario, contenders in scenarios.items():
        for threads in (1, 4):
            best: dict[str, tuple[float, int, dict[str, Any]]] = {}
            for _ in range(args.repeat):
                for name, factory in contenders.items():  # interleaved, so drift hits both alike
                    result = run(factory, stream, forced, values, threads)
                    if name not in best or result[0] > best[name][0]:
                        best[name] = result
            (ours_ops, ours_miss, ours_stats), (peer_ops, peer_miss, _) = best["ManagedCache"], best["TTLCache"]
            ratio = ours_ops / peer_ops
            rows.append(
                (scenario, threads, ours_ops, peer_ops, ratio, ours_miss / len(stream), peer_miss / len(stream))
            )
            print(
                f"{scenario:>7}  {threads} thread(s)  ManagedCache {ours_ops / 1e3:6.0f} k ops/s  "
                f"TTLCache+lock {peer_ops / 1e3:6.0f} k ops/s  {ratio:5.2f}x  "
                f"miss {ours_miss / len(stream):.1%} / {peer_miss / len(stream):.1%}  "
                f"(ours: {ours_stats['entries']} entries, {ours_stats['bytes'] / MB:.1f} MB)"
            )
    lines = [
        "# ManagedCache vs cachetools.TTLCache",
        "",
        f"{args.ops:,} operations over {args.keys:,} keys (Zipf 1.2), numpy values of 8-256 KB; every miss is "
        f"followed by a put, plus 10 % unconditional puts; TTL {TTL:.0f} s. `entries`: at most {MAX_ENTRIES:,} "
        "entries (ManagedCache still measures every value against a non-binding 1 GB budget); `bytes`: a "
        f"{BYTES_BUDGET // MB} MB byte budget (peer: `TTLCache(getsizeof=nbytes)`). Peer calls go through a "
        f"`threading.Lock`. Best of {args.repeat}, interleaved. Target ≥ 2×.",
        "",
        "| scenario | threads | ManagedCache ops/s | TTLCache + lock ops/s | ratio | miss rate (ours / peer) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, threads, ours_rate, peer_rate, ratio, ours_miss_rate, peer_miss_rate in rows:
        lines.append(
            f"| {scenario} | {threads} | {ours_rate:,.0f} | {peer_rate:,.0f} | {ratio:.2f}× | "
            f"{ours_miss_rate:.1%} / {peer_miss_rate:.1%} |"
        )
    lines += ["", f"Python {sys.version.split()[0]}, cachetools {cachetools.__version__}, numpy {np.__version__}.", ""]
    atomic_write_text(RESULTS, "\n".join(lines))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
