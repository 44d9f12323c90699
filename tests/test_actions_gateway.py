"""Local actions in the real gateway (`create_gateway`), against a real Mosquitto and a real
HTTP receiver (aiohttp on a free port): spoken keywords and alarms played as audio frames
through ingest and the inference engine become a Zigbee2MQTT command, notify-topic messages
and webhook calls; rate limits, quiet hours and the webhook's bounded queue are driven through
the host's event hand-off (``emit_event``, what the engine calls) of a running gateway."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web

from devices.clips import CLIP_DIR, read_wav
from gateway.app import Gateway, create_gateway
from gateway.config import load_config
from gateway.records import EdgeEvent, EventKind
from schemas.audio import encode_audio_frame
from schemas.notify import decode_notification
from schemas.topics import Kind, device_topic, gateway_notify_topic
from tests.conftest import MosquittoBroker, free_port
from tests.waiting import wait_for

T0 = 1_767_225_600.0
GW = "gw-act"


class Receiver:
    """A webhook receiver: records every request's JSON body; answers `statuses` in turn,
    then 200, each after the next of `delays` (seconds) if any."""

    def __init__(
        self, statuses: list[int] | None = None, delays: list[float] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.raw: list[bytes] = []
        self._statuses = list(statuses or [])
        self._delays = list(delays or [])

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.raw.append(raw)
        self.bodies.append(json.loads(raw))
        self.headers.append(dict(request.headers))
        status = self._statuses.pop(0) if self._statuses else 200
        if self._delays:
            await asyncio.sleep(self._delays.pop(0))  # slower than the sender's timeout_s
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


def write_config(
    tmp_path: Path, broker: MosquittoBroker, root: str, actions: str, *, inference: bool
) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'gateway_id = "{GW}"\n[mqtt]\nurl = "{broker.url}"\ntopic_root = "{root}"\n'
        f'client_id = "gw-{root}"\n[storage]\npath = "{tmp_path / "gw.db"}"\n[admin]\nport = 0\n'
        f"[inference]\nenabled = {'true' if inference else 'false'}\n" + actions
    )
    return path


@contextlib.asynccontextmanager
async def gateway(path: Path) -> AsyncIterator[Gateway]:
    gw = create_gateway(load_config(path))
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "gateway never subscribed"
        yield gw


def edge_event(kind: EventKind, label: str, room: str, ts: float | None = None) -> EdgeEvent:
    now = ts if ts is not None else datetime.datetime.now(datetime.UTC).timestamp()
    return EdgeEvent(
        kind=kind,
        model=str(kind),
        home="home-1",
        room=room,
        device=f"microphone-{room}",
        label=label,
        score=0.9,
        window_start=now - 2,
        window_end=now,
        ts=now,
    )


async def metrics_text(gw: Gateway) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp,
    ):
        return await resp.text()


def counter(text: str, rule: str, action: str, outcome: str) -> float:
    line = f'homeedge_gateway_actions_total{{action="{action}",outcome="{outcome}",rule="{rule}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return 0.0


def counter_value(gw: Gateway, rule: str, action: str, outcome: str) -> float:
    labels = {"rule": rule, "action": action, "outcome": outcome}
    return gw.registry.get_sample_value("homeedge_gateway_actions_total", labels) or 0.0


async def messages(client: aiomqtt.Client, n: int) -> list[Any]:
    got = []
    async for msg in client.messages:
        got.append(msg)
        if len(got) == n:
            return got
    return got


async def test_spoken_command_and_alarm_act_through_the_real_gateway(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    """lights_on in the kitchen -> Zigbee2MQTT's set topic; a smoke alarm in the hall -> the
    default notify-topic message and a webhook that answers 500 first: retried once with the
    same id, then not again; a second hall alarm within the rule's hour is rate-limited; a
    later alarm elsewhere arrives after it, so nothing else was sent in between."""
    receiver = Receiver(statuses=[500])
    light = f"kitchen_light_{topic_root[-6:]}"
    path = write_config(
        tmp_path,
        mosquitto,
        topic_root,
        f"""
[[actions.rules]]
name = "kitchen-light-on"
kinds = ["keyword"]
labels = ["lights_on"]
rooms = ["kitchen"]
mqtt = {{ topic = "zigbee2mqtt/{light}/set", payload = {{ state = "ON" }} }}

[[actions.rules]]
name = "phone"
kinds = ["alarm"]
rate_limit = {{ count = 1, per_s = 3600 }}
[actions.rules.webhook]
url = "{receiver.url}"
retry_min_s = 0.05
retry_max_s = 0.2
headers = {{ Authorization = "Bearer s3cret" }}
""",
        inference=True,
    )
    clips = [
        ("hall", "microphone-1", "alarm_smoke_t3"),
        ("kitchen", "microphone-2", "keyword_lights_on_0"),
    ]
    async with (
        receiver.running(),
        gateway(path) as gw,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="z2m") as z2m,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="owner") as owner,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="mics") as mics,
    ):
        await z2m.subscribe(f"zigbee2mqtt/{light}/set", qos=1)
        await owner.subscribe(gateway_notify_topic(GW, root=topic_root), qos=1)
        for room, mic, clip in clips:
            pcm = read_wav(CLIP_DIR / f"{clip}.wav")
            topic = device_topic("home-1", room, mic, Kind.AUDIO, root=topic_root)
            for i in range(0, len(pcm), 4000):
                frame = encode_audio_frame(T0 + i / 16000, i // 4000, pcm[i : i + 4000])
                await mics.publish(topic, frame, qos=1)
        command = (await asyncio.wait_for(messages(z2m, 1), 60))[0]
        note = (await asyncio.wait_for(messages(owner, 1), 60))[0]
        await wait_for(lambda: len(receiver.bodies) >= 2, 60, "the webhook's retry")
        await wait_for(
            lambda: counter_value(gw, "phone", "webhook", "sent") == 1, 20, "the webhook sent"
        )
        # A marker from another room: the receiver gets it right after the hall alarm's
        # retry, so nothing (no third copy) was sent in between.
        gw.emit_event(edge_event(EventKind.ALARM, "co_t4", "garage"))
        await wait_for(lambda: len(receiver.bodies) >= 3, 20, "the marker alarm")
        text = await metrics_text(gw)
    assert json.loads(bytes(command.payload)) == {"state": "ON"}  # type: ignore[arg-type]
    body = decode_notification(bytes(note.payload))  # type: ignore[arg-type]
    assert (body.rule, body.kind, body.label, body.room, body.device) == (
        "alarms",
        "alarm",
        "smoke_t3",
        "hall",
        "microphone-1",
    )
    first, retry, marker = receiver.bodies[:3]
    assert first == retry and first["label"] == "smoke_t3" and first["room"] == "hall"
    assert (marker["label"], marker["room"]) == ("co_t4", "garage") and marker["id"] != first["id"]
    assert len(receiver.bodies) == 3
    # What left for the webhook: no home or device name, no audio; the header from the config.
    assert set(first) == {"id", "rule", "kind", "label", "room", "time", "score"}
    assert b"microphone" not in receiver.raw[0] and b"home-1" not in receiver.raw[0]
    assert receiver.headers[0]["Authorization"] == "Bearer s3cret"
    assert receiver.headers[1]["Idempotency-Key"] == first["id"]
    assert counter(text, "phone", "webhook", "sent") == 2
    assert counter(text, "kitchen-light-on", "mqtt", "sent") >= 1
    assert counter(text, "alarms", "notify", "sent") >= 1
    assert 'homeedge_gateway_actions_webhook_retries_total{rule="phone"} 1.0' in text


async def test_rate_limit_holds_on_the_gateways_session(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path,
        mosquitto,
        topic_root,
        """
[actions]
notify_alarms = false
notify_anomalies = false
[[actions.rules]]
name = "stop-music"
kinds = ["keyword"]
labels = ["stop"]
rate_limit = { count = 2, per_s = 3600 }
mqtt = { topic = "zigbee2mqtt/speaker/set", payload = "STOP" }
""",
        inference=False,
    )
    async with (
        gateway(path) as gw,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="z2m") as z2m,
    ):
        await z2m.subscribe("zigbee2mqtt/speaker/set", qos=1)
        for _ in range(5):
            gw.emit_event(edge_event(EventKind.KEYWORD, "stop", "living"))
        gw.emit_event(edge_event(EventKind.KEYWORD, "stop", "bedroom"))  # its own room's limit
        got = await asyncio.wait_for(messages(z2m, 3), 20)
        text = await metrics_text(gw)
    assert [bytes(m.payload) for m in got] == [b"STOP"] * 3  # type: ignore[arg-type]
    assert counter(text, "stop-music", "mqtt", "sent") == 3
    assert counter(text, "stop-music", "mqtt", "rate_limited") == 3


async def test_quiet_hours_silence_a_non_alarm_but_not_an_alarm(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    # Quiet hours around the current time (UTC), so the events' gateway time falls inside.
    now = datetime.datetime.now(datetime.UTC)
    start = (now - datetime.timedelta(hours=1)).strftime("%H:%M")
    end = (now + datetime.timedelta(hours=1)).strftime("%H:%M")
    path = write_config(
        tmp_path,
        mosquitto,
        topic_root,
        f"""
[actions]
timezone = "UTC"
quiet_hours = {{ start = "{start}", end = "{end}" }}
""",
        inference=False,
    )
    async with (
        gateway(path) as gw,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="owner") as owner,
    ):
        await owner.subscribe(gateway_notify_topic(GW, root=topic_root), qos=1)
        gw.emit_event(edge_event(EventKind.ANOMALY, "anomaly", "cellar"))  # quiet
        gw.emit_event(edge_event(EventKind.ALARM, "co_t4", "cellar"))  # alarms ignore them
        got = await asyncio.wait_for(messages(owner, 1), 20)
        text = await metrics_text(gw)
        health = gw.health()["actions"]
    assert health["rules"] == ["alarms", "anomalies"]
    assert health["notify_topic"] == f"{topic_root}/{GW}/gateway/notify"
    body = decode_notification(bytes(got[0].payload))  # type: ignore[arg-type]
    assert (body.rule, body.label) == ("alarms", "co_t4")
    assert body.time is not None and body.time.endswith("+00:00")
    assert counter(text, "anomalies", "notify", "quiet") == 1
    assert counter(text, "anomalies", "notify", "sent") == 0


async def test_webhook_queue_is_bounded_while_the_receiver_is_down(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    path = write_config(
        tmp_path,
        mosquitto,
        topic_root,
        f"""
[[actions.rules]]
name = "phone"
kinds = ["alarm"]
webhook = {{ url = "{down}", queue_size = 2, retry_min_s = 30, retry_max_s = 60 }}
""",
        inference=False,
    )
    async with gateway(path) as gw:
        gw.emit_event(edge_event(EventKind.ALARM, "smoke_t3", "room-0"))

        def retrying() -> bool:
            value = gw.registry.get_sample_value(
                "homeedge_gateway_actions_webhook_retries_total", {"rule": "phone"}
            )
            return bool(value)

        await wait_for(retrying, 20, "the first notification waiting for its retry")
        for k in range(1, 6):  # 5 more behind it: the queue keeps the newest 2
            gw.emit_event(edge_event(EventKind.ALARM, "smoke_t3", f"room-{k}"))
        text = await metrics_text(gw)
    assert counter(text, "phone", "webhook", "dropped") == 3
    assert 'homeedge_gateway_actions_webhook_queue{rule="phone"} 2.0' in text
    assert counter(text, "phone", "webhook", "sent") == 0
    # The local notify topic is not held up by the webhook.
    assert counter(text, "alarms", "notify", "sent") == 6


async def test_webhook_gives_up_after_max_attempts_and_on_a_4xx_and_retries_a_timeout(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    # a: 503 twice (max_attempts 2): given up; b: 400, not retried; c: no answer within
    # timeout_s, then 200 (retried once).
    receiver = Receiver(statuses=[503, 503, 400], delays=[0, 0, 0, 1.5])
    path = write_config(
        tmp_path,
        mosquitto,
        topic_root,
        f"""
[[actions.rules]]
name = "phone"
kinds = ["alarm"]
[actions.rules.webhook]
url = "{receiver.url}"
max_attempts = 2
retry_min_s = 0.05
retry_max_s = 0.1
timeout_s = 0.5
""",
        inference=False,
    )
    async with receiver.running(), gateway(path) as gw:
        gw.emit_event(edge_event(EventKind.ALARM, "smoke_t3", "a"))  # 503, 503: given up
        gw.emit_event(edge_event(EventKind.ALARM, "smoke_t3", "b"))  # 400: not retried
        gw.emit_event(edge_event(EventKind.ALARM, "smoke_t3", "c"))  # timeout, then 200
        await wait_for(lambda: counter_value(gw, "phone", "webhook", "sent") == 1, 20, "sent")
        retries = gw.registry.get_sample_value(
            "homeedge_gateway_actions_webhook_retries_total", {"rule": "phone"}
        )
    assert [b["room"] for b in receiver.bodies] == ["a", "a", "b", "c", "c"]
    assert counter_value(gw, "phone", "webhook", "failed") == 2
    assert retries == 2  # a's second try and c's
