"""Train the sensor models: anomaly (a forest on baseline z-features) and occupancy.

    nice -n 15 .venv/bin/python -m training.train_sensors

Seeded. Trains the anomaly model on synthetic homes (`sensor_data`) and on the device
simulators' world (`devices.world`, a training tool: the gateway never imports it; seed 5 is the
bench's and is never used here), picks its thresholds on validation homes and world seeds,
evaluates on held-out homes, unseen world seeds and on real data: the UCI Occupancy subset
bundled in the ``river`` wheel (temperature, humidity, light, CO2 every 16 min) with injected
faults. The training rows freeze the device's baseline on the truth (a window overlapping a
labelled fault of its device), the stand-in for serving, which freezes it on its own model's
flags; the thresholds are chosen on validation windows frozen on the model's flags (after a
first choice on windows frozen on the truth), and the held-out figures freeze it on the
model's flags, as served. Writes
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
    STUCK_RARE,
    window_flagged,
)
from training import progress, sensor_data
from training.export import export_classifier, write_model
from training.sensor_eval import (
    IsAnomalous,
    ScoredWindow,
    event_scores,
    fault_oracle,
    model_flag,
    windows,
)

MODELS = Path(__file__).resolve().parents[1] / "gateway" / "models"
WINDOW_S = 300.0
BASELINE = 288
MIN_WINDOWS = 288  # a day: a shorter history calls every evening routine an anomaly


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


WORLD_TRAIN_SEEDS = range(8, 14)  # the device simulators' world; seed 5 is the bench's
WORLD_VAL_SEEDS = (6, 7)
WORLD_CHECK_SEEDS = (14, 15)  # scored once at the end; no choice was made on them
WORLD_HOMES, WORLD_DAYS = 2, 3
FaultSpan = tuple[str, str, float, float, str]  # device, metric, start, end, kind


def world_home(seed: int) -> tuple[list[tuple[str, str, float, str, float]], list[FaultSpan]]:
    """The device simulators' world (a training tool: the gateway never imports ``devices``):
    its readings and injected faults, as the bench reads them."""
    from devices.world import World

    world = World(homes=WORLD_HOMES, seed=seed, anomaly_rate=1.0)
    readings, faults = [], []
    for em in world.run(start=sensor_data.START, step=60.0, steps=WORLD_DAYS * 1440):
        dev = f"{em.spec.home}/{em.spec.device}"
        for t in em.truth:
            if t.metric != "audio":
                faults.append((dev, t.metric, t.start, t.end, t.kind))
        if em.readings:
            readings += [(dev, em.spec.room, em.ts, m, v) for m, v in em.readings.items()]
    return readings, faults


def fault_rows(ws: list[ScoredWindow], faults: list[FaultSpan]) -> tuple[list[Any], list[int]]:
    """(row, label) per metric row. Where a fault is visible at all: a drift only once it has
    grown, a stuck value once it has repeated at a value the device rarely holds (stuck on
    standby is no fault anyone could see); rows before that are left out, not called normal."""
    xs, ys = [], []
    for w in ws:
        for m, row in zip(w.metrics, w.anomaly, strict=True):
            spans = [
                (s, e, kind)
                for d, fm, s, e, kind in faults
                if d == w.device and fm == m and s < w.window.end and e >= w.window.start
            ]
            if spans:
                s, e, kind = spans[0]
                start = s + {"drift": 0.4 * (e - s), "stuck": 900.0}.get(kind, 0.0)
                if start >= w.window.end or (kind == "stuck" and row[STUCK_RARE] <= 0.0):
                    continue
            xs.append(row)
            ys.append(int(bool(spans)))
    return xs, ys


def spans_of(faults: list[sensor_data.Fault]) -> list[FaultSpan]:
    return [(f.device, f.metric, f.start, f.end, f.kind) for f in faults]


def faults3(faults: list[FaultSpan]) -> list[tuple[str, float, float]]:
    return [(d, s, e) for d, _m, s, e, _k in faults]


def scored_readings(
    readings: Any, is_anom: IsAnomalous | None = None, window_s: float = WINDOW_S
) -> list[ScoredWindow]:
    return list(
        windows(
            readings,
            window_s=window_s,
            baseline_windows=BASELINE,
            min_windows=MIN_WINDOWS,
            is_anomalous=is_anom,
        )
    )


def fit_anomaly(x: Any, y: Any, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    # Supervised on injected faults: an IsolationForest over the same features reached only
    # F1 0.42 (event level) on held-out homes, as most features are irrelevant for most faults.
    # Size: onnxruntime's TreeEnsemble expands every node into its own in-memory structures
    # (~0.4 KB resident per node). 60 trees of depth 10 with 3-row leaves (21,580 nodes) cost
    # 12.3 MB resident once loaded and run; 25 trees of depth 8 with 10-row leaves (3,831 nodes)
    # 4.2 MB, for a mean event F1 at the best single threshold over the validation sets (the
    # synthetic validation homes and world seeds 6/7) of 0.852 against 0.864.
    return RandomForestClassifier(
        n_estimators=25,
        max_depth=8,
        min_samples_leaf=10,
        random_state=seed,
    ).fit(x, y)


def choose_thresholds(
    vsets: list[tuple[list[ScoredWindow], list[tuple[str, float, float]]]], proba: Any
) -> tuple[dict[str, float], float]:
    """A threshold, then one per metric (coordinate ascent, two passes: a light or power
    reading swings more in normal life than a temperature does), maximising mean event F1
    over the validation sets, on windows scored once: candidate thresholds change the flags,
    not the baseline those windows were scored against."""
    probs = [
        [proba(w.anomaly)[:, 1] if len(w.metrics) else np.zeros(0) for w in ws] for ws, _ in vsets
    ]

    def val_f1(th: dict[str, float]) -> float:
        f1s = []
        for (ws, f), p in zip(vsets, probs, strict=True):
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
            f1s.append(event_scores(flagged, f)["f1"])
        return float(np.mean(f1s))

    grid = [round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05)]
    best = max((val_f1({"threshold": t}), t) for t in grid)
    thresholds = {"threshold": best[1]}
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
    return thresholds, best[0]


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
    progress(t0, "homes generated")

    def scored(hs: list, flag: IsAnomalous | None = None) -> list[list[ScoredWindow]]:
        """Each home's windows, the baseline frozen on `flag` (the serving rule) or, without
        one, on the home's own labelled faults (training and validation)."""
        return [
            scored_readings(
                sensor_data.iter_readings(rows), flag or fault_oracle(faults3(spans_of(faults)))
            )
            for rows, faults in hs
        ]

    tr = scored(train)
    anom_x, anom_y = [], []
    occ_x, occ_y = [], []
    for (rows, faults), ws in zip(train, tr, strict=True):
        xs, ys = fault_rows(ws, spans_of(faults))
        anom_x += xs
        anom_y += ys
        labels = occupancy_labels(rows, WINDOW_S)
        for w in ws:
            if w.occupancy is not None:
                occ_x.append(w.occupancy)
                occ_y.append(int(labels[(w.device, w.window.start)]))
    # The device simulators' world too: its plugs, lamps and rooms swing in ways the synthetic
    # homes do not (a TV switched on, lamps at odd hours, a warm afternoon), the synthetic homes
    # are what the served model has to generalise from; occupancy stays on the synthetic homes.
    n_synth = len(anom_y)
    for seed in WORLD_TRAIN_SEEDS:
        readings, wfaults = world_home(seed)
        xs, ys = fault_rows(scored_readings(readings, fault_oracle(faults3(wfaults))), wfaults)
        anom_x += xs
        anom_y += ys
    progress(t0, f"world seeds {list(WORLD_TRAIN_SEEDS)}: {len(anom_y) - n_synth} rows")
    iso = fit_anomaly(np.asarray(anom_x, np.float32), np.asarray(anom_y), args.seed)
    # 10 trees of depth 6 (982 nodes): accuracy 0.941 on the synthetic validation homes, as 40
    # trees of depth 8 (8,900 nodes, 0.940); resident once loaded and run 3.0 MB against 6.6.
    occ = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=args.seed).fit(
        np.asarray(occ_x, np.float32), occ_y
    )
    progress(
        t0,
        f"fitted on {len(anom_y)} windows ({sum(anom_y)} faulty), {len(occ_y)} occupancy windows",
    )
    iso_bytes = export_classifier(iso, N_ANOMALY_FEATURES)
    occ_bytes = export_classifier(occ, N_OCCUPANCY_FEATURES)
    iso_s = ort.InferenceSession(iso_bytes, providers=["CPUExecutionProvider"])
    score = anomaly_scorer(iso_s)

    # Thresholds: best mean event F1 over the validation homes and the world's validation seeds,
    # first on their windows frozen on the truth (as the training rows are). The thresholds set
    # serving's flags, though, and served the baseline freezes on those flags only: most of a
    # fault's windows (a drift's early part, a spike the model misses) still enter it, so the
    # oracle-frozen windows overstate what a threshold finds (first run: validation F1 0.932
    # frozen on the truth, 0.790 served at the same thresholds). So the validation readings are
    # scored again, frozen on the model's own flags at those thresholds, and the thresholds are
    # chosen again on those windows (one fixed-point pass).
    vreadings: list[tuple[Any, list[tuple[str, float, float]]]] = [
        (rows, faults3(spans_of(f))) for rows, f in val
    ]
    world_val = {seed: world_home(seed) for seed in WORLD_VAL_SEEDS}  # scored again at the end
    vreadings += [(readings, faults3(wfaults)) for readings, wfaults in world_val.values()]

    def vscored(flag: IsAnomalous | None) -> list[list[ScoredWindow]]:
        return [
            scored_readings(
                sensor_data.iter_readings(r) if k < len(val) else r, flag or fault_oracle(f)
            )
            for k, (r, f) in enumerate(vreadings)
        ]

    faults_v = [f for _, f in vreadings]
    oracle_th, oracle_f1 = choose_thresholds(
        list(zip(vscored(None), faults_v, strict=True)), iso.predict_proba
    )
    progress(t0, f"thresholds {oracle_th} (validation F1 {oracle_f1:.3f}, frozen on the truth)")
    served = vscored(model_flag(score, oracle_th))
    served_f1 = float(
        np.mean([event_scores(ws, f)["f1"] for ws, f in zip(served, faults_v, strict=True)])
    )
    thresholds, best = choose_thresholds(
        list(zip(served, faults_v, strict=True)), iso.predict_proba
    )
    threshold = thresholds["threshold"]
    progress(
        t0,
        f"served at those: validation F1 {served_f1:.3f}; thresholds {thresholds} (validation F1 "
        f"{best:.3f}, frozen on the model's flags)",
    )

    # Held-out figures: the serving rule, the baseline frozen on the model's own flags.
    flag = model_flag(score, thresholds)
    te = scored(test, flag)
    all_w = [w for ws in te for w in ws]
    all_f = [f for _, fs in test for f in faults3(spans_of(fs))]
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
    # The world as the bench scores it (baseline frozen on flags): the validation seeds the
    # thresholds were chosen on, and seeds 14, 15 used for nothing else (seed 5 is the bench's).
    world_check = {}
    for seed in (*WORLD_VAL_SEEDS, *WORLD_CHECK_SEEDS):
        readings, wfaults = world_val[seed] if seed in world_val else world_home(seed)
        world_check[f"seed_{seed}"] = event_scores(
            scored_readings(readings, flag), faults3(wfaults)
        )
    metrics: dict[str, Any] = {
        "synthetic_heldout": synth,
        "uci_occupancy_river": uci,
        "world_validation": {k: world_check[f"seed_{k}"] for k in WORLD_VAL_SEEDS},
        "world_unseen": {k: world_check[f"seed_{k}"] for k in WORLD_CHECK_SEEDS},
        "threshold": threshold,
        "thresholds": thresholds,
        "threshold_choice (validation, mean event F1)": {
            "frozen_on_truth": {"thresholds": oracle_th, "f1": oracle_f1},
            "served_at_those": served_f1,
            # windows frozen on the model's flags at the oracle thresholds, re-chosen on them
            "frozen_on_model_flags_at_those": {"thresholds": thresholds, "f1": best},
        },
    }
    print(json.dumps(metrics, indent=1), flush=True)

    data = (
        f"synthetic homes (training/sensor_data.py), {args.days} days each "
        "at 60 s, "
        f"seeds {args.seed}..{args.seed + 4} train, +5..+6 threshold validation, +7..+9 held-out"
    )
    world_data = (
        f"; the device simulators' world (devices.world, {WORLD_HOMES} homes x {WORLD_DAYS} days, "
        "1 fault per device per day): seeds "
        f"{WORLD_TRAIN_SEEDS.start}..{WORLD_TRAIN_SEEDS.stop - 1}"
        f" train, {WORLD_VAL_SEEDS[0]} and {WORLD_VAL_SEEDS[1]} threshold validation (with the "
        f"synthetic validation homes, mean event F1), {WORLD_CHECK_SEEDS[0]} and "
        f"{WORLD_CHECK_SEEDS[1]} scored once at the end; seed 5 (bench/inference.py) never used"
    )
    write_model(
        MODELS,
        "sensor_anomaly",
        iso_bytes,
        kind="sensor_anomaly",
        inputs="one row per metric (temperature, humidity, co2, light, power): |level z|, "
        "|extreme z|, |step z|, log spread ratio, stuck run, |z to the same time yesterday|, "
        "stuck run at a value the baseline rarely held, |distance to the same time yesterday| on "
        "that hour's own scale, largest |level z| of the device's other metrics, motion share "
        "(-1 without motion), vs. the device's baseline",
        extra={**thresholds, "window_s": WINDOW_S, "hop_s": WINDOW_S},
        applies_to=AppliesTo(
            audio=False,
            device_classes=["thermostat", "air_quality", "motion", "plug", "generic"],
            metrics=list(ANOMALY_METRICS),
        ),
        card={
            "what": "RandomForest (25 trees, depth 8, leaves >= 10 rows) trained on injected "
            "faults; input one row per metric of robust z-features from the online per-device "
            "baseline; window score = max over metrics of P(fault); flagged when a metric's "
            "P(fault) reaches its threshold (per metric, tuned on the validation sets below, on "
            "windows whose baseline froze on the model's own flags as served). "
            "Stuck values count only at a value the device rarely held (< 5 % of its baseline "
            "windows): a plug on standby or a dark room repeat one reading for hours. The hour's "
            "own scale (half the range of yesterday's means within an hour) finds slow drifts at "
            "night that the day's range hides; the other metrics' deviation and the motion share "
            "tell a room warming or filling with people (several metrics move, someone is there) "
            "from a sensor fault (one metric moves). Before these inputs and the world training "
            "data the world's event F1 was 0.70/0.75 on seeds 6/7. An IsolationForest over all "
            "metrics' features at once reached only event F1 0.42. The training rows "
            "freeze the device's baseline on the truth (a window overlapping a labelled "
            "fault of the device, the simulators' ground truth), the best stand-in for serving, "
            "which freezes it on its own model's flags (it also freezes on its false alarms, and "
            "not on a fault's first windows before it shows); before this, training froze it on "
            "nothing, so a stuck value entered the baseline and its stuck-rare input faded in the "
            "training rows though not in serving. The thresholds are chosen on validation windows "
            "frozen on the model's own flags (chosen first on windows frozen on the truth, then "
            "again on the validation readings re-scored with those thresholds' flags: the truth "
            "freezes more windows than serving does and overstated F1, see threshold_choice in "
            "sensor_metrics.json). The held-out figures freeze it on the model's own flags, as "
            "served",
            "data": data + world_data,
            "world as the bench scores it (event-level)": metrics["world_validation"]
            | metrics["world_unseen"],
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
            "what": "RandomForest (10 trees, depth 6): room occupied in the window",
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
    progress(t0, "done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
