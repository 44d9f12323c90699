"""The gateway database's schema and its versions (`gateway.schema`): a new file is created at
the newest version, a database of the code before versions existed upgrades with its rows intact,
a newer one is refused, and the schema does not depend on what was imported."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine

from gateway.db import make_engine
from gateway.records import dead_letter_digest
from gateway.schema import MIGRATIONS, SCHEMA_VERSION, SchemaVersionError, upgrade

REPO = Path(__file__).resolve().parents[1]

# Every table of the gateway database, written out so that the test does not trust
# `gateway.schema.metadata` to list them.
TABLES = {
    "readings",
    "dead_letters",
    "devices",
    "sync_watermark",
    "aggregates",
    "late_readings",
    "privacy_ledger",
    "outbox",
    "outbox_seq",
    "sync_counters",
    "inferences",
    "sensor_baselines",
    "ha_announced",
}

# Version 0: the DDL that `metadata.create_all` emitted before the schema had versions (copied
# from the SQLite file that code made). The ingest tables always existed; the sync and inference
# tables only once their modules had been imported.
V0_INGEST = (
    """CREATE TABLE readings (
        id INTEGER NOT NULL,
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        metric VARCHAR(64) NOT NULL,
        ts FLOAT NOT NULL,
        value FLOAT NOT NULL,
        seq INTEGER,
        received_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE UNIQUE INDEX ux_readings_device_metric_ts ON readings (home, device, metric, ts)",
    "CREATE INDEX ix_readings_ts ON readings (ts)",
    "CREATE INDEX ix_readings_received_at ON readings (received_at)",
    "CREATE UNIQUE INDEX ux_readings_device_metric_seq ON readings (home, device, metric, seq)"
    " WHERE seq IS NOT NULL",
    """CREATE TABLE dead_letters (
        id INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason VARCHAR(32) NOT NULL,
        detail TEXT NOT NULL,
        received_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    """CREATE TABLE devices (
        home VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device_class VARCHAR(32) NOT NULL,
        last_seen FLOAT,
        availability VARCHAR(16),
        availability_at FLOAT,
        PRIMARY KEY (home, device)
    )""",
)
V0_SYNC = (
    """CREATE TABLE sync_watermark (
        id INTEGER NOT NULL,
        window_s INTEGER NOT NULL,
        watermark FLOAT,
        reading_cursor INTEGER NOT NULL,
        updated_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    """CREATE TABLE aggregates (
        id INTEGER NOT NULL,
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device_class VARCHAR(32) NOT NULL,
        metric VARCHAR(64) NOT NULL,
        window_start FLOAT NOT NULL,
        window_s INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum FLOAT NOT NULL,
        sum_sq FLOAT NOT NULL,
        min FLOAT NOT NULL,
        max FLOAT NOT NULL,
        mean FLOAT NOT NULL,
        std FLOAT NOT NULL,
        p50 FLOAT NOT NULL,
        p95 FLOAT NOT NULL,
        policy VARCHAR(16) NOT NULL,
        created_at FLOAT NOT NULL,
        PRIMARY KEY (id),
        CONSTRAINT ux_aggregates UNIQUE (home, room, device_class, metric, window_start, window_s)
    )""",
    "CREATE INDEX ix_aggregates_window_start ON aggregates (window_start)",
    """CREATE TABLE late_readings (
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        metric VARCHAR(64) NOT NULL,
        window_start FLOAT NOT NULL,
        count INTEGER NOT NULL,
        last_seen_at FLOAT NOT NULL,
        PRIMARY KEY (home, room, device, metric, window_start)
    )""",
    """CREATE TABLE privacy_ledger (
        home VARCHAR(64) NOT NULL,
        period_start FLOAT NOT NULL,
        epsilon_spent FLOAT NOT NULL,
        releases INTEGER NOT NULL,
        refused INTEGER NOT NULL,
        PRIMARY KEY (home, period_start)
    )""",
    """CREATE TABLE outbox (
        seq INTEGER NOT NULL,
        batch_id VARCHAR(32) NOT NULL,
        gateway VARCHAR(64) NOT NULL,
        created_at FLOAT NOT NULL,
        n_aggregates INTEGER NOT NULL,
        body_gz BLOB NOT NULL,
        status VARCHAR(16) NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        done_at FLOAT,
        PRIMARY KEY (seq),
        UNIQUE (batch_id)
    )""",
    "CREATE INDEX ix_outbox_status_seq ON outbox (status, seq)",
    """CREATE TABLE outbox_seq (
        gateway VARCHAR(64) NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (gateway)
    )""",
    """CREATE TABLE sync_counters (
        name VARCHAR(64) NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name)
    )""",
)
V0_INFERENCE = (
    """CREATE TABLE inferences (
        id INTEGER NOT NULL,
        model VARCHAR(64) NOT NULL,
        version VARCHAR(64) NOT NULL,
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        window_start FLOAT NOT NULL,
        window_end FLOAT NOT NULL,
        score FLOAT NOT NULL,
        label VARCHAR(64) NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX ix_inferences_home_model_end ON inferences (home, model, window_end)",
)


def v0_database(path: Path, *, sync: bool = True, inference: bool = True) -> None:
    """A database as the code before versions made it, with rows in its tables."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        ddl = V0_INGEST + (V0_SYNC if sync else ()) + (V0_INFERENCE if inference else ())
        for statement in ddl:
            db.execute(statement)
        db.executemany(
            "INSERT INTO readings (home, room, device, metric, ts, value, seq, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("h1", "lab", "plug-1", "power", 1_700_000_000.0 + i, 10.5 + i, seq, 1.7e9 + i)
                for i, seq in enumerate([1, 2, None, 4, None])
            ],
        )
        db.executemany(
            "INSERT INTO dead_letters (topic, payload, reason, detail, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                ("homeedge/h1/x", b"\x00\xffnot json", "decode", "bad json", 1.7e9),
                ("homeedge/h1/y", b"{}", "schema", "missing ts", 1.7e9 + 1),
            ],
        )
        db.execute(
            "INSERT INTO devices VALUES ('h1', 'plug-1', 'lab', 'plug', 1.7e9, 'online', 1.7e9)"
        )
        db.execute(
            "INSERT INTO devices (home, device, room, device_class) "
            "VALUES ('h1', 'thermo-2', 'hall', 'thermostat')"
        )
        if sync:
            db.execute("INSERT INTO sync_watermark VALUES (1, 60, 1700000000.0, 3, 1.7e9)")
            db.executemany(
                "INSERT INTO outbox (seq, batch_id, gateway, created_at, n_aggregates, body_gz,"
                " status, attempts, last_error, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (1, "b1", "gw-1", 1.7e9, 3, b"\x1f\x8b gz", "sent", 1, None, 1.7e9 + 5),
                    (2, "b2", "gw-1", 1.7e9 + 60, 2, b"\x1f\x8b gz2", "pending", 4, "503", None),
                ],
            )
            db.execute("INSERT INTO outbox_seq VALUES ('gw-1', 2)")
            db.execute("INSERT INTO sync_counters VALUES ('suppressed', 7)")
        if inference:
            db.execute(
                "INSERT INTO inferences (model, version, home, room, device, window_start,"
                " window_end, score, label) VALUES"
                " ('alarm', '1', 'h1', 'lab', 'mic-1', 1.7e9, 1.7e9 + 1, 0.9, 'smoke')"
            )
    db.close()


def schema_of(path: Path) -> set[tuple[str, str, str | None]]:
    """(type, name, DDL with whitespace collapsed) of every table and index."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    db.close()
    return {(kind, name, " ".join(sql.split()) if sql else None) for kind, name, sql in rows}


def tables_of(path: Path) -> set[str]:
    return {name for kind, name, _sql in schema_of(path) if kind == "table"}


def rows_of(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as db:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {n: db.execute(f"SELECT * FROM {n} ORDER BY rowid").fetchall() for n in names}
    db.close()
    return rows


def as_before(rows: list[tuple[object, ...]], before: list[tuple[object, ...]]) -> list[object]:
    """`rows` cut to the columns `before` had (columns that migrations add go at the end)."""
    width = len(before[0]) if before else 0
    return [row[:width] for row in rows]


def version_of(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    db.close()
    return int(version)


def fresh_schema(tmp_path: Path) -> set[tuple[str, str, str | None]]:
    path = tmp_path / "fresh.db"
    make_engine(path).dispose()
    return schema_of(path)


def test_a_new_database_is_created_at_the_newest_version(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    make_engine(path).dispose()
    assert SCHEMA_VERSION >= 1
    assert version_of(path) == SCHEMA_VERSION
    assert tables_of(path) == TABLES


def test_an_empty_file_counts_as_new(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.touch()
    make_engine(path).dispose()
    assert version_of(path) == SCHEMA_VERSION
    assert tables_of(path) == TABLES


@pytest.mark.parametrize(
    ("sync", "inference"), [(True, True), (False, False)], ids=["all tables", "ingest only"]
)
def test_a_version_0_database_upgrades_with_its_rows_intact(
    tmp_path: Path, sync: bool, inference: bool
) -> None:
    path = tmp_path / "gateway.db"
    v0_database(path, sync=sync, inference=inference)
    assert version_of(path) == 0
    before = rows_of(path)
    assert before["readings"] and before["dead_letters"] and before["devices"]

    make_engine(path).dispose()

    assert version_of(path) == SCHEMA_VERSION
    # The same schema as a new database: the migrations and the Table definitions agree.
    assert schema_of(path) == fresh_schema(tmp_path)
    after = rows_of(path)
    assert {n: as_before(after[n], before[n]) for n in before} == before
    assert all(not after[n] for n in TABLES - set(before))  # the tables it lacked, empty


def test_version_1_is_the_version_0_schema_complete(tmp_path: Path) -> None:
    # The baseline migration alone, on an empty file, makes every table and index of version 0:
    # a version 0 database lacking any of them gets it.
    v0, v1 = tmp_path / "v0.db", tmp_path / "v1.db"
    v0_database(v0)
    engine = create_engine(f"sqlite:///{v1}")
    with engine.begin() as conn:
        MIGRATIONS[0](conn)
    engine.dispose()
    assert schema_of(v1) == schema_of(v0)


def v1_database(path: Path) -> None:
    """A version 1 database with what version 1's code stored: `v0_database`'s rows, and one bad
    message stored three times (a redelivery after a crash and two retained replays)."""
    v0_database(path)
    engine = create_engine(f"sqlite:///{path}")
    assert upgrade(engine, MIGRATIONS[:1]) == 1
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO dead_letters (topic, payload, reason, detail, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                ("homeedge/h1/hall/door-1/state", b"ajar", "validation", "ajar?", 1.7e9 + 10 + i)
                for i in range(3)
            ],
        )
    db.close()


def test_a_version_1_database_migrates_to_one_identity_per_reading_and_dead_letter(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    v1_database(path)
    assert version_of(path) == 1
    before = rows_of(path)

    make_engine(path).dispose()

    assert version_of(path) == SCHEMA_VERSION
    assert schema_of(path) == fresh_schema(tmp_path)
    after = rows_of(path)
    # Every row kept; tables later versions add (4: sensor_baselines, 5: ha_announced) come empty.
    assert after.pop("sensor_baselines") == []
    assert {n: rows for n, rows in after.items() if n != "dead_letters"} == {
        **{n: rows for n, rows in before.items() if n != "dead_letters"},
        "ha_announced": [],
    }
    x, y, door = "homeedge/h1/x", "homeedge/h1/y", "homeedge/h1/hall/door-1/state"
    # The copies of one message become its first row, counted; the digest is the writer's.
    assert after["dead_letters"] == [
        (
            1,
            x,
            b"\x00\xffnot json",
            "decode",
            "bad json",
            1.7e9,
            dead_letter_digest(x, "decode", b"\x00\xffnot json"),
            1,
            1.7e9,
        ),
        (
            2,
            y,
            b"{}",
            "schema",
            "missing ts",
            1.7e9 + 1,
            dead_letter_digest(y, "schema", b"{}"),
            1,
            1.7e9 + 1,
        ),
        (
            3,
            door,
            b"ajar",
            "validation",
            "ajar?",
            1.7e9 + 10,
            dead_letter_digest(door, "validation", b"ajar"),
            3,
            1.7e9 + 12,
        ),
    ]
    # The new identity holds in the migrated file. Stored: ts 1.7e9 + 0..4 with seq 1, 2, None,
    # 4, None.
    insert = (
        "INSERT OR IGNORE INTO readings (home, room, device, metric, ts, value, seq, received_at)"
        " VALUES ('h1', 'lab', 'plug-1', 'power', ?, 0.0, ?, 1.8e9)"
    )
    with sqlite3.connect(path) as db:
        assert db.execute(insert, (1_700_000_000.0, 9)).rowcount == 1  # seq 1's ts, a new seq
        assert db.execute(insert, (1_700_000_002.0, 10)).rowcount == 1  # a ts-only row's ts
        assert db.execute(insert, (1_700_000_000.0, 1)).rowcount == 0  # seq 1 again, its ts
        # Version 6: the same seq with another ts is a new reading (a counter that restarted).
        assert db.execute(insert, (1_700_000_009.0, 1)).rowcount == 1
        assert db.execute(insert, (1_700_000_004.0, None)).rowcount == 0  # ts-only duplicate
        assert db.execute(insert, (1_700_000_000.0, None)).rowcount == 1  # seq rows' ts, no seq
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO dead_letters (topic, payload, reason, detail, received_at, digest,"
                " count, last_received_at) VALUES (?, ?, 'r', 'd', 1.8e9, ?, 1, 1.8e9)",
                (door, b"ajar", dead_letter_digest(door, "validation", b"ajar")),
            )
    db.close()


def test_a_version_5_database_migrates_to_the_ts_led_identity_with_its_readings(
    tmp_path: Path,
) -> None:
    """Version 6 replaces the per-device identity indexes and the ts and received_at indexes
    with one index led by ts: every stored reading stays, the identity still holds, and the
    aggregation's ts ranges and retention's rowid bisection stay indexed."""
    path = tmp_path / "gateway.db"
    v0_database(path)
    engine = create_engine(f"sqlite:///{path}")
    assert upgrade(engine, MIGRATIONS[:5]) == 5
    engine.dispose()
    rows = [
        # home, device, metric, ts, seq: two devices with seqs (one ts repeating: a stuck
        # clock), one without, and a seq-less row sharing a seq row's ts
        ("h2", f"d{d}", m, 1.75e9 + (k if d else 0), k if d < 2 else None)
        for d in range(3)
        for k in range(40)
        for m in ("temperature", "humidity")
    ]
    with sqlite3.connect(path) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"ux_readings_device_seq_metric", "ix_readings_ts"} <= names
        db.executemany(
            "INSERT INTO readings (home, room, device, metric, ts, value, seq, received_at)"
            " VALUES (?, 'lab', ?, ?, ?, 1.5, ?, 1.75e9)",
            rows,
        )
    db.close()
    before = rows_of(path)

    make_engine(path).dispose()

    assert version_of(path) == SCHEMA_VERSION
    assert schema_of(path) == fresh_schema(tmp_path)
    after = rows_of(path)
    assert after == before and len(after["readings"]) == 5 + len(rows)  # v0_database's 5
    insert = (
        "INSERT OR IGNORE INTO readings (home, room, device, metric, ts, value, seq, received_at)"
        " VALUES ('h2', 'lab', ?, 'temperature', ?, 9.0, ?, 1.8e9)"
    )
    with sqlite3.connect(path) as db:
        indexes = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
        assert [n for n in indexes if "readings" in n and "late" not in n] == [
            "ux_readings_identity"
        ]
        assert db.execute(insert, ("d1", 1.75e9 + 3, 3)).rowcount == 0  # a redelivery
        assert db.execute(insert, ("d0", 1.75e9, 39)).rowcount == 0  # stuck clock, its seq
        assert db.execute(insert, ("d2", 1.75e9 + 3, None)).rowcount == 0  # ts-only duplicate
        assert db.execute(insert, ("d1", 1.75e9 + 99, 3)).rowcount == 1  # seq restarted
        assert db.execute(insert, ("d1", 1.75e9 + 3, None)).rowcount == 1  # no seq: not a seq row
        plans = {
            "aggregation": "SELECT home, room, device, metric, count(*) FROM readings"
            " WHERE ts >= 1.75e9 AND ts < 1.75e9 + 10 GROUP BY home, room, device, metric",
            "first window": "SELECT min(ts) FROM readings WHERE ts >= 1.75e9",
            "retention probe": "SELECT id, received_at FROM readings WHERE id >= 7"
            " ORDER BY id LIMIT 1",
        }
        for what, sql in plans.items():
            plan = " ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "SEARCH" in plan and "SCAN" not in plan, (what, plan)
    db.close()


def test_upgrading_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    v0_database(path)
    make_engine(path).dispose()
    schema, rows = schema_of(path), rows_of(path)
    calls: list[int] = []

    def counted(conn: Connection) -> None:
        calls.append(1)

    engine = make_engine(path)
    # An up-to-date database runs no migration at all.
    assert upgrade(engine, (counted,) * SCHEMA_VERSION) == SCHEMA_VERSION
    engine.dispose()
    assert calls == []
    assert (schema_of(path), rows_of(path), version_of(path)) == (schema, rows, SCHEMA_VERSION)


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    make_engine(path).dispose()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    schema = schema_of(path)

    with pytest.raises(SchemaVersionError) as err:
        make_engine(path)

    message = str(err.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"this gateway's version {SCHEMA_VERSION}" in message
    assert str(path) in message
    assert version_of(path) == SCHEMA_VERSION + 1 and schema_of(path) == schema


def test_the_cli_refuses_a_newer_database_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    make_engine(path).dispose()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    config = tmp_path / "gateway.toml"
    config.write_text(f'gateway_id = "g"\n[storage]\npath = {str(path)!r}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"schema version {SCHEMA_VERSION + 1}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert version_of(path) == SCHEMA_VERSION + 1


def test_migrations_run_in_order_and_only_the_missing_ones(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    make_engine(path).dispose()
    seen: list[int] = []

    def v_next(conn: Connection) -> None:  # what the readings key change will look like
        seen.append(int(conn.exec_driver_sql("PRAGMA user_version").scalar_one()))
        conn.exec_driver_sql("CREATE INDEX ix_readings_device ON readings (device)")

    engine = create_engine(f"sqlite:///{path}")
    assert upgrade(engine, (*MIGRATIONS, v_next)) == SCHEMA_VERSION + 1
    assert upgrade(engine, (*MIGRATIONS, v_next)) == SCHEMA_VERSION + 1
    engine.dispose()
    assert seen == [SCHEMA_VERSION]
    assert version_of(path) == SCHEMA_VERSION + 1
    assert ("index", "ix_readings_device") in {(k, n) for k, n, _ in schema_of(path)}


def test_a_failed_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    v0_database(path, sync=False, inference=False)
    schema, rows = schema_of(path), rows_of(path)

    def broken(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        conn.exec_driver_sql("DELETE FROM readings")
        raise RuntimeError("migration bug")

    engine = create_engine(f"sqlite:///{path}")
    with pytest.raises(RuntimeError, match="migration bug"):
        upgrade(engine, (*MIGRATIONS, broken))
    engine.dispose()
    # Version 1's tables, the new table and the deleted rows are all rolled back.
    assert (schema_of(path), rows_of(path), version_of(path)) == (schema, rows, 0)
    make_engine(path).dispose()  # and the real upgrade still works afterwards
    assert version_of(path) == SCHEMA_VERSION and rows_of(path)["readings"] == rows["readings"]


def test_the_schema_does_not_depend_on_what_was_imported(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    script = (
        "import sys\n"
        "from gateway.db import make_engine\n"
        f"make_engine({str(path)!r}).dispose()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('gateway.sync', 'gateway.infer'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"  # neither package was imported ...
    assert tables_of(path) == TABLES  # ... and their tables are there
    assert version_of(path) == SCHEMA_VERSION
