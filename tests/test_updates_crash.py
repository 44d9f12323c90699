"""A gateway (``python -m gateway``, a real process) SIGKILLed at each step of applying a bundle
restarts on one consistent version: the version /healthz names is the one its models come
from, and it then finishes (or redoes) the update to the desired version."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.updates.slots import KILL_AT_ENV, SlotStore
from tests.conftest import MosquittoBroker
from tests.test_updates_gateway import cloud, good_bundle, write_config  # noqa: F401
from tests.updates_cloud import FakeCloud, make_bundle
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


async def start(
    config: Path, kill_at: str | None = None, stdout: Path | None = None
) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(KILL_AT_ENV, None)
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    (config.parent / "admin.port").unlink(missing_ok=True)
    fh = stdout.open("wb") if stdout is not None else None
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(config), "--log-level", "WARNING",
            env=env, stderr=asyncio.subprocess.DEVNULL,
            stdout=fh if fh is not None else asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        if fh is not None:
            fh.close()  # the child has its own copy


async def healthz(config: Path) -> dict[str, Any]:
    port_file = config.parent / "admin.port"
    await wait_for(port_file.exists, 30, "the admin port file")
    port = int(port_file.read_text())
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        body: dict[str, Any] = await resp.json(content_type=None)
        return body


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize("step", ["downloaded", "unpacked", "staged", "committed", "swapped",
                                  "reported"])  # fmt: skip
async def test_sigkill_at_each_step_restarts_on_one_consistent_version(
    step: str,
    mosquitto: MosquittoBroker,
    topic_root: str,
    tmp_path: Path,
    cloud: FakeCloud,  # noqa: F811
) -> None:
    config = write_config(tmp_path, mosquitto, topic_root, cloud)
    cloud.release(1, good_bundle(1))
    proc = await start(config)
    try:
        await wait_for(lambda: "healthy" in cloud.states(1), 60, "v1 healthy")
    finally:
        await stop(proc)
    cloud.release(2, good_bundle(2))
    proc = await start(config, kill_at=step)
    try:
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    state = SlotStore(tmp_path / "updates").read()
    assert state.version in (1, 2)
    if step in ("committed", "swapped", "reported"):
        assert state.version == 2 and state.trial is not None  # the new version, on trial
    else:
        assert state.version == 1 and state.trial is None
    proc = await start(config)
    try:
        body = await healthz(config)
        running = body["updates"]["running_version"]
        assert running == state.version
        # the models it runs are those of the version it names
        assert body["inference"]["models"]["sensor_anomaly"] == f"fleet-{running}"
        healthy = 1 if step == "reported" else 0  # that one was delivered before the kill
        await wait_for(
            lambda: cloud.states(2).count("healthy") > healthy, 60, "v2 healthy after the restart"
        )
        body = await healthz(config)
        assert body["updates"]["running_version"] == 2
        await wait_for(
            lambda: SlotStore(tmp_path / "updates").read().trial is None, 10, "trial end"
        )
        body = await healthz(config)  # after the trial: still the new models
        assert body["inference"]["models"]["sensor_anomaly"] == "fleet-2"
    finally:
        await stop(proc)
    assert SlotStore(tmp_path / "updates").read().version == 2


async def test_an_overlay_only_a_restart_applies_restarts_the_gateway_in_process(
    mosquitto: MosquittoBroker,
    topic_root: str,
    tmp_path: Path,
    cloud: FakeCloud,  # noqa: F811
) -> None:
    """An aggregation window from the cloud is read at start: the gateway stops and starts
    again in the same process on the new slot, soaks and reports healthy."""
    config = write_config(tmp_path, mosquitto, topic_root, cloud)
    overlay = {"aggregation": {"window_s": 300}, "uplink": {"send_interval_s": 2.0}}
    cloud.release(1, make_bundle(1, overlay=overlay))
    out = tmp_path / "stdout.txt"
    proc = await start(config, stdout=out)
    try:
        first = await healthz(config)
        assert first["updates"]["running_version"] is None
        await wait_for(lambda: "healthy" in cloud.states(1), 60, "v1 healthy")
        assert cloud.states(1) == ["downloading", "staged", "applied", "healthy"]
        assert proc.returncode is None  # the same process, started twice
        assert out.read_text().count("gateway gw-up: admin on") == 2
        body = await healthz(config)
        assert body["updates"]["running_version"] == 1 and body["updates"]["trial"] is None
        state = SlotStore(tmp_path / "updates").read()
        assert state.version == 1 and state.trial is None
    finally:
        await stop(proc)
    assert proc.returncode == 0
