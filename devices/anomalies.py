"""Injected sensor faults (spike, stuck value, drift) and the ground truth that records them.

Each device has its own `AnomalyInjector` with a random stream separate from the device's
noise, so a world with anomalies differs from the same world without them exactly inside the
recorded windows. A `GroundTruth` line says: this device's metric misbehaves from `start` to
`end` (inclusive, simulated Unix seconds) in this way. Audio events (tones, later speech and
alarm clips) use the same record with ``metric="audio"`` and ``kind`` = the sound's label.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from schemas.metrics import metric as registry_metric


class AnomalyKind(StrEnum):
    SPIKE = "spike"  # a short burst far from the normal value
    STUCK = "stuck"  # the sensor repeats one value
    DRIFT = "drift"  # an offset growing linearly over hours (calibration loss)


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """One labelled event: what the simulator did on purpose (one JSON line of the file)."""

    home: str
    room: str
    device: str
    metric: str
    start: float
    end: float
    kind: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def covers(self, ts: float) -> bool:
        return self.start <= ts <= self.end


# Per metric: (spike offset range, drift end offset range); a sign is drawn per event.
_MAGNITUDES: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "temperature": ((8.0, 15.0), (3.0, 6.0)),
    "humidity": ((20.0, 35.0), (10.0, 20.0)),
    "co2": ((1500.0, 4000.0), (500.0, 1500.0)),
    "light": ((5000.0, 30000.0), (200.0, 600.0)),
    "power": ((1500.0, 3000.0), (100.0, 300.0)),
    "heart_rate": ((50.0, 80.0), (15.0, 30.0)),
}
ANOMALY_METRICS = frozenset(_MAGNITUDES)
# Only these go down as well as up; a negative CO2 or light spike would hit the floor of 0.
_SIGNED = frozenset({"temperature", "humidity"})
_DURATION_S: Mapping[AnomalyKind, tuple[float, float]] = {
    AnomalyKind.SPIKE: (60.0, 300.0),
    AnomalyKind.STUCK: (1800.0, 3 * 3600.0),
    AnomalyKind.DRIFT: (2 * 3600.0, 8 * 3600.0),
}


@dataclass(slots=True)
class _Active:
    truth: GroundTruth
    kind: AnomalyKind
    offset: float  # spike offset, or drift offset reached at `end`
    held: float | None = None  # stuck value


class AnomalyInjector:
    """Decides when one device misbehaves and rewrites its readings accordingly."""

    def __init__(
        self,
        *,
        home: str,
        room: str,
        device: str,
        seed: int,
        rate_per_day: float,
    ) -> None:
        self.home = home
        self.room = room
        self.device = device
        self.rate_per_day = rate_per_day
        self._rnd = random.Random(seed)
        self._active: _Active | None = None

    def apply(
        self, ts: float, dt: float, readings: dict[str, float]
    ) -> tuple[dict[str, float], GroundTruth | None]:
        """The readings at `ts` after any fault, and the fault that started now (if one did)."""
        started = None
        if self._active is not None and ts > self._active.truth.end:
            self._active = None
        if self._active is None and self.rate_per_day > 0:
            candidates = sorted(m for m in readings if m in ANOMALY_METRICS)
            hazard = 1.0 - math.exp(-self.rate_per_day * max(dt, 0.0) / 86400.0)
            if candidates and self._rnd.random() < hazard:
                self._active = self._start(ts, candidates, readings)
                started = self._active.truth
        active = self._active
        if active is None or active.truth.metric not in readings:
            return readings, started
        name = active.truth.metric
        value = readings[name]
        if active.kind is AnomalyKind.SPIKE:
            value += active.offset
        elif active.kind is AnomalyKind.STUCK:
            if active.held is None:
                active.held = value
            value = active.held
        else:
            span = max(active.truth.end - active.truth.start, 1.0)
            value += active.offset * min(1.0, (ts - active.truth.start) / span)
        out = dict(readings)
        out[name] = _clip(name, value)
        return out, started

    def _start(self, ts: float, candidates: list[str], readings: dict[str, float]) -> _Active:
        rnd = self._rnd
        name = rnd.choice(candidates)
        kind = rnd.choices(list(AnomalyKind), weights=(0.5, 0.25, 0.25))[0]
        low, high = _DURATION_S[kind]
        spike, drift = _MAGNITUDES[name]
        lo, hi = spike if kind is AnomalyKind.SPIKE else drift
        sign = -1.0 if name in _SIGNED and rnd.random() < 0.5 else 1.0
        truth = GroundTruth(
            home=self.home,
            room=self.room,
            device=self.device,
            metric=name,
            start=ts,
            end=ts + rnd.uniform(low, high),
            kind=kind.value,
        )
        return _Active(truth=truth, kind=kind, offset=sign * rnd.uniform(lo, hi))


def _clip(name: str, value: float) -> float:
    entry = registry_metric(name)
    if entry is None:
        return value
    return min(entry.high, max(entry.low, value))
