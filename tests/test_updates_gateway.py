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
import pytest

from gateway.app import Gateway, create_gateway
from gateway.config import load_config
from gateway.updates.boot import boot_config
from gateway.updates.slots import SlotStore
from tests.conftest import MosquittoBroker
from tests.updates_cloud import FakeCloud, TufRepo, make_bundle, model_files
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
        connects = gw.metrics.reconnects._value.get()  # noqa: SLF001
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
        assert gw.metrics.reconnects._value.get() == connects  # noqa: SLF001
        polls = cloud.polls
        await wait_for(
            lambda: cloud.not_modified >= 1 and cloud.polls > polls + 1, 10, "idle polls"
        )
    state = SlotStore(tmp_path / "updates").read()
    assert (state.version, state.active, state.trial) == (1, "a", None)
    async with running(path) as gw:
        assert engine_versions(gw)["sensor_anomaly"] == "fleet-1"
        assert gw.health()["updates"]["running_version"] == 1
        # the overlay's threshold is in the running model
        assert gw.config.inference.thresholds == {"sensor_anomaly": {"threshold": 0.95}}
    assert cloud.states(1) == ["downloading", "staged", "applied", "healthy"]
