"""How much of a sweep's best result is luck: PSR, DSR and PBO (docs/engine.md, "Overfitting statistics").

- **Probabilistic Sharpe Ratio** (Bailey & López de Prado, 2012/2014): the
  probability that the true per-period Sharpe ratio exceeds a benchmark,
  given the estimate ``sr`` from ``T`` returns with skewness ``g3`` and
  (non-excess) kurtosis ``g4``::

      PSR(sr*) = Φ( (sr - sr*) √(T - 1) / √(1 - g3 sr + (g4 - 1) / 4 sr²) )

- **Deflated Sharpe Ratio** (Bailey & López de Prado, 2014): the PSR against
  the Sharpe ratio the best of ``N`` trials would show by luck alone, with
  ``V`` the variance of the trials' Sharpe ratios and γ the Euler–Mascheroni
  constant::

      E[max SR] = √V ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))
      DSR = PSR(E[max SR])

- **Probability of Backtest Overfitting** by combinatorially symmetric
  cross-validation (Bailey, Borwein, López de Prado & Zhu, 2015): the bars
  are cut into ``S`` blocks; for each of the C(S, S/2) ways to pick half of
  them as in-sample, the combination with the best in-sample Sharpe ratio is
  ranked out of sample (on the other half), ``ω = rank / (N + 1)``,
  ``λ = ln(ω / (1 - ω))``; PBO is the share of splits with ``λ ≤ 0`` (the
  in-sample winner did no better than the median out of sample).

Everything works from :class:`BlockMoments`: per block and combination, the
number of returns and the sums of their first four powers. A Sharpe ratio
over any union of blocks, and the skewness and kurtosis of the whole series,
follow exactly from these sums, so a sweep of any size is reduced chunk by
chunk to an array of ``S × 4 × N`` numbers and the returns themselves are
never held all at once. Sharpe ratios here are per period (per bar), with the
sample standard deviation (``ddof = 1``), as the engine's before annualising.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_BLOCKS",
    "EULER_MASCHERONI",
    "BlockMoments",
    "Cscv",
    "SelectionStats",
    "bar_returns",
    "block_bounds",
    "cscv",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "probabilistic_sharpe_ratio",
    "selection_statistics",
]

Array = NDArray[np.float64]

EULER_MASCHERONI = 0.5772156649015329
DEFAULT_BLOCKS = 16
_NORMAL = NormalDist()
# Dispersion below this is rounding noise, not risk (as in trading.metrics).
_NOISE_STD = 1e-12
_CACHE_BYTES = 2**20


def probabilistic_sharpe_ratio(sr: float, benchmark: float, n_obs: int, skew: float, kurtosis: float) -> float:
    """P(true per-period Sharpe > ``benchmark``); ``kurtosis`` is non-excess (3 for a normal)."""
    if n_obs < 2:
        return 0.5
    variance = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if not variance > 0:  # possible with extreme sample moments; the estimate has no spread to speak of
        return 1.0 if sr > benchmark else 0.0 if sr < benchmark else 0.5
    return _NORMAL.cdf((sr - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """The Sharpe ratio the best of ``n_trials`` independent trials is expected to show by luck.

    0 for a single trial (nothing was picked) or no spread between trials.
    """
    if n_trials < 2 or not variance > 0:
        return 0.0
    a = _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
    b = _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(variance) * ((1.0 - EULER_MASCHERONI) * a + EULER_MASCHERONI * b)


def deflated_sharpe_ratio(sr: float, n_obs: int, skew: float, kurtosis: float, *, n_trials: int,
                          trial_variance: float) -> float:
    """The PSR of ``sr`` against :func:`expected_max_sharpe` of the trials."""
    return probabilistic_sharpe_ratio(sr, expected_max_sharpe(n_trials, trial_variance), n_obs, skew, kurtosis)


def block_bounds(n_bars: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` contiguous [start, stop) bar ranges of (nearly) equal length covering ``n_bars``."""
    if n_blocks < 1 or n_bars < n_blocks:
        raise ValueError(f"cannot cut {n_bars} bars into {n_blocks} blocks")
    edges = [n_bars * i // n_blocks for i in range(n_blocks + 1)]
    return list(pairwise(edges))


def bar_returns(equity: Array, initial_equity: float) -> Array:
    """Per-bar returns of equity curves (bars × k), as the engine's metrics define them.

    ``r[t] = E[t] / E[t-1] - 1`` with ``E[-1] = initial_equity``; 0 after a ruin.
    """
    equity = np.asarray(equity, dtype=np.float64)
    if equity.ndim == 1:
        equity = equity[:, None]
    previous = np.empty_like(equity)
    previous[0] = initial_equity
    previous[1:] = equity[:-1]
    out = np.zeros_like(equity)
    np.divide(equity, previous, out=out, where=previous > 0)
    out -= 1.0
    out[previous <= 0] = 0.0
    return out


@dataclass(frozen=True)
class BlockMoments:
    """Per block and combination: the count and the sums of r, r², r³, r⁴ of its per-bar returns.

    ``count`` has shape (S,), ``sums`` shape (4, S, N): ``sums[p - 1, b, j]``
    is the sum of the p-th powers of combination j's returns in block b.
    """

    count: NDArray[np.int64]
    sums: Array

    @property
    def n_blocks(self) -> int:
        return int(self.count.shape[0])

    @property
    def n_combinations(self) -> int:
        return int(self.sums.shape[2])

    @property
    def n_obs(self) -> int:
        return int(self.count.sum())

    def __repr__(self) -> str:
        return f"<BlockMoments {self.n_combinations} combinations x {self.n_blocks} blocks, {self.n_obs} bars>"

    @classmethod
    def from_returns(cls, returns: Array, n_blocks: int) -> BlockMoments:
        """Reduce per-bar returns (bars × k) to block moments."""
        returns = np.asarray(returns, dtype=np.float64)
        if returns.ndim == 1:
            returns = returns[:, None]
        bounds = block_bounds(returns.shape[0], n_blocks)
        count = np.array([stop - start for start, stop in bounds], dtype=np.int64)
        sums = np.empty((4, n_blocks, returns.shape[1]))
        power = np.ones_like(returns)
        for p in range(4):
            power *= returns
            for b, (start, stop) in enumerate(bounds):
                sums[p, b] = power[start:stop].sum(axis=0)
        return cls(count, sums)

    @classmethod
    def concat(cls, parts: Sequence[BlockMoments]) -> BlockMoments:
        """Join moments of the same bars computed for different combinations (chunks of a sweep)."""
        if not parts:
            raise ValueError("no block moments to join")
        count = parts[0].count
        if any(not np.array_equal(p.count, count) for p in parts):
            raise ValueError("block moments of different bars cannot be joined")
        return cls(count, np.concatenate([p.sums for p in parts], axis=2))

    def select(self, columns: Sequence[int] | NDArray[np.intp]) -> BlockMoments:
        """The moments of some combinations only."""
        return BlockMoments(self.count, self.sums[:, :, np.asarray(columns, dtype=np.intp)])

    def sharpe(self) -> Array:
        """Per-period Sharpe ratio of every combination over all blocks."""
        return _sharpe(float(self.n_obs), self.sums[0].sum(axis=0), self.sums[1].sum(axis=0))

    def shape_moments(self) -> tuple[Array, Array]:
        """Skewness and non-excess kurtosis of every combination's returns (population moments)."""
        n = float(self.n_obs)
        s1, s2, s3, s4 = (self.sums[p].sum(axis=0) / n for p in range(4))
        m2 = s2 - s1 * s1
        m3 = s3 - 3 * s1 * s2 + 2 * s1**3
        m4 = s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1**4
        flat = m2 <= _NOISE_STD**2
        safe = np.where(flat, 1.0, m2)
        skew = np.where(flat, 0.0, m3 / safe**1.5)
        kurtosis = np.where(flat, 3.0, m4 / (safe * safe))
        return skew, kurtosis


def _sharpe(n: Array | float, s1: Array, s2: Array) -> Array:
    """mean / sample std from count and sums; 0 where the spread is noise-level."""
    n_arr = np.asarray(n, dtype=np.float64)
    mean = s1 / n_arr
    var = np.maximum(s2 - s1 * mean, 0.0) / np.maximum(n_arr - 1.0, 1.0)
    std = np.sqrt(var)
    out = np.zeros(np.broadcast(mean, std).shape)
    np.divide(mean, std, out=out, where=std > _NOISE_STD)
    return out


def _block_sums(sums: Array, chosen: NDArray[np.intp]) -> Array:
    """Row r: the sum of ``sums[b]`` over the blocks ``chosen[r]`` (splits × combinations).

    Plain element-wise adds rather than a matrix product: BLAS would spread
    small products over threads, which is slower on a busy machine.
    """
    out = sums[chosen[:, 0]]
    for j in range(1, chosen.shape[1]):
        out += sums[chosen[:, j]]
    return out


def _add_split_sharpe(out: Array, n: Array, s1: Array, s2: Array) -> None:
    """``out += `` the Sharpe ratio of each (split row, combination); ``s2`` is overwritten.

    mean / sample std = s1 √((n - 1) / n) / √(n s2 - s1²), done in place
    because these arrays are the bulk of the work (splits × combinations).
    """
    col = n[:, None]
    s2 *= col
    s2 -= np.square(s1)
    np.maximum(s2, 0.0, out=s2)
    np.sqrt(s2, out=s2)
    ratio = np.zeros_like(s1)
    noise = (_NOISE_STD * np.sqrt(np.maximum(n * (n - 1.0), 0.0)))[:, None]
    np.divide(s1, s2, out=ratio, where=s2 > noise)
    ratio *= np.sqrt(np.maximum(n - 1.0, 0.0) / np.maximum(n, 1.0))[:, None]
    out += ratio


@dataclass(frozen=True)
class Cscv:
    """The outcome of combinatorially symmetric cross-validation."""

    pbo: float
    logits: Array  # one λ per split
    n_splits: int
    n_blocks: int
    n_combinations: int


def cscv(groups: Sequence[BlockMoments], *, budget_bytes: int = 64 * 2**20) -> Cscv:
    """PBO over ``groups`` (one per symbol) of the same combinations, S blocks each.

    A combination's performance on a split is its Sharpe ratio over the split's
    blocks, averaged over the groups (one group: its own Sharpe ratio). Splits
    are processed in chunks so the (splits × combinations) temporaries stay
    within ``budget_bytes``.
    """
    if not groups:
        raise ValueError("no block moments")
    n_blocks, n_combos = groups[0].n_blocks, groups[0].n_combinations
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"CSCV needs an even number of blocks >= 2, got {n_blocks}")
    if any(g.n_blocks != n_blocks or g.n_combinations != n_combos for g in groups):
        raise ValueError("every group needs the same blocks and combinations")
    splits = np.array(list(combinations(range(n_blocks), n_blocks // 2)), dtype=np.intp)
    # Temporaries per split row: a few (combinations,) float arrays. Like the engine's chunks,
    # the budget is an upper bound: arrays of about a MiB stay in cache, larger ones get slower.
    per_row = max(1, 6 * n_combos * 8)
    step = max(1, min(budget_bytes, 6 * _CACHE_BYTES) // per_row)
    totals = [(float(g.count.sum()), g.sums[0].sum(axis=0), g.sums[1].sum(axis=0)) for g in groups]
    logits = np.empty(len(splits))
    for start in range(0, len(splits), step):
        chosen_blocks = splits[start:start + step]
        rows = np.arange(len(chosen_blocks))
        perf_in = np.zeros((len(chosen_blocks), n_combos))
        perf_out = np.zeros((len(chosen_blocks), n_combos))
        for g, (n_all, s1_all, s2_all) in zip(groups, totals, strict=True):
            n_in = g.count[chosen_blocks].sum(axis=1).astype(np.float64)
            s1_in, s2_in = _block_sums(g.sums[0], chosen_blocks), _block_sums(g.sums[1], chosen_blocks)
            # Out of sample is the complement: the totals minus the in-sample sums.
            s1_out, s2_out = s1_all - s1_in, s2_all - s2_in
            _add_split_sharpe(perf_in, n_in, s1_in, s2_in)
            _add_split_sharpe(perf_out, n_all - n_in, s1_out, s2_out)
        best = np.argmax(perf_in, axis=1)  # ties: the first combination, as a sorted ranking would pick
        chosen = perf_out[rows, best][:, None]
        below = np.count_nonzero(perf_out < chosen, axis=1)
        equal = np.count_nonzero(perf_out == chosen, axis=1)
        rank = below + (equal + 1) / 2.0  # average rank among ties, 1 = worst
        omega = rank / (n_combos + 1)
        logits[start:start + len(chosen_blocks)] = np.log(omega / (1.0 - omega))
    # One combination: nothing was selected, so nothing can be overfit by selection.
    pbo = float(np.mean(logits <= 0.0)) if n_combos > 1 else math.nan
    return Cscv(pbo=pbo, logits=logits, n_splits=len(splits), n_blocks=n_blocks, n_combinations=n_combos)


@dataclass(frozen=True)
class SelectionStats:
    """PSR and DSR of the selected combination among ``n_trials`` (per-period Sharpe ratios)."""

    sharpe: float
    n_obs: int
    skew: float
    kurtosis: float
    n_trials: int
    trial_variance: float
    expected_max_sharpe: float
    psr: float  # against a Sharpe ratio of 0
    dsr: float  # against expected_max_sharpe


def selection_statistics(moments: BlockMoments, selected: int) -> SelectionStats:
    """PSR and DSR of combination ``selected``, every combination in ``moments`` counting as a trial."""
    sharpes = moments.sharpe()
    skews, kurtoses = moments.shape_moments()
    n_trials = moments.n_combinations
    variance = float(np.var(sharpes, ddof=1)) if n_trials > 1 else 0.0
    sr, skew, kurt = float(sharpes[selected]), float(skews[selected]), float(kurtoses[selected])
    expected = expected_max_sharpe(n_trials, variance)
    return SelectionStats(
        sharpe=sr, n_obs=moments.n_obs, skew=skew, kurtosis=kurt, n_trials=n_trials, trial_variance=variance,
        expected_max_sharpe=expected,
        psr=probabilistic_sharpe_ratio(sr, 0.0, moments.n_obs, skew, kurt),
        dsr=probabilistic_sharpe_ratio(sr, expected, moments.n_obs, skew, kurt),
    )
