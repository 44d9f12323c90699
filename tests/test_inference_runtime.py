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
    deb = AlarmDebouncer(threshold=0.8, cooldown_s=3.5)
    fired = [deb.step(s, t) for s, t in [(0.9, 0.0), (0.95, 0.05), (0.1, 1.0), (0.9, 4.0)]]
    assert fired == [True, False, False, True]
    assert keyword_decision(np.array([0.1, 0.2, 0.6, 0.1], np.float32), 0.5) == (
        "lights_off",
        pytest.approx(0.6),
    )
    assert keyword_decision(np.array([0.5, 0.2, 0.2, 0.1], np.float32), 0.5)[0] == "other"


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
    alarm, keyword = microphone_configs(
        "home-1", "kitchen", "microphone-1", root="r", prefix="homeassistant", off_delay_s=30
    )
    assert (
        alarm.topic
        == "homeassistant/binary_sensor/homeedge_home-1/kitchen_microphone-1_alarm/config"
    )
    body = json.loads(alarm.payload)
    assert body["state_topic"] == "r/home-1/gateway/events/alarm"
    assert body["availability_topic"] == "r/home-1/gateway/status"
    assert body["device_class"] == "smoke" and body["off_delay"] == 30
    assert "microphone-1" in body["value_template"]
    kw = json.loads(keyword.payload)
    assert keyword.topic.startswith("homeassistant/event/") and kw["event_types"] == [
        "lights_on",
        "lights_off",
        "stop",
    ]
    occ = json.loads(occupancy_config("home-1", "living", root="r", prefix="ha").payload)
    assert occ["device_class"] == "occupancy" and occ["state_topic"].endswith("/events/occupancy")
    an = anomaly_config("home-1", "living", "thermostat-1", root="r", prefix="ha")
    assert an.topic == "ha/sensor/homeedge_home-1/living_thermostat-1_anomaly/config"
    assert json.loads(an.payload)["state_class"] == "measurement"
    assert len({json.loads(c.payload)["unique_id"] for c in (alarm, keyword)}) == 2


def test_raw_audio_is_kept_only_with_the_local_debug_option(tmp_path: Path) -> None:
    from gateway.inference.engine import InferenceEngine
    from schemas.audio import AudioFrame

    samples = (np.sin(np.arange(8000) / 5.0) * 8000).astype(np.int16)
    frame = AudioFrame(1_767_225_600.0, 0, 16000, samples)
    for debug in (None, tmp_path / "debug"):
        engine = InferenceEngine.create(InferenceSettings(debug_audio_dir=debug), write=print)
        engine._process([("audio", ("home-1", "hall", "microphone-1", frame))])
        engine.close()
    assert [p.name for p in tmp_path.iterdir()] == ["debug"]
    assert (tmp_path / "debug" / "home-1_microphone-1.pcm").read_bytes() == samples.tobytes()
