"""`SensorScorer`: committed sensor readings -> anomaly and occupancy decisions (inference thread).

Each reading goes into its sensor's `SensorStream`; a window that closes is scored against the
device's baseline, all windows closed in one batch in one model call per model (a device's
second window in a batch waits for its first to be learned, and closing a window changes no
state: a window is scored on its device's earlier windows only, so live, a burst after an outage
and a replay agree); a metric the anomaly model flagged stays out of the device's level
reference unless it lasts as a steady new level, which is labelled ``level_change`` once
(`SensorStream.commit`). Occupancy results are events only
when a sensor's decision changed. A sensor the streams evict has its open window scored by
`flush` (its readings count; the window's time is long past), then its state is dropped.
`due` closes and scores the windows of quiet sensors whose end is ``sensor_grace_s`` past (the
engine's sweep), through the same `_score_windows`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gateway.inference.manifest import ModelKind, ModelManifest
from gateway.inference.priors import seed
from gateway.inference.results import InferenceResult
from gateway.inference.runtime import ModelRuntime
from gateway.inference.sensors import (
    WindowStats,
    flagged_metrics,
    occupancy_applies,
    window_label,
)
from gateway.inference.settings import InferenceSettings
from gateway.inference.streams import DeviceStreams, Sensor
from gateway.records import Reading


class SensorScorer:
    """See the module docstring."""

    def __init__(
        self, settings: InferenceSettings, runtime: ModelRuntime, streams: DeviceStreams
    ) -> None:
        self._settings = settings
        self._streams = streams
        self._anomaly = runtime.of_kind(ModelKind.SENSOR_ANOMALY)
        self._occupancy = runtime.of_kind(ModelKind.SENSOR_OCCUPANCY)

    def process(self, readings: list[Reading]) -> list[InferenceResult]:
        results: list[InferenceResult] = []
        closed: list[tuple[Sensor, WindowStats]] = []
        in_round: set[tuple[str, str]] = set()
        for r in readings:
            key = (r.home, r.device)
            sensor = self._streams.sensor(r.home, r.room, r.device)
            if sensor.priors is not None and r.metric in sensor.priors:
                seed(sensor.stream, r.metric, sensor.priors[r.metric], r.ts)
            w = sensor.stream.add(r.metric, r.ts, r.value)
            if w is None:
                continue
            if key in in_round:  # its previous window must be learned first
                results += self._score_windows(closed)
                closed, in_round = [], set()
            closed.append((sensor, w))
            in_round.add(key)
        return results + self._score_windows(closed)

    def flush(self, sensors: list[Sensor]) -> list[InferenceResult]:
        """Score the open windows of `sensors`, which are being evicted (each one once)."""
        closed = [(sensor, w) for sensor in sensors if (w := sensor.stream.flush()) is not None]
        return self._score_windows(closed)

    def due(
        self, sensors: Iterable[Sensor], now: float, grace_s: float
    ) -> tuple[list[Sensor], list[InferenceResult]]:
        """Close and score the open windows of `sensors` that `now` (the wall clock, on the
        readings' epoch) is `grace_s` past (`SensorStream.due`): the sensors whose window
        closed, and the results."""
        closed = [
            (sensor, w) for sensor in sensors if (w := sensor.stream.due(now, grace_s)) is not None
        ]
        return [sensor for sensor, _ in closed], self._score_windows(closed)

    def _score_windows(self, closed: list[tuple[Sensor, WindowStats]]) -> list[InferenceResult]:
        """Score windows of distinct devices in one call per model, then learn from them."""
        ready = []
        for sensor, w in closed:
            if sensor.stream.ready(w):
                ready.append((sensor, w))
            else:
                sensor.stream.commit(w)
        if not ready:
            return []
        results: list[InferenceResult] = []
        rows: list[np.ndarray] = []
        owners: list[int] = []
        row_metrics: list[str] = []
        occ_rows: list[np.ndarray] = []
        occ_owners: list[int] = []
        for i, (sensor, w) in enumerate(ready):
            names, feats = sensor.stream.anomaly_features(w)
            rows += list(feats)
            owners += [i] * len(names)
            row_metrics += names
            if occupancy_applies(w):
                occ_rows.append(sensor.stream.occupancy_features(w))
                occ_owners.append(i)
        flagged: list[frozenset[str]] = [frozenset()] * len(ready)
        scores = np.zeros(len(ready))
        occ_p = np.zeros(0, np.float32)
        if self._anomaly is not None and rows:
            p = self._anomaly.probabilities(np.vstack(rows))[:, 1]
            owner_arr = np.asarray(owners)
            np.maximum.at(scores, owner_arr, p)
            for i in sorted(set(owners)):
                mine = np.flatnonzero(owner_arr == i)
                flagged[i] = flagged_metrics(
                    [row_metrics[j] for j in mine], p[mine], self._anomaly.manifest.thresholds
                )
        if self._occupancy is not None and occ_rows:
            occ_p = self._occupancy.probabilities(np.vstack(occ_rows))[:, 1]
        # Learned before the results are made: a lasting change adopted in this window makes
        # it the one ``level_change`` result instead of another anomaly.
        changed = [sensor.stream.commit(w, flagged[i]) for i, (sensor, w) in enumerate(ready)]
        if self._anomaly is not None and rows:
            man = self._anomaly.manifest
            for i in sorted(set(owners)):
                sensor, w = ready[i]
                label = window_label(flagged[i], changed[i])
                # The reading is the decision (an event metric: 1 flagged, 0 not), so a
                # window's sum counts anomalies; the score is kept in the inferences row.
                value = 1.0 if label == "anomaly" else 0.0
                results.append(_result(man, sensor, w, float(scores[i]), label, value, event=True))
        if self._occupancy is not None and occ_rows:
            man = self._occupancy.manifest
            for i, q in zip(occ_owners, occ_p, strict=True):
                sensor, w = ready[i]
                occupied = bool(q >= man.thresholds.get("threshold", 0.5))
                changed_occ = occupied != sensor.occupied
                sensor.occupied = occupied
                label = "occupied" if occupied else "empty"
                value = 1.0 if occupied else 0.0
                results.append(_result(man, sensor, w, float(q), label, value, event=changed_occ))
        return results


def _result(
    man: ModelManifest,
    sensor: Sensor,
    w: WindowStats,
    score: float,
    label: str,
    value: float,
    *,
    event: bool,
) -> InferenceResult:
    """One model's decision about one sensor window."""
    return InferenceResult(
        man.name,
        man.version,
        man.kind,
        sensor.home,
        sensor.room,
        sensor.device,
        w.start,
        w.end,
        score,
        label,
        value,
        event,
    )
