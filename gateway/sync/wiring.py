"""The cloud-sync path inside a running gateway: the aggregation pass, the uplink task, their
metrics and their part of ``/healthz``.

`install_sync(host, config)` (called by `gateway.app.create_gateway`) wires the
``[aggregation]``, ``[privacy]`` and ``[uplink]`` sections:

- at start (a lifetime, so a bad key file stops the start with its message): loads or creates
  the pseudonym key (default: next to the SQLite file, ``storage.path`` with the suffix
  ``.secret``) and reads the outbox depth (the sync tables came with the gateway's schema);
- task ``sync-aggregate``: every ``aggregation.interval_s``, one `aggregate_and_enqueue` pass in
  the writer thread, in its own transaction (aggregates, watermark, privacy ledger and outbox
  batches commit together), then the metrics and a nudge to the uplink when batches were made;
- task ``sync-uplink`` (only when ``uplink.url`` is set): `Uplink.run`, its database calls on
  the writer thread too, so one thread owns SQLite writes;
- task ``storage-retention``: at start and every ``storage.retention_interval_s``, deletes
  readings past ``storage.retention_s`` that are already aggregated, old local aggregates,
  old dead letters and sensor baselines of devices gone for ``storage.baseline_retention_s``,
  in small writer transactions (`gateway.sync.retention`);
- ``/healthz`` gets a ``sync`` object: uplink state, last success, last error (with a hint)
  and its HTTP status, outbox depth.

With ``aggregation.clock = "event"`` windows close against the newest stored reading's timestamp
(kept in memory from the committed-readings callback, read from the table after a restart) instead
of the wall clock, so history replayed at high speed is aggregated as it arrives.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, select

from gateway.config import GatewayConfig
from gateway.db import readings
from gateway.host import GatewayHost
from gateway.records import Reading
from gateway.sync import outbox
from gateway.sync.metrics import SyncMetrics
from gateway.sync.pipeline import PassResult, SyncPipeline, aggregate_and_enqueue
from gateway.sync.retention import Retention, RetentionPolicy
from gateway.sync.uplink import Uplink

log = logging.getLogger(__name__)

T = TypeVar("T")


def secret_file(config: GatewayConfig) -> Path:
    """The pseudonym key file: ``privacy.secret_file`` when set, else next to the SQLite file."""
    if "secret_file" in config.privacy.model_fields_set:
        return config.privacy.secret_file
    db = config.storage.path
    return db.with_suffix(".secret") if db.suffix != ".secret" else db.with_name(db.name + ".key")


class SyncService:
    """The sync path of one gateway; see the module docstring."""

    def __init__(self, host: GatewayHost, config: GatewayConfig) -> None:
        self._host = host
        self._config = config
        self.metrics = SyncMetrics(host.registry)
        self.uplink: Uplink | None = None
        if config.uplink.url:
            self.uplink = Uplink(config.uplink, run_db=self._run_db, metrics=self.metrics)
        storage = config.storage
        self.retention = Retention(
            RetentionPolicy(
                storage.retention_s,
                storage.dead_letter_retention_s,
                baseline_retention_s=storage.baseline_retention_s,
            ),
            run_db=self._run_db,
            registry=host.registry,
        )
        self._pipeline: SyncPipeline | None = None
        self._event_ts: float | None = None
        self.last_pass_at: float | None = None

    @property
    def pipeline(self) -> SyncPipeline:
        if self._pipeline is None:
            raise RuntimeError("the gateway is not started")
        return self._pipeline

    async def _run_db(self, fn: Callable[[Connection], T]) -> T:
        return await self._host.run_db(fn)

    # -- lifecycle -------------------------------------------------------------------------

    async def setup(self) -> AsyncIterator[None]:
        """Lifetime: key and outbox depth before the tasks start."""
        cfg = self._config
        privacy = cfg.privacy.model_copy(update={"secret_file": secret_file(cfg)})
        self._pipeline = await asyncio.to_thread(
            SyncPipeline.from_settings, cfg.gateway_id, cfg.aggregation, privacy, cfg.uplink
        )
        self.metrics.set_outbox_depth(await self._host.run_db(outbox.depth))
        log.info(
            "sync: %ds windows (%s clock), uplink %s",
            cfg.aggregation.window_s,
            cfg.aggregation.clock,
            cfg.uplink.url or "disabled (batches wait in the outbox)",
        )
        yield

    async def aggregate_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.aggregation.interval_s)
            await self.run_pass()

    async def retention_forever(self) -> None:
        while True:
            await self.retention.run_once()
            await asyncio.sleep(self._config.storage.retention_interval_s)

    async def run_pass(self) -> PassResult | None:
        """One aggregation pass now (None when the event clock has no reading yet)."""
        event_ts: float | None = None
        if self._config.aggregation.clock == "event":
            if self._event_ts is None:
                self._event_ts = await self._host.run_db(_newest_reading_ts)
            if self._event_ts is None:
                return None
            event_ts = self._event_ts
        result = await self._host.run_db(
            functools.partial(_pass, pipeline=self.pipeline, event_ts=event_ts)
        )
        self.last_pass_at = time.time()
        self.metrics.observe_pass(result)
        if result.enqueued.seqs:
            log.info(
                "sync: %d windows -> %d aggregates in %d batches (%d suppressed); outbox %d",
                result.windows,
                len(result.release.aggregates),
                len(result.enqueued.seqs),
                result.release.suppressed,
                result.outbox_depth,
            )
            if self.uplink is not None:
                self.uplink.notify()
        return result

    async def on_readings(self, batch: Sequence[Reading]) -> None:
        newest = max(r.ts for r in batch)
        if self._event_ts is None or newest > self._event_ts:
            self._event_ts = newest

    # -- health ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "outbox_depth": self.metrics.depth,
            "last_pass_at": self.last_pass_at,
            "clock": self._config.aggregation.clock,
        }
        up = self.uplink
        if up is None:
            body["uplink"] = "disabled"
            return body
        body.update(
            uplink="ok" if up.last_error is None else "retrying",
            url=self._config.uplink.url,
            last_success_at=up.last_success_at,
            last_error=up.last_error,
            last_status=up.last_status,
        )
        return body


def _newest_reading_ts(conn: Connection) -> float | None:
    ts = conn.execute(select(readings.c.ts).order_by(readings.c.id.desc()).limit(1)).scalar()
    return None if ts is None else float(ts)


def _pass(conn: Connection, *, pipeline: SyncPipeline, event_ts: float | None) -> PassResult:
    # Taken in the writer thread: the pass may wait behind a batch commit.
    now = time.time()
    close_at = None if event_ts is None else min(event_ts, now)
    return aggregate_and_enqueue(conn, now, pipeline, close_at=close_at)


def install_sync(host: GatewayHost, config: GatewayConfig) -> SyncService:
    """Wire the sync path into the gateway (before it starts); returns it for tests and tools."""
    service = SyncService(host, config)
    host.add_lifetime(service.setup)
    host.add_task("sync-aggregate", service.aggregate_forever)
    host.add_task("storage-retention", service.retention_forever)
    if service.uplink is not None:
        host.add_task("sync-uplink", service.uplink.run)
    if config.aggregation.clock == "event":
        host.on_readings(service.on_readings)
    host.add_health("sync", service.health)
    return service
