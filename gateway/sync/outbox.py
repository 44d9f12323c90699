"""The durable outbox: batches waiting for the uplink, in the ``outbox`` SQLite table.

A batch row is written in the same transaction as the aggregates it carries, so after a crash
either both exist or neither does. Rows hold the gzip-compressed body exactly as it goes on the
wire. Status: ``pending`` until the cloud answers 2xx (``sent``), or 400/409/422, which say the
batch itself is bad (``rejected``, parked for inspection; see `gateway.sync.uplink` for why no
other answer parks a batch). Sequence numbers come from ``outbox_seq``, one counter
per gateway, never reused even when rows are pruned.

Bounds (like a Greengrass stream): at most `outbox_max_rows` pending batches; a new batch beyond
that drops the oldest pending one (``drop_oldest``) or is not stored (``refuse_new``; the
aggregates stay in the local ``aggregates`` table). Pending batches older than `outbox_ttl_s`
expire. Every drop, refusal and expiry is counted in ``sync_counters`` and logged.

Every aggregate is checked against the wire schema before it joins a batch (msgspec Structs do
not check their constraints at construction) and against the batch contract's rules
(`schemas.batch_rules`: pseudonym, room and device classes, health metrics noised, window count,
no order statistics on noised windows): one that the cloud would refuse (a sum beyond the
schema's bound, a NaN, a rule broken by a bug upstream) is dropped and counted
(``invalid_aggregates``) instead of spoiling the batch, which the cloud would park with all its
other aggregates.
"""

from __future__ import annotations

import gzip
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.sqlite import insert

from gateway.sync import counters
from gateway.sync.settings import UplinkSettings
from gateway.sync.tables import outbox, outbox_seq
from schemas.batch import Batch, BatchPrivacy, BatchStats, WindowAggregate, encode_batch
from schemas.batch_rules import MAX_CLOCK_SKEW_S, aggregate_violation

log = logging.getLogger(__name__)

PENDING = "pending"
SENT = "sent"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """A pending batch as the uplink reads it."""

    seq: int
    batch_id: str
    created_at: float
    n_aggregates: int
    attempts: int
    body_gz: bytes


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    seqs: tuple[int, ...]
    dropped: int  # oldest pending batches dropped for room (drop_oldest)
    refused: int  # new batches not stored (refuse_new)
    expired: int  # pending batches past their TTL
    invalid: int = 0  # aggregates the wire schema refuses, not sent


def compress_batch(batch: Batch) -> bytes:
    """The wire body: gzip of the JSON (mtime 0, so equal batches give equal bytes)."""
    return gzip.compress(encode_batch(batch), compresslevel=9, mtime=0)


_aggregate_encoder = msgspec.json.Encoder()
_aggregate_decoder = msgspec.json.Decoder(WindowAggregate)


def wire_error(aggregate: WindowAggregate) -> str | None:
    """Why the cloud would refuse `aggregate` (its wire schema's message), or None if valid."""
    try:
        # The round trip through JSON applies every constraint, as the cloud's decoder will
        # (a NaN or infinity encodes as null, which a float field refuses).
        _aggregate_decoder.decode(_aggregate_encoder.encode(aggregate))
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


def _drop_invalid(
    conn: Connection, aggregates: Sequence[WindowAggregate], *, min_count: int, now: float
) -> tuple[list[WindowAggregate], int]:
    valid: list[WindowAggregate] = []
    invalid = 0
    homes: set[str] = set()
    units: set[str] = set()
    for a in aggregates:
        error = wire_error(a)
        if error is None:
            broken = aggregate_violation(
                a,
                min_count=min_count,
                latest_end=now + MAX_CLOCK_SKEW_S,
                good_homes=homes,
                good_units=units,
            )
            if broken is None:
                valid.append(a)
                continue
            error = f"{broken[0]}: {broken[1]}"
        invalid += 1
        log.warning(
            "aggregate %s/%s %s window %.0f not sent, the batch contract refuses it: %s",
            a.room_class,
            a.device_class,
            a.metric,
            a.window_start,
            error,
        )
    counters.bump(conn, "invalid_aggregates", invalid)
    return valid, invalid


def _next_seq(conn: Connection, gateway: str) -> int:
    conn.execute(insert(outbox_seq).values(gateway=gateway, last_seq=0).on_conflict_do_nothing())
    conn.execute(
        update(outbox_seq)
        .where(outbox_seq.c.gateway == gateway)
        .values(last_seq=outbox_seq.c.last_seq + 1)
    )
    seq = conn.execute(
        select(outbox_seq.c.last_seq).where(outbox_seq.c.gateway == gateway)
    ).scalar_one()
    return int(seq)


def depth(conn: Connection) -> int:
    """Number of pending batches."""
    return int(
        conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.status == PENDING)
        ).scalar_one()
    )


def expire_and_prune(conn: Connection, now: float, settings: UplinkSettings) -> int:
    """Drop pending batches past their TTL (returned, counted); prune old sent/rejected rows."""
    expired = conn.execute(
        delete(outbox).where(
            outbox.c.status == PENDING, outbox.c.created_at < now - settings.outbox_ttl_s
        )
    ).rowcount
    if expired:
        log.warning(
            "outbox: %d pending batches expired (older than %.0fs)", expired, settings.outbox_ttl_s
        )
        counters.bump(conn, "outbox_expired", expired)
    conn.execute(
        delete(outbox).where(
            outbox.c.status == SENT, outbox.c.done_at < now - settings.sent_retention_s
        )
    )
    conn.execute(
        delete(outbox).where(
            outbox.c.status == REJECTED, outbox.c.done_at < now - settings.outbox_ttl_s
        )
    )
    return int(expired)


def _make_room(conn: Connection, settings: UplinkSettings) -> int:
    """Under drop_oldest, delete the oldest pending batches so one more fits; return how many."""
    excess = depth(conn) - settings.outbox_max_rows + 1
    if excess <= 0:
        return 0
    oldest = (
        select(outbox.c.seq)
        .where(outbox.c.status == PENDING)
        .order_by(outbox.c.seq)
        .limit(excess)
        .scalar_subquery()
    )
    return int(conn.execute(delete(outbox).where(outbox.c.seq.in_(oldest))).rowcount)


def enqueue(
    conn: Connection,
    aggregates: Sequence[WindowAggregate],
    *,
    now: float,
    gateway: str,
    settings: UplinkSettings,
    privacy: BatchPrivacy,
    stats: BatchStats,
) -> EnqueueResult:
    """Write `aggregates` as batches of at most `batch_max_aggregates`, in the caller's transaction.

    The pass-level `privacy` counters and `stats` go with the first batch (so sums over batches
    stay right); each batch's `epsilon_spent` is that of its own aggregates.
    """
    expired = expire_and_prune(conn, now, settings)
    aggregates, invalid = _drop_invalid(
        conn, aggregates, min_count=privacy.min_window_count, now=now
    )
    seqs: list[int] = []
    dropped = refused = 0
    size = settings.batch_max_aggregates
    for i in range(0, len(aggregates), size):
        chunk = list(aggregates[i : i + size])
        if depth(conn) >= settings.outbox_max_rows:
            if settings.full_policy == "refuse_new":
                refused += 1
                continue
            dropped += _make_room(conn, settings)
        first = i == 0
        batch_privacy = BatchPrivacy(
            epsilon_spent=sum(a.epsilon or 0.0 for a in chunk),
            suppressed_windows=privacy.suppressed_windows if first else 0,
            refused_noised=privacy.refused_noised if first else 0,
            min_window_count=privacy.min_window_count,
        )
        seq = _next_seq(conn, gateway)
        batch = Batch(
            batch_id=uuid.uuid4().hex,
            gateway=gateway,
            seq=seq,
            created_at=now,
            aggregates=chunk,
            privacy=batch_privacy,
            stats=stats if first else BatchStats(),
        )
        conn.execute(
            insert(outbox).values(
                seq=seq,
                batch_id=batch.batch_id,
                gateway=gateway,
                created_at=now,
                n_aggregates=len(chunk),
                body_gz=compress_batch(batch),
                status=PENDING,
                attempts=0,
            )
        )
        seqs.append(seq)
    if dropped:
        log.warning(
            "outbox full (%d batches): dropped the %d oldest", settings.outbox_max_rows, dropped
        )
        counters.bump(conn, "outbox_dropped", dropped)
    if refused:
        log.warning(
            "outbox full (%d batches): refused %d new batches", settings.outbox_max_rows, refused
        )
        counters.bump(conn, "outbox_refused", refused)
    return EnqueueResult(
        seqs=tuple(seqs), dropped=dropped, refused=refused, expired=expired, invalid=invalid
    )


def fetch_pending(
    conn: Connection, now: float, limit: int, settings: UplinkSettings
) -> tuple[list[OutboxBatch], int]:
    """Up to `limit` pending batches in seq order, and how many expired (dropped first)."""
    expired = expire_and_prune(conn, now, settings)
    rows = conn.execute(
        select(
            outbox.c.seq,
            outbox.c.batch_id,
            outbox.c.created_at,
            outbox.c.n_aggregates,
            outbox.c.attempts,
            outbox.c.body_gz,
        )
        .where(outbox.c.status == PENDING)
        .order_by(outbox.c.seq)
        .limit(limit)
    ).all()
    return [
        OutboxBatch(
            seq=r.seq,
            batch_id=r.batch_id,
            created_at=r.created_at,
            n_aggregates=r.n_aggregates,
            attempts=r.attempts,
            body_gz=r.body_gz,
        )
        for r in rows
    ], expired


def still_pending(
    conn: Connection, seq: int, now: float, settings: UplinkSettings
) -> tuple[bool, int]:
    """Whether batch `seq` is still pending after expiring what is past its TTL (itself
    included), and how many batches expired now (counted)."""
    expired = expire_and_prune(conn, now, settings)
    status = conn.execute(select(outbox.c.status).where(outbox.c.seq == seq)).scalar()
    return status == PENDING, expired


def mark_sent(conn: Connection, seq: int, now: float) -> None:
    conn.execute(
        update(outbox)
        .where(outbox.c.seq == seq)
        .values(status=SENT, done_at=now, attempts=outbox.c.attempts + 1, last_error=None)
    )


def mark_rejected(conn: Connection, seq: int, now: float, error: str) -> None:
    conn.execute(
        update(outbox)
        .where(outbox.c.seq == seq)
        .values(status=REJECTED, done_at=now, attempts=outbox.c.attempts + 1, last_error=error)
    )
    counters.bump(conn, "outbox_rejected")


def note_failure(conn: Connection, seq: int, error: str) -> None:
    """Record a failed attempt (the batch stays pending and will be retried)."""
    conn.execute(
        update(outbox)
        .where(outbox.c.seq == seq)
        .values(attempts=outbox.c.attempts + 1, last_error=error)
    )
