"""The simulated world without a broker: deterministic, plausible, with daily patterns, and its
injected anomalies are where the ground truth says."""

from __future__ import annotations

import statistics
import wave
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from devices.anomalies import GroundTruth
from devices.audio import AudioSynth, ClipSet, Scene
from devices.fleet import Cue, Fleet, FleetConfig
from devices.layout import build_layout
from devices.sensors import Emission
from devices.world import World
from schemas.audio import decode_audio_frame
from schemas.metrics import METRICS, DeviceClass, infer_device_class
from schemas.telemetry import decode_telemetry
from schemas.topics import Kind, parse_device_topic

START = 1764374400.0  # 2025-11-29 00:00 UTC, local midnight for the default offset
DAY = 86400.0


def _run(world: World, *, days: float, step: float) -> list[Emission]:
    return list(world.run(start=START, step=step, steps=int(days * DAY / step)))


@pytest.fixture(scope="module")
def three_days() -> list[Emission]:
    return _run(World(homes=3, seed=11, anomaly_rate=0.0), days=3, step=900)


def _series(emissions: list[Emission], cls: DeviceClass, metric: str) -> list[tuple[float, float]]:
    return [
        (e.ts, e.readings[metric])
        for e in emissions
        if e.spec.device_class is cls and e.readings and metric in e.readings
    ]


def _mean_at_hours(series: list[tuple[float, float]], hours: range) -> float:
    return statistics.mean(v for ts, v in series if int((ts - START) % DAY // 3600) in hours)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    def payloads(seed: int) -> list[tuple[str, bytes]]:
        world = World(homes=2, seed=seed, anomaly_rate=3.0)
        return [(e.topic(), e.payload) for e in world.run(start=START, step=600, steps=40)]

    first = payloads(5)
    assert first == payloads(5)
    assert first != payloads(6)


def test_layout_ids_are_valid_topics_and_name_their_class() -> None:
    layout = build_layout(4, seed=3)
    assert [h.home for h in layout] == ["home-001", "home-002", "home-003", "home-004"]
    seen_classes = set()
    for home in layout:
        ids = [d.device for d in home.devices]
        assert len(ids) == len(set(ids))
        for spec in home.devices:
            assert infer_device_class(spec.device) is spec.device_class
            seen_classes.add(spec.device_class)
    assert seen_classes == set(DeviceClass) - {DeviceClass.GENERIC}
    assert any(d.device.startswith("air-quality-") for h in layout for d in h.devices)
    # Adding homes keeps the earlier ones.
    assert build_layout(6, seed=3)[:4] == layout


def test_payloads_decode_with_schemas_and_values_are_plausible(
    three_days: list[Emission],
) -> None:
    kinds = set()
    for e in three_days:
        where = parse_device_topic(e.topic())
        assert (where.home, where.room, where.device) == (e.spec.home, e.spec.room, e.spec.device)
        kinds.add(where.kind)
        if where.kind is Kind.AUDIO:
            frame = decode_audio_frame(e.payload)
            assert frame.ts == e.ts and frame.duration == pytest.approx(0.5)
            continue
        msg = decode_telemetry(e.payload)
        assert msg.ts == e.ts and msg.seq == e.seq and msg.readings == e.readings
        for name, value in msg.readings.items():
            assert METRICS[name].plausible(value), (e.spec.device, name, value)
    assert kinds == {Kind.TELEMETRY, Kind.AUDIO}
    seqs = [e.seq for e in three_days if e.spec.home == "home-001" and e.spec.index == 0]
    assert seqs == list(range(len(seqs)))


def test_daily_patterns_follow_daylight_and_occupancy(three_days: list[Emission]) -> None:
    light = _series(three_days, DeviceClass.MOTION, "light")
    assert _mean_at_hours(light, range(11, 14)) > 5 * _mean_at_hours(light, range(2, 4)) + 10
    heart = _series(three_days, DeviceClass.WEARABLE, "heart_rate")
    assert _mean_at_hours(heart, range(2, 5)) + 5 < _mean_at_hours(heart, range(10, 20))
    # People sleep in the bedroom: its CO2 builds up at night and clears in the afternoon;
    # the living room is the other way round.
    living_co2 = [
        (e.ts, e.readings["co2"])
        for e in three_days
        if e.spec.room == "living" and e.readings and "co2" in e.readings
    ]
    assert _mean_at_hours(living_co2, range(20, 22)) > _mean_at_hours(living_co2, range(4, 6)) + 100
    world = World(homes=3, seed=11)
    bedroom = [
        (ts, world.climate(home.home, "bedroom").co2(ts))
        for home in world.homes
        for ts in np.arange(START, START + 3 * DAY, 900.0)
    ]
    assert _mean_at_hours(bedroom, range(3, 6)) > _mean_at_hours(bedroom, range(14, 16)) + 200
    # The heating sets back at night.
    temps = _series(three_days, DeviceClass.THERMOSTAT, "temperature")
    assert _mean_at_hours(temps, range(19, 22)) > _mean_at_hours(temps, range(4, 6)) + 1.0
    motion = _series(three_days, DeviceClass.MOTION, "motion")
    assert 0 < sum(v for _, v in motion) < len(motion)
    doors = _series(three_days, DeviceClass.DOOR, "door")
    assert sum(v for _, v in doors) >= 3  # households leave and come back


def test_counters_and_batteries_move_the_right_way(three_days: list[Emission]) -> None:
    by_device: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for e in three_days:
        if e.readings:
            by_device[(e.spec.home, e.spec.device)].append(dict(e.readings))
    for (_, device), rows in by_device.items():
        if device.startswith("plug-"):
            energy = [r["energy"] for r in rows]
            assert energy == sorted(energy) and energy[-1] > energy[0]
        if device.startswith("door-"):
            battery = [r["battery"] for r in rows]
            assert battery == sorted(battery, reverse=True)


def test_microphones_play_silence_noise_and_tones() -> None:
    world = World(homes=2, seed=4, anomaly_rate=0.0)
    frames = [e for e in _run(world, days=1, step=120) if e.kind is Kind.AUDIO]
    labels = {e.label for e in frames}
    assert {Scene.SILENCE, Scene.NOISE, Scene.TONE} <= labels
    quiet = [np.abs(e.samples).mean() for e in frames if e.label == Scene.SILENCE]
    busy = [np.abs(e.samples).mean() for e in frames if e.label == Scene.NOISE]
    assert statistics.mean(quiet) * 5 < statistics.mean(busy)
    tones = [e for e in frames if e.label == Scene.TONE]
    assert all(e.truth and e.truth[0].kind == "tone" for e in tones)


def test_clips_from_a_wav_directory_play_whole_across_frames(tmp_path: Path) -> None:
    clip = (np.sin(np.arange(20000) / 3.0) * 10000).astype(np.int16)  # 1.25 s: three frames
    for name in ("speech_0", "speech_1"):
        with wave.open(str(tmp_path / f"{name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(clip.astype("<i2").tobytes())
    clips = ClipSet.from_dir(tmp_path)
    assert list(clips.clips) == ["speech"] and len(clips.clips["speech"]) == 2

    world = World(homes=1, seed=4, anomaly_rate=0.0, clips=clips)
    microphones = [m for m in world.models if m.kind is Kind.AUDIO]
    frames = [m.next(START + i * 60.0) for i in range(1440) for m in microphones]
    spoken = [e for e in frames if e.truth and e.truth[0].kind == "speech"]
    assert spoken
    for end_frame in spoken[:3]:
        truth = end_frame.truth[0]
        mic = [e for e in frames if e.spec == end_frame.spec and truth.covers(e.ts)]
        assert [e.label for e in mic] == ["speech"] * len(mic) and len(mic) >= 3
        heard = np.concatenate([e.samples for e in mic]).astype(np.float64)
        # The clip is in there, in one piece: its correlation peak is close to perfect.
        corr = np.correlate(heard, clip.astype(np.float64), mode="valid")
        assert corr.max() / float(np.dot(clip.astype(np.float64), clip)) > 0.95

    (tmp_path / "bad.wav").write_bytes(b"")
    with wave.open(str(tmp_path / "bad.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\0\0\0\0")
    with pytest.raises(ValueError, match="expected mono 16-bit 16000 Hz"):
        ClipSet.from_dir(tmp_path)


def test_a_cued_clip_plays_whole_with_quiet_around_it_after_the_clip_playing() -> None:
    rng = np.random.default_rng(1)
    long_talk = (np.sin(np.arange(40000) / 5.0) * 8000).astype(np.int16)  # 2.5 s: five frames
    command = (np.sin(np.arange(12000) / 2.0) * 9000).astype(np.int16)  # 0.75 s: two frames
    synth = AudioSynth(
        rng,
        frame_seconds=0.5,
        clips=ClipSet({"speech": [long_talk], "keyword_stop": [command]}),
    )
    with pytest.raises(KeyError, match="no clip labelled 'alarm_smoke_t3'"):
        synth.cue("alarm_smoke_t3")
    # Start the long clip, then cue the command while it plays: it waits for the end.
    while synth.frame(occupied=True).label != "speech":
        pass
    synth.cue("keyword_stop")
    labels = [synth.frame(occupied=True).label for _ in range(14)]
    first = labels.index("keyword_stop")
    # The speech clip ran out, then a second of the quiet floor (two 0.5 s frames) came first.
    assert "speech" not in labels[first:]
    assert labels[first - 2 : first] == [Scene.SILENCE, Scene.SILENCE]
    assert labels[first : first + 2] == ["keyword_stop"] * 2
    assert labels[first + 2 : first + 4] == [Scene.SILENCE, Scene.SILENCE]


def test_cues_parse_and_a_cue_without_its_clip_is_refused() -> None:
    assert Cue.parse("8:alarm_smoke_t3") == Cue(at_s=8, label="alarm_smoke_t3")
    with pytest.raises(ValueError, match="expected SECONDS:LABEL"):
        Cue.parse("alarm_smoke_t3")
    config = FleetConfig(cues=(Cue(at_s=1, label="keyword_stop"),))
    with pytest.raises(ValueError, match="cue 'keyword_stop': no clip with that label"):
        Fleet(config, world=World(homes=1, seed=0))


def _readings(emissions: list[Emission]) -> dict[tuple[str, str, str, float], float]:
    out = {}
    for e in emissions:
        for name, value in (e.readings or {}).items():
            out[(e.spec.home, e.spec.device, name, e.ts)] = value
    return out


def test_anomalies_change_the_data_exactly_inside_the_ground_truth_windows() -> None:
    clean = _readings(_run(World(homes=2, seed=9, anomaly_rate=0.0), days=2, step=300))
    faulty_run = _run(World(homes=2, seed=9, anomaly_rate=3.0), days=2, step=300)
    faulty = _readings(faulty_run)
    truths = [t for e in faulty_run for t in e.truth if t.metric != "audio"]
    assert len(truths) >= 20
    assert {t.kind for t in truths} == {"spike", "stuck", "drift"}
    assert clean.keys() == faulty.keys()

    def covering(home: str, device: str, name: str, ts: float) -> list[GroundTruth]:
        return [
            t
            for t in truths
            if (t.home, t.device, t.metric) == (home, device, name) and t.covers(ts)
        ]

    changed = [k for k in clean if clean[k] != faulty[k]]
    assert changed
    for key in changed:
        assert covering(*key), f"{key} changed outside every ground-truth window"
    for t in truths:
        inside = [k for k in clean if (k[0], k[1], k[2]) == (t.home, t.device, t.metric)]
        inside = [k for k in inside if t.covers(k[3])]
        # A stuck sensor on a constant signal (light at night) is indistinguishable from a good one.
        if len(inside) >= 2 and len({clean[k] for k in inside}) > 1:
            assert any(clean[k] != faulty[k] for k in inside), t
