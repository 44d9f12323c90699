"""gateway.sync.stats agrees with numpy's float64 statistics (its sums are correctly rounded, so
within a few ulps of numpy's pairwise ones), and its Laplace draws follow the distribution of
numpy's ``Generator.laplace``."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gateway.sync.stats import (
    LaplaceNoise,
    as_float_array,
    exact_sum,
    mean,
    percentile,
    population_std,
)

SIZES = [*range(1, 300), 511, 1000, 1024, 4095, 8191, 8192, 8193, 20_000, 65_537, 100_000]


def _values(rng: random.Random, n: int) -> list[float]:
    kind = rng.randrange(4)
    if kind == 0:  # sensor-like: few distinct values, many ties
        return [round(rng.gauss(21.5, 0.7), 1) for _ in range(n)]
    if kind == 1:  # wide magnitudes and signs
        return [rng.gauss(0, 1) * 10 ** rng.randint(-6, 6) for _ in range(n)]
    if kind == 2:  # large offset, small spread (cancellation in the std)
        return [1e6 + rng.random() for _ in range(n)]
    return [float(rng.randint(0, 3)) for _ in range(n)]  # counts, zeros


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_numpy(seed: int) -> None:
    rng = random.Random(seed)
    for n in SIZES:
        values = as_float_array(_values(rng, n))
        arr = np.asarray(values, dtype=np.float64)
        # fsum is exact; numpy's pairwise sum may be a few ulps off on mixed magnitudes.
        tol = 1e-12 * float(np.abs(arr).sum())
        assert exact_sum(values) == pytest.approx(float(arr.sum()), rel=1e-12, abs=tol), n
        assert exact_sum(values) == math.fsum(values)
        assert mean(values) == pytest.approx(float(arr.mean()), rel=1e-12, abs=tol / n), n
        assert population_std(values) == pytest.approx(float(arr.std()), rel=1e-9, abs=1e-12), n
        ordered = sorted(values)
        for q in (0.0, 5.0, 50.0, 95.0, 99.0, 100.0):
            want = float(np.percentile(arr, q))
            assert percentile(ordered, q) == pytest.approx(want, rel=1e-12, abs=1e-300), (n, q)


def test_small_cases() -> None:
    assert exact_sum([]) == 0.0
    assert population_std([3.0]) == 0.0 and percentile([3.0], 95.0) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50.0) == 2.5
    with pytest.raises(ValueError):
        percentile([], 50.0)


def test_numpy_arrays_are_accepted() -> None:
    arr = np.linspace(60.0, 80.0, 37)
    assert as_float_array(arr).tolist() == arr.tolist()
    assert population_std(arr) == pytest.approx(float(arr.std()), rel=1e-12)


def test_laplace_draws_follow_the_distribution() -> None:
    noise = LaplaceNoise(random.Random(5))
    n, loc, scale = 20_000, 3.0, 4.0
    draws = sorted(noise.laplace(loc, scale) for _ in range(n))

    def ks(b: float) -> float:
        def cdf(x: float) -> float:
            z = (x - loc) / b
            return 0.5 * math.exp(z) if z < 0 else 1 - 0.5 * math.exp(-z)

        return max(max(abs((i + 1) / n - cdf(x)), abs(i / n - cdf(x))) for i, x in enumerate(draws))

    assert ks(scale) < 1.95 / math.sqrt(n)  # KS critical value at alpha = 0.001
    assert ks(scale * 1.2) > 1.95 / math.sqrt(n)  # and not some other scale


def test_default_noise_source_is_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = LaplaceNoise(), LaplaceNoise()
    assert a.laplace(0.0, 1.0) != b.laplace(0.0, 1.0)
    # Two unseeded generators would differ too: the draw must come from the OS's source.
    monkeypatch.setattr(random.SystemRandom, "random", lambda self: 0.75)
    assert LaplaceNoise().laplace(0.0, 1.0) == -math.log(0.5)


def test_noised_count_sum_matches_the_numpy_formula() -> None:
    from gateway.sync.privacy import laplace_scales, noised_count_sum
    from schemas.metrics import metric

    hr = metric("heart_rate")
    assert hr is not None
    values = np.random.default_rng(4).normal(120.0, 80.0, 501)  # some beyond the range
    count_scale, sum_scale = laplace_scales(hr, 0.5)
    ref_rng, rng = np.random.default_rng(9), np.random.default_rng(9)
    expected = (
        float(values.size) + float(ref_rng.laplace(0.0, count_scale)),
        float(np.clip(values, hr.low, hr.high).sum()) + float(ref_rng.laplace(0.0, sum_scale)),
    )
    assert noised_count_sum(values, hr, 0.5, rng) == pytest.approx(expected, rel=1e-12)
    again = noised_count_sum(values.tolist(), hr, 0.5, np.random.default_rng(9))
    assert again == pytest.approx(expected, rel=1e-12)
