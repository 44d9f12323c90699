"""How much of a noised mean is privacy noise.

A gateway releases a ``noised`` window's count and sum with Laplace noise of scales 2/epsilon and
2*S/epsilon, S = max(|low|, |high|) of the metric's registered range (`gateway.sync.privacy`,
`schemas.metrics`). A Laplace variable of scale b has variance 2*b^2, so the noise variances of a
bucket's count and sum are 8 * sum(1/epsilon^2) and 8 * S^2 * sum(1/epsilon^2) over its noised
windows: the rollups keep that sum (`inv_eps_sq`) and any grouping re-adds it. The bucket's mean
is sum / count; to first order its noise is (noise_sum - mean * noise_count) / count, whose
standard deviation is what `mean_noise_sd` returns. It is an approximation (first order, and the
gateway's clipping and rounding are left out), good enough to draw a band and to keep the anomaly
ranking from reading noise as a deviation; it is not a confidence interval.
"""

from __future__ import annotations

import math

from schemas.metrics import metric

LAPLACE_VARIANCE_PER_INV_EPS_SQ = 8.0  # 2 * (2 / epsilon)^2 * epsilon^2


def sensitivity(name: str) -> float | None:
    """The bound of one reading's influence on a sum of metric `name` (None: not registered)."""
    known = metric(name)
    return None if known is None else max(abs(known.low), abs(known.high))


def mean_noise_sd(name: str, inv_eps_sq: float, count: float, mean: float | None) -> float | None:
    """Standard deviation of the privacy noise in a mean of `count` readings of metric `name`
    whose windows' 1/epsilon^2 sum to `inv_eps_sq`; None for an exact mean (no noised window)
    and where it cannot be said (an unregistered metric, no count)."""
    if inv_eps_sq <= 0:
        return None
    s = sensitivity(name)
    if s is None or count <= 0:
        return None
    level = 0.0 if mean is None else mean
    return math.sqrt(LAPLACE_VARIANCE_PER_INV_EPS_SQ * inv_eps_sq * (s * s + level * level)) / count
