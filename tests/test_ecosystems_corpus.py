"""The ecosystem corpus (tests/fixtures/ecosystems/*.yaml) replayed through the real gateway.

Each file (its format: tests/fixtures/ecosystems/README.md) is played against a Mosquitto of its own
(so one file's retained messages never reach the next) and a gateway built by
`gateway.app.create_gateway`, the composition root ``python -m gateway`` uses, with every
adapter enabled at its defaults and the file's ``settings`` over them. Entries are published in
order (QoS 1); after each entry the runner publishes a native telemetry *marker* and waits for
its row: the gateway handles one session's messages in order and commits them in order, so the
marker's row means every message of the entry has been stored, dead-lettered or dropped.

Then, per entry, the rows added since the previous marker are compared with ``expect``:

- a stored reading whose (device, metric) is not expected, or expected with another value
  (1e-6 relative) or in another room, is WRONG: the test fails, listing every one;
- the entry is *exact* when the stored readings are exactly the expected ones and the dead
  letters are exactly ``expect_dead_letter`` (none when it is absent).

The corpus must be at least 98 % exact and hold at least 100 entries (all files present).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from gateway.adapters import ADAPTER_TYPES
from gateway.app import create_gateway
from gateway.config import GatewayConfig, merged_tables
from schemas.metrics import metric
from tests.conftest import MosquittoBroker, need
from tests.waiting import wait_for

CORPUS = Path(__file__).parent / "fixtures" / "ecosystems"
MIN_EXACT = 0.98
MIN_ENTRIES = 100
REL_TOL = 1e-6
MARKER_HOME = "corpus-marker"
_ENTRY_KEYS = {"id", "source", "note", "messages", "expect", "expect_dead_letter"}
_EXPECT_KEYS = {"device", "metric", "value", "unit", "room"}
_MESSAGE_KEYS = {"topic", "payload", "retain"}


@dataclass(frozen=True)
class Expected:
    device: str
    metric: str
    value: float
    room: str | None = None


@dataclass(frozen=True)
class Entry:
    id: str
    source: str
    messages: list[tuple[str, bytes, bool]]
    expect: list[Expected]
    dead_letter: str | None


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    ecosystem: str
    settings: dict[str, Any]
    entries: list[Entry]


@dataclass
class Outcome:
    """What one entry stored, and how it compares."""

    entry: Entry
    stored: list[tuple[str, str, str, float]]  # room, device, metric, value
    dead: list[str]
    wrong: list[str] = field(default_factory=list)
    exact: bool = False


def _payload(raw: Any) -> bytes:
    if isinstance(raw, str):
        return raw.encode()
    if raw is None:
        return b""
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()


def load_file(path: Path) -> CorpusFile:
    """One corpus file, checked for shape (a mistake names the file and entry)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path.name}: not a mapping"
    assert set(doc) <= {"ecosystem", "settings", "entries"}, f"{path.name}: {set(doc)}"
    settings = doc.get("settings") or {}
    assert isinstance(settings, dict), f"{path.name}: settings must be a mapping"
    entries = []
    for raw in doc.get("entries") or []:
        where = f"{path.name}:{raw.get('id')}"
        assert set(raw) <= _ENTRY_KEYS, f"{where}: unknown keys {set(raw) - _ENTRY_KEYS}"
        assert str(raw.get("source", "")).startswith("http"), f"{where}: source must be a URL"
        messages = []
        for msg in raw["messages"]:
            assert set(msg) <= _MESSAGE_KEYS and "topic" in msg, f"{where}: bad message {msg}"
            messages.append((msg["topic"], _payload(msg.get("payload")), bool(msg.get("retain"))))
        expect = []
        for exp in raw.get("expect") or []:
            assert set(exp) <= _EXPECT_KEYS, f"{where}: bad expectation {exp}"
            known = metric(exp["metric"])
            if "unit" in exp and known is not None:
                assert exp["unit"] == known.unit, f"{where}: {exp['metric']} is in {known.unit}"
            expect.append(
                Expected(str(exp["device"]), exp["metric"], float(exp["value"]), exp.get("room"))
            )
        dead = raw.get("expect_dead_letter")
        assert dead is None or not expect, f"{where}: a dead letter expects no readings"
        entries.append(Entry(str(raw["id"]), raw["source"], messages, expect, dead))
    return CorpusFile(path, str(doc.get("ecosystem", path.stem)), settings, entries)


def corpus_files() -> list[CorpusFile]:
    return [load_file(p) for p in sorted(CORPUS.glob("*.yaml"))]


def gateway_config(broker: MosquittoBroker, db: Path, settings: dict[str, Any]) -> GatewayConfig:
    adapters = merged_tables({name: {"enabled": True} for name in ADAPTER_TYPES}, settings)
    return GatewayConfig.model_validate(
        {
            "gateway_id": "gw-corpus",
            "mqtt": {"url": broker.url, "client_id": f"gw-corpus-{uuid.uuid4().hex[:8]}"},
            # A quiet stream commits after commit_interval_ms (1 s by default, for SD cards);
            # the replay waits for every entry's commit, so commit sooner to keep it short.
            "storage": {"path": str(db), "commit_interval_ms": 20},
            "admin": {"port": 0},
            # Documented payloads carry old times: accept readings up to 30 years old.
            "ingest": {"max_age_s": 30 * 365 * 86400.0},
            "adapters": adapters,
        }
    )


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)


def judge(outcome: Outcome) -> None:
    """Fill in `wrong` and `exact` (see the module docstring)."""
    entry = outcome.entry
    expected: dict[tuple[str, str], list[Expected]] = {}
    for exp in entry.expect:
        expected.setdefault((exp.device, exp.metric), []).append(exp)
    matched: set[Expected] = set()
    for room, device, metric_name, value in outcome.stored:
        candidates = expected.get((device, metric_name))
        if not candidates:
            outcome.wrong.append(f"{device}/{metric_name}={value!r}: not expected")
            continue
        hit = [e for e in candidates if _close(e.value, value)]
        if not hit:
            wanted = [e.value for e in candidates]
            outcome.wrong.append(f"{device}/{metric_name}={value!r}: expected {wanted}")
            continue
        if hit[0].room is not None and hit[0].room != room:
            outcome.wrong.append(f"{device}/{metric_name}: room {room!r}, not {hit[0].room!r}")
            continue
        matched.add(hit[0])
    dead_ok = outcome.dead == ([entry.dead_letter] if entry.dead_letter else [])
    outcome.exact = (
        not outcome.wrong
        and matched == set(entry.expect)
        and len(outcome.stored) == len(entry.expect)
        and dead_ok
    )


def _rows(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


async def _marker_stored(db: Path, n: int, what: str, within: float = 20.0) -> None:
    """Wait (reading SQLite off the event loop) for marker `n`'s row."""
    sql = "SELECT 1 FROM readings WHERE home = ? AND value = ?"
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(_rows, db, sql, (MARKER_HOME, float(n))):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


class _Publisher:
    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"corpus-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def replay(corpus: CorpusFile, workdir: Path) -> list[Outcome]:
    """Every entry of `corpus` through a fresh broker and gateway; one `Outcome` per entry."""
    broker = MosquittoBroker(workdir=workdir)
    await asyncio.to_thread(workdir.mkdir)
    await asyncio.to_thread(broker.start)
    db = workdir / "gateway.db"
    outcomes = []
    try:
        config = gateway_config(broker, db, corpus.settings)
        marker_topic = f"{config.mqtt.topic_root}/{MARKER_HOME}/corpus/marker/telemetry"
        gw = create_gateway(config)
        async with gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "never subscribed"
            pub = await asyncio.to_thread(_Publisher, broker.port)
            last_reading = last_dead = 0
            n = 0

            async def mark(what: str) -> None:
                nonlocal n
                n += 1
                marker = json.dumps({"ts": time.time(), "seq": n, "readings": {"mark": n}})
                await asyncio.to_thread(pub.publish, marker_topic, marker.encode())
                await _marker_stored(db, n, f"{what}: marker {n} stored")
                # and the broker has granted what a config made the gateway subscribe to
                await wait_for(lambda: gw.mqtt.pending_subscriptions == 0, what=f"{what} subs")

            try:
                for entry in corpus.entries:
                    for topic, payload, retain in entry.messages:
                        await asyncio.to_thread(pub.publish, topic, payload, retain)
                        if topic.endswith("/config"):
                            # A discovery config subscribes its state topics as it is adopted:
                            # the states that follow must wait until it has been (a device
                            # publishes its config at boot, its states later).
                            await mark(f"{entry.id} config")
                    await mark(entry.id)
                    stored = await asyncio.to_thread(
                        _rows,
                        db,
                        "SELECT id, room, device, metric, value FROM readings "
                        "WHERE id > ? AND home != ? ORDER BY id",
                        (last_reading, MARKER_HOME),
                    )
                    dead = await asyncio.to_thread(
                        _rows,
                        db,
                        "SELECT id, reason FROM dead_letters WHERE id > ? ORDER BY id",
                        (last_dead,),
                    )
                    # Nothing is stored after the marker until the next entry is published.
                    top = await asyncio.to_thread(_rows, db, "SELECT max(id) FROM readings")
                    last_reading = top[0][0]
                    last_dead = max([last_dead, *(d[0] for d in dead)])
                    outcome = Outcome(entry, [tuple(r[1:]) for r in stored], [d[1] for d in dead])
                    judge(outcome)
                    outcomes.append(outcome)
            finally:
                await asyncio.to_thread(pub.close)
    finally:
        broker.stop()
    return outcomes


def summary(results: dict[str, list[Outcome]]) -> str:
    lines = ["ecosystem corpus: file, entries, exact"]
    for name, outcomes in results.items():
        exact = sum(o.exact for o in outcomes)
        lines.append(f"  {name}: {len(outcomes)} entries, {exact} exact")
        for o in outcomes:
            if not o.exact:
                got = sorted(f"{d}/{m}={v:g}" for _, d, m, v in o.stored)
                want = sorted(f"{e.device}/{e.metric}={e.value:g}" for e in o.entry.expect)
                lines.append(
                    f"    NOT EXACT {o.entry.id}: stored {got} dead {o.dead}; expected {want}"
                    f" dead {[o.entry.dead_letter] if o.entry.dead_letter else []}"
                )
    total = sum(len(o) for o in results.values())
    exact = sum(o.exact for outs in results.values() for o in outs)
    lines.append(f"  total: {total} entries, {exact} exact ({exact / max(total, 1):.1%})")
    return "\n".join(lines)


def test_corpus_files_are_well_formed() -> None:
    """Shape, sources, registry units and unique ids, without a broker."""
    files = corpus_files()
    assert files, f"no corpus files under {CORPUS}"
    ids = [e.id for f in files for e in f.entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"entry ids used twice: {duplicates}"
    for corpus in files:
        assert corpus.entries, f"{corpus.path.name} has no entries"
        gateway_config(MosquittoBroker(workdir=CORPUS), CORPUS / "x.db", corpus.settings)


async def test_corpus_is_stored_exactly(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None:
        need("the mosquitto binary is not installed")
    results: dict[str, list[Outcome]] = {}
    for corpus in corpus_files():
        name = f"{corpus.ecosystem} ({corpus.path.name})"
        results[name] = await replay(corpus, tmp_path / corpus.path.stem)
    report = summary(results)
    wrong = [
        f"{o.entry.id} ({o.entry.source}): {w}"
        for outs in results.values()
        for o in outs
        for w in o.wrong
    ]
    assert not wrong, "WRONG values stored:\n  " + "\n  ".join(wrong) + "\n" + report
    total = sum(len(o) for o in results.values())
    exact = sum(o.exact for outs in results.values() for o in outs)
    # Counted over every file present: the whole corpus, not one ecosystem's.
    assert total >= MIN_ENTRIES, f"only {total} entries in the corpus\n{report}"
    assert exact >= MIN_EXACT * total, report


def test_judge_tells_wrong_from_missing() -> None:
    """The runner's own rules, on made-up outcomes (no broker)."""
    entry = Entry(
        "e",
        "https://example.org",
        [],
        [Expected("d", "temperature", 21.5), Expected("d", "humidity", 40.0, room="attic")],
        None,
    )

    def judged(stored: list[tuple[str, str, str, float]], dead: list[str]) -> Outcome:
        outcome = Outcome(entry, stored, dead)
        judge(outcome)
        return outcome

    exact = judged(
        [("attic", "d", "temperature", 21.5 * (1 + 1e-8)), ("attic", "d", "humidity", 40)], []
    )
    assert exact.exact and not exact.wrong
    missing = judged([("attic", "d", "temperature", 21.5)], [])
    assert not missing.exact and not missing.wrong
    assert judged([("r", "d", "temperature", 21.6)], []).wrong  # another value
    assert judged([("r", "d", "pressure", 1000.0)], []).wrong  # not expected at all
    assert judged([("hall", "d", "humidity", 40.0)], []).wrong  # another room
    twice = judged(
        [
            ("r", "d", "temperature", 21.5),
            ("r", "d", "temperature", 21.5),
            ("attic", "d", "humidity", 40),
        ],
        [],
    )
    assert not twice.exact and not twice.wrong  # stored twice: not exact, not wrong
    dead = judged([("attic", "d", "temperature", 21.5), ("attic", "d", "humidity", 40)], ["x"])
    assert not dead.exact
