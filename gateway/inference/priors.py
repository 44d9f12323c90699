"""Fleet priors: the fleet's typical levels per room class and metric, which start a new
sensor's baseline before its own warm-up ends.

A new home's sensors are not scored for ``warmup_hours`` (a day by default): the baseline
needs a day of the home's own windows. A bundle from the cloud may carry ``priors.json``,
computed from window aggregates alone (what the gateways upload: means and spreads per room
class, never a device's readings), so a new sensor starts from the fleet's normal instead:

    {"format": 1,
     "classes": {"<room class>": {"<metric>": {
         "hourly": [[q10, q30, q50, q70, q90], ...24 lists, UTC hour 0..23],
         "step": <typical |change| between consecutive windows>,
         "spread": <typical std inside one window>}}}}

or, fleet-wide without room classes or daily profiles (what `cloud.fleet.priors` makes from
its hour rollups):

    {"format": 1, "metrics": {"<metric>": {"mean": <float>, "std": <float> > 0}}}

which seeds every room class with ``mean + z * std`` at the 10th..90th percentiles of a normal
at every hour, and leaves the step and spread scales to the device's first windows.

`seed` fills the stream's baseline bins of the last ``baseline_s`` with those quantiles
(cycling through them, so the level reference's median and range are the fleet's at that
hour), sets its scales from ``step`` and ``spread`` and marks the metric as warmed up: it is
scored from its first window. The device's own windows then fill the bins from now on; the
prior ages out of the baseline after ``baseline_s`` like any old window, and a home whose
level differs from the fleet's is adopted as a level change (``relearn_hours``), as after any
lasting change. A stored baseline (a known device) is never seeded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.inference.sensors import ANOMALY_METRICS, MetricBaseline, SensorStream

PRIORS_FORMAT = 1
QUANTILES = 5
HOURS = 24
ANY_CLASS = "*"  # the fleet-wide priors, for every room class
# The 10th, 30th, 50th, 70th and 90th percentiles of a standard normal.
_NORMAL_Z = (-1.2816, -0.5244, 0.0, 0.5244, 1.2816)


class PriorsError(ValueError):
    """A priors file that cannot be used; the message names the entry."""


@dataclass(frozen=True, slots=True)
class MetricPrior:
    hourly: tuple[tuple[float, ...], ...]  # 24 x QUANTILES, UTC hours
    step: float  # < 0: unknown, learned from the device's first windows
    spread: float


@dataclass(frozen=True)
class FleetPriors:
    classes: Mapping[str, Mapping[str, MetricPrior]]

    @classmethod
    def parse(cls, body: Any) -> FleetPriors:
        if not isinstance(body, dict) or body.get("format") != PRIORS_FORMAT:
            raise PriorsError(f"priors: expected an object with format {PRIORS_FORMAT}")
        if "classes" not in body and isinstance(body.get("metrics"), dict):
            return cls({ANY_CLASS: _fleet_wide(body["metrics"])})
        classes = body.get("classes")
        if not isinstance(classes, dict):
            raise PriorsError("priors.classes: expected an object")
        out: dict[str, dict[str, MetricPrior]] = {}
        for room_class, metrics in classes.items():
            if not isinstance(metrics, dict):
                raise PriorsError(f"priors.classes.{room_class}: expected an object")
            for metric, p in metrics.items():
                if metric not in ANOMALY_METRICS:
                    continue  # a metric the anomaly model does not read
                where = f"priors.classes.{room_class}.{metric}"
                try:
                    hourly = tuple(tuple(float(v) for v in row) for row in p["hourly"])
                    step, spread = float(p["step"]), float(p["spread"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise PriorsError(f"{where}: {exc!r}") from None
                if len(hourly) != HOURS or any(len(r) != QUANTILES for r in hourly):
                    raise PriorsError(f"{where}.hourly: expected {HOURS} lists of {QUANTILES}")
                values = [v for r in hourly for v in r] + [step, spread]
                if not all(math.isfinite(v) for v in values) or step < 0 or spread < 0:
                    raise PriorsError(f"{where}: values must be finite, step and spread >= 0")
                out.setdefault(room_class, {})[metric] = MetricPrior(hourly, step, spread)
        return cls(out)

    @classmethod
    def load(cls, path: Path) -> FleetPriors:
        try:
            return cls.parse(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            if isinstance(exc, PriorsError):
                raise
            raise PriorsError(f"priors file {path}: {exc}") from None

    def of_class(self, room_class: str) -> Mapping[str, MetricPrior]:
        return self.classes.get(room_class) or self.classes.get(ANY_CLASS, {})


def _fleet_wide(metrics: dict[str, Any]) -> dict[str, MetricPrior]:
    out = {}
    for metric, p in metrics.items():
        if metric not in ANOMALY_METRICS:
            continue
        where = f"priors.metrics.{metric}"
        try:
            mean, std = float(p["mean"]), float(p["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorsError(f"{where}: {exc!r}") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise PriorsError(f"{where}: mean must be finite and std > 0")
        row = tuple(mean + z * std for z in _NORMAL_Z)
        out[metric] = MetricPrior((row,) * HOURS, step=-1.0, spread=-1.0)
    return out


def seed(stream: SensorStream, metric: str, prior: MetricPrior, at: float) -> bool:
    """Start `metric`'s baseline in `stream` from `prior`, for a metric first read at `at` (its
    first reading's time); False when the stream has history of it already. Seeded one metric
    at a time, as the device reports it: a metric it does not have must not be 'expected'."""
    if metric in stream.metrics:
        return False
    b = MetricBaseline(stream.bins)
    first_bin = int((at - stream.baseline_s) // stream.bin_s)
    last_bin = int(at // stream.bin_s)  # the bin `at` falls in is left to the device
    for k, bin_id in enumerate(range(first_bin, last_bin)):
        hour = int((bin_id * stream.bin_s) // 3600) % HOURS
        b.add(bin_id, prior.hourly[hour][k % QUANTILES], True)
    # Warmed up already for the window `at` falls in.
    b.first_start = at - stream.warmup_s - stream.window_s
    if prior.step >= 0 and prior.spread >= 0:
        b.step_scale, b.std_scale, b.scales_set = prior.step, prior.spread, True
    stream.metrics[metric] = b
    return True
