"""Publishing the simulated world over MQTT: one connection per device (with its last will), or
one shared connection for load tests.

Each device publishes retained ``online`` on its ``state`` topic after connecting, with
``offline`` as its last will (the broker sends it when the device vanishes) and publishes
``offline`` itself on a clean stop. Messages go out at QoS 1 on a wall-clock schedule of `rate`
messages per second per device; the simulated time of each message comes from `SimClock`, which
can run faster than real time and, once it catches up with the wall clock, follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from devices.anomalies import GroundTruth
from devices.audio import ClipSet
from devices.sensors import DeviceModel, Emission, MicrophoneModel
from devices.world import World
from schemas.state import Availability, encode_state
from schemas.topics import ROOT, Kind, device_topic

log = logging.getLogger(__name__)

_CONNECT_CONCURRENCY = 32  # simultaneous CONNECTs: a fleet of hundreds must not stampede a broker
_RECONNECT_MAX_S = 10.0


class Cue(BaseModel):
    """A clip a microphone plays `at_s` wall-clock seconds after the fleet starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0, description="seconds after the start")
    label: str = Field(min_length=1, description="clip label, e.g. alarm_smoke_t3")

    @classmethod
    def parse(cls, text: str) -> Cue:
        """``"20:alarm_smoke_t3"`` -> a cue at 20 s."""
        at, sep, label = text.partition(":")
        if not sep:
            raise ValueError(f"expected SECONDS:LABEL, got {text!r}")
        return cls(at_s=float(at), label=label)


class FleetConfig(BaseModel):
    """How the simulated fleet runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://host:port")
    homes: int = Field(default=2, ge=1, le=10_000, description="number of simulated homes")
    seed: int = Field(default=0, description="the world's seed: same seed, same fleet and data")
    rate: float = Field(
        default=1.0, gt=0, le=1000, description="messages per second per device (wall clock)"
    )
    speed: float = Field(
        default=1.0, gt=0, description="simulated seconds per wall-clock second (time acceleration)"
    )
    start: float | None = Field(
        default=None, description="simulated Unix time of the first message; default: now"
    )
    catch_up: bool = Field(
        default=True,
        description="once the simulated clock reaches the wall clock, follow it at real time "
        "(so timestamps are never in the future)",
    )
    duration: float | None = Field(default=None, gt=0, description="stop after this many seconds")
    count: int | None = Field(
        default=None, ge=1, description="stop after this many messages per device"
    )
    topic_root: str = Field(default=ROOT, description="first topic level")
    qos: int = Field(default=1, ge=0, le=2, description="QoS of telemetry, audio and state")
    shared_connection: bool = Field(
        default=False,
        description="one MQTT connection for all devices (load tests; no per-device last will)",
    )
    client_prefix: str = Field(default="homeedge-sim", description="MQTT client id prefix")
    anomaly_rate: float = Field(
        default=0.5, ge=0, description="injected faults per device per simulated day"
    )
    frame_seconds: float = Field(
        default=0.5, gt=0, le=2.0, description="length of a microphone's audio frame"
    )
    clips: Path | None = Field(
        default=None,
        description="directory of WAV clips (<label>[_<n>].wav, mono 16 kHz) the microphones play",
    )
    ground_truth: Path | None = Field(
        default=None, description="JSON-lines file the injected anomalies are written to"
    )
    seq_base: int | None = Field(
        default=None,
        ge=0,
        description="first telemetry seq; default: from the wall clock (ms x 1000), so a "
        "restarted fleet's sequence numbers keep growing and are not taken for redeliveries",
    )
    cues: tuple[Cue, ...] = Field(
        default=(),
        description="clips played on schedule (each on the next microphone in turn), on top of "
        "the random scenes: a demo shows an alarm and commands without waiting for chance",
    )
    cue_every_s: float | None = Field(
        default=None, gt=0, description="repeat the cues this often (wall-clock seconds)"
    )
    username: str | None = Field(default=None, description="broker user name")
    password: str | None = Field(default=None, description="broker password")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"expected mqtt://host:port, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.broker).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.broker).port or 1883


class SimClock:
    """Simulated time: `start` plus `speed` times the wall-clock seconds elapsed since creation,
    capped at the wall clock when `catch_up` (replay the past fast, then go live)."""

    def __init__(self, start: float | None, speed: float, *, catch_up: bool = True) -> None:
        self.wall0 = time.time()
        self.mono0 = time.monotonic()
        self.start = self.wall0 if start is None else start
        self.speed = speed
        self.catch_up = catch_up

    def now(self) -> float:
        elapsed = time.monotonic() - self.mono0
        sim = self.start + elapsed * self.speed
        if self.catch_up and self.start <= self.wall0:
            sim = min(sim, self.wall0 + elapsed)
        return sim


@dataclass
class FleetStats:
    """Live counters (read by progress printers)."""

    devices: int = 0
    connected: int = 0
    connects: int = 0  # successful connections so far (more than `devices` after reconnects)
    published: int = 0
    telemetry: int = 0
    audio: int = 0
    failed: int = 0
    truths: int = 0
    sim_time: float = 0.0


class TruthLog:
    """Ground-truth JSON lines, flushed per line so a reader sees them during the run."""

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("w", encoding="utf-8")

    def write(self, truth: GroundTruth) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(truth.to_json()) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Fleet:
    """Runs every device of a `World` against a broker until stopped, `duration` or `count`."""

    def __init__(self, config: FleetConfig, *, world: World | None = None) -> None:
        self.config = config
        seq_base = config.seq_base
        if seq_base is None:
            seq_base = int(time.time() * 1000) * 1000
        self.world = world or World(
            homes=config.homes,
            seed=config.seed,
            anomaly_rate=config.anomaly_rate,
            frame_seconds=config.frame_seconds,
            clips=ClipSet.from_dir(config.clips) if config.clips is not None else None,
            seq_base=seq_base,
        )
        self.stats = FleetStats(devices=len(self.world.models))
        self.clock = SimClock(config.start, config.speed, catch_up=config.catch_up)
        self.stats.sim_time = self.clock.start
        self._truth = TruthLog(config.ground_truth)
        self._connect_slots = asyncio.Semaphore(_CONNECT_CONCURRENCY)
        self._deadline: float | None = None
        self.microphones = [m for m in self.world.models if isinstance(m, MicrophoneModel)]
        for cue in config.cues if self.microphones else ():
            if not self.microphones[0].synth.clips.clips.get(cue.label):
                labels = ", ".join(self.microphones[0].synth.clips.labels()) or "none: no --clips"
                raise ValueError(f"cue {cue.label!r}: no clip with that label (have: {labels})")

    # --- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> FleetStats:
        """Publish until `stop` is set, `duration` passes or every device sent `count`."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if self.config.duration is not None:
            self._deadline = loop.time() + self.config.duration
        cues = None
        if self.config.cues and self.microphones:
            cues = loop.create_task(self._play_cues(stop), name="cues")
        try:
            if self.config.shared_connection:
                await self._run_shared(stop)
            else:
                async with asyncio.TaskGroup() as tg:
                    for i, model in enumerate(self.world.models):
                        tg.create_task(self._run_device(model, i, stop), name=model.spec.device)
        finally:
            if cues is not None:
                cues.cancel()
            self._truth.close()
        return self.stats

    async def _play_cues(self, stop: asyncio.Event) -> None:
        """Each cue on the next microphone in turn, at its time (and again every
        `cue_every_s`)."""
        start = asyncio.get_running_loop().time()
        turn = 0
        rounds = 0
        while True:
            base = start + rounds * (self.config.cue_every_s or 0.0)
            for cue in sorted(self.config.cues, key=lambda c: c.at_s):
                delay = base + cue.at_s - asyncio.get_running_loop().time()
                if await _sleep_or_stop(stop, max(0.0, delay)):
                    return
                mic = self.microphones[turn % len(self.microphones)]
                turn += 1
                mic.synth.cue(cue.label)
                log.info("cue %s on %s/%s", cue.label, mic.spec.home, mic.spec.device)
            if self.config.cue_every_s is None:
                return
            rounds += 1

    def _client(self, identifier: str, will: aiomqtt.Will | None) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=identifier,
            username=self.config.username,
            password=self.config.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            will=will,
            keepalive=30,
            # Also bounds a publish whose connection died: aiomqtt waits this long for its ack.
            timeout=10,
            logger=log,
        )

    def _state_topic(self, model: DeviceModel) -> str:
        s = model.spec
        return device_topic(s.home, s.room, s.device, Kind.STATE, root=self.config.topic_root)

    async def _run_device(self, model: DeviceModel, index: int, stop: asyncio.Event) -> None:
        """One device on its own connection, reconnecting with backoff until its run is over."""
        state_topic = self._state_topic(model)
        offline = encode_state(Availability.OFFLINE)
        will = aiomqtt.Will(state_topic, offline, qos=self.config.qos, retain=True)
        identifier = f"{self.config.client_prefix}-{model.spec.home}-{model.spec.device}"
        schedule = _Schedule(self, index)
        backoff = 0.5
        while True:
            try:
                async with self._connect_slots:
                    client = self._client(identifier, will)
                    await client.__aenter__()
                try:
                    self.stats.connected += 1
                    self.stats.connects += 1
                    online = encode_state(Availability.ONLINE)
                    await _publish(client, state_topic, online, self.config.qos, retain=True)
                    backoff = 0.5
                    await self._publish_loop(client, model, schedule, stop)
                    await _publish(client, state_topic, offline, self.config.qos, retain=True)
                    return
                finally:
                    self.stats.connected -= 1
                    await client.__aexit__(None, None, None)
                    _consume_disconnect_error(client)
            except aiomqtt.MqttError as exc:
                if schedule.over(stop):
                    return
                log.warning("%s: %s; reconnecting in %.1fs", identifier, exc, backoff)
                if await _sleep_or_stop(stop, backoff):
                    return
                backoff = min(backoff * 2, _RECONNECT_MAX_S)

    async def _run_shared(self, stop: asyncio.Event) -> None:
        """Every device over one connection: for load, at the price of per-device last wills."""
        models = self.world.models
        online = encode_state(Availability.ONLINE)
        offline = encode_state(Availability.OFFLINE)
        async with self._client(f"{self.config.client_prefix}-shared", None) as client:
            self.stats.connected = len(models)
            self.stats.connects += 1
            for model in models:
                await _publish(client, self._state_topic(model), online, self.config.qos, True)
            try:
                async with asyncio.TaskGroup() as tg:
                    for i, model in enumerate(models):
                        schedule = _Schedule(self, i)
                        tg.create_task(self._publish_loop(client, model, schedule, stop))
            finally:
                for model in models:
                    await _publish(client, self._state_topic(model), offline, self.config.qos, True)
                self.stats.connected = 0

    async def _publish_loop(
        self,
        client: aiomqtt.Client,
        model: DeviceModel,
        schedule: _Schedule,
        stop: asyncio.Event,
    ) -> None:
        """Publish on schedule; a message that failed (connection lost) is retried first after
        the reconnect, as a real device with a small outbox would."""
        while True:
            if schedule.pending is None:
                if schedule.over(stop):
                    return
                if await schedule.wait_tick(stop):
                    return
                emission = self.emit(model)
                schedule.pending = emission
            emission = schedule.pending
            try:
                await _publish(
                    client,
                    emission.topic(self.config.topic_root),
                    emission.payload,
                    self.config.qos,
                )
            except aiomqtt.MqttError:
                self.stats.failed += 1
                raise
            schedule.pending = None
            schedule.sent += 1
            self.stats.published += 1
            if emission.kind is Kind.AUDIO:
                self.stats.audio += 1
            else:
                self.stats.telemetry += 1

    def emit(self, model: DeviceModel) -> Emission:
        """The device's next message at the simulated now (ground truth logged as it happens)."""
        ts = max(self.clock.now(), model.last_ts or 0.0)
        self.stats.sim_time = max(self.stats.sim_time, ts)
        emission = model.next(ts)
        for truth in emission.truth:
            self.stats.truths += 1
            self._truth.write(truth)
        return emission


class _Schedule:
    """One device's wall-clock ticks (spread over the period so devices do not fire together)
    and its progress towards `count` / `duration`."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.period = 1.0 / fleet.config.rate
        # Golden-ratio spreading: any number of devices fills the period evenly.
        phase = (index * 0.6180339887) % 1.0 * self.period
        self.next_tick = asyncio.get_running_loop().time() + phase
        self.sent = 0
        self.pending: Emission | None = None

    def over(self, stop: asyncio.Event) -> bool:
        count = self.fleet.config.count
        deadline = self.fleet._deadline
        if stop.is_set() or (count is not None and self.sent >= count):
            return True
        return deadline is not None and asyncio.get_running_loop().time() >= deadline

    async def wait_tick(self, stop: asyncio.Event) -> bool:
        """Sleep until the next tick; True when stopped (or the deadline came) meanwhile."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.next_tick < now - 5 * self.period:
            # Far behind (a slow broker, a reconnect): skip the missed ticks, do not burst.
            self.next_tick = now
        wake = self.next_tick
        deadline = self.fleet._deadline
        if deadline is not None and wake >= deadline:
            await _sleep_or_stop(stop, deadline - now)
            return True
        self.next_tick += self.period
        return await _sleep_or_stop(stop, wake - now)


async def _publish(
    client: aiomqtt.Client, topic: str, payload: bytes, qos: int, retain: bool = False
) -> None:
    """Publish and wait for the ack, but fail as soon as the connection is lost: aiomqtt would
    wait its whole timeout for an ack that cannot come, holding the device back from
    reconnecting. (It races reads against the same private future in its message iterator.)"""
    lost = getattr(client, "_disconnected", None)
    sending = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain))
    if not isinstance(lost, asyncio.Future):
        await sending
        return
    await asyncio.wait({sending, lost}, return_when=asyncio.FIRST_COMPLETED)
    if sending.done():
        sending.result()
        return
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await sending
    raise aiomqtt.MqttError("connection lost while waiting for PUBACK")


def _consume_disconnect_error(client: aiomqtt.Client) -> None:
    """Mark the error of a lost connection as seen.

    aiomqtt stores it in a future that only a later call on the client would read; a device
    that was asleep when the broker went away never reads it, and asyncio would log "Future
    exception was never retrieved" once per device. The reconnect loop has already logged it."""
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
        fut.exception()


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True as soon as `stop` is set."""
    if stop.is_set():
        return True
    if delay <= 0:
        return False
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True
