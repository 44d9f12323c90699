"""The privacy filter: nothing identifying leaves, noise has the promised law, budget and
suppression hold."""

from __future__ import annotations

import gzip
import math
import stat
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import insert, select

from gateway.db import devices
from gateway.sync import counters
from gateway.sync.pipeline import SyncPipeline, aggregate_and_enqueue
from gateway.sync.privacy import (
    PrivacyFilter,
    home_pseudonym,
    laplace_scales,
    load_or_create_secret,
    noised_count_sum,
    room_class,
    try_spend,
)
from gateway.sync.settings import (
    AggregationSettings,
    PrivacySettings,
    RoomClass,
    UplinkSettings,
)
from gateway.sync.tables import outbox, privacy_ledger
from gateway.sync.windows import WindowGroup, WindowStats
from schemas.batch import decode_batch
from schemas.batch_rules import batch_violation, first_violation
from schemas.metrics import metric
from tests.test_sync_windows import T0, add_readings, make_db

SECRET = "0123456789abcdef0123456789abcdef"


def privacy(**kw: object) -> PrivacySettings:
    return PrivacySettings.model_validate({"secret": SECRET, **kw})


def group(metric_name: str, n: int, *, home: str = "h1", room: str = "kitchen") -> WindowGroup:
    values = np.linspace(60.0, 80.0, n) if n else np.array([])
    return WindowGroup(
        home=home,
        room=room,
        device_class="wearable",
        metric=metric_name,
        window_start=T0,
        window_s=60,
        values=values,
        stats=WindowStats.of(values),
    )


@pytest.mark.parametrize(
    ("room", "cls"),
    [
        ("Kitchen", RoomClass.KITCHEN),
        ("living_room", RoomClass.LIVING),
        ("LivingRoom", RoomClass.LIVING),
        ("den", RoomClass.LIVING),
        ("garden", RoomClass.OUTDOOR),
        ("alice-bedroom", RoomClass.BEDROOM),
        ("master_bath", RoomClass.BATHROOM),
        ("wc", RoomClass.BATHROOM),
        ("home office 2", RoomClass.OFFICE),
        ("hallway", RoomClass.HALL),
        ("entrance", RoomClass.HALL),
        ("garage", RoomClass.GARAGE),
        ("balcony", RoomClass.OUTDOOR),
        ("attic", RoomClass.OTHER),
    ],
)
def test_room_class_heuristic(room: str, cls: RoomClass) -> None:
    assert room_class(room) is cls


def test_room_class_override() -> None:
    assert room_class("attic", {"attic": RoomClass.OFFICE}) is RoomClass.OFFICE


def test_settings_validation() -> None:
    s = PrivacySettings()
    assert s.policy_of("heart_rate") == "noised"
    assert s.policy_of("temperature") == "aggregate"
    assert s.policy_of("brand_new_metric") == "local"
    with pytest.raises(ValidationError, match="health data"):
        PrivacySettings.model_validate({"policies": {"heart_rate": "aggregate"}})
    with pytest.raises(ValidationError, match="no registered range"):
        PrivacySettings.model_validate({"policies": {"brand_new_metric": "noised"}})
    with pytest.raises(ValidationError):
        PrivacySettings.model_validate({"epsilonn": 1.0})
    with pytest.raises(ValidationError):
        UplinkSettings.model_validate({"backoff_min_s": 5, "backoff_max_s": 1})
    # a health metric missing from an explicit table stays noised
    assert PrivacySettings.model_validate({"policies": {}}).policy_of("heart_rate") == "noised"


def test_secret_file_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "sync.secret"
    key = load_or_create_secret(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["sync.secret"]  # no temp file left
    path.write_text("not hex")
    with pytest.raises(ValueError, match="hex"):
        load_or_create_secret(path)


def test_pseudonym_keyed_and_rotating() -> None:
    s = privacy(pseudonym_rotation_days=1)
    key = SECRET.encode()
    p = home_pseudonym(key, "smith-home", T0, s)
    assert p.startswith("h-") and len(p) == 2 + 20 and "smith" not in p
    assert home_pseudonym(key, "smith-home", T0 + 1, s) == p
    assert home_pseudonym(key, "jones-home", T0, s) != p
    assert home_pseudonym(b"another key of 16+ bytes", "smith-home", T0, s) != p
    assert home_pseudonym(key, "smith-home", T0 + 86400, s) != p  # rotated
    never = privacy(pseudonym_rotation_days=0)
    assert home_pseudonym(key, "smith-home", T0, never) == home_pseudonym(
        key, "smith-home", T0 + 1e8, never
    )


def test_no_identity_leaves_in_batches(tmp_path: Path) -> None:
    """Every batch body, decompressed, holds no home id, room name or device id."""
    homes = ["smith-family-home", "HomeOfJones42"]
    rooms = ["alice-bedroom", "main-kitchen", "den-downstairs", "upstairs-bathroom"]
    devs = {
        "sn-8f21ab44": "thermostat",
        "aqara-livingroom-x": "air_quality",
        "bobs-fitbit": "wearable",
        "thermostat-17": "thermostat",
    }
    metrics_of = {
        "sn-8f21ab44": ("temperature", "humidity"),
        "aqara-livingroom-x": ("co2",),
        "bobs-fitbit": ("heart_rate",),
        "thermostat-17": ("temperature", "battery"),
    }
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        for home in homes:
            for i, (dev, dclass) in enumerate(devs.items()):
                room = rooms[i % len(rooms)]
                conn.execute(
                    insert(devices).values(home=home, device=dev, room=room, device_class=dclass)
                )
                add_readings(
                    conn,
                    [
                        (home, room, dev, m, T0 + t, 60.0 + (t % 7))
                        for t in range(0, 300)
                        for m in metrics_of[dev]
                    ],
                )
    pipeline = SyncPipeline.from_settings(
        "gw-1",
        AggregationSettings(backfill_s=1e6, windows_per_batch=1),
        privacy(),
        UplinkSettings(batch_max_aggregates=7),
        rng=np.random.default_rng(1),
    )
    with engine.begin() as conn:
        result = aggregate_and_enqueue(conn, T0 + 400, pipeline)
    assert result.windows > 0 and len(result.enqueued.seqs) > 1
    with engine.connect() as conn:
        bodies = [gzip.decompress(b) for b in conn.execute(select(outbox.c.body_gz)).scalars()]
    assert len(bodies) == len(result.enqueued.seqs)
    forbidden = [*homes, *rooms, *devs]
    released = []
    for body in bodies:
        low = body.lower()
        for word in forbidden:
            assert word.lower().encode() not in low, word
        batch = decode_batch(body)
        # what the cloud checks before storing: the batch contract's rules hold
        assert batch_violation(batch, now=T0 + 400) is None
        released.extend(batch.aggregates)
    # the identities became categories and pseudonyms
    assert {a.room_class for a in released} <= {c.value for c in RoomClass}
    assert len({a.home for a in released}) == 2
    assert all(a.home.startswith("h-") for a in released)
    hr = [a for a in released if a.metric == "heart_rate"]
    assert hr and all(a.policy == "noised" and a.p50 is None and a.min is None for a in hr)
    assert all(a.epsilon == 0.5 for a in hr)
    assert {a.metric for a in released} == {
        "temperature",
        "humidity",
        "co2",
        "heart_rate",
        "battery",
    }


def _ks_laplace(samples: np.ndarray, scale: float) -> float:
    """Kolmogorov-Smirnov distance of `samples` to Laplace(0, scale)."""
    x = np.sort(samples)
    cdf = np.where(x < 0, 0.5 * np.exp(x / scale), 1.0 - 0.5 * np.exp(-x / scale))
    n = x.size
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def test_noise_follows_laplace_with_calibrated_scale() -> None:
    hr = metric("heart_rate")
    assert hr is not None
    epsilon = 0.5
    count_scale, sum_scale = laplace_scales(hr, epsilon)
    assert count_scale == pytest.approx(2 / epsilon)  # count sensitivity 1, half the epsilon
    assert sum_scale == pytest.approx(2 * 250.0 / epsilon)  # max(|20|, |250|)

    rng = np.random.default_rng(12345)
    values = np.array([70.0, 80.0, 90.0, 300.0])  # 300 is clipped to the range's 250
    n = 20000
    draws = np.array([noised_count_sum(values, hr, epsilon, rng) for _ in range(n)])
    count_noise = draws[:, 0] - 4
    sum_noise = draws[:, 1] - (70 + 80 + 90 + 250)
    for noise, scale in ((count_noise, count_scale), (sum_noise, sum_scale)):
        # |X| of Laplace(b) is exponential(b): mean b, sd b -> 5% is > 7 standard errors
        assert np.abs(noise).mean() == pytest.approx(scale, rel=0.05)
        assert noise.var() == pytest.approx(2 * scale**2, rel=0.1)
        assert abs(noise.mean()) < 5 * scale * math.sqrt(2 / n)
        # KS critical value at alpha = 0.001 is 1.95 / sqrt(n)
        assert _ks_laplace(noise, scale) < 1.95 / math.sqrt(n)
    # and it is not some other scale
    assert _ks_laplace(count_noise, count_scale * 1.2) > 1.95 / math.sqrt(n)


def test_budget_ledger_refuses_once_spent(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    filt = PrivacyFilter(
        privacy(epsilon=1.0, budget_epsilon=3.0, min_window_count=1),
        SECRET.encode(),
        np.random.default_rng(0),
    )
    with engine.begin() as conn:
        rel = filt.release(conn, [group("heart_rate", 60, room=f"bedroom-{i}") for i in range(1)])
        assert (len(rel.aggregates), rel.refused, rel.epsilon_spent) == (1, 0, 1.0)
        for _ in range(4):
            rel = filt.release(conn, [group("heart_rate", 60)])
        assert rel.refused == 1 and rel.aggregates == ()
        # other homes have their own budget; exact metrics are never refused
        assert len(filt.release(conn, [group("heart_rate", 60, home="h2")]).aggregates) == 1
        assert len(filt.release(conn, [group("humidity", 60)]).aggregates) == 1
    with engine.connect() as conn:
        row = conn.execute(select(privacy_ledger).where(privacy_ledger.c.home == "h1")).one()
        assert (row.epsilon_spent, row.releases, row.refused) == (3.0, 3, 2)
        assert counters.read_all(conn)["epsilon_refused"] == 2
        # a new period has a fresh budget
        assert try_spend(conn, "h1", row.period_start + 86400, 1.0, 3.0)


def test_small_windows_suppressed(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    filt = PrivacyFilter(privacy(min_window_count=5), SECRET.encode(), np.random.default_rng(0))
    with engine.begin() as conn:
        rel = filt.release(conn, [group("humidity", 4, room="kitchen"), group("co2", 5)])
        assert [a.metric for a in rel.aggregates] == ["co2"] and rel.suppressed == 1
        # two rooms of one class merge into one release: 3 + 3 readings pass the threshold
        merged = filt.release(
            conn, [group("humidity", 3, room="kids-bedroom"), group("humidity", 3, room="bedroom")]
        )
        assert [(a.room_class, a.count) for a in merged.aggregates] == [("bedroom", 6)]
        assert counters.read_all(conn)["suppressed_windows"] == 1


class NoNoise:
    def laplace(self, loc: float, scale: float) -> float:
        return loc


def test_a_noised_window_is_suppressed_on_its_count_as_released(tmp_path: Path) -> None:
    # epsilon 0.01: the count's noise scale is 200, so it is released rounded to tens. A noisy
    # count of exactly 5 passes a threshold of 5 but rounds (half to even) to 0: released, it
    # would be a window under min_window_count, which the cloud refuses.
    settings = privacy(epsilon=0.01, min_window_count=5)
    filt = PrivacyFilter(settings, SECRET.encode(), NoNoise())
    with make_db(tmp_path).begin() as conn:
        rel = filt.release(conn, [group("heart_rate", 5), group("heart_rate", 15, home="h2")])
    assert [(a.count, a.policy) for a in rel.aggregates] == [(20.0, "noised")]
    assert rel.suppressed == 1


def test_local_and_unknown_metrics_never_leave(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    filt = PrivacyFilter(
        privacy(policies={"co2": "local"}), SECRET.encode(), np.random.default_rng(0)
    )
    with engine.begin() as conn:
        rel = filt.release(conn, [group("co2", 50), group("vibes", 50), group("humidity", 50)])
    assert [a.metric for a in rel.aggregates] == ["humidity"] and rel.local == 2


def edge_group(name: str, values: list[float], device_class: str = "microphone") -> WindowGroup:
    """A window of an inference metric as the engine writes it (alarm/keyword: only 1s)."""
    arr = np.asarray(values, dtype=float)
    return WindowGroup(
        home="h1",
        room="kitchen",
        device_class=device_class,
        metric=name,
        window_start=T0,
        window_s=60,
        values=arr,
        stats=WindowStats.of(arr),
    )


@pytest.mark.parametrize(
    ("name", "values", "events"),
    [
        ("inference_alarm", [1.0], 1),  # one alarm heard: the engine's only reading
        ("inference_keyword", [1.0, 1.0], 2),
        ("inference_anomaly", [1.0], 1),  # one flagged sensor window
        ("inference_anomaly", [0.0, 1.0, 0.0], 1),  # three scored windows, one flagged
    ],
)
def test_edge_event_counts_are_released_from_one_event(
    tmp_path: Path, name: str, values: list[float], events: int
) -> None:
    engine = make_db(tmp_path)
    filt = PrivacyFilter(privacy(), SECRET.encode(), np.random.default_rng(0))
    with engine.begin() as conn:
        rel = filt.release(conn, [edge_group(name, values)])
    (agg,) = rel.aggregates
    assert (agg.metric, agg.policy, agg.count, agg.sum, agg.mean) == (
        name,
        "aggregate",
        events,
        events,
        1.0,
    )
    assert (agg.min, agg.max, agg.std, agg.p50, agg.p95) == (None,) * 5
    assert rel.suppressed == 0
    # Below the min_window_count the cloud holds measured windows to, and still valid.
    assert first_violation([agg], min_count=5, latest_end=math.inf) is None


def test_windows_without_events_and_speech_shares_follow_their_own_rules(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    filt = PrivacyFilter(privacy(), SECRET.encode(), np.random.default_rng(0))
    with engine.begin() as conn:
        rel = filt.release(
            conn,
            [
                # Scored sensor windows, none flagged: nothing leaves (not even that the
                # sensor reported).
                edge_group("inference_anomaly", [0.0, 0.0], "thermostat"),
                # Speech is a measured share: one summary is one reading, under the floor.
                edge_group("inference_speech", [0.4]),
            ],
        )
        assert rel.aggregates == () and rel.no_events == 1 and rel.suppressed == 1
        shares = [0.1, 0.2, 0.0, 0.5, 0.3, 0.3]
        (speech,) = filt.release(conn, [edge_group("inference_speech", shares)]).aggregates
    assert (speech.count, speech.mean, speech.max) == (6, pytest.approx(1.4 / 6, rel=1e-6), 0.5)


def test_occupancy_stays_local_unless_a_home_opts_in(tmp_path: Path) -> None:
    # Occupancy per room says when the home is empty: local by default.
    assert privacy().policy_of("inference_occupancy") == "local"
    assert privacy(default_policy="aggregate").policy_of("inference_occupancy") == "local"
    occupancy = edge_group("inference_occupancy", [1.0, 1.0, 0.0, 1.0, 1.0], "motion")
    engine = make_db(tmp_path)
    default = PrivacyFilter(privacy(), SECRET.encode(), np.random.default_rng(0))
    opted = PrivacyFilter(
        privacy(policies={"inference_occupancy": "aggregate"}),
        SECRET.encode(),
        np.random.default_rng(0),
    )
    with engine.begin() as conn:
        rel = default.release(conn, [occupancy])
        assert rel.aggregates == () and rel.local == 1
        (agg,) = opted.release(conn, [occupancy]).aggregates
        # Opted in, it is a measured share: the normal floor and statistics apply.
        assert (agg.count, agg.mean, agg.min) == (5, 0.8, 0.0)
        assert not opted.release(conn, [edge_group("inference_occupancy", [1.0])]).aggregates


@pytest.mark.parametrize("name", ["inference_alarm", "inference_keyword", "inference_anomaly"])
def test_a_home_can_keep_edge_events_local_or_noise_them(tmp_path: Path, name: str) -> None:
    engine = make_db(tmp_path)
    kept = PrivacyFilter(
        privacy(policies={name: "local"}), SECRET.encode(), np.random.default_rng(0)
    )
    noised = PrivacyFilter(
        privacy(policies={name: "noised"}), SECRET.encode(), np.random.default_rng(0)
    )
    events = edge_group(name, [1.0] * 20)
    with engine.begin() as conn:
        assert not kept.release(conn, [events]).aggregates
        (agg,) = noised.release(conn, [events]).aggregates
    assert agg.policy == "noised" and agg.epsilon == 0.5 and agg.min is None
    assert agg.count != 20 and abs(agg.count - 20) < 40  # noised, on the count of events
    assert first_violation([agg], min_count=5, latest_end=math.inf) is None
