"""A synthetic fleet's batches and aggregates generated inside PostgreSQL (INSERT ... SELECT over
generate_series), for the storage tests and bench/query.py: millions of rows without building
one of them in Python.

Home h belongs to gateway h % gateways; each gateway uploads one batch per hour holding that
hour's windows of its homes. One INSERT per day of windows, so each statement fills one daily
partition, in time order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# metric, unit, device class, level, spread
METRICS = (
    ("temperature", "°C", "thermostat", 21.0, 2.0),
    ("humidity", "%", "thermostat", 45.0, 8.0),
    ("co2", "ppm", "air_quality", 650.0, 150.0),
    ("light", "lx", "motion", 200.0, 120.0),
    ("motion", "", "motion", 0.3, 0.2),
    ("power", "W", "plug", 300.0, 200.0),
    ("inference_alarm", "", "microphone", 0.01, 0.01),
    ("inference_speech", "", "microphone", 0.2, 0.1),
)


@dataclass(frozen=True)
class Fleet:
    t0: float  # a day edge
    homes: int
    gateways: int
    windows: int  # windows per home and metric
    window_s: int = 60

    @property
    def hours(self) -> int:
        return math.ceil(self.windows * self.window_s / 3600)

    @property
    def rows(self) -> int:
        return self.homes * len(METRICS) * self.windows

    def gateway(self, h: int) -> str:
        return f"gw-{h % self.gateways:03d}"

    def home(self, h: int) -> str:
        return f"home-{h:05d}"


def batches_sql(fleet: Fleet) -> str:
    """One batch row per gateway and hour (ids 1..); set the id sequence after it."""
    per_batch = math.ceil(fleet.homes / fleet.gateways) * len(METRICS) * 3600 // fleet.window_s
    return (
        "INSERT INTO batches (id, batch_id, gateway, seq, created_at, received_at,"
        " aggregate_count, body_bytes, wire_bytes, window_start_min, window_end_max,"
        " epsilon_spent, suppressed_windows, refused_noised, min_window_count,"
        " ingested_messages, ingested_bytes, version)"
        f" SELECT hr * {fleet.gateways} + g + 1, md5(hr || '-' || g),"
        " 'gw-' || lpad(g::text, 3, '0'),"
        f" hr + 1, {fleet.t0} + (hr + 1) * 3600, {fleet.t0} + (hr + 1) * 3600, {per_batch},"
        f" {per_batch * 260}, {per_batch * 40}, {fleet.t0} + hr * 3600,"
        f" {fleet.t0} + (hr + 1) * 3600, 0, 0, 0, 5, {per_batch * 60}, {per_batch * 60 * 130}, 1"
        f" FROM generate_series(0, {fleet.hours - 1}) hr,"
        f" generate_series(0, {fleet.gateways - 1}) g"
    )


def _metrics_values() -> str:
    return ", ".join(
        f"('{m}', '{u}', '{d}', {level}, {spread})" for m, u, d, level, spread in METRICS
    )


def aggregates_sql(fleet: Fleet, first: int, last: int) -> str:
    """The aggregates of windows `first` to `last` (exclusive) of every home and metric, in
    time order (the heap in time order, as ingest leaves it, keeps BRIN summaries tight).

    The (home, metric) pairs with their names are built once (a materialized CTE); each window
    reads them and adds only its arithmetic."""
    w = fleet.window_s
    g = fleet.gateways
    return (
        "WITH hm AS MATERIALIZED (SELECT h % "
        f"{g} AS g, 'home-' || lpad(h::text, 5, '0') AS home,"
        f" 'gw-' || lpad((h % {g})::text, 3, '0') AS gateway, s.*"
        f" FROM generate_series(0, {fleet.homes - 1}) h,"
        f" (VALUES {_metrics_values()}) AS s(metric, unit, d, level, spread))"
        " INSERT INTO aggregates (batch, gateway, window_start, window_s, home, room_class,"
        " device_class, metric, unit, policy, count, sum, mean, min, max, std, p50, p95, epsilon)"
        f" SELECT (x.m * {w} / 3600) * {g} + x.g + 1, x.gateway, x.t, {w}, x.home, 'living',"
        " x.d, x.metric, x.unit, 'aggregate', 6.0, 6.0 * x.mean, x.mean,"
        " x.mean - x.spread * 0.1, x.mean + x.spread * 0.1, x.spread * 0.05, x.mean,"
        " x.mean + x.spread * 0.08, NULL"
        f" FROM generate_series({first}, {last - 1}) m,"
        f" LATERAL (SELECT hm.*, m, {fleet.t0} + m * {w} AS t,"
        " greatest(0.0, hm.level + hm.spread * (0.5 * sin(2 * pi() *"
        f" (({fleet.t0}::bigint + m * {w}) % 86400) / 86400.0) + 0.3 * (random() - 0.5)))"
        " AS mean FROM hm) x"
    )


# What ingest keeps per gateway (`cloud.ingest`, migration 0009), from the batches loaded.
GATEWAY_STATS_SQL = (
    "INSERT INTO gateway_stats (gateway, batches, seqs, last_seq, last_batch_at,"
    " last_created_at, window_end_max, aggregate_rows, ingested_messages, ingested_bytes,"
    " body_bytes, wire_bytes)"
    " SELECT gateway, count(*), count(DISTINCT seq), max(seq), max(received_at),"
    " max(created_at), max(window_end_max), sum(aggregate_count), sum(ingested_messages),"
    " sum(ingested_bytes), sum(body_bytes), sum(wire_bytes) FROM batches GROUP BY gateway"
)


def fleet_statements(fleet: Fleet) -> list[str]:
    """Every statement that loads `fleet`: the batches and their gateways' statistics, then a
    day of aggregates each."""
    per_day = 86400 // fleet.window_s
    statements = [batches_sql(fleet), GATEWAY_STATS_SQL]
    for first in range(0, fleet.windows, per_day):
        statements.append(aggregates_sql(fleet, first, min(first + per_day, fleet.windows)))
    statements.append(
        "SELECT setval(pg_get_serial_sequence('batches', 'id'), (SELECT max(id) FROM batches))"
    )
    return statements
