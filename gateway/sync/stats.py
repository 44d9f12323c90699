"""Window statistics and Laplace noise with the standard library instead of numpy.

The sync path runs in every gateway (windows close whenever readings arrive), and numpy cost a
gateway without inference ~17 MB resident for a sum, a std, two percentiles and a Laplace draw
per window (12.7 MB for the import, 17.0 MB once a percentile and a Laplace draw ran, measured
2026-11-29 after asyncio, SQLAlchemy and pydantic).

- `exact_sum`: ``math.fsum``, the correctly rounded sum (numpy's pairwise sum can be off by a few
  ulps); `mean` and `population_std` (two passes: the mean, then the mean squared deviation)
  build on it;
- `percentile`: numpy's default ``linear`` method (``np.percentile(values, q)``);
- `LaplaceNoise` draws like ``numpy.random.Generator.laplace`` (inverse CDF of one uniform double,
  U == 0 redrawn) from the operating system's generator (`random.SystemRandom`): the same
  distribution; the stream was never reproducible in the gateway (numpy's generator was seeded
  from OS entropy) and tests may still pass a seeded numpy ``Generator`` wherever a
  `NoiseSource` is taken.

tests/test_sync_stats.py checks all of them against numpy on random data.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterable, Sequence
from typing import Protocol


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


def exact_sum(values: Iterable[float]) -> float:
    """The correctly rounded sum of `values` (``math.fsum``)."""
    return math.fsum(values)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean."""
    return exact_sum(values) / len(values)


def population_std(values: Sequence[float]) -> float:
    """The population standard deviation (ddof 0): sqrt of the mean squared deviation."""
    m = mean(values)
    return math.sqrt(math.fsum((v - m) * (v - m) for v in values) / len(values))


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
    # numpy's form: from the upper neighbour when t >= 0.5, so the result never passes it.
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
