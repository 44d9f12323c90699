"""Window statistics and Laplace noise without numpy, bit for bit what numpy computed before.

The sync path runs in every gateway (windows close whenever readings arrive), and numpy cost the
gateway ~19 MB resident for a sum, a std, two percentiles and a Laplace draw per window. These
functions reproduce numpy's float64 results exactly (tests/test_sync_stats.py compares them
bit for bit on random data):

- `pairwise_sum`: numpy's ``add.reduce`` of a contiguous float64 array (pairwise summation in
  blocks of 128 with eight accumulators, halves split on multiples of 8; identity 0.0 first);
- `mean`, `population_std`: ``ndarray.mean()`` and ``ndarray.std()`` (two passes: the mean,
  then the pairwise sum of squared deviations, divided by n);
- `percentile`: ``np.percentile(values, q)`` with the default ``linear`` method, including
  numpy's interpolation that counts back from the upper neighbour when the fraction is >= 0.5.

`LaplaceNoise` draws like ``numpy.random.Generator.laplace`` (inverse CDF of one uniform double,
U == 0 redrawn) from the operating system's generator (`random.SystemRandom`): the same
distribution; the stream was never reproducible in the gateway (numpy's generator was seeded
from OS entropy) and tests may still pass a seeded numpy ``Generator`` wherever a
`NoiseSource` is taken.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterable, Sequence
from typing import Protocol

_BLOCK = 128  # numpy's PW_BLOCKSIZE


class NoiseSource(Protocol):
    """Anything with numpy's ``Generator.laplace(loc, scale)`` for scalars."""

    def laplace(self, loc: float, scale: float) -> float: ...


class LaplaceNoise:
    """Laplace draws from the OS's random source (`random.SystemRandom`)."""

    def __init__(self, source: random.Random | None = None) -> None:
        self._random = (source or random.SystemRandom()).random

    def laplace(self, loc: float, scale: float) -> float:
        while True:
            u = self._random()
            if u >= 0.5:
                return loc - scale * math.log(2.0 - u - u)
            if u > 0.0:
                return loc + scale * math.log(u + u)


def as_float_array(values: Iterable[float]) -> array[float]:
    """`values` as an ``array('d')`` (no copy when it is one already)."""
    if isinstance(values, array) and values.typecode == "d":
        return values
    return array("d", values)


def _pairwise(a: Sequence[float], lo: int, n: int) -> float:
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= _BLOCK:
        r0, r1, r2, r3, r4, r5, r6, r7 = a[lo : lo + 8]
        end = lo + n - n % 8
        for i in range(lo + 8, end, 8):
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for i in range(end, lo + n):
            res += a[i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(a, lo, half) + _pairwise(a, lo + half, n - half)


def pairwise_sum(values: Sequence[float]) -> float:
    """``float(np.asarray(values, dtype=np.float64).sum())``."""
    return 0.0 + _pairwise(values, 0, len(values))


def mean(values: Sequence[float]) -> float:
    """``ndarray.mean()``."""
    return pairwise_sum(values) / len(values)


def population_std(values: Sequence[float]) -> float:
    """``ndarray.std()`` (ddof 0): sqrt of the mean squared deviation from the mean."""
    m = mean(values)
    squares = array("d", ((v - m) * (v - m) for v in values))  # no list of floats
    return math.sqrt(pairwise_sum(squares) / len(values))


def percentile(ordered: Sequence[float], q: float) -> float:
    """``np.percentile(values, q)`` (method ``linear``) of the *sorted* `ordered`."""
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    index = (n - 1) * (q / 100)
    below = math.floor(index)
    if index >= n - 1:
        return float(ordered[n - 1])
    if index < 0:
        return float(ordered[0])
    a, b = float(ordered[below]), float(ordered[below + 1])
    t = index - below
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t
