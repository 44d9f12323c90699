"""Real gateways against the real cloud (`cloud.release`, `cloud.fleet`): ten in-process
gateways with their own databases and MQTT sessions poll the cloud's /desired, fetch through
its TUF repository, soak and report; a good bundle reaches all ten in waves (2, 4, 4); then a
canary of two in which one gateway fails halts the rollout, that gateway reverts by itself, the
other canary is asked back, the eight others are never touched."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from cloud.release import add_bundle, init_repository
from cloud.server import start
from devices.clips import CLIP_DIR, read_wav
from gateway.app import Gateway, create_gateway
from gateway.config import load_config
from gateway.updates.boot import boot_config
from schemas.audio import encode_audio_frame
from schemas.topics import Kind, device_topic
from tests.conftest import MosquittoBroker
from tests.test_cloud_api import READ_TOKEN, make_config
from tests.updates_cloud import MODELS
from tests.waiting import wait_for

OPERATOR = {"Authorization": "Bearer operator-token-0123456789abcdef"}
NAMES = [f"gw-{c}" for c in "abcdefghij"]


def token_of(name: str) -> str:
    return f"{name}-token-0123456789abcdef"


def release_models(tmp_path: Path) -> tuple[Path, Path]:
    """Two model directories for cloud.release: a good sensor model (fleet-1) and a VAD head
    that loads and warms up but fails on real audio (an 80-wide graph; the VAD gets 76)."""
    good = tmp_path / "good"
    shutil.copytree(MODELS, good)
    manifest = json.loads((good / "sensor_anomaly.json").read_text())
    (good / "sensor_anomaly.json").write_text(json.dumps({**manifest, "version": "fleet-1"}))
    bad = tmp_path / "bad"
    bad.mkdir()
    alarm = json.loads((MODELS / "alarm.json").read_text())
    alarm.update(name="vad", version="bad-2", file="vad.onnx", kind="audio_vad", labels=[])
    (bad / "vad.json").write_text(json.dumps(alarm))
    shutil.copy(MODELS / "alarm.onnx", bad / "vad.onnx")
    return good, bad


async def test_ten_real_gateways_take_a_good_bundle_in_waves_and_a_failing_canary_halts(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    root = init_repository(repo, tmp_path / "offline")
    good, bad = release_models(tmp_path)
    add_bundle(repo, 1, models_dir=good, models=["sensor_anomaly"])
    add_bundle(repo, 2, models_dir=bad, models=["vad"])
    config = make_config(
        f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
        analytics_interval_s=0,
        gateways={name: token_of(name) for name in NAMES},
        updates={
            "repository_dir": str(repo),
            "operator_token": OPERATOR["Authorization"].split()[1],
            "scheduler_interval_s": 0.1,
            "report_grace_s": 20.0,
        },
    )
    runner, port = await start(config)
    base = f"http://127.0.0.1:{port}"
    gateways: dict[str, Gateway] = {}
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        stack.push_async_callback(runner.cleanup)

        async def call(method: str, path: str, **kw: Any) -> Any:
            headers = kw.pop("headers", OPERATOR)
            async with http.request(method, base + path, headers=headers, **kw) as r:
                assert r.status in (200, 201), await r.text()
                return await r.json()

        async def detail(rollout: str) -> dict[str, Any]:
            body: dict[str, Any] = await call(
                "GET",
                f"/api/v1/rollouts/{rollout}",
                headers={"Authorization": f"Bearer {READ_TOKEN}"},
            )
            return body

        async def until_state(rollout: str, state: str) -> dict[str, Any]:
            for _ in range(600):
                body = await detail(rollout)
                if body["state"] == state:
                    return body
                await asyncio.sleep(0.1)
            raise AssertionError(f"rollout never {state}: {body}")

        for name in NAMES:
            d = tmp_path / name
            d.mkdir()
            path = d / "gateway.toml"
            path.write_text(
                f'gateway_id = "{name}"\n[mqtt]\nurl = "{mosquitto.url}"\n'
                f'topic_root = "t-{name}"\nclient_id = "c-{name}"\n'
                f'[storage]\npath = "{d / "gw.db"}"\n[admin]\nport = 0\n'
                f'[uplink]\nurl = "{base}"\ntoken = "{token_of(name)}"\n'
                f'[updates]\nroot_file = "{root}"\npoll_s = 1\npoll_jitter = 0.1\n'
                "report_margin_s = 5\n"
                '[inference]\nmodels = ["audio_embedding", "vad", "sensor_anomaly"]\n'
                "discovery = false\n"
            )
            local = load_config(path)
            gateways[name] = await stack.enter_async_context(
                create_gateway(boot_config(local), local=local)
            )

        def versions(name: str) -> dict[str, str]:
            return dict(gateways[name].health()["inference"]["models"])

        first = await call(
            "POST", "/api/v1/rollouts", json={"version": 1, "gateways": NAMES, "canary_count": 2,
                                              "wave_factor": 2, "soak_s": 1.0}
        )  # fmt: skip
        done = await until_state(first["id"], "completed")
        assert all(w["state"] == "succeeded" for w in done["waves"])
        assert [w["size"] for w in done["waves"]] == [2, 4, 4], done["waves"]
        for name in NAMES:
            assert versions(name)["sensor_anomaly"] == "fleet-1", name
        builtin_vad = versions("gw-a")["vad"]

        # Only gw-a hears audio, on which v2's VAD head fails.
        pcm = read_wav(CLIP_DIR / "alarm_co_t4.wav")

        async def microphone() -> None:
            topic = device_topic("home-1", "hall", "mic-1", Kind.AUDIO, root="t-gw-a")
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="mic-a") as mic:
                seq = 0
                while True:
                    start_at = (seq * 4000) % (len(pcm) - 4000)
                    frame = encode_audio_frame(
                        1_767_225_600 + seq / 4, seq, pcm[start_at : start_at + 4000]
                    )
                    await mic.publish(topic, frame, qos=1)
                    seq += 1
                    await asyncio.sleep(0.05)

        mic_task = asyncio.create_task(microphone())
        try:
            second = await call(
                "POST", "/api/v1/rollouts", json={"version": 2, "gateways": NAMES,
                                                  "canary_count": 2, "max_failures": 0,
                                                  "soak_s": 3.0}
            )  # fmt: skip
            halted = await until_state(second["id"], "halted")
            assert [f["gateway"] for f in halted["failures"]] == ["gw-a"]

            def back_on_v1() -> bool:  # the state, then the models swapped back
                return all(
                    gateways[n].health()["updates"]["running_version"] == 1
                    and versions(n)["vad"] == builtin_vad
                    for n in ("gw-a", "gw-b")
                )

            await wait_for(back_on_v1, 30, "both canaries back on v1")
        finally:
            mic_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mic_task
        assert gateways["gw-a"].health()["updates"]["failed_versions"] == [2]
        assert gateways["gw-b"].health()["updates"]["failed_versions"] == []  # asked back
        # the eight others never left v1
        for name in NAMES[2:]:
            assert gateways[name].health()["updates"]["running_version"] == 1, name
            assert gateways[name].health()["inference"]["swaps"] == 1, name

        async def reverted() -> bool:
            states = {a["gateway"]: a["state"] for a in (await detail(second["id"]))["gateways"]}
            return states["gw-a"] == "rolled_back" and states["gw-b"] == "reverted"

        for _ in range(300):
            if await reverted():
                break
            await asyncio.sleep(0.1)
        states = {a["gateway"]: a["state"] for a in (await detail(second["id"]))["gateways"]}
        assert states == {
            "gw-a": "rolled_back",
            "gw-b": "reverted",
            **dict.fromkeys(NAMES[2:], "skipped"),
        }
        fleet = await call("GET", "/api/v1/fleet/versions")
        assert {g["gateway"]: g["running_version"] for g in fleet["gateways"]} == dict.fromkeys(
            NAMES, 1
        )
