"""Run readings through the serving window/baseline code and score results against faults.

Used by the training script and by bench/inference.py (which feeds it the device simulators'
world and ground truth). Precision/recall are event-level: a fault counts as found when a
flagged window overlaps it; a run of flagged windows touching no fault is one false positive.

A flagged window does not enter its device's baseline, as in serving. Serving flags with its
own model (`model_flag`, what evaluation uses); training rows are made with the truth as the
flag (`fault_oracle`), the closest stand-in before a model exists: without it a stuck sensor's
windows enter the baseline and its stuck-rare feature fades in training but not in serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gateway.inference.sensors import (
    SensorStream,
    WindowStats,
    anomaly_features,
    occupancy_applies,
    occupancy_features,
    window_flagged,
)

F32 = np.ndarray
# (metric names, their (metrics, features) rows, device, window start, window end) -> flagged
IsAnomalous = Callable[[list[str], F32, str, float, float], bool]


@dataclass(frozen=True)
class ScoredWindow:
    device: str
    room: str
    window: WindowStats
    metrics: list[str]
    anomaly: F32  # (metrics, features)
    occupancy: F32 | None
    flagged: bool


def windows(
    readings: Iterable[tuple[str, str, float, str, float]],
    *,
    window_s: float,
    baseline_windows: int,
    min_windows: int,
    is_anomalous: IsAnomalous | None = None,
) -> Iterator[ScoredWindow]:
    """(device, room, ts, metric, value) in time order -> scored windows after warm-up."""
    streams: dict[str, SensorStream] = {}
    rooms: dict[str, str] = {}
    for device, room, ts, metric, value in readings:
        s = streams.get(device)
        if s is None:
            s = streams[device] = SensorStream(window_s, baseline_windows)
        rooms[device] = room
        w = s.add(metric, ts, value)
        if w is None:
            continue
        if not s.ready(min_windows):
            s.commit(w, False)
            continue
        names, feats = anomaly_features(w, s.baseline, s.stuck_runs)
        occ = occupancy_features(w, s.baseline, s.prev) if occupancy_applies(w) else None
        flagged = (
            bool(is_anomalous(names, feats, device, w.start, w.end))
            if is_anomalous is not None and len(names)
            else False
        )
        s.commit(w, flagged)
        yield ScoredWindow(device, room, w, names, feats, occ, flagged)


def model_flag(scorer: Callable[[F32], F32], thresholds: dict[str, float]) -> IsAnomalous:
    """The serving rule: the model's per-row P(fault) against the manifest's thresholds."""

    def flag(names: list[str], feats: F32, _device: str, _start: float, _end: float) -> bool:
        return window_flagged(names, np.asarray(scorer(feats), np.float32), thresholds)

    return flag


def fault_oracle(faults: Iterable[tuple[str, float, float]]) -> IsAnomalous:
    """The truth as the flag: the window overlaps a labelled (device, start, end) fault of its
    device (the overlap rule of `event_scores`)."""
    by_dev: dict[str, list[tuple[float, float]]] = {}
    for dev, s, e in faults:
        by_dev.setdefault(dev, []).append((s, e))

    def flag(_names: list[str], _feats: F32, device: str, start: float, end: float) -> bool:
        return any(s < end and e >= start for s, e in by_dev.get(device, ()))

    return flag


def event_scores(
    scored: list[ScoredWindow], faults: Iterable[tuple[str, float, float]]
) -> dict[str, float]:
    """Event-level precision, recall, F1 of flagged windows against (device, start, end) faults."""
    faults = list(faults)
    by_dev: dict[str, list[tuple[float, float]]] = {}
    for dev, s, e in faults:
        by_dev.setdefault(dev, []).append((s, e))
    found: set[tuple[str, float, float]] = set()
    fp = tp_runs = 0
    per_dev: dict[str, list[ScoredWindow]] = {}
    for w in scored:
        per_dev.setdefault(w.device, []).append(w)
    window_tp = window_fp = window_fn = 0
    for dev, ws in per_dev.items():
        run_hit: bool | None = None
        for w in ws:
            hits = [
                (s, e) for s, e in by_dev.get(dev, []) if s < w.window.end and e >= w.window.start
            ]
            truth = bool(hits)
            window_tp += int(w.flagged and truth)
            window_fp += int(w.flagged and not truth)
            window_fn += int(truth and not w.flagged)
            if w.flagged:
                for s, e in hits:
                    found.add((dev, s, e))
                run_hit = bool(hits) or bool(run_hit)
            elif run_hit is not None:
                fp += int(not run_hit)
                tp_runs += int(run_hit)
                run_hit = None
        if run_hit is not None:
            fp += int(not run_hit)
    # Only faults the scored windows cover count (the baseline's warm-up is never scored).
    spans_of = {d: (ws[0].window.start, ws[-1].window.end) for d, ws in per_dev.items()}
    relevant = [
        f
        for f in faults
        if f[0] in spans_of and f[1] < spans_of[f[0]][1] and f[2] >= spans_of[f[0]][0]
    ]
    recall = len(found & set(relevant)) / max(len(relevant), 1)
    precision = len(found) / max(len(found) + fp, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    wp = window_tp / max(window_tp + window_fp, 1)
    wr = window_tp / max(window_tp + window_fn, 1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "faults": len(relevant),
        "false_positive_runs": fp,
        "window_precision": wp,
        "window_recall": wr,
        "window_f1": 2 * wp * wr / max(wp + wr, 1e-9),
    }
