"""Peer benchmark: homeedge's ingest beside Mosquitto's own rate and Node-RED's, in one run.

    .venv/bin/python bench/peer.py [--messages 100000] [--rounds 3] [--quick] [--json]
                                   [--legs broker,homeedge,nodered]

One Mosquitto of its own (free port, persistence off, the limits of `bench/ingest.py`), one stream:
`--messages` QoS 1 telemetry messages in the gateway's own format, one metric each (the same
``mosquitto_pub -l`` publishers and payloads as `bench/ingest.py`), sent to each consumer in turn:

1. broker: Mosquitto delivering to a bare ``mosquitto_sub -q 1`` (rate = messages / publish start
   to the subscriber's last message). ``mosquitto_sub`` is C on libmosquitto, the broker's own
   client, so this is what the broker and the loopback can do, not what a Python client costs;
2. homeedge: ``python -m gateway`` (inference off, uplink off, a fresh SQLite file each round);
   rate = messages committed to its ``readings`` table per second, publish start to the last row
   seen by polling the file every 10 ms; the rows are counted at the end (zero loss must hold);
3. nodered: Node-RED 4.1 headless with a careful flow: ``mqtt in`` (QoS 1) -> ``join`` (1000
   messages or 1 s) -> one ``function`` that parses the batch and writes it in one transaction of
   multi-row ``INSERT OR IGNORE`` statements (better-sqlite3, WAL, ``synchronous=FULL`` like the
   gateway's default, the gateway's reading identity as a unique index); measured like homeedge.

For homeedge and Node-RED: CPU per message (user + system time of the process and its children,
from psutil, publish start to last commit, / messages), the share of a core that is, and peak RSS
(the larger of the kernel's VmHWM of the process and the sum of the tree's RSS sampled every
50 ms). Each round runs the three legs in a rotated order (broker, homeedge, nodered; then
homeedge, nodered, broker; ...); figures are medians over rounds, the ratios are medians of each
round's ratio. Before timing, each consumer takes probe messages until one is in its database.

Node-RED acknowledges a message to the broker when it reaches the flow, before its batch commits
(up to 1 s and 1000 messages later); homeedge acknowledges only after the commit. Node-RED's flow
also does less per message: no dead letters, no device table, no schema beyond "numbers".

Node-RED (pinned below) and better-sqlite3 are installed with npm, on first use, into
``$HOMEEDGE_BENCH_CACHE/nodered`` (default ~/.cache/homeedge-bench/nodered), never into the repo
and never by the gateway; the command is printed. The SQLite binding is better-sqlite3 12: it
installs from the npm registry alone on Node.js 20 (with no prebuilt binary to download, it
compiles its bundled SQLite, a few minutes) and binds a whole batch in one synchronous
transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402  (after the path)
    TS0,
    GatewayProcess,
    broker_rate,
    fixed5,
    publish_all,
    start_broker,
)

NODE_RED_VERSION = "4.1.15"
BETTER_SQLITE3_VERSION = "12.11.1"  # 13 needs Node.js 22 (on 20 it installs, then segfaults)
CACHE = Path(os.environ.get("HOMEEDGE_BENCH_CACHE", Path.home() / ".cache" / "homeedge-bench"))
NODERED_DIR = CACHE / "nodered"
INSTALL = [
    *("npm", "install", "--prefix", str(NODERED_DIR), "--save-exact", "--no-audit", "--no-fund"),
    *(f"node-red@{NODE_RED_VERSION}", f"better-sqlite3@{BETTER_SQLITE3_VERSION}"),
]
INSTALL_CMD = shlex.join(INSTALL)
LEGS = ("broker", "homeedge", "nodered")
POLL_S = 0.01
STALL_S = 30.0  # no new row for this long after the publishers finished: the rest is lost
ACK_NOTE = (
    "Node-RED acks each message to the broker when it enters the flow, before its batch commits "
    "(a crash loses up to 1 s / 1000 acked messages); homeedge acks only after the commit."
)


# --- measuring a process tree ------------------------------------------------------------------


class TreeMeter:
    """CPU time and peak RSS of a process and its children."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._root = psutil.Process(pid)
        self.peak_rss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return [self._root]

    def cpu_s(self) -> float:
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def _sample(self) -> None:
        rss = 0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        # The kernel's high-water mark catches a peak between two samples (one process only).
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            self._sample()

    def finish(self) -> None:
        """Take the last sample; call before the process is told to stop."""
        self._sample()
        self._done.set()
        self._thread.join(timeout=1)


# --- the stream and the consumers' databases ---------------------------------------------------


@dataclass
class Leg:
    """One consumer's figures in one round."""

    rate: float
    cpu_us_per_msg: float | None = None
    cpu_core_pct: float | None = None
    rss_mb: float | None = None
    lost: int | None = None
    loadavg: str = ""  # the machine's 1, 5 and 15 min load average when the leg ended


def probe_until_stored(
    port: int, root: str, db: Path, *, settle_s: float, timeout: float = 60.0
) -> None:
    """Publish probe messages until one is committed to `db`: the consumer is subscribed and its
    path to SQLite works (a subscription before its SUBACK, or a clean session, drops messages).
    Then wait `settle_s` for the probes still in a batch, so none counts towards the stream."""
    topic = f"{root}/h1/lab/probe/telemetry"
    deadline = time.monotonic() + timeout
    k = 0
    while time.monotonic() < deadline:
        payload = f'{{"ts":{fixed5(int(TS0) * 100_000 + k)},"seq":{k},"readings":{{"probe":1}}}}'
        subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-m", payload],
            check=True,
            timeout=10,
        )
        k += 1
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            if db.exists() and count_rows(db, "device = 'probe'") > 0:
                time.sleep(settle_s)
                return
            time.sleep(0.05)
    raise TimeoutError(f"no probe message reached {db} in {timeout:.0f} s")


def count_rows(db: Path, where: str) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute(f"SELECT count(*) FROM readings WHERE {where}").fetchone()[0])
    except sqlite3.OperationalError:  # the consumer has not created the table yet
        return 0
    finally:
        conn.close()


def stored_rate(
    port: int, root: str, total: int, db: Path, meter: TreeMeter
) -> tuple[int, float, float]:
    """Publish `total` messages; return (rows stored, seconds, cpu seconds) once all are committed
    or nothing new arrived for `STALL_S` after the publishers finished."""
    conn = sqlite3.connect(db, timeout=10)

    # max(rowid) is a walk down the b-tree's right edge where count(*) scans the table: the poll
    # must not cost the machine what the consumers need. Rows are only ever appended, and an
    # ignored duplicate takes no rowid.
    def last_id() -> int:
        return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM readings").fetchone()[0])

    base = last_id()
    cpu0 = meter.cpu_s()
    started = time.perf_counter()
    pubs = publish_all(port, root, total)
    seen, progress_at = 0, time.monotonic()
    while seen < total:
        time.sleep(POLL_S)
        now_seen = last_id() - base
        if now_seen != seen:
            seen, progress_at = now_seen, time.monotonic()
        elif all(p.poll() is not None for p in pubs) and time.monotonic() - progress_at > STALL_S:
            break
    elapsed = time.perf_counter() - started
    cpu = meter.cpu_s() - cpu0
    for p in pubs:
        p.wait(timeout=60)
    conn.close()
    return seen, elapsed, cpu


def consumer_leg(
    meter: TreeMeter, port: int, root: str, total: int, db: Path, on_stall: Callable[[], str]
) -> Leg:
    seen, elapsed, cpu = stored_rate(port, root, total, db, meter)
    meter.finish()
    stored = count_rows(db, "device LIKE 'thermostat-%'")
    if stored != total:
        print(
            f"peer: {total - stored} of {total} messages not stored; {on_stall()}", file=sys.stderr
        )
    return Leg(
        rate=seen / elapsed,
        cpu_us_per_msg=cpu / seen * 1e6 if seen else None,
        cpu_core_pct=cpu / elapsed * 100,
        rss_mb=meter.peak_rss / 2**20,
        lost=total - stored,
    )


# --- homeedge ----------------------------------------------------------------------------------


def homeedge_leg(workdir: Path, port: int, root: str, total: int) -> Leg:
    gw = GatewayProcess(workdir, port, root)  # inference off; no uplink url: the uplink is off
    meter = TreeMeter(gw.proc.pid)
    try:
        probe_until_stored(port, root, gw.db, settle_s=0.2)
        return consumer_leg(meter, port, root, total, gw.db, lambda: "see the gateway's log")
    finally:
        meter.finish()
        gw.stop()


# --- Node-RED ----------------------------------------------------------------------------------


def ensure_nodered() -> Path:
    """Node-RED's red.js in the bench cache, installed with npm on first use."""
    red = NODERED_DIR / "node_modules" / "node-red" / "red.js"
    if _installed_version("node-red") != NODE_RED_VERSION or (
        _installed_version("better-sqlite3") != BETTER_SQLITE3_VERSION
    ):
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise SystemExit(
                "peer: the Node-RED leg needs Node.js 20 and npm (apt-get install nodejs npm), "
                f"then: {INSTALL_CMD}; or leave it out with --legs broker,homeedge"
            )
        print(
            f"peer: installing Node-RED {NODE_RED_VERSION} and better-sqlite3 "
            f"{BETTER_SQLITE3_VERSION} into {NODERED_DIR} (first use; compiling better-sqlite3 "
            f"takes a few minutes):\n  {INSTALL_CMD}",
            file=sys.stderr,
            flush=True,
        )
        NODERED_DIR.mkdir(parents=True, exist_ok=True)
        package = NODERED_DIR / "package.json"
        if not package.exists():
            package.write_text('{"name": "homeedge-bench-nodered", "private": true}\n')
        subprocess.run(INSTALL, check=True, stdout=sys.stderr)
    check = subprocess.run(
        ["node", "-e", "new (require('better-sqlite3'))(':memory:').pragma('user_version')"],
        cwd=NODERED_DIR,
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise SystemExit(
            f"peer: better-sqlite3 in {NODERED_DIR} does not load ({check.stderr.strip()[-300:]}); "
            f"remove that folder and run: {INSTALL_CMD}"
        )
    return red


def _installed_version(package: str) -> str | None:
    try:
        meta = json.loads((NODERED_DIR / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(meta.get("version"))


# The flow's code, run by Node-RED's function node. One row per metric, the columns of the
# gateway's readings table, its reading identity (home, device, metric, seq) as a unique index.
NR_INIT = """
const Database = global.get('Database');
const db = new Database(DB_PATH);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = FULL');
db.exec(`CREATE TABLE IF NOT EXISTS readings (
  id INTEGER PRIMARY KEY, home TEXT NOT NULL, room TEXT NOT NULL, device TEXT NOT NULL,
  metric TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL, seq INTEGER,
  received_at REAL NOT NULL)`);
db.exec('CREATE UNIQUE INDEX IF NOT EXISTS ux_readings ON readings (home, device, metric, seq)');
const statements = new Map();  // rows per statement -> prepared multi-row INSERT
const insert = (n) => {
  if (!statements.has(n)) {
    const values = Array(n).fill('(?,?,?,?,?,?,?,?)').join(',');
    statements.set(n, db.prepare(`INSERT OR IGNORE INTO readings
      (home, room, device, metric, ts, value, seq, received_at) VALUES ${values}`));
  }
  return statements.get(n);
};
const write = db.transaction((params) => {
  for (let i = 0; i < params.length; i += ROWS_PER_STATEMENT * 8) {
    const chunk = params.slice(i, i + ROWS_PER_STATEMENT * 8);
    insert(chunk.length / 8).run(chunk);
  }
});
context.set('db', db);
context.set('write', write);
"""

NR_FUNC = """
const params = [];
const now = Date.now() / 1000;
for (const m of msg.payload) {
  const t = m.topic.split('/');  // <root>/<home>/<room>/<device>/telemetry
  let p;
  try { p = JSON.parse(m.payload); } catch (e) { continue; }
  if (t.length !== 5 || p === null || typeof p.ts !== 'number' || typeof p.readings !== 'object'
      || p.readings === null) continue;
  const seq = Number.isInteger(p.seq) ? p.seq : null;
  for (const name in p.readings) {
    const v = p.readings[name];
    if (typeof v === 'number' && Number.isFinite(v)) {
      params.push(t[1], t[2], t[3], name, p.ts, v, seq, now);
    }
  }
}
if (params.length) context.get('write')(params);
return null;
"""


# Node ids in Node-RED's own form (16 hex digits): the runtime takes any property whose value
# is a node's id for a reference to it, so short words ("join") make false dependencies.
IDS = {name: f"{n:016x}" for n, name in enumerate(("tab", "broker", "mqtt_in", "join", "write"), 1)}


def nodered_flow(port: int, root: str, db: Path, client_id: str) -> list[dict[str, object]]:
    init = NR_INIT.replace("DB_PATH", json.dumps(str(db))).replace("ROWS_PER_STATEMENT", "500")
    return [
        {"id": IDS["tab"], "type": "tab", "label": "homeedge peer bench"},
        {
            "id": IDS["broker"],
            "type": "mqtt-broker",
            "name": "bench mosquitto",
            "broker": "127.0.0.1",
            "port": str(port),
            "clientid": client_id,
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "autoUnsubscribe": True,
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": IDS["mqtt_in"],
            "type": "mqtt in",
            "z": IDS["tab"],
            "name": "telemetry",
            "topic": f"{root}/+/+/+/telemetry",
            "qos": "1",
            "datatype": "utf8",
            "broker": IDS["broker"],
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [[IDS["join"]]],
        },
        {
            # Whole messages (the topic names the device), 1000 or what came in 1 s.
            "id": IDS["join"],
            "type": "join",
            "z": IDS["tab"],
            "name": "1000 or 1 s",
            "mode": "custom",
            "build": "array",
            "property": "",
            "propertyType": "full",
            "key": "topic",
            "joiner": "\\n",
            "joinerType": "str",
            "accumulate": False,
            "timeout": "1",
            "count": "1000",
            "reduceRight": False,
            "useparts": False,
            "wires": [[IDS["write"]]],
        },
        {
            "id": IDS["write"],
            "type": "function",
            "z": IDS["tab"],
            "name": "one transaction",
            "func": NR_FUNC,
            "outputs": 0,
            "timeout": 0,
            "noerr": 0,
            "initialize": init,
            "finalize": "context.get('db').close();",
            "libs": [],
            "wires": [],
        },
    ]


def nodered_settings(workdir: Path) -> str:
    sqlite_module = NODERED_DIR / "node_modules" / "better-sqlite3"
    return f"""// Made by bench/peer.py: headless (no editor, no HTTP server), installs nothing.
module.exports = {{
    userDir: {json.dumps(str(workdir))},
    flowFile: {json.dumps(str(workdir / "flows.json"))},
    credentialSecret: false,
    httpAdminRoot: false,
    httpNodeRoot: false,
    uiHost: "127.0.0.1",
    telemetry: {{ enabled: false, updateNotification: false }},
    diagnostics: {{ enabled: false }},
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }},
                       modules: {{ allowInstall: false }} }},
    functionExternalModules: false,
    functionGlobalContext: {{ Database: require({json.dumps(str(sqlite_module))}) }},
    exportGlobalContextKeys: false,
    logging: {{ console: {{ level: "warn", metrics: false, audit: false }} }},
}};
"""


@contextlib.contextmanager
def nodered_process(workdir: Path, port: int, root: str, red: Path) -> Iterator[tuple[int, Path]]:
    db = workdir / "nodered.db"
    (workdir / "flows.json").write_text(
        json.dumps(nodered_flow(port, root, db, f"homeedge-bench-{workdir.name}"))
    )
    settings = workdir / "settings.js"
    settings.write_text(nodered_settings(workdir))
    log = workdir / "nodered.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["node", str(red), "--settings", str(settings), "--userDir", str(workdir)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc.pid, db
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode not in (0, -signal.SIGINT):
            print(f"peer: Node-RED exited {proc.returncode}: {_tail(log)}", file=sys.stderr)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def nodered_leg(workdir: Path, port: int, root: str, total: int, red: Path) -> Leg:
    with nodered_process(workdir, port, root, red) as (pid, db):
        meter = TreeMeter(pid)
        try:
            probe_until_stored(port, root, db, settle_s=1.2)  # join waits up to 1 s
            return consumer_leg(
                meter,
                port,
                root,
                total,
                db,
                lambda: "Node-RED's log:\n" + _tail(db.parent / "nodered.log"),
            )
        finally:
            meter.finish()


# --- rounds and the report ---------------------------------------------------------------------


def run_round(
    n: int,
    legs: list[str],
    workdir: Path,
    port: int,
    total: int,
    red: Path | None,
    say: Callable[[str], None],
) -> dict[str, Leg]:
    order = legs[n % len(legs) :] + legs[: n % len(legs)]
    out: dict[str, Leg] = {}
    for leg in order:
        root = f"peer-r{n}-{leg}"
        legdir = workdir / f"round{n}-{leg}"
        legdir.mkdir()
        if leg == "broker":
            out[leg] = Leg(rate=broker_rate(port, root, total))
        elif leg == "homeedge":
            out[leg] = homeedge_leg(legdir, port, root, total)
        else:
            assert red is not None
            out[leg] = nodered_leg(legdir, port, root, total, red)
        f = out[leg]
        f.loadavg = _load()
        extra = (
            f", {f.cpu_us_per_msg:.1f} us CPU/msg ({f.cpu_core_pct:.0f} % of a core), "
            f"peak RSS {f.rss_mb:.1f} MB, lost {f.lost}"
            if f.cpu_us_per_msg is not None
            else ""
        )
        say(f"round {n + 1} {leg}: {f.rate:,.0f} msg/s{extra}  (load {f.loadavg})")
    return out


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _median(rounds: list[dict[str, Leg]], leg: str, field: str) -> float | None:
    values = [getattr(r[leg], field) for r in rounds if leg in r]
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _ratio(rounds: list[dict[str, Leg]], a: str, b: str) -> float | None:
    values = [r[a].rate / r[b].rate for r in rounds if a in r and b in r]
    return round(statistics.median(values), 3) if values else None


def summarize(rounds: list[dict[str, Leg]], total: int, load_before: str) -> dict[str, object]:
    result: dict[str, object] = {"messages": total, "rounds": len(rounds)}
    for leg in LEGS:
        result[f"{leg}_rate"] = _median(rounds, leg, "rate")
    result["he_over_nodered"] = _ratio(rounds, "homeedge", "nodered")
    result["he_over_broker"] = _ratio(rounds, "homeedge", "broker")
    result["nodered_over_broker"] = _ratio(rounds, "nodered", "broker")
    for leg in ("homeedge", "nodered"):
        result[f"{leg}_cpu_us_per_msg"] = _median(rounds, leg, "cpu_us_per_msg")
        result[f"{leg}_cpu_core_pct"] = _median(rounds, leg, "cpu_core_pct")
        result[f"{leg}_rss_mb"] = _median(rounds, leg, "rss_mb")
        lost = [r[leg].lost or 0 for r in rounds if leg in r]
        result[f"{leg}_lost"] = max(lost) if lost else None
    result["per_round"] = [{leg: asdict(f) for leg, f in r.items()} for r in rounds]
    result["broker_subscriber"] = "mosquitto_sub (libmosquitto, C)"
    result["nodered_version"] = NODE_RED_VERSION
    result["better_sqlite3_version"] = BETTER_SQLITE3_VERSION
    result["acks"] = ACK_NOTE
    result["loadavg_before"] = load_before
    result["loadavg_after"] = _load()
    return result


def print_table(result: dict[str, object]) -> None:
    def cell(key: str, fmt: str) -> str:
        value = result.get(key)
        return format(value, fmt) if isinstance(value, float | int) else "-"

    rows = [
        ("Mosquitto -> mosquitto_sub", "broker"),
        ("python -m gateway", "homeedge"),
        (f"Node-RED {NODE_RED_VERSION}, join 1000", "nodered"),
    ]
    print(f"\nmedians of {result['rounds']} round(s), {result['messages']:,} QoS 1 messages each")
    print(f"{'':32}{'msg/s':>10}{'us CPU/msg':>12}{'% core':>8}{'peak RSS MB':>13}{'lost':>6}")
    for label, leg in rows:
        print(
            f"{label:32}{cell(f'{leg}_rate', ',.0f'):>10}{cell(f'{leg}_cpu_us_per_msg', '.1f'):>12}"
            f"{cell(f'{leg}_cpu_core_pct', '.0f'):>8}{cell(f'{leg}_rss_mb', '.1f'):>13}"
            f"{cell(f'{leg}_lost', 'd'):>6}"
        )
    print(
        f"homeedge / Node-RED {cell('he_over_nodered', '.2f')}; homeedge / broker "
        f"{cell('he_over_broker', '.2f')}; Node-RED / broker {cell('nodered_over_broker', '.2f')}"
    )
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']}")
    print(ACK_NOTE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: 5,000 messages, 1 round")
    parser.add_argument(
        "--legs", default=",".join(LEGS), help="which of broker,homeedge,nodered to run"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 5000, 1
    legs = [leg for leg in LEGS if leg in args.legs.split(",")]
    if not legs or set(args.legs.split(",")) - set(LEGS):
        parser.error(f"--legs: a comma-separated subset of {','.join(LEGS)}")
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be at least 1")
    say = (
        (lambda s: print(s, file=sys.stderr, flush=True))
        if args.json
        else (lambda s: print(s, flush=True))
    )
    red = ensure_nodered() if "nodered" in legs else None
    load_before = _load()
    rounds: list[dict[str, Leg]] = []
    with tempfile.TemporaryDirectory(prefix="homeedge-peer-") as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        try:
            for n in range(args.rounds):
                rounds.append(run_round(n, legs, workdir, port, args.messages, red, say))
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    result = summarize(rounds, args.messages, load_before)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 1 if result.get("homeedge_lost") else 0


if __name__ == "__main__":
    sys.exit(main())
