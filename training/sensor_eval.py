"""Run readings through the serving window/baseline code and score results against faults.

Used by the training script and by bench/inference.py. Precision/recall are event-level: a
fault counts as found when a flagged window of its device overlaps it; a run of consecutive
flagged windows touching no fault is one false alarm; window-level figures too.

Each window is scored and learned as in serving (`SensorStream.anomaly_features`, then
`commit` with the flagged metrics, which stay out of the level reference; a lasting steady
change becomes ``level_change``, not flagged). Serving flags with its own model (`model_flag`,
what evaluation uses); training rows are made with the truth as the flag (`fault_oracle`).

`mad_baseline` flags the same windows with a rolling median/MAD robust z-score (the last 24 h of
window means per metric, |z| > 4), the reference the model must beat.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from gateway.inference.sensors import (
    ANOMALY_METRICS,
    DAY_S,
    HOUR_S,
    SCALE_FLOOR,
    SensorStream,
    WindowStats,
    flagged_metrics,
    occupancy_applies,
    window_label,
)

F32 = np.ndarray
# (metric names, their (metrics, features) rows, device, window start, window end) -> the
# metrics flagged
IsAnomalous = Callable[[list[str], F32, str, float, float], Collection[str]]


@dataclass(frozen=True)
class ScoredWindow:
    device: str
    room: str
    window: WindowStats
    metrics: list[str]
    anomaly: F32  # (metrics, features)
    occupancy: F32 | None
    flagged: bool
    label: str = "normal"


def windows(
    readings: Iterable[tuple[str, str, float, str, float]],
    *,
    window_s: float,
    baseline_hours: float = 24.0,
    warmup_hours: float = 24.0,
    relearn_hours: float = 4.0,
    is_anomalous: IsAnomalous | None = None,
) -> Iterator[ScoredWindow]:
    """(device, room, ts, metric, value) in time order -> scored windows after warm-up."""
    streams: dict[str, SensorStream] = {}
    rooms: dict[str, str] = {}
    for device, room, ts, metric, value in readings:
        s = streams.get(device)
        if s is None:
            s = streams[device] = SensorStream(
                window_s, baseline_hours * HOUR_S, warmup_hours * HOUR_S, relearn_hours * HOUR_S
            )
        rooms[device] = room
        w = s.add(metric, ts, value)
        if w is None:
            continue
        if not s.ready(w):
            s.commit(w)
            continue
        names, feats = s.anomaly_features(w)
        occ = s.occupancy_features(w) if occupancy_applies(w) else None
        flagged = (
            frozenset(is_anomalous(names, feats, device, w.start, w.end))
            if is_anomalous is not None and len(names)
            else frozenset()
        )
        label = window_label(flagged, s.commit(w, flagged))
        yield ScoredWindow(device, room, w, names, feats, occ, label == "anomaly", label)


def mad_baseline(
    scored: list[ScoredWindow], z: float = 4.0, span_s: float = DAY_S
) -> list[ScoredWindow]:
    """The same windows flagged by the reference detector: per device and metric, the median and
    MAD (x 1.4826, floored at the metric's `SCALE_FLOOR` like the model's scales) of the window
    means of the last `span_s`, every window's included; flagged when any |z| > `z`. It sees the
    warm-up windows only through the scored ones' history (it starts with the first scored
    window), as the model's figures start there too."""
    hist: dict[tuple[str, str], deque[tuple[float, float]]] = {}
    out = []
    for w in scored:
        flag = False
        for m in ANOMALY_METRICS:
            if m not in w.window.mean:
                continue
            x = w.window.mean[m]
            q = hist.setdefault((w.device, m), deque())
            while q and q[0][0] < w.window.start - span_s:
                q.popleft()
            if len(q) >= 2:
                arr = np.fromiter((v for _, v in q), np.float64, len(q))
                med = float(np.median(arr))
                mad = max(float(np.median(np.abs(arr - med))) * 1.4826, SCALE_FLOOR.get(m, 1.0))
                flag = flag or abs(x - med) / mad > z
            q.append((w.window.start, x))
        out.append(replace(w, flagged=flag, label="anomaly" if flag else "normal"))
    return out


def model_flag(scorer: Callable[[F32], F32], thresholds: dict[str, float]) -> IsAnomalous:
    """The serving rule: the model's per-row P(fault) against the manifest's thresholds."""

    def flag(
        names: list[str], feats: F32, _device: str, _start: float, _end: float
    ) -> frozenset[str]:
        return flagged_metrics(names, np.asarray(scorer(feats), np.float32), thresholds)

    return flag


def fault_oracle(faults: Iterable[tuple[str, str, float, float]]) -> IsAnomalous:
    """The truth as the flag: the metrics of labelled (device, metrics, start, end) faults the
    window overlaps (the overlap rule of `event_scores`; `metrics` "a|b" for a swap)."""
    by_dev: dict[str, list[tuple[list[str], float, float]]] = {}
    for dev, ms, s, e in faults:
        by_dev.setdefault(dev, []).append((ms.split("|"), s, e))

    def flag(
        names: list[str], _feats: F32, device: str, start: float, end: float
    ) -> frozenset[str]:
        return frozenset(
            m
            for ms, s, e in by_dev.get(device, ())
            if s < end and e >= start
            for m in ms
            if m in names
        )

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
    device_days = sum((ws[-1].window.end - ws[0].window.start) / DAY_S for ws in per_dev.values())
    wp = window_tp / max(window_tp + window_fp, 1)
    wr = window_tp / max(window_tp + window_fn, 1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "faults": len(relevant),
        "false_positive_runs": fp,
        "false_alarms_per_device_day": fp / max(device_days, 1e-9),
        "device_days": device_days,
        "level_changes": sum(w.label == "level_change" for w in scored),
        "window_precision": wp,
        "window_recall": wr,
        "window_f1": 2 * wp * wr / max(wp + wr, 1e-9),
    }
