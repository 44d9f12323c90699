"""Train the sensor models: anomaly (a forest on baseline z-features) and occupancy.

    nice -n 15 .venv/bin/python -m gateway.inference.training.train_sensors

Seeded. Trains on synthetic homes (`sensor_data`), picks the anomaly threshold on validation
homes, evaluates on held-out homes and on real data: the UCI Occupancy subset bundled in the
``river`` wheel (temperature, humidity, light, CO2 every 16 min) with injected faults. Writes
gateway/models/{sensor_anomaly,occupancy}.onnx with manifests and cards.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.inference.manifest import AppliesTo
from gateway.inference.sensors import (
    ANOMALY_METRICS,
    N_ANOMALY_FEATURES,
    N_OCCUPANCY_FEATURES,
    OCCUPANCY_METRICS,
    window_flagged,
)
from gateway.inference.training import sensor_data
from gateway.inference.training.export import export_classifier, write_model
from gateway.inference.training.sensor_eval import ScoredWindow, event_scores, windows

MODELS = Path(__file__).resolve().parents[2] / "models"
WINDOW_S = 300.0
BASELINE = 288
MIN_WINDOWS = 288  # a day: a shorter history calls every evening routine an anomaly
POWER_FLOOR = 0.8  # lowest power threshold (see the threshold search in main)


def homes(seeds: range, days: int) -> list[tuple[list[sensor_data.Row], list[sensor_data.Fault]]]:
    return [sensor_data.home(s, days) for s in seeds]


def anomaly_scorer(session: ort.InferenceSession) -> Any:
    """Per-row P(fault) of a window's (metrics, features) rows."""
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x.astype(np.float32)})[1])[:, 1]


def occupancy_labels(rows: list[sensor_data.Row], window_s: float) -> dict[tuple[str, float], bool]:
    acc: dict[tuple[str, float], list[bool]] = {}
    for r in rows:
        acc.setdefault((r.device, r.ts - r.ts % window_s), []).append(r.occupied)
    return {k: sum(v) * 2 >= len(v) for k, v in acc.items()}


def uci_rows() -> list[tuple[float, dict[str, float]]]:
    import river.drift.datasets as rd

    path = Path(rd.__file__).parent / "occupancy.csv"
    out = []
    with path.open() as f:
        for rec in csv.DictReader(f):
            ts = datetime.strptime(rec["time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
            out.append(
                (
                    ts,
                    {
                        "temperature": float(rec["V1"]),
                        "humidity": float(rec["V2"]),
                        "light": float(rec["V3"]),
                        "co2": float(rec["V4"]),
                    },
                )
            )
    return out


def uci_with_faults(
    seed: int,
) -> tuple[list[tuple[str, str, float, str, float]], list[tuple[str, float, float]]]:
    """The real series with injected spike/stuck/drift faults (the data set has no fault labels)."""
    rng = np.random.default_rng(seed)
    rows = uci_rows()
    step = rows[1][0] - rows[0][0]
    faults = []
    i = 40
    values = [dict(r) for _, r in rows]
    while i < len(rows) - 30:
        kind = str(rng.choice(["spike", "stuck", "drift"]))
        m = str(rng.choice(["temperature", "humidity", "co2", "light"]))
        n = {"spike": 1, "stuck": int(rng.integers(6, 12)), "drift": int(rng.integers(8, 20))}[kind]
        off = float(rng.uniform(*sensor_data.MAGNITUDE[m])) * (
            rng.choice([-1, 1]) if m in ("temperature", "humidity") else 1
        )
        for k in range(n):
            v = values[i + k]
            if kind == "spike":
                v[m] += off
            elif kind == "drift":
                v[m] += off * 0.6 * (k + 1) / n
            else:
                v[m] = values[i][m] if k else v[m]
        faults.append(("uci-room", rows[i][0] - 1, rows[i + n - 1][0] + 1))
        i += n + int(rng.integers(25, 45))
    readings = [
        ("uci-room", "office", ts + step / 2 - 1, m, max(v[m], 0.0) if m != "temperature" else v[m])
        for (ts, _), v in zip(rows, values, strict=True)
        for m in v
    ]
    return readings, faults


def main(argv: list[str] | None = None) -> int:
    from sklearn.ensemble import RandomForestClassifier

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    train = homes(range(args.seed, args.seed + 5), args.days)
    val = homes(range(args.seed + 5, args.seed + 7), args.days)
    test = homes(range(args.seed + 7, args.seed + 10), args.days)
    print(f"homes generated ({time.monotonic() - t0:.0f}s)", flush=True)

    def scored(hs: list, is_anom: Any = None, window_s: float = WINDOW_S) -> list:
        out = []
        for rows, _faults in hs:
            out.append(
                list(
                    windows(
                        sensor_data.iter_readings(rows),
                        window_s=window_s,
                        baseline_windows=BASELINE,
                        min_windows=MIN_WINDOWS,
                        is_anomalous=is_anom,
                    )
                )
            )
        return out

    tr = scored(train)
    faults_of = lambda fs: [(f.device, f.start, f.end) for f in fs]  # noqa: E731
    anom_x, anom_y = [], []
    occ_x, occ_y = [], []
    for (rows, faults), ws in zip(train, tr, strict=True):
        mspans = [(f.device, f.metric, f.start, f.end) for f in faults]
        # Where a fault is visible at all: a drift only once it has grown, a stuck value only
        # once it has repeated; windows before that are left out of training, not called normal.
        visible = [
            (
                f.device,
                f.metric,
                f.start + {"drift": 0.4 * (f.end - f.start), "stuck": 900.0}.get(f.kind, 0.0),
                f.end,
            )
            for f in faults
        ]
        labels = occupancy_labels(rows, WINDOW_S)
        for w in ws:
            for m, row in zip(w.metrics, w.anomaly, strict=True):
                hit = any(
                    d == w.device and fm == m and s < w.window.end and e >= w.window.start
                    for d, fm, s, e in visible
                )
                if not hit and any(
                    d == w.device and fm == m and s < w.window.end and e >= w.window.start
                    for d, fm, s, e in mspans
                ):
                    continue
                anom_x.append(row)
                anom_y.append(int(hit))
            if w.occupancy is not None:
                occ_x.append(w.occupancy)
                occ_y.append(int(labels[(w.device, w.window.start)]))
    # Supervised on injected faults: an IsolationForest over the same features reached only
    # F1 0.42 (event level) on held-out homes, as most features are irrelevant for most faults.
    iso = RandomForestClassifier(
        n_estimators=60,
        max_depth=10,
        min_samples_leaf=3,
        random_state=args.seed,
    ).fit(np.asarray(anom_x, np.float32), anom_y)
    occ = RandomForestClassifier(n_estimators=40, max_depth=8, random_state=args.seed).fit(
        np.asarray(occ_x, np.float32), occ_y
    )
    print(
        f"fitted on {len(anom_y)} windows ({sum(anom_y)} faulty), {len(occ_y)} occupancy "
        f"windows ({time.monotonic() - t0:.0f}s)",
        flush=True,
    )
    iso_bytes = export_classifier(iso, N_ANOMALY_FEATURES)
    occ_bytes = export_classifier(occ, N_OCCUPANCY_FEATURES)
    iso_s = ort.InferenceSession(iso_bytes, providers=["CPUExecutionProvider"])
    score = anomaly_scorer(iso_s)

    # Threshold: best event F1 on validation homes (with the baseline frozen on flags, as served).
    # (Scored once without flags freezing the baseline; the served path freezes it, a small shift.)
    vw = scored(val)
    probs = [
        [iso.predict_proba(w.anomaly)[:, 1] if len(w.metrics) else np.zeros(0) for w in ws]
        for ws in vw
    ]

    def val_f1(th: dict[str, float]) -> float:
        f1s = []
        for ws, p, (_, f) in zip(vw, probs, val, strict=True):
            flagged = [
                ScoredWindow(
                    w.device,
                    w.room,
                    w.window,
                    w.metrics,
                    w.anomaly,
                    w.occupancy,
                    window_flagged(w.metrics, np.asarray(q, np.float32), th),
                )
                for w, q in zip(ws, p, strict=True)
            ]
            f1s.append(event_scores(flagged, faults_of(f))["f1"])
        return float(np.mean(f1s))

    grid = [round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05)]
    best = max((val_f1({"threshold": t}), t) for t in grid)
    thresholds = {"threshold": best[1]}
    # Then one threshold per metric (coordinate ascent, two passes): a light or power reading
    # swings more in normal life than a temperature does.
    for _ in range(2):
        for m in ANOMALY_METRICS:
            cands = []
            for t in grid:
                trial = {**thresholds, f"threshold_{m}": t}
                cands.append((val_f1(trial), -abs(t - thresholds["threshold"]), t))
            f1, _, t = max(cands)
            if f1 > best[0] + 1e-9:
                best = (f1, t)
                thresholds[f"threshold_{m}"] = t
    # Plugs switch TVs, desks and kettles: in the device simulators' world (validation seeds 6
    # and 7, never the bench's seed 5) power at 0.6 made most false positives; 0.8 lifted event
    # F1 there 0.58/0.68 -> 0.70/0.75 and on the synthetic held-out homes 0.817 -> 0.826.
    thresholds["threshold_power"] = max(thresholds.get("threshold_power", 0.0), POWER_FLOOR)
    threshold = thresholds["threshold"]
    print(
        f"thresholds {thresholds} (validation F1 {best[0]:.3f}) ({time.monotonic() - t0:.0f}s)",
        flush=True,
    )

    flag = lambda names, x: window_flagged(names, score(x), thresholds)  # noqa: E731
    te = scored(test, flag)
    all_w = [w for ws in te for w in ws]
    all_f = [f for _, fs in test for f in faults_of(fs)]
    synth = event_scores(all_w, all_f)
    occ_s = ort.InferenceSession(occ_bytes, providers=["CPUExecutionProvider"])
    oname = occ_s.get_inputs()[0].name
    correct = total = 0
    for (rows, _), ws in zip(test, te, strict=True):
        labels = occupancy_labels(rows, WINDOW_S)
        for w in ws:
            if w.occupancy is not None:
                p = occ_s.run(None, {oname: w.occupancy[None, :]})[1][0][1]
                correct += int((p >= 0.5) == labels[(w.device, w.window.start)])
                total += 1
    synth["occupancy_accuracy"] = correct / max(total, 1)

    readings, ufaults = uci_with_faults(args.seed)
    uw = list(
        windows(readings, window_s=960.0, baseline_windows=90, min_windows=90, is_anomalous=flag)
    )
    uci = event_scores(uw, ufaults)
    # The bundled subset has no occupancy column: the proxy label is "office lights on" (>= 300 lx),
    # which the original study found the strongest single cue; a sanity check, not a validation.
    uc = ut = 0
    for w in uw:
        if w.occupancy is not None:
            p = occ_s.run(None, {oname: w.occupancy[None, :]})[1][0][1]
            uc += int((p >= 0.5) == (w.window.mean.get("light", 0.0) >= 300.0))
            ut += 1
    uci["occupancy_proxy_accuracy"] = uc / max(ut, 1)
    metrics = {
        "synthetic_heldout": synth,
        "uci_occupancy_river": uci,
        "threshold": threshold,
        "thresholds": thresholds,
    }
    print(json.dumps(metrics, indent=1), flush=True)

    data = (
        f"synthetic homes (gateway/inference/training/sensor_data.py), {args.days} days each "
        "at 60 s, "
        f"seeds {args.seed}..{args.seed + 4} train, +5..+6 threshold validation, +7..+9 held-out"
    )
    write_model(
        MODELS,
        "sensor_anomaly",
        iso_bytes,
        kind="sensor_anomaly",
        inputs="one row per metric (temperature, humidity, co2, light, power): |level z|, "
        "|extreme z|, |step z|, log spread ratio, stuck run, |z to the same time yesterday|, "
        "vs. the device's baseline",
        extra={**thresholds, "window_s": WINDOW_S, "hop_s": WINDOW_S},
        applies_to=AppliesTo(
            audio=False,
            device_classes=["thermostat", "air_quality", "motion", "plug", "generic"],
            metrics=list(ANOMALY_METRICS),
        ),
        card={
            "what": "RandomForest (60 trees, depth 10) trained on injected faults; input one "
            "row per metric of robust z-features from the online per-device baseline; window "
            "score = max over metrics of P(fault); flagged when a metric's P(fault) reaches its "
            "threshold (per metric, tuned on the validation homes; power at least 0.8, chosen on "
            "the device simulators' world seeds 6 and 7: plugs switching TVs and desks were most "
            "false positives). An IsolationForest over all "
            "metrics' features at once reached only event F1 0.42",
            "data": data,
            "held-out (event-level)": synth,
            "real data: UCI Occupancy subset from river with injected faults": uci,
        },
    )
    write_model(
        MODELS,
        "occupancy",
        occ_bytes,
        kind="sensor_occupancy",
        inputs="CO2 vs. the device's quiet level and trend, log light, motion share, "
        "humidity trend",
        extra={
            "threshold": 0.5,
            "window_s": WINDOW_S,
            "hop_s": WINDOW_S,
            "labels": ["empty", "occupied"],
        },
        applies_to=AppliesTo(
            audio=False, device_classes=["air_quality", "motion"], metrics=list(OCCUPANCY_METRICS)
        ),
        card={
            "what": "RandomForest (40 trees, depth 8): room occupied in the window",
            "data": data,
            "held-out": {"occupancy_accuracy": synth["occupancy_accuracy"]},
            "real data (proxy label)": {
                "occupancy_proxy_accuracy": uci["occupancy_proxy_accuracy"]
            },
        },
    )
    (MODELS / "sensor_metrics.json").write_text(
        json.dumps(metrics, indent=1, sort_keys=True) + "\n"
    )
    print(f"done in {time.monotonic() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
