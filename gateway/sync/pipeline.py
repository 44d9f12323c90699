"""One sync pass: close windows -> privacy filter -> outbox, all in the caller's transaction.

`aggregate_and_enqueue` is what the gateway's writer thread runs every
`AggregationSettings.interval_s`: the aggregates, the watermark, the privacy ledger and the
outbox batches commit together or not at all, so a crash can neither lose a window nor send one
twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.sync import outbox
from gateway.sync.outbox import EnqueueResult
from gateway.sync.privacy import PrivacyFilter, Release, secret_from_settings
from gateway.sync.settings import AggregationSettings, PrivacySettings, UplinkSettings
from gateway.sync.stats import LaplaceNoise, NoiseSource
from gateway.sync.windows import ClosedWindows, close_windows
from schemas.batch import BatchPrivacy, BatchStats

_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")  # \Z: "$" matches before a final newline


@dataclass(frozen=True, slots=True)
class SyncPipeline:
    """Everything a pass needs: the settings and the privacy filter (key + noise generator)."""

    gateway_id: str
    aggregation: AggregationSettings
    uplink: UplinkSettings
    privacy: PrivacyFilter

    @classmethod
    def from_settings(
        cls,
        gateway_id: str,
        aggregation: AggregationSettings,
        privacy: PrivacySettings,
        uplink: UplinkSettings,
        *,
        rng: NoiseSource | None = None,
    ) -> SyncPipeline:
        """Build the pipeline; loads (or creates, mode 0600) the pseudonym key file."""
        if not _GATEWAY_ID.match(gateway_id):
            raise ValueError(
                f"gateway_id {gateway_id!r} is not a batch name ([A-Za-z0-9_.-]{{1,64}})"
            )
        filt = PrivacyFilter(
            privacy,
            secret_from_settings(privacy),
            rng if rng is not None else LaplaceNoise(),
        )
        return cls(gateway_id=gateway_id, aggregation=aggregation, uplink=uplink, privacy=filt)


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did (for metrics and logs)."""

    closed: ClosedWindows
    release: Release
    enqueued: EnqueueResult
    outbox_depth: int

    @property
    def windows(self) -> int:
        return len(self.closed.groups)


def aggregate_and_enqueue(
    conn: Connection,
    now: float,
    pipeline: SyncPipeline,
    *,
    close_at: float | None = None,
) -> PassResult:
    """Run one pass in the caller's transaction (the gateway's writer thread commits it).

    The batch's ingest stats (messages, bytes) are estimated from the closed windows' readings
    rows. `close_at` (default `now`) is the time windows are closed against: the event clock of
    ``aggregation.clock = "event"``; `now` stays the wall clock of the outbox (batch times, TTL).
    """
    closed = close_windows(
        conn,
        now if close_at is None else close_at,
        pipeline.aggregation,
        policy_of=lambda m: pipeline.privacy.settings.policy_of(m),
    )
    release = pipeline.privacy.release(conn, closed.groups)
    if release.aggregates:
        enq = outbox.enqueue(
            conn,
            release.aggregates,
            now=now,
            gateway=pipeline.gateway_id,
            settings=pipeline.uplink,
            privacy=BatchPrivacy(
                suppressed_windows=release.suppressed,
                refused_noised=release.refused,
                min_window_count=pipeline.privacy.settings.min_window_count,
            ),
            stats=BatchStats(
                ingested_messages=closed.messages, ingested_bytes=closed.estimated_bytes
            ),
        )
    else:
        enq = EnqueueResult(
            seqs=(),
            dropped=0,
            refused=0,
            expired=outbox.expire_and_prune(conn, now, pipeline.uplink),
        )
    return PassResult(closed=closed, release=release, enqueued=enq, outbox_depth=outbox.depth(conn))
