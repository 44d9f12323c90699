"""Bundles from the cloud into a real gateway (`gateway.updates`): a real TUF repository served
over real HTTP by a stand-in of the cloud's rollout endpoints (`tests.updates_cloud`), the
gateway's real TUF client, poller and A/B slots, a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from devices.clips import CLIP_DIR, read_wav
from gateway.app import Gateway, create_gateway
from gateway.config import load_config
from gateway.updates.boot import boot_config
from gateway.updates.slots import SlotStore
from schemas.audio import encode_audio_frame
from schemas.topics import Kind, device_topic
from tests.conftest import MosquittoBroker
from tests.updates_cloud import FakeCloud, RepoDirs, TufRepo, copy_models, make_bundle, model_files
from tests.waiting import wait_for

MODELS = ["audio_embedding", "vad", "alarm", "sensor_anomaly"]


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[FakeCloud]:
    fake = FakeCloud(TufRepo(tmp_path / "repo"))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def write_config(
    tmp_path: Path, broker: MosquittoBroker, topic_root: str, cloud: FakeCloud, extra: str = ""
) -> Path:
    root = tmp_path / "root.json"
    root.write_bytes(cloud.repo.root_json)
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-up"\n[mqtt]\nurl = "{broker.url}"\ntopic_root = "{topic_root}"\n'
        f'client_id = "gw-{topic_root}"\n[storage]\npath = "{tmp_path / "gateway.db"}"\n'
        f'[admin]\nport = 0\nport_file = "{tmp_path / "admin.port"}"\n'
        f'[uplink]\nurl = "{cloud.url}"\ntoken = "{cloud.token}"\nbackoff_min_s = 0.1\n'
        f"backoff_max_s = 0.5\n"
        f'[updates]\nroot_file = "{root}"\npoll_s = 1\npoll_jitter = 0.1\nsoak_s = 1\n'
        f"report_margin_s = 3\n"
        f"[inference]\nmodels = {json.dumps(MODELS)}\ndiscovery = false\n" + extra
    )
    return path


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[Gateway]:
    local = load_config(path)
    async with create_gateway(boot_config(local), local=local) as gw:
        yield gw


def reconnects_of(gw: Gateway) -> float:
    return gw.registry.get_sample_value("homeedge_gateway_mqtt_reconnects_total") or 0.0


def engine_versions(gw: Gateway) -> dict[str, Any]:
    return dict(gw.health()["inference"]["models"])


async def admin(gw: Gateway, what: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gw.admin_port}/{what}") as resp,
    ):
        return await resp.json(content_type=None) if what == "healthz" else await resp.text()


def good_bundle(version: int, threshold: float = 0.95) -> bytes:
    return make_bundle(
        version,
        {"sensor_anomaly": model_files("sensor_anomaly", version=f"fleet-{version}")},
        {"inference": {"thresholds": {"sensor_anomaly": {"threshold": threshold}}}},
    )


async def test_a_good_bundle_is_applied_live_reported_and_survives_a_restart(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    cloud.release(1, good_bundle(1))
    async with running(path) as gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        connects = reconnects_of(gw)
        await wait_for(lambda: "healthy" in cloud.states(1), 30, "a healthy report")
        assert cloud.states(1) == ["downloading", "staged", "applied", "healthy"]
        healthy = cloud.reports[-1]
        assert healthy["running_version"] == 1 and healthy["health"]["models_loaded"]
        assert healthy["health"]["inference_errors"] == 0
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"
        runtime = gw.health()["inference"]
        assert runtime["swaps"] == 1
        health = await admin(gw, "healthz")
        assert health["updates"]["running_version"] == 1 and health["updates"]["trial"] is None
        metrics = await admin(gw, "metrics")
        assert "homeedge_gateway_updates_running_version 1.0" in metrics
        # the swap did not reconnect MQTT
        assert reconnects_of(gw) == connects
        polls = cloud.polls
        await wait_for(
            lambda: cloud.not_modified >= 1 and cloud.polls > polls + 1, 10, "idle polls"
        )
    state = SlotStore(tmp_path / "updates").read()
    assert (state.version, state.active, state.trial) == (1, "a", None)
    async with running(path) as gw:
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"
        assert gw.health()["updates"]["running_version"] == 1
        # the overlay's threshold is in the running config
        assert gw.config.inference.thresholds == {"sensor_anomaly": {"threshold": 0.95}}
    assert cloud.states(1) == ["downloading", "staged", "applied", "healthy"]


async def test_a_model_swap_mid_stream_drops_no_frame_and_keeps_the_session(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    """Audio frames stream in while the bundle's models (the VAD head and the sensor model)
    are swapped: every frame is processed, none dropped, MQTT never reconnects."""
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    pcm = read_wav(CLIP_DIR / "alarm_co_t4.wav")
    topic = device_topic("home-1", "hall", "mic-1", Kind.AUDIO, root=topic_root)
    bundle = make_bundle(
        2,
        {
            "vad": model_files("vad", version="fleet-2"),
            "sensor_anomaly": model_files("sensor_anomaly", version="fleet-2"),
        },
    )
    sent = 0
    async with running(path) as gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        reconnects = reconnects_of(gw)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="mic") as mic:
            after_apply = 0
            while after_apply < 40:
                if sent == 20:
                    cloud.release(2, bundle)  # picked up at the next poll, mid-stream
                start = (sent * 4000) % (len(pcm) - 4000)
                frame = encode_audio_frame(
                    1_767_225_600 + sent / 4, sent, pcm[start : start + 4000]
                )
                await mic.publish(topic, frame, qos=1)
                sent += 1
                if "applied" in cloud.states(2):
                    after_apply += 1
                await asyncio.sleep(0.02)
                assert sent < 2000, "the bundle was never applied"
        await wait_for(
            lambda: gw.health()["inference"]["audio_frames"] >= sent, 20, "every frame processed"
        )
        stats = gw.health()["inference"]
        assert stats["swaps"] == 1 and engine_versions(gw)["vad"] == "fleet-2"
        assert stats["audio_frames"] == sent and stats["dropped"] == 0 and stats["errors"] == 0
        assert (
            gw.registry.get_sample_value("homeedge_gateway_queue_dropped_total", {"queue": "audio"})
            or 0
        ) == 0
        assert reconnects_of(gw) == reconnects
        await wait_for(lambda: "healthy" in cloud.states(2), 20, "the healthy report")
        assert cloud.reports[-1]["health"]["dropped_frames"] == 0


async def test_a_model_that_fails_to_load_is_refused_and_reported(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    manifest, _ = model_files("sensor_anomaly", version="broken")
    cloud.release(3, make_bundle(3, {"sensor_anomaly": (manifest, b"not an onnx graph")}))
    async with running(path) as gw:
        await wait_for(lambda: "failed" in cloud.states(3), 30, "a failed report")
        failed = cloud.reports[-1]
        assert "models failed to load" in failed["reason"] and "sensor_anomaly" in failed["reason"]
        assert failed["running_version"] is None
        assert engine_versions(gw)["sensor_anomaly"] != "broken"
        polls = cloud.polls
        await wait_for(lambda: cloud.polls >= polls + 2, 10, "more polls")
        assert cloud.states(3) == ["downloading", "staged", "failed"]  # not tried again
        assert gw.health()["updates"]["failed_versions"] == [3]


async def test_a_bundle_failing_its_soak_is_reverted_to_the_previous_slot(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    """v1 is good; v2's VAD head loads and warms up but fails on real audio (its graph reads
    80 features, the VAD gets 76): inference errors during the soak -> failed, back to v1
    live, rolled_back reported."""
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    cloud.release(1, good_bundle(1))
    pcm = read_wav(CLIP_DIR / "alarm_co_t4.wav")
    topic = device_topic("home-1", "hall", "mic-1", Kind.AUDIO, root=topic_root)
    async with running(path) as gw:
        await wait_for(lambda: "healthy" in cloud.states(1), 30, "v1 healthy")
        builtin_vad = engine_versions(gw)["vad"]
        bad_vad = model_files("vad", source="alarm", version="bad", kind="audio_vad", labels=[])
        cloud.release(2, make_bundle(2, {"vad": bad_vad}), soak_s=30.0)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="mic") as mic:
            seq = 0
            while "rolled_back" not in cloud.states(2):
                start = (seq * 4000) % (len(pcm) - 4000)
                frame = encode_audio_frame(1_767_225_600 + seq / 4, seq, pcm[start : start + 4000])
                await mic.publish(topic, frame, qos=1)
                seq += 1
                await asyncio.sleep(0.05)
                assert seq < 1200, "never rolled back"
        assert cloud.states(2) == ["downloading", "staged", "applied", "failed", "rolled_back"]
        failed = cloud.reports[-2]
        assert "inference errors" in failed["reason"] and failed["health"]["inference_errors"] > 0
        assert cloud.reports[-1]["running_version"] == 1
        assert engine_versions(gw)["vad"] == builtin_vad
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"
        status = gw.health()["updates"]
        assert status["running_version"] == 1 and status["failed_versions"] == [2]
        assert status["reverts"] == 1
    assert SlotStore(tmp_path / "updates").read().version == 1


async def test_a_healthy_report_the_cloud_never_confirms_reverts(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    cloud.refuse_reports = {"healthy"}
    cloud.release(1, good_bundle(1))
    async with running(path) as gw:
        await wait_for(lambda: "rolled_back" in cloud.states(1), 30, "a rolled_back report")
        back = next(r for r in cloud.reports if r["state"] == "rolled_back")
        assert back["reason"] == "the healthy report could not be confirmed"
        assert back["running_version"] is None
        # Not blacklisted: the version was healthy, only the cloud did not answer; once it
        # does, the gateway installs the version again and its healthy report lands.
        assert gw.health()["updates"]["failed_versions"] == []
        cloud.refuse_reports = set()
        await wait_for(lambda: "healthy" in cloud.states(1), 60, "v1 healthy once confirmed")
        await wait_for(
            lambda: gw.health()["updates"]["running_version"] == 1, 30, "v1 running again"
        )
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"


async def test_tampered_rolled_back_and_expired_metadata_and_older_versions_are_refused(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    cloud.release(1, good_bundle(1))
    async with running(path) as gw:
        await wait_for(lambda: "healthy" in cloud.states(1), 30, "v1 healthy")
        signed_v1 = cloud.repo.snapshot_files()

        def last(version: int) -> dict[str, Any]:
            return [r for r in cloud.reports if r["rollout"] == f"r-{version}"][-1]

        # a bundle changed after signing (same length): TUF's hash check refuses it
        cloud.release(2, good_bundle(2))
        target = cloud.repo.targets_dir / "bundles/bundle-2.tar.gz"
        data = bytearray(target.read_bytes())
        data[-10] ^= 0xFF
        target.write_bytes(bytes(data))
        await wait_for(lambda: "failed" in cloud.states(2), 20, "tampered refused")
        assert "LengthOrHashMismatchError" in last(2)["reason"]
        # older metadata than the gateway has seen (a rollback attack)
        cloud.repo.restore_files(signed_v1)
        await wait_for(lambda: "BadVersionNumberError" in last(2)["reason"], 20, "rollback refused")
        assert cloud.states(2) == ["downloading", "failed", "failed"]  # one download report
        # expired metadata (a freeze attack)
        cloud.release(3, good_bundle(3), timestamp_days=-1)
        await wait_for(lambda: "failed" in cloud.states(3), 20, "expired refused")
        assert "ExpiredMetadataError" in last(3)["reason"]
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"
        assert gw.health()["updates"]["running_version"] == 1
        # a good v4 goes through; then v3 (signed, fresh again) is older than what runs
        cloud.release(4, good_bundle(4))
        await wait_for(lambda: "healthy" in cloud.states(4), 20, "v4 healthy")
        cloud.repo.publish()
        cloud.desired = {**cloud.desired, "version": 3, "rollout": "r-3",
                         "target": "bundles/bundle-3.tar.gz"}  # fmt: skip
        await wait_for(lambda: cloud.states(3).count("failed") == 2, 20, "older refused")
        assert "older than the running 4" in last(3)["reason"]
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-4"
        # the cloud asks for the previous version: back to v1 at once, from its slot
        cloud.desired = {**cloud.desired, "version": 4, "rollout": "r-4", "rollback_to": 1}
        await wait_for(lambda: "rolled_back" in cloud.states(4), 20, "rollback_to honoured")
        assert last(4)["running_version"] == 1
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"
        # "back" to a version in no slot of the gateway's (an older signed bundle it would have
        # to fetch on the word of the unsigned answer): ignored
        reports, polls = len(cloud.reports), cloud.polls
        cloud.desired = {**cloud.desired, "version": 4, "rollout": "r-4", "rollback_to": 3}
        await wait_for(lambda: cloud.polls >= polls + 3, 20, "three more polls")
        assert len(cloud.reports) == reports
        assert gw.health()["updates"]["running_version"] == 1


async def test_an_overlay_that_weakens_privacy_is_refused(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    weaker = {"privacy": {"policies": {"inference_occupancy": "aggregate"}, "epsilon": 2.0}}
    cloud.release(1, make_bundle(1, overlay=weaker))
    async with running(path) as gw:
        await wait_for(lambda: "failed" in cloud.states(1), 30, "a failed report")
        reason = cloud.reports[-1]["reason"]
        assert "privacy.policies.inference_occupancy" in reason and "privacy.epsilon" in reason
        assert gw.health()["updates"]["running_version"] is None
        assert gw.health()["updates"]["failed_versions"] == [1]
    assert load_config(path).privacy.policy_of("inference_occupancy").value == "local"
    assert boot_config(load_config(path)).privacy.epsilon == 0.5


async def test_a_bundle_built_and_signed_by_cloud_release_is_applied(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    """The real release tool (`cloud.release`: offline root key, online keys, its bundle
    format) makes the repository; the gateway's TUF client and bundle checks take it."""
    from cloud.release import add_bundle, init_repository

    repo = tmp_path / "release"
    init_repository(repo, tmp_path / "offline-root")
    models = copy_models(tmp_path / "models")
    manifest = json.loads((models / "sensor_anomaly.json").read_text())
    (models / "sensor_anomaly.json").write_text(json.dumps({**manifest, "version": "release-7"}))
    overlay = {"inference": {"thresholds": {"sensor_anomaly": {"threshold": 0.97}}}}
    add_bundle(repo, 7, models_dir=models, models=["sensor_anomaly"], overlay=overlay)
    cloud = FakeCloud(RepoDirs(repo / "metadata", repo / "targets"))
    cloud.desired = {
        "version": 7, "target": "bundles/bundle-7.tar.gz", "rollout": "r-7", "soak_s": 1.0,
        "rollback_to": None,
    }  # fmt: skip
    await cloud.start()
    try:
        path = write_config(tmp_path, mosquitto, topic_root, cloud)
        async with running(path) as gw:
            await wait_for(lambda: "healthy" in cloud.states(7), 30, "a healthy report")
            assert engine_versions(gw)["sensor_anomaly"] == "release-7"
        assert (
            boot_config(load_config(path)).inference.thresholds
            == overlay["inference"]["thresholds"]
        )
    finally:
        await cloud.stop()


async def test_a_gateway_offline_during_the_rollout_catches_up_when_the_cloud_returns(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, cloud: FakeCloud
) -> None:
    path = write_config(tmp_path, mosquitto, topic_root, cloud)
    cloud.down = True
    cloud.release(1, good_bundle(1))
    async with running(path) as gw:
        await wait_for(
            lambda: gw.health()["updates"]["last_error"] is not None, 20, "a failed poll"
        )
        assert "503" in gw.health()["updates"]["last_error"]
        assert cloud.reports == [] and gw.health()["updates"]["running_version"] is None
        cloud.release(2, good_bundle(2))  # the rollout moved on meanwhile
        cloud.down = False
        await wait_for(lambda: "healthy" in cloud.states(2), 30, "caught up")
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-2"
        assert cloud.states(1) == []
