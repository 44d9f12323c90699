"""Home Assistant inside a running gateway: `install_homeassistant(host, settings)`.

What it adds to the gateway (all on the gateway's own MQTT session, towards its LOCAL broker
only; nothing here goes to the cloud, and the names in it are the home's own):

- the gateway's HA device (`gateway.homeassistant.entities.gateway_config`: a connectivity
  entity on the gateway's status topic), announced once the session exists;
- an entity per device and stored metric (`ENTITY_OF`), announced with the first committed
  reading of that metric in this run (a retained config; the same one again after a restart);
- the entities' states (`gateway.homeassistant.states.StateLimiter`: at most one per entity per
  ``state_interval_s``, the newest value wins), published by task ``ha-states`` from the
  committed readings; the callback only updates memory (never waits, never slows ingest);
- `Announcer`, through which the inference entities are announced too
  (`gateway.inference.discovery`), so that every config the gateway announced is recorded in
  the ``ha_announced`` table and can be removed: when the device table forgets a device (its
  configs are replaced by empty retained messages), at start-up for records older than
  ``devices.idle_s`` (devices not heard from since), and all of them at start-up when
  ``enabled = false``.

Counters: ``homeedge_gateway_ha_configs_total{action="announced"|"removed"|"dropped"}`` and
``homeedge_gateway_ha_states_total{outcome="published"|"queue_full"|"pending_full"}``
(queue_full: the gateway's outgoing MQTT queue refused it; pending_full: the oldest waiting
value dropped because ``max_pending`` entities waited). A waiting value replaced by a newer one
is the rate limit working, not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Connection, and_, delete, func, select
from sqlalchemy.dialects.sqlite import insert

from gateway.homeassistant.entities import gateway_config, metric_config, state_payload
from gateway.homeassistant.naming import DiscoveryConfig
from gateway.homeassistant.settings import HomeAssistantSettings
from gateway.homeassistant.states import StateLimiter
from gateway.host import GatewayHost
from gateway.logs import RateLimitedLog
from gateway.records import Reading
from gateway.schema import devices, ha_announced
from schemas.topics import gateway_state_topic

log = logging.getLogger(__name__)

EntityKey = tuple[str, str, str]  # home, device, metric


class Announcer:
    """Publishes retained discovery configs and keeps the record of them (event loop)."""

    def __init__(
        self, host: GatewayHost, counter: Counter, clock: Callable[[], float], prefix: str
    ) -> None:
        self._host = host
        self.gateway_id = host.config.gateway_id
        self.prefix = prefix
        self._clock = clock
        self._announced = counter.labels("announced")
        self._removed = counter.labels("removed")
        self._dropped = counter.labels("dropped")
        # (home, device) -> its config topics announced by this run or recorded by an earlier.
        self.topics: dict[tuple[str, str], set[str]] = {}
        self._to_record: dict[str, tuple[str, str, float]] = {}
        self._to_delete: set[str] = set()
        self.wake: asyncio.Event | None = None

    def announce(self, home: str, device: str, configs: Sequence[DiscoveryConfig]) -> bool:
        """Queue `configs` retained on the gateway's session; True when every one was queued
        (the caller tries again later otherwise). `home`/`device` are '' for configs that
        belong to no device (the gateway's own, a room's)."""
        ok = True
        now = self._clock()
        for c in configs:
            if not self._host.publish(c.topic, c.payload, retain=True):
                self._dropped.inc()
                ok = False
                continue
            self._announced.inc()
            self.topics.setdefault((home, device), set()).add(c.topic)
            self._to_record[c.topic] = (home, device, now)
            self._to_delete.discard(c.topic)
        self._poke()
        return ok

    def has(self, home: str, device: str, topic: str) -> bool:
        """True while the device's config on `topic` is announced (not removed since)."""
        return topic in self.topics.get((home, device), ())

    def remove_device(self, home: str, device: str) -> int:
        """Replace every config of the device by an empty retained message; how many."""
        topics = self.topics.pop((home, device), set())
        return self.remove(topics)

    def remove(self, topics: set[str] | list[str]) -> int:
        n = 0
        for topic in topics:
            if not self._host.publish(topic, b"", retain=True):
                self._dropped.inc()
                continue  # the record stays: removed by a later start-up
            self._removed.inc()
            self._to_record.pop(topic, None)
            self._to_delete.add(topic)
            n += 1
        self._poke()
        return n

    def _poke(self) -> None:
        if self.wake is not None and (self._to_record or self._to_delete):
            self.wake.set()

    async def flush(self) -> None:
        """Write the records made since the last flush (one writer transaction)."""
        if not (self._to_record or self._to_delete):
            return
        record, self._to_record = self._to_record, {}
        gone, self._to_delete = self._to_delete, set()
        try:
            await self._write(record, gone)
        except BaseException:
            # Kept for the next flush, unless newer news about the topic came meanwhile.
            for topic, value in record.items():
                if topic not in self._to_delete:
                    self._to_record.setdefault(topic, value)
            for topic in gone:
                if topic not in self._to_record:
                    self._to_delete.add(topic)
            raise

    async def _write(self, record: dict[str, tuple[str, str, float]], gone: set[str]) -> None:
        rows = [
            {"topic": t, "home": h, "device": d, "announced_at": at}
            for t, (h, d, at) in record.items()
        ]

        def write(conn: Connection) -> None:
            if rows:
                stmt = insert(ha_announced)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["topic"],
                        set_={"announced_at": stmt.excluded.announced_at},
                    ),
                    rows,
                )
            if gone:
                conn.execute(delete(ha_announced).where(ha_announced.c.topic.in_(list(gone))))

        await self._host.run_db(write)


def _load(conn: Connection) -> list[tuple[str, str, str, float]]:
    """Every recorded config with the last time its device was known to be there: when it was
    announced, or the device's ``last_seen`` if later (a device heard for weeks was announced
    once, at the start of the run)."""
    seen = func.max(ha_announced.c.announced_at, func.coalesce(devices.c.last_seen, 0.0))
    rows = conn.execute(
        select(ha_announced.c.topic, ha_announced.c.home, ha_announced.c.device, seen).select_from(
            ha_announced.outerjoin(
                devices,
                and_(
                    devices.c.home == ha_announced.c.home, devices.c.device == ha_announced.c.device
                ),
            )
        )
    )
    return [(r[0], r[1], r[2], float(r[3])) for r in rows]


def install_homeassistant(
    host: GatewayHost,
    settings: HomeAssistantSettings,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> Announcer | None:
    """Wire Home Assistant discovery into the gateway (before it starts); the `Announcer` the
    inference entities use, or None when the feature is off (then only the clean-up runs)."""
    configs = Counter(
        "homeedge_gateway_ha_configs",
        "Home Assistant discovery configs, by action (announced, removed; dropped: the "
        "outgoing MQTT queue was full)",
        ["action"],
        registry=host.registry,
    )
    announcer = Announcer(host, configs, clock, settings.discovery_prefix)
    gateway_id = host.config.gateway_id
    root = host.config.mqtt.topic_root
    idle_s = host.config.devices.idle_s
    log_errors = RateLimitedLog(log)

    if not settings.enabled:

        async def clean_up() -> None:
            rows = await host.run_db(_load)
            if not rows:
                return
            await host.mqtt_ready()
            removed = announcer.remove([topic for topic, *_ in rows])
            await announcer.flush()
            log.info(
                "Home Assistant discovery is off: removed %d configs an earlier run announced",
                removed,
            )

        host.add_task("ha-clean-up", clean_up)
        return None

    states = Counter(
        "homeedge_gateway_ha_states",
        "Home Assistant entity states, by outcome (published; queue_full: the outgoing MQTT "
        "queue was full; pending_full: the oldest waiting value dropped beyond max_pending)",
        ["outcome"],
        registry=host.registry,
    )
    published, queue_full, pending_full = (
        states.labels("published"),
        states.labels("queue_full"),
        states.labels("pending_full"),
    )
    limiter: StateLimiter[EntityKey] = StateLimiter(
        interval_s=settings.state_interval_s, max_pending=settings.max_pending, clock=monotonic
    )
    wake = asyncio.Event()
    announcer.wake = wake
    announced: set[EntityKey] = set()
    state_topics: dict[EntityKey, str] = {}  # built once per entity
    status = host.status_topic
    prefix = settings.discovery_prefix
    expire = settings.expire_after_s or None
    adapter_devices = settings.adapter_devices

    async def on_readings(readings: Sequence[Reading]) -> None:
        changed = False
        for r in readings:
            if not settings.announces(r.metric):
                continue
            key = (r.home, r.device, r.metric)
            if key not in announced:
                if not adapter_devices and host.via_adapter(r.home, r.device):
                    continue  # its ecosystem's own entities are in HA already
                state_topic = gateway_state_topic(gateway_id, r.home, r.device, r.metric, root=root)
                config = metric_config(
                    gateway_id=gateway_id,
                    home=r.home,
                    room=r.room,
                    device=r.device,
                    metric=r.metric,
                    prefix=prefix,
                    state_topic=state_topic,
                    status_topic=status,
                    expire_after_s=expire,
                )
                if config is not None and announcer.announce(r.home, r.device, [config]):
                    announced.add(key)
                    state_topics[key] = state_topic
            before = limiter.dropped
            changed = limiter.offer(key, r.value, r.ts) or changed
            if limiter.dropped != before:
                pending_full.inc(limiter.dropped - before)
        if changed:
            wake.set()

    def forgotten(home: str, device: str) -> None:
        n = announcer.remove_device(home, device)
        for key in [k for k in announced if k[0] == home and k[1] == device]:
            announced.discard(key)
            state_topics.pop(key, None)
        limiter.forget(lambda k: k[:2] == (home, device))
        if n:
            log.info(
                "device %s/%s forgotten: removed its %d Home Assistant configs", home, device, n
            )

    async def run() -> None:
        rows = await host.run_db(_load)
        await host.mqtt_ready()
        cutoff = clock() - idle_s
        # Only devices' entities: not the gateway's own ('' home and device; announced again
        # below), nor a room's ('' device: announced once per run with the room's first
        # result, so its announced_at says nothing about the room being gone; removing it at
        # every restart would make HA delete and re-create the entity, losing its settings).
        stale = {t for t, home, device, at in rows if at < cutoff and device}
        for topic, home, device, _ in rows:
            if topic not in stale:
                announcer.topics.setdefault((home, device), set()).add(topic)
        if stale:
            announcer.remove(stale)
            log.info(
                "removed %d Home Assistant configs of devices not heard from for %.0f s",
                len(stale),
                idle_s,
            )
        gateway_entity = [gateway_config(gateway_id=gateway_id, prefix=prefix, status_topic=status)]
        gateway_announced = announcer.announce("", "", gateway_entity)
        while True:
            if not gateway_announced:  # the outgoing queue was full: again each round
                gateway_announced = announcer.announce("", "", gateway_entity)
            try:
                await announcer.flush()
            except Exception:  # a full disk: the records wait for the next round
                log_errors.error("recording Home Assistant configs failed", exc_info=True)
            for key, value in limiter.take_due():
                topic = state_topics.get(key) or gateway_state_topic(gateway_id, *key, root=root)
                if host.publish(topic, state_payload(key[2], value)):
                    published.inc()
                else:
                    queue_full.inc()
            due = limiter.next_due()
            wake.clear()
            timeout = None if due is None else max(0.0, due - monotonic())
            if not gateway_announced:
                timeout = 1.0 if timeout is None else min(timeout, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def health() -> dict[str, Any]:
        return {
            "entities": len(announced),
            "waiting_states": len(limiter),
            "state_interval_s": settings.state_interval_s,
        }

    async def lifetime() -> AsyncIterator[None]:
        yield
        # After the tasks are cancelled, before the writer stops: what was announced last is
        # recorded too, so a later run can remove it.
        try:
            await announcer.flush()
        except Exception:  # a full disk: those configs stay until removed by hand
            log.exception("recording the last Home Assistant configs failed")

    host.add_lifetime(lifetime)
    host.on_readings(on_readings)
    host.on_device_forgotten(forgotten)
    host.add_task("ha-states", run)
    host.add_health("homeassistant", health)
    return announcer
