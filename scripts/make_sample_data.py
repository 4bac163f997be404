#!/usr/bin/env python3
"""Generate the bundled sample dataset in daemon/tradingd/data/ (deterministic, seeded).

Ten synthetic symbols, business days 2015-01-01 .. 2024-12-31, daily OHLCV.
Closes follow a regime-switching geometric Brownian motion: a hidden
two-state Markov chain (bull: positive drift, lower volatility; bear: negative
drift, higher volatility) with persistent regimes lasting months, plus a common
market factor, so trend-following strategies have something real to find and
mean-reversion strategies something to lose on. Opens, highs and lows are
derived from the close path with seeded noise; prices are rounded to a 0.01
tick and always satisfy low <= min(open, close) <= max(open, close) <= high.

Run: python scripts/make_sample_data.py [--out DIR] [--check]
The output is byte-identical on every run (gzip mtime fixed at 0), so
``--check`` verifies the shipped files are what this script produces.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tradingd.storage.atomic import atomic_write_bytes

SEED = 20240601
N_SYMBOLS = 10
START, END = "2015-01-01", "2024-12-31"
TRADING_DAYS = 252.0
# (annual drift, annual volatility) per regime, and daily switching probabilities.
REGIMES = {"bull": (0.18, 0.16), "bear": (-0.22, 0.30)}
P_BULL_TO_BEAR = 1 / 160.0
P_BEAR_TO_BULL = 1 / 70.0
MARKET_WEIGHT = 0.5  # share of each symbol's noise variance that is common to all


def _regimes(rng: np.random.Generator, n: int) -> np.ndarray:
    """A persistent two-state Markov chain: True = bull."""
    state = np.empty(n, dtype=bool)
    bull = True
    draws = rng.random(n)
    for i in range(n):  # generation only, not the engine: a per-day loop is fine here
        state[i] = bull
        bull = draws[i] >= P_BULL_TO_BEAR if bull else draws[i] < P_BEAR_TO_BULL
    return state


def _symbol_frame(rng: np.random.Generator, days: pd.DatetimeIndex, market: np.ndarray) -> pd.DataFrame:
    n = len(days)
    bull = _regimes(rng, n)
    mu = np.where(bull, REGIMES["bull"][0], REGIMES["bear"][0]) / TRADING_DAYS
    sigma = np.where(bull, REGIMES["bull"][1], REGIMES["bear"][1]) / np.sqrt(TRADING_DAYS)
    noise = np.sqrt(MARKET_WEIGHT) * market + np.sqrt(1 - MARKET_WEIGHT) * rng.standard_normal(n)
    log_ret = mu - 0.5 * sigma**2 + sigma * noise
    start_price = float(rng.uniform(20.0, 200.0))
    close = start_price * np.exp(np.cumsum(log_ret))
    prev = np.concatenate([[start_price], close[:-1]])
    open_ = prev * np.exp(rng.normal(0.0, 0.25, n) * sigma)
    spread = np.abs(rng.normal(0.0, 0.6, (2, n))) * sigma
    high = np.maximum(open_, close) * np.exp(spread[0])
    low = np.minimum(open_, close) * np.exp(-spread[1])
    ticks = [np.round(x, 2) for x in (open_, high, low, close)]
    o, h, lo, c = ticks
    h = np.maximum.reduce([h, o, c])
    lo = np.maximum(np.minimum.reduce([lo, o, c]), 0.01)
    volume = np.round(rng.lognormal(np.log(1e6), 0.4, n) * (1 + 2 * np.abs(noise) * (~bull + 1) / 2))
    return pd.DataFrame({"timestamp": days.strftime("%Y-%m-%d"), "open": o, "high": h, "low": lo,
                         "close": c, "volume": volume.astype(np.int64)})


def build() -> dict[str, bytes]:
    """File name -> gzip bytes of every sample file."""
    rng = np.random.default_rng(SEED)
    days = pd.bdate_range(START, END)
    market = rng.standard_normal(len(days))
    files: dict[str, bytes] = {}
    for k in range(1, N_SYMBOLS + 1):
        frame = _symbol_frame(rng, days, market)
        text = frame.to_csv(index=False, float_format="%.2f", lineterminator="\n")
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
            gz.write(text.encode("ascii"))
        files[f"SYM{k:02d}.csv.gz"] = buffer.getvalue()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent.parent / "daemon" / "tradingd" / "data"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [n for n, b in files.items() if not (args.out / n).is_file()
                 or (args.out / n).read_bytes() != b]
        for name in stale:
            print(f"differs: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    for name, payload in files.items():
        atomic_write_bytes(args.out / name, payload)
    total = sum(len(b) for b in files.values())
    print(f"wrote {len(files)} files, {total / 1e6:.2f} MB, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
