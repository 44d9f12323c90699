"""Edge inference wired into the real gateway by `create_gateway`: frames over Mosquitto ->
ingest -> engine -> event on MQTT + rows in SQLite, and the model status on /healthz; the
``[inference]`` config section."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from devices.clips import CLIP_DIR, read_wav
from gateway.app import create_gateway
from gateway.config import ConfigError, load_config
from schemas.audio import encode_audio_frame
from schemas.events import decode_event
from schemas.telemetry import encode_telemetry
from schemas.topics import Kind, device_topic, gateway_events_topic
from tests.conftest import MosquittoBroker

T0 = 1_767_225_600.0


async def test_gateway_runs_inference_on_audio_frames(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    db = tmp_path / "gateway.db"
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-inf"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'topic_root = "{topic_root}"\nclient_id = "gw-{topic_root}"\n'
        f'[storage]\npath = "{db}"\n[admin]\nport = 0\n'
    )
    config = load_config(path)
    gw = create_gateway(config)
    pcm = read_wav(CLIP_DIR / "alarm_co_t4.wav")
    topic = device_topic("home-1", "hall", "microphone-1", Kind.AUDIO, root=topic_root)
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "gateway never subscribed"
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="listener") as listener,
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="mic") as mic,
        ):
            await listener.subscribe(
                gateway_events_topic("home-1", "alarm", root=topic_root), qos=1
            )
            for i in range(0, len(pcm), 4000):
                frame = encode_audio_frame(T0 + i / 16000, i // 4000, pcm[i : i + 4000])
                await mic.publish(topic, frame, qos=1)
            msg = await asyncio.wait_for(anext(listener.messages), 30)
        event = decode_event(bytes(msg.payload))  # type: ignore[arg-type]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as resp,
        ):
            health = await resp.json()
    assert (event.label, event.device, event.room) == ("co_t4", "microphone-1", "hall")
    assert health["inference"]["load_errors"] == [] and health["inference"]["errors"] == 0
    assert set(health["inference"]["models"]) >= {"alarm", "keyword", "vad", "sensor_anomaly"}
    con = sqlite3.connect(db)
    rows = con.execute("SELECT model, label FROM inferences WHERE device='microphone-1'").fetchall()
    assert ("alarm", "co_t4") in rows
    assert (
        con.execute(
            "SELECT count(*) FROM readings WHERE metric='inference_alarm' AND device='microphone-1'"
        ).fetchone()[0]
        >= 1
    )


def test_inference_section_configures_and_disables_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'gateway_id = "gw-off"\n[storage]\npath = "gw.db"\n'
        "[inference]\nenabled = false\nintra_op_threads = 2\n"
    )
    config = load_config(path)
    assert config.inference.intra_op_threads == 2
    names = [name for name, _ in create_gateway(config)._task_factories]
    assert "inference" not in names and "inference-events" not in names
    on = load_config(path, inference={"enabled": True})
    gw = create_gateway(on)  # the one composition root: one engine, no MQTT client of its own
    names = [name for name, _ in gw._task_factories]
    assert names.count("inference") == 1 and "inference-events" not in names


async def test_a_restarted_gateway_resumes_a_sensors_baseline(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    """Warmed up before a restart, a sensor is scored by the restarted gateway at its first
    window, from the baseline the first run left in SQLite; /healthz and /metrics count it."""
    db = tmp_path / "gateway.db"
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-base"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'topic_root = "{topic_root}"\nclient_id = "gw-{topic_root}"\n'
        f'[storage]\npath = "{db}"\n[admin]\nport = 0\n'
        '[inference]\nmodels = ["sensor_anomaly"]\nsensor_window_s = 60.0\n'
        "warmup_hours = 0.0833\ndiscovery = false\n"  # 5 one-minute windows
    )
    config = load_config(path)
    topic = device_topic("home-1", "hall", "thermo-1", Kind.TELEMETRY, root=topic_root)
    start = (time.time() - 7200) // 60 * 60  # two hours ago, on a window boundary

    def scored() -> list[float]:
        con = sqlite3.connect(db)
        try:
            q = "SELECT window_start FROM inferences WHERE device='thermo-1' ORDER BY 1"
            return [r[0] for r in con.execute(q)]
        finally:
            con.close()

    async def publish(windows: range, until: Callable[[], bool]) -> dict[str, Any]:
        gw = create_gateway(config)
        async with gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="thermo") as dev:
                for k in windows:  # a reading every 15 s
                    for i in range(4):
                        ts = start + k * 60 + i * 15 + 1
                        payload = encode_telemetry(ts, {"temperature": 21.0 + 0.01 * (i % 2)})
                        await dev.publish(topic, payload, qos=1)
            for _ in range(300):
                if until():
                    break
                await asyncio.sleep(0.1)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as resp,
            ):
                health: dict[str, Any] = (await resp.json())["inference"]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp,
            ):
                health["metrics"] = await resp.text()
        return health

    # Windows 0..7 sent: 0..6 closed, the first 5 learned, 5 and 6 scored; then a clean stop.
    first = await publish(range(8), lambda: len(scored()) >= 2)
    assert scored() == [start + 300, start + 360]
    assert first["baselines_restored"] == 0
    con = sqlite3.connect(db)
    [(device, window_s)] = con.execute("SELECT device, window_s FROM sensor_baselines").fetchall()
    con.close()
    assert (device, window_s) == ("thermo-1", 60.0)
    # Restarted: windows 10 and 11 closed by the readings after them are scored at once (a
    # fresh baseline would need 5 windows first).
    second = await publish(range(10, 13), lambda: len(scored()) >= 4)
    assert scored()[2:] == [start + 600, start + 660]
    assert second["baselines_restored"] == 1 and second["baselines_persisted"] == 1
    assert "homeedge_gateway_inference_baselines_persisted 1.0" in second["metrics"]
    assert "homeedge_gateway_inference_windows_closed_by_time" in second["metrics"]


def test_baseline_and_grace_settings_are_validated_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'gateway_id = "gw"\n[inference]\nsensor_grace_s = -1\nbaseline_save_s = 1\n'
        "[storage]\nbaseline_retention_s = -5\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert "inference.sensor_grace_s: Input should be greater than or equal to 0" in lines
    assert "inference.baseline_save_s: Input should be greater than or equal to 10" in lines
    assert "storage.baseline_retention_s: Input should be greater than or equal to 0" in lines
    ok = load_config(
        path,
        inference={"sensor_grace_s": 30, "baseline_save_s": 900},
        storage={"baseline_retention_s": 0},
    )
    assert (ok.inference.sensor_grace_s, ok.inference.baseline_save_s) == (30.0, 900.0)
