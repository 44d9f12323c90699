"""Model loading: manifests, warm-up, broken files named in the error, the others serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gateway.inference.audio import AlarmDebouncer, keyword_decision
from gateway.inference.discovery import anomaly_config, microphone_configs, occupancy_config
from gateway.inference.manifest import ModelKind
from gateway.inference.runtime import ModelLoadError, ModelRuntime, load_model
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings
from gateway.inference.speech_embedding import KW_SAMPLES, SpeechEmbedder
from schemas.events import InferenceEvent, decode_event, encode_event

ALL = {"audio_embedding", "vad", "keyword", "alarm", "sensor_anomaly", "occupancy"}


def test_every_committed_model_loads_and_warms_up() -> None:
    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR)
    assert runtime.errors == []
    assert set(runtime.models) == ALL
    for kind in ModelKind:
        model = runtime.of_kind(kind)
        assert model is not None, kind
        out = model.run(np.zeros((3, model.manifest.n_features), np.float32))
        assert len(out[-1]) == 3
        assert (DEFAULT_MODELS_DIR / model.manifest.file.replace(".onnx", ".md")).exists()


def _copy_models(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, target)
    return target


def test_a_broken_model_file_is_named_and_the_others_keep_serving(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    (models / "keyword.onnx").write_bytes(b"this is not an onnx graph")
    runtime = ModelRuntime.load(models)
    assert [e.path.name for e in runtime.errors] == ["keyword.onnx"]
    assert "keyword.onnx" in str(runtime.errors[0])
    assert set(runtime.models) == ALL - {"keyword"}
    alarm = runtime.models["alarm"]
    assert alarm.probabilities(np.zeros((1, alarm.manifest.n_features), np.float32)).shape == (1, 3)


def test_a_bad_manifest_or_a_shape_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    (models / "vad.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"vad\.json"):
        load_model(models / "vad.json")
    manifest = json.loads((models / "alarm.json").read_text())
    manifest["n_features"] = 7
    (models / "alarm.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"alarm\.onnx.*manifest says"):
        load_model(models / "alarm.json")


def test_settings_forbid_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        InferenceSettings.model_validate({"intra_op_thread": 2})
    assert InferenceSettings().debug_audio_dir is None


def test_alarm_debouncer_fires_once_per_pattern() -> None:
    deb = AlarmDebouncer(threshold=0.3, cooldown_s=3.5)
    steps = [(0.9, 0.0, "smoke_t3"), (0.95, 0.05, "smoke_t3"), (0.1, 1.0, "smoke_t3")]
    steps += [(0.99, 2.0, None), (0.9, 4.0, "co_t4")]
    fired = [deb.step(s, t, p) for s, t, p in steps]
    # A high score without the T3/T4 timing never fires; a low score with it neither.
    assert fired == [True, False, False, False, True]
    assert keyword_decision(np.array([0.1, 0.2, 0.6, 0.1], np.float32), 0.5) == (
        "lights_off",
        pytest.approx(0.6),
    )
    assert keyword_decision(np.array([0.5, 0.2, 0.2, 0.1], np.float32), 0.5)[0] == "other"
    # A manifest's thresholds: a command's own where it has one, else "threshold".
    per = {"threshold": 0.9, "threshold_stop": 0.6}
    assert keyword_decision(np.array([0.3, 0.0, 0.0, 0.7], np.float32), per)[0] == "stop"
    assert keyword_decision(np.array([0.2, 0.8, 0.0, 0.0], np.float32), per)[0] == "other"
    assert keyword_decision(np.array([0.05, 0.95, 0.0, 0.0], np.float32), per)[0] == "lights_on"


def test_event_payload_round_trips() -> None:
    event = InferenceEvent(
        model="alarm",
        version="1",
        home="h",
        room="kitchen",
        device="mic-1",
        label="smoke_t3",
        score=0.9,
        window_start=1.0,
        window_end=2.0,
        ts=2.1,
    )
    assert decode_event(encode_event(event)) == event


def test_home_assistant_discovery_payloads() -> None:
    status = "r/gw-7/gateway/status"  # the gateway's own topic, keyed by its id, not the home
    alarm, keyword = microphone_configs(
        "home-1",
        "kitchen",
        "microphone-1",
        gateway_id="gw-7",
        root="r",
        prefix="homeassistant",
        off_delay_s=30,
        availability_topic=status,
    )
    assert alarm.topic.startswith(
        "homeassistant/binary_sensor/homeedge_gw-7/home-1_microphone-1_alarm_"
    )
    body = json.loads(alarm.payload)
    assert body["unique_id"] == "homeedge_gw-7/home-1/microphone-1/alarm"
    assert body["default_entity_id"] == "binary_sensor.homeedge_gw_7_home_1_microphone_1_alarm"
    assert body["state_topic"] == "r/home-1/gateway/events/alarm"
    assert body["availability_topic"] == status
    assert body["device_class"] == "smoke" and body["off_delay"] == 30
    assert "microphone-1" in body["value_template"]
    # The microphone's own HA device, reached through the gateway's.
    assert body["device"]["identifiers"] == ["homeedge_gw-7/home-1/microphone-1"]
    assert body["device"]["suggested_area"] == "kitchen"
    assert body["device"]["via_device"] == "homeedge_gw-7"
    kw = json.loads(keyword.payload)
    assert keyword.topic.startswith("homeassistant/event/") and kw["event_types"] == [
        "lights_on",
        "lights_off",
        "stop",
    ]
    assert kw["device"] == body["device"]
    occ = json.loads(
        occupancy_config(
            "home-1", "living", gateway_id="gw-7", root="r", prefix="ha", availability_topic=status
        ).payload
    )
    assert occ["availability_topic"] == status
    assert occ["device_class"] == "occupancy" and occ["state_topic"].endswith("/events/occupancy")
    assert occ["device"]["identifiers"] == ["homeedge_gw-7"]  # a room is on the gateway's device
    an = anomaly_config(
        "home-1",
        "living",
        "thermostat-1",
        gateway_id="gw-7",
        root="r",
        prefix="ha",
        availability_topic=status,
    )
    assert json.loads(an.payload)["availability_topic"] == status
    assert an.topic.startswith("ha/sensor/homeedge_gw-7/home-1_thermostat-1_anomaly_")
    assert json.loads(an.payload)["state_class"] == "measurement"
    assert len({json.loads(c.payload)["unique_id"] for c in (alarm, keyword)}) == 2


async def discard(_: object) -> None:
    """The engine's `write` and `store` where a test only runs the models (`_process`)."""


def test_raw_audio_is_kept_only_with_the_local_debug_option(tmp_path: Path) -> None:
    from gateway.inference.engine import InferenceEngine
    from schemas.audio import AudioFrame

    samples = (np.sin(np.arange(8000) / 5.0) * 8000).astype(np.int16)
    frame = AudioFrame(1_767_225_600.0, 0, 16000, samples)
    for debug in (None, tmp_path / "debug"):
        engine = InferenceEngine.create(
            InferenceSettings(debug_audio_dir=debug), write=discard, store=discard
        )
        engine._process([("audio", ("home-1", "hall", "microphone-1", frame))])
        engine.close()
    assert [p.name for p in tmp_path.iterdir()] == ["debug"]
    assert (tmp_path / "debug" / "home-1_microphone-1.pcm").read_bytes() == samples.tobytes()


def _beeps(on_off: list[tuple[float, float]], lead: float, f0: float = 3100.0) -> np.ndarray:
    """Beeps at `f0` over faint white noise: (on, off) seconds each, after `lead` s of noise."""
    rng = np.random.default_rng(3)
    total = lead + sum(a + b for a, b in on_off) + 1.0
    x = rng.standard_normal(int(total * 16000)).astype(np.float32) * 0.01
    t = lead
    for on, off in on_off:
        i, n = int(t * 16000), int(on * 16000)
        x[i : i + n] += 0.3 * np.sin(2 * np.pi * f0 * np.arange(n) / 16000).astype(np.float32)
        t += on + off
    return x


def _patterns(x: np.ndarray) -> list[str]:
    from gateway.inference.audio import ALARM_FRAMES, ALARM_HOP, alarm_pattern
    from gateway.inference.frontend import frames_of

    f = frames_of(x)
    found = []
    for end in range(ALARM_HOP, len(f) + 1, ALARM_HOP):
        lo = max(0, end - ALARM_FRAMES)
        label = alarm_pattern(f.tonal[lo:end], f.narrow[lo:end], f.peak[lo:end])
        if label:
            found.append(label)
    return found


def test_alarm_pattern_knows_t3_and_t4_timing_and_nothing_else() -> None:
    t3 = [(0.5, 0.5), (0.5, 0.5), (0.5, 1.5)]
    t4 = [(0.1, 0.1)] * 3 + [(0.1, 5.0)]
    assert _patterns(_beeps(t3, 1.5)) == ["smoke_t3"]
    assert _patterns(_beeps(t4, 1.5)) == ["co_t4"]
    # Other rhythms in the same band: a microwave's long beeps, a 0.3 s timer, five T3-like
    # beeps in a row (no pause), a single chirp.
    assert _patterns(_beeps([(1.0, 0.3)] * 3, 1.5)) == []
    assert _patterns(_beeps([(0.3, 0.3)] * 3, 1.5)) == []
    assert _patterns(_beeps([(0.5, 0.5)] * 5, 1.5)) == []
    assert _patterns(_beeps([(0.05, 2.0)], 1.5)) == []


def test_time_of_day_reference_learns_a_daily_routine_even_when_flagged() -> None:
    from gateway.inference.sensors import DAILY, LEVEL, SensorStream, window_flagged

    stream = SensorStream(window_s=3600.0, warmup_s=0.0)
    rows = {}
    for hour in range(2 * 24 + 1):
        # A kettle-like 2 kW hour every morning at 7; 5 W otherwise.
        for k in range(6):
            ts = 1_767_225_600.0 + hour * 3600 + k * 600
            w = stream.add("power", ts, 2000.0 if hour % 24 == 7 else 5.0 + k % 2)
            if w is None:
                continue
            if stream.ready(w):
                _names, feats = stream.anomaly_features(w)
                rows[int((w.start - 1_767_225_600.0) // 3600)] = feats[0]
            # Flagged on the first day: the level reference does not learn it, the daily one does.
            stream.commit(w, {"power"} if w.mean["power"] > 1000 else ())
    assert rows[24 + 7][LEVEL] >= 50.0  # far off the (frozen) level reference
    assert rows[24 + 7][DAILY] < 1.0  # but just like yesterday at seven
    assert rows[24 + 12][DAILY] < 1.0 and rows[7][DAILY] >= 50.0  # no yesterday yet on day one
    thresholds = {"threshold": 0.5, "threshold_power": 0.9}
    assert not window_flagged(["power"], np.array([0.8], np.float32), thresholds)
    assert window_flagged(["power", "co2"], np.array([0.1, 0.6], np.float32), thresholds)


def _keyword_input_ends(pcm: np.ndarray, sr: int = 16000) -> list[float]:
    """The end times of the keyword inputs a stream makes of `pcm` in 0.1 s pushes."""
    from gateway.inference.audio import AudioStream

    stream = AudioStream()
    ends: list[float] = []
    for i in range(0, len(pcm), sr // 10):
        ctx = stream.frames(pcm[i : i + sr // 10], i / sr)
        ends += [
            h.end for h in stream.accept(np.zeros((len(ctx), 8), np.float32)) if h.head == "keyword"
        ]
    return ends


def test_a_steady_bed_gives_no_keyword_inputs_and_a_command_over_it_closes_on_its_own_end() -> None:
    rng = np.random.default_rng(3)
    sr = 16000

    def noise(seconds: float, level: float) -> np.ndarray:
        return (rng.standard_normal(int(seconds * sr)) * level).astype(np.float32)

    # 1 s of quiet, then a steady bed (music, a fan) for 9 s with a 0.5 s "command" 15 dB above
    # it at 6 s, then 1 s of quiet and another command. The bed's onset gives one input (it is
    # new sound), then none while it goes on; each command's input ends ~0.3 s after the
    # command does, not at a 2.5 s cut-off somewhere on it.
    pcm = np.concatenate(
        [
            noise(1.0, 1e-4),
            noise(5.0, 0.05),
            noise(0.5, 0.3),
            noise(3.5, 0.05),
            noise(1.0, 1e-4),
            noise(0.5, 0.3),
            noise(1.0, 1e-4),
        ]
    )
    ends = _keyword_input_ends(pcm)
    assert len(ends) == 3, ends
    assert ends[0] < 4.0 and 6.5 < ends[1] < 7.2 and 11.5 < ends[2] < 12.2, ends


def test_sound_that_keeps_rising_past_the_cut_offs_gives_no_keyword_input_until_a_pause() -> None:
    rng = np.random.default_rng(4)
    sr = 16000
    # A 9 s crescendo (8 dB a second, so it stays far above its own 4 s median and never
    # pauses), then 1.5 s of quiet and a 0.5 s burst: the cut-off segments are no standalone
    # utterances, nor is the one that ends the crescendo (it began without a pause); the burst
    # after the pause is.
    t = np.arange(9 * sr) / sr
    rising = (rng.standard_normal(len(t)) * 1e-5 * 10 ** (0.41 * t)).astype(np.float32)
    quiet = np.full(sr, 1e-6, np.float32)
    burst = (rng.standard_normal(sr // 2) * 0.5).astype(np.float32)
    pcm = np.concatenate([quiet, rising, quiet, quiet[: sr // 2], burst, quiet])
    ends = _keyword_input_ends(pcm)
    assert len(ends) == 1 and 12.0 < ends[0] < 12.5, ends


def test_only_utterances_short_enough_for_a_command_reach_the_keyword_head() -> None:
    from gateway.inference.audio import KW_MAX_UTTERANCE_FRAMES

    rng = np.random.default_rng(5)
    sr = 16000
    limit = KW_MAX_UTTERANCE_FRAMES / 100

    def burst(seconds: float) -> np.ndarray:
        return (rng.standard_normal(int(seconds * sr)) * 0.3).astype(np.float32)

    quiet = np.full(int(4.5 * sr), 1e-6, np.float32)  # the 4 s level forgets the first sound
    # A sentence-long sound (longer than any command) between pauses gives no input; a
    # command-long one does, and its input ends ~0.3 s after it.
    pcm = np.concatenate([quiet, burst(limit + 0.3), quiet, burst(limit - 0.5), quiet])
    ends = _keyword_input_ends(pcm)
    second_end = 9 + limit + 0.3 + limit - 0.5
    assert len(ends) == 1 and second_end < ends[0] < second_end + 0.5, ends


def test_the_speech_embedding_is_released_when_idle_and_reloads_to_the_same_output() -> None:
    now = [0.0]
    speech = SpeechEmbedder(idle_release_s=10.0, clock=lambda: now[0])
    window = np.random.default_rng(3).uniform(-0.3, 0.3, (1, KW_SAMPLES)).astype(np.float32)
    first = speech.embed(window)
    assert speech.loaded and speech.loads == 1
    now[0] = 9.9
    assert not speech.release_if_idle() and speech.loaded  # used 9.9 s ago: kept
    now[0] = 10.0
    assert speech.release_if_idle() and not speech.loaded and speech.releases == 1
    assert not speech.release_if_idle()  # nothing left to release
    again = speech.embed(window)
    assert speech.loaded and speech.loads == 2
    assert np.array_equal(first, again)  # a reload changes no result
    kept = SpeechEmbedder(idle_release_s=None, clock=lambda: now[0])
    kept.embed(window)
    now[0] = 1e9
    assert not kept.release_if_idle() and kept.loaded
