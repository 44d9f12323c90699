"""The gateway process: wires config, SQLite writer, MQTT bridge and admin HTTP, and owns their
lifetime (``async with Gateway(config) as gw: ...``).

`Gateway` implements `gateway.host.GatewayHost`, the interface plug-ins receive (its docstring
lists the extension points); `create_gateway` is the one composition root that installs them.
Delivery rules behind the callbacks:

- ``on_readings``: batches wait in a bounded queue (``ingest.callback_queue_batches``); beyond
  that the oldest is dropped (the rows are stored already; counted as
  ``queue_dropped{queue="readings"}``).
- ``on_audio``: at most ``ingest.audio_queue_frames`` wait, drop-oldest, counted
  (``queue_dropped{queue="audio"}``).
- ``add_task``: a task that raises is logged, counted (``task_restarts{task=name}``) and
  restarted on the gateway's `Backoff` schedule; it is cancelled at shutdown.
- ``add_health``: an informational part of ``/healthz``; the ``status`` comes from the
  gateway's own checks (`gateway.health`).
- ``emit_event``: each ``on_event`` callback is called in turn, on the event loop; one that
  raises is logged and counted (``task_restarts{task="event-callback"}``), the rest still run.

The drops and callback failures above can happen per message: each is logged through a
`gateway.logs.RateLimitedLog` (at most one line per 10 s, saying how many it suppressed).
The WAL checkpoint task (``storage.checkpoint_interval_ms``) survives a failing checkpoint (a
full disk): one line per 10 s at most, counted (``wal_checkpoint_failures``), the
``wal_checkpoint`` check failing until a checkpoint works again.

Device ids: one `DeviceTable` (``[devices]``) admits every device a message names, in the
decoder (``too_many_devices`` dead letters beyond ``devices.max_devices``); task
``device-sweep`` forgets idle ones while no message arrives; each forgotten device is told to
the ``on_device_forgotten`` callbacks on the event loop (Home Assistant removes its entities).
``mqtt_ready`` returns once the MQTT session exists (before that ``publish`` drops).

Shutdown order: stop taking messages, flush the writer (commit + ack), publish ``offline`` and
disconnect, cancel tasks, run lifetimes' exits, stop the writer, stop admin HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine

from gateway.actions.wiring import install_actions
from gateway.adapters.wiring import install_adapters
from gateway.admin import AdminServer, create_admin_app
from gateway.backoff import Backoff
from gateway.config import GatewayConfig
from gateway.db import make_engine
from gateway.device_table import DeviceTable
from gateway.health import Failure, check, down, error_reason, failed
from gateway.homeassistant.wiring import install_homeassistant
from gateway.host import (
    AudioCallback,
    EventCallback,
    ForgottenCallback,
    HealthFn,
    Lifetime,
    ReadingsCallback,
    TaskFactory,
)
from gateway.inference.wiring import install_inference
from gateway.ingest import AudioIn, MessageDecoder, ReadingsIn, TopicAdapter
from gateway.logs import RateLimitedLog
from gateway.monitoring import GatewayMetrics
from gateway.mqtt import MqttBridge
from gateway.records import EdgeEvent, Reading
from gateway.status import StatusReader
from gateway.sync.wiring import install_sync
from gateway.updates.wiring import install_updates
from gateway.writer import Writer, checkpoint_wal
from schemas.topics import gateway_status_topic

log = logging.getLogger(__name__)

T = TypeVar("T")

_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 60.0
_FLUSH_TIMEOUT_S = 30.0


class Gateway:
    """One gateway, a `gateway.host.GatewayHost`: see the module docstring."""

    def __init__(self, config: GatewayConfig, *, mqtt_backoff: Backoff | None = None) -> None:
        """`mqtt_backoff`: the reconnect schedule (default: ``mqtt.reconnect_min_s`` to
        ``mqtt.reconnect_max_s``); tests inject one to see the delays it draws."""
        self._config = config
        self._mqtt_backoff = mqtt_backoff
        self.metrics = GatewayMetrics()
        self.admin_port: int | None = None
        self._status_topic = gateway_status_topic(config.gateway_id, root=config.mqtt.topic_root)
        self._adapters: list[TopicAdapter] = []
        self._lifetimes: list[Lifetime] = []
        self._task_factories: list[tuple[str, TaskFactory]] = []
        self._reading_callbacks: list[ReadingsCallback] = []
        self._audio_callbacks: list[AudioCallback] = []
        self._event_callbacks: list[EventCallback] = []
        self._health_parts: list[tuple[str, HealthFn]] = []
        self._engine: Engine | None = None
        self._writer: Writer | None = None
        self._bridge: MqttBridge | None = None
        self._admin: AdminServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._contexts: list[AsyncIterator[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        ingest = config.ingest
        self._readings_q: asyncio.Queue[Sequence[Reading]] = asyncio.Queue(
            ingest.callback_queue_batches
        )
        self._audio_q: asyncio.Queue[AudioIn] = asyncio.Queue(ingest.audio_queue_frames)
        self.metrics.watch_queue("readings", self._readings_q.qsize)
        self.metrics.watch_queue("audio", self._audio_q.qsize)
        dev = config.devices
        self.devices = DeviceTable(
            max_devices=dev.max_devices,
            max_microphones=dev.max_microphones,
            idle_s=dev.idle_s,
            on_evicted=self.metrics.devices_evicted.inc,
            on_forgotten=self._forgotten,
        )
        self._forgotten_callbacks: list[ForgottenCallback] = []
        self._mqtt_ready = asyncio.Event()
        table = self.devices
        self.metrics.watch_devices(table.__len__, lambda: table.microphones)
        self._drop_logs = {"readings": RateLimitedLog(log), "audio": RateLimitedLog(log)}
        self._callback_logs = {
            "readings": RateLimitedLog(log),
            "audio": RateLimitedLog(log),
            "event": RateLimitedLog(log),
        }
        self._checkpoint_log = RateLimitedLog(log)
        self._checkpoint_failure: Failure | None = None
        # Set by `request_restart` (a bundle whose overlay only a restart applies); the entry
        # point stops this gateway and starts a new one (`python -m gateway`).
        self.restart_requested = asyncio.Event()

    def request_restart(self) -> None:
        self.restart_requested.set()

    # -- GatewayHost: identity ---------------------------------------------------------------

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    @property
    def status_topic(self) -> str:
        return self._status_topic

    # -- GatewayHost: registration -----------------------------------------------------------

    def add_adapter(self, adapter: TopicAdapter) -> None:
        self._before_start("add_adapter")
        self._adapters.append(adapter)

    def add_lifetime(self, lifetime: Lifetime) -> None:
        self._before_start("add_lifetime")
        self._lifetimes.append(lifetime)

    def on_readings(self, callback: ReadingsCallback) -> None:
        self._reading_callbacks.append(callback)

    def on_audio(self, callback: AudioCallback) -> None:
        self._audio_callbacks.append(callback)

    def on_event(self, callback: EventCallback) -> None:
        self._event_callbacks.append(callback)

    def emit_event(self, event: EdgeEvent) -> None:
        for cb in self._event_callbacks:
            try:
                cb(event)
            except Exception:  # one plug-in's bug must not stop the others or the engine
                self._callback_logs["event"].error("event callback %r failed", cb, exc_info=True)
                self.metrics.task_restarts.labels("event-callback").inc()

    def via_adapter(self, home: str, device: str) -> bool:
        return self.devices.adapted(home, device)

    def on_device_forgotten(self, callback: ForgottenCallback) -> None:
        self._forgotten_callbacks.append(callback)

    def _forgotten(self, keys: list[tuple[str, str]]) -> None:
        """Device table (any thread, its lock held): hand the keys to the event loop."""
        loop = self._loop
        if loop is None or not self._forgotten_callbacks:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(self._tell_forgotten, keys)

    def _tell_forgotten(self, keys: list[tuple[str, str]]) -> None:
        for home, device in keys:
            for cb in self._forgotten_callbacks:
                try:
                    cb(home, device)
                except Exception:  # one plug-in's bug must not stop the others' callbacks
                    log.exception("device-forgotten callback %r failed", cb)

    def add_health(self, name: str, fn: HealthFn) -> None:
        self._health_parts.append((name, fn))

    def add_task(self, name: str, factory: TaskFactory) -> None:
        self._before_start("add_task")
        self._task_factories.append((name, factory))

    def _before_start(self, what: str) -> None:
        if self._loop is not None:
            raise RuntimeError(f"{what} must be called before the gateway starts")

    # -- GatewayHost: database and MQTT --------------------------------------------------------

    async def run_db(self, fn: Callable[[Connection], T]) -> T:
        return await self.writer.run(fn)

    async def store(self, item: ReadingsIn) -> None:
        await self.writer.store(item)

    async def mqtt_ready(self) -> None:
        await self._mqtt_ready.wait()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        bridge = self._bridge
        if bridge is None:
            self.metrics.published.labels("dropped").inc()
            return False
        return bridge.publish(topic, payload, retain=retain)

    # -- state -----------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the gateway is not started")
        return self._engine

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise RuntimeError("the gateway is not started")
        return self._writer

    @property
    def mqtt(self) -> MqttBridge:
        if self._bridge is None:
            raise RuntimeError("the gateway is not started")
        return self._bridge

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` body: ``status`` is ``ok`` when every check is (`gateway.health`)."""
        bridge, writer = self._bridge, self._writer
        connected = bridge is not None and bridge.connected
        alive = writer is not None and writer.alive
        checks = {
            "mqtt": {"ok": True}
            if connected
            else down("not connected to the broker", bridge.down_since if bridge else None),
            "writer": check(writer.failure)
            if writer is not None and alive
            else down("the writer thread is not running", None),
        }
        if self.config.storage.checkpoint_interval_ms:
            checks["wal_checkpoint"] = check(self._checkpoint_failure)
        body: dict[str, Any] = {
            "status": "ok" if all(c["ok"] for c in checks.values()) else "degraded",
            "gateway_id": self.config.gateway_id,
            "mqtt_connected": connected,
            # Granted subscriptions (SUBACK): before that, a new session receives nothing.
            "mqtt_subscribed": bridge is not None and bridge.subscribed.is_set(),
            "writer_alive": alive,
            "queue_depth": writer.depth if writer is not None else 0,
            "checks": checks,
        }
        for name, part in self._health_parts:
            body[name] = part()
        return body

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the gateway is already started")
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            self._engine = await asyncio.to_thread(
                make_engine, cfg.storage.path, page_size=cfg.storage.page_size
            )
            for warning in cfg.commit_policy_warnings():
                log.warning("%s", warning)
            self._writer = Writer(
                self._engine,
                metrics=self.metrics,
                batch_rows=cfg.storage.batch_rows,
                commit_interval=cfg.storage.commit_interval_ms / 1000,
                idle_commit=cfg.storage.idle_commit_ms / 1000,
                inflight_window=cfg.mqtt.inflight_window,
                queue_size=cfg.storage.queue_size,
                on_committed=self._from_writer,
                auto_checkpoint=cfg.storage.checkpoint_interval_ms == 0,
                wal_autocheckpoint=cfg.storage.wal_max_pages,
                synchronous=cfg.storage.synchronous,
                seen_interval=cfg.storage.last_seen_interval_ms / 1000,
            )
            self._writer.start()
            for lifetime in self._lifetimes:
                it = lifetime()
                await anext(it)
                self._contexts.append(it)
            self._spawn("readings-callbacks", self._dispatch_readings)
            self._spawn("audio-callbacks", self._dispatch_audio)
            if cfg.storage.checkpoint_interval_ms:
                self._spawn("wal-checkpoint", self._checkpoint_wal)
            self._spawn("device-sweep", self._sweep_devices)
            for name, factory in self._task_factories:
                self._spawn(name, factory)
            self._admin = AdminServer(
                create_admin_app(
                    health=self.health,
                    registry=self.metrics.registry,
                    status=StatusReader(cfg.storage.path) if cfg.admin.status_page else None,
                ),
                host=cfg.admin.host,
                port=cfg.admin.port,
            )
            self.admin_port = await self._admin.start()
            if cfg.admin.port_file is not None:
                await asyncio.to_thread(_write_port_file, cfg.admin.port_file, self.admin_port)
            decoder = MessageDecoder(
                topic_root=cfg.mqtt.topic_root,
                adapters=self._adapters,
                max_dead_letter_bytes=cfg.storage.max_dead_letter_bytes,
                devices=self.devices,
                checks=cfg.ingest.reading_checks(),
            )
            self._bridge = MqttBridge(
                cfg.mqtt,
                client_id=cfg.client_id,
                status_topic=self.status_topic,
                decoder=decoder,
                writer=self._writer,
                metrics=self.metrics,
                backoff=self._mqtt_backoff,
            )
            self._writer.ack = self._bridge.ack_many
            self._bridge.start()
            self._mqtt_ready.set()
        except BaseException:
            await self.stop()
            raise
        log.info("gateway %s started (db %s)", cfg.gateway_id, cfg.storage.path)

    async def stop(self) -> None:
        """Shut down in the order of the module docstring; safe to call twice."""
        # The bridge stops taking messages now but keeps publishing until it is closed: the
        # flush's commits still make events.
        bridge = self._bridge
        if bridge is not None:
            bridge.stop_consuming()
        writer = self._writer
        if writer is not None and writer.alive:
            try:
                await asyncio.wait_for(writer.flush(), _FLUSH_TIMEOUT_S)
            except TimeoutError:  # e.g. a commit retrying on a full disk: leave it un-acked
                log.error("writer flush timed out after %ss", _FLUSH_TIMEOUT_S)
                writer.request_stop()
            except Exception:  # a dead writer: nothing more can be committed or acked
                log.exception("final writer flush failed")
        if bridge is not None:
            self._bridge = None
            self._mqtt_ready.clear()
            await asyncio.to_thread(bridge.close)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        contexts, self._contexts = self._contexts, []
        for it in reversed(contexts):
            try:
                await anext(it)
            except StopAsyncIteration:
                pass
            except Exception:  # one component's teardown must not stop the others'
                log.exception("a plug-in's lifetime failed at shutdown")
            else:
                log.error("lifetime %r yielded twice", it)
        if writer is not None:
            writer.request_stop()
            await writer.stop()
            self._writer = None
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        log.info("gateway %s stopped", self.config.gateway_id)

    # -- background tasks ------------------------------------------------------------------

    def _spawn(self, name: str, factory: TaskFactory) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, factory), name=name))

    async def _supervise(self, name: str, factory: TaskFactory) -> None:
        backoff = Backoff(_RESTART_MIN_S, _RESTART_MAX_S)
        last: str | None = None
        while True:
            try:
                await factory()
                return
            except Exception as exc:  # a task's top level: log, count, restart
                delay = backoff.next_delay()
                self.metrics.task_restarts.labels(name).inc()
                # The traceback once per kind of failure: a task failing the same way again (a
                # full disk under the aggregation, for hours) logs one line each time.
                failure = error_reason(exc)
                if failure == last:
                    log.error(
                        "task %s failed again (%s); restarting in %.1fs", name, failure, delay
                    )
                else:
                    log.exception("task %s crashed; restarting in %.1fs", name, delay)
                last = failure
                await asyncio.sleep(delay)

    async def _checkpoint_wal(self) -> None:
        interval = self.config.storage.checkpoint_interval_ms / 1000
        path = self.config.storage.path
        while True:
            await asyncio.sleep(interval)
            try:
                busy, frames, done = await asyncio.to_thread(checkpoint_wal, path)
            except sqlite3.Error as exc:  # a full disk, an I/O error: try again next interval
                self.metrics.checkpoint_failures.inc()
                failure = self._checkpoint_failure = failed(self._checkpoint_failure, exc)
                self._checkpoint_log.warning(
                    "WAL checkpoint of %s failed: %s (attempt %d); trying again every %.1fs",
                    path,
                    failure.reason,
                    failure.failures,
                    interval,
                )
                continue
            if self._checkpoint_failure is not None:
                log.warning(
                    "WAL checkpoints work again after %d failed attempts",
                    self._checkpoint_failure.failures,
                )
                self._checkpoint_failure = None
            self.metrics.checkpoints.inc()
            if busy or done < frames:
                log.debug("WAL checkpoint partial: %d of %d frames", done, frames)

    async def _sweep_devices(self) -> None:
        # Messages evict idle devices as they arrive; this covers a quiet gateway, so the gauge
        # and the slots are right after a flood stops. A quarter of idle_s: a device is
        # forgotten at most 25 % late (at most a minute for long idle times).
        interval = min(self.config.devices.idle_s / 4, 60.0)
        while True:
            await asyncio.sleep(interval)
            self.devices.sweep()

    # -- committed data to the asyncio side ------------------------------------------------

    def _from_writer(self, readings: list[Reading], audio: list[AudioIn]) -> None:
        """Writer thread, after a commit and its acks."""
        if not (readings and self._reading_callbacks) and not (audio and self._audio_callbacks):
            return
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(self._enqueue, readings, audio)

    def _enqueue(self, readings: list[Reading], audio: list[AudioIn]) -> None:
        if readings and self._reading_callbacks:
            self._put_drop_oldest(self._readings_q, readings, "readings")
        if self._audio_callbacks:
            for frame in audio:
                self._put_drop_oldest(self._audio_q, frame, "audio")

    def _put_drop_oldest(self, q: asyncio.Queue[Any], item: Any, name: str) -> None:
        if q.full():
            q.get_nowait()
            self.metrics.queue_full.labels(name).inc()
            self.metrics.dropped.labels(name).inc()
            self._drop_logs[name].warning(
                "%s callback queue full (%d): dropped the oldest item", name, q.maxsize
            )
        q.put_nowait(item)

    async def _dispatch_readings(self) -> None:
        while True:
            batch = await self._readings_q.get()
            for cb in self._reading_callbacks:
                await self._call(cb, batch, "readings")

    async def _dispatch_audio(self) -> None:
        while True:
            frame = await self._audio_q.get()
            for cb in self._audio_callbacks:
                await self._call(cb, frame, "audio")

    async def _call(self, cb: Callable[[Any], Awaitable[None]], arg: Any, q: str) -> None:
        try:
            await cb(arg)
        except Exception:  # one callback's bug must not stop delivery to the others
            # Per batch or frame: a broken callback would write a traceback per message.
            self._callback_logs[q].error("%s callback %r failed", q, cb, exc_info=True)
            self.metrics.task_restarts.labels(f"{q}-callback").inc()


def _write_port_file(path: Any, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


def create_gateway(config: GatewayConfig, *, local: GatewayConfig | None = None) -> Gateway:
    """The gateway `python -m gateway` runs: the one place where plug-ins are wired in.
    `local`: the configuration before the active bundle's overlay (`gateway.updates.boot`;
    default `config`)."""
    gateway = Gateway(config)
    install_adapters(gateway, config.adapters)  # the [adapters] section's enabled ecosystems
    install_sync(gateway, config)  # [aggregation], [privacy], [uplink]: the cloud-sync path
    # [homeassistant]: discovery of the gateway, its devices and metrics; the inference
    # entities are announced through it too (one record of what to remove).
    announcer = install_homeassistant(gateway, config.homeassistant)
    models = install_inference(gateway, config.inference, discovery=announcer)  # [inference]
    install_updates(  # [updates]: signed bundles from the cloud, swapped into the engine
        gateway,
        local=local or config,
        inference=models,
        gateway_health=gateway.health,
        restart=gateway.request_restart,
    )
    install_actions(gateway, config.actions)  # [actions]: events -> MQTT commands, notifications
    return gateway
