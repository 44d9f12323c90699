"""``python -m devices.demo``: the whole local demo with one command and no Docker.

1. an MQTT broker: the embedded amqtt one (``python -m devices.broker`` on a free port) unless
   ``--broker mqtt://host:port`` names a running one;
2. the cloud (``python -m cloud --config DATA/cloud.toml``: SQLite in DATA/cloud.db, a free port,
   fresh random gateway and read tokens each run; its log in DATA/cloud.log; the dashboard at its
   URL, logged in with the printed read token);
3. the gateway (``python -m gateway --config DATA/gateway.toml``; its log in DATA/gateway.log,
   its readings in DATA/gateway.db), uploading to that cloud;
4. the simulated homes, in this process, replaying the last ``--history`` hours at ``--speed``
   and then going live;
5. a progress line every ``--progress`` seconds: devices online, messages published, readings
   the gateway stored (counted in its SQLite file, opened read-only), its /healthz, and what the
   cloud received (``GET /api/v1/gateways`` and ``/api/v1/aggregates`` with the read token).

History is replayed hundreds of times faster than real time, so the gateway's windows close on
the readings' own clock (``aggregation.clock = "event"``) and are long enough in simulated time
to hold about ten readings per device (`demo_aggregation`): aggregates reach the cloud within
seconds instead of after the replay.

Every run has its own directory, ``DATA/run-<UTC time>/`` (``DATA/latest`` points to the newest):
configs, logs, both databases and the run's ``ground_truth.jsonl``. A rerun replays a fresh
history into a fresh gateway and cloud, so the dashboard shows new batches within seconds, and
the runs before it, with their ground truth, stay as they were. (Resuming an earlier run's
simulated time went stale: the catch-up took seconds, then the replay-length windows, hours of
simulated time each, stopped closing in real time.)

Ctrl-C, SIGTERM or the end of ``--duration`` stops the devices (they publish ``offline``), lets
the gateway drain, then stops the gateway and the broker.

On a broker of your own (``--broker``) the demo leaves nothing behind (`clean_broker`): once
the gateway has stopped it clears exactly the retained topics the run made (the devices' state
topics, the gateway's status topic, and the Home Assistant configs the gateway recorded in its
``ha_announced`` table) and ends the gateway's persistent session. Its Home Assistant configs
go under ``--ha-prefix`` (``demo-homeassistant``), not ``homeassistant``, so a Home Assistant
on that broker does not adopt the fake homes while the demo runs (``--ha-prefix
homeassistant`` shows them there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt

from devices.cli import (
    RateMeter,
    add_fleet_arguments,
    fleet_config,
    format_fleet,
    setup_logging,
    stop_on_signals,
)
from devices.fleet import Cue, Fleet, FleetConfig
from schemas.topics import ROOT, Kind, device_topic, gateway_status_topic

GATEWAY_ID = "demo-gateway"
GATEWAY_CLIENT_ID = "homeedge-" + GATEWAY_ID
DEMO_HA_PREFIX = "demo-homeassistant"
# Window lengths the demo picks from (seconds of simulated time).
_WINDOWS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
# The clip set the inference models were evaluated with (speech, keywords, alarms), when present.
DEMO_CLIPS = Path(__file__).resolve().parent / "clips"
DEMO_CUES = (
    Cue(at_s=8, label="alarm_smoke_t3"),
    Cue(at_s=18, label="keyword_lights_on"),
    Cue(at_s=28, label="keyword_stop"),
    Cue(at_s=38, label="keyword_lights_off"),
    Cue(at_s=48, label="alarm_co_t4"),
)
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0
_DRAIN_S = 5.0  # at most this long waiting for the gateway to store what was published
_RESULT_DELAY_S = 8.0  # real seconds an edge result may take after its input (demo_aggregation)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# The gateway refuses readings older than its [ingest] max_age_s (7 days by default): a replay
# reaching further back raises it in the demo gateway's config.
_GATEWAY_MAX_AGE_S = 7 * 86400.0


class DemoError(RuntimeError):
    """A part of the demo did not start; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: object) -> str:
    # JSON string/number literals are valid TOML basic strings/numbers for what we write here.
    return json.dumps(str(value) if isinstance(value, Path) else value)


def demo_aggregation(speed: float, rate: float) -> dict[str, Any]:
    """The ``[aggregation]`` of a fleet at `rate` msg/s per device and `speed` x real time."""
    # About ten readings per device per window, so windows pass the privacy filter's minimum
    # count; a grace of two messages' worth of device clock skew.
    needed = 10.0 * speed / rate
    window = next((w for w in _WINDOWS if w >= needed), _WINDOWS[-1])
    return {
        "window_s": window,
        # The edge results (alarms, keywords, speech, anomalies) are stored a few real seconds
        # after their input (audio batches, a sensor window's close): at hundreds of times real
        # speed a grace of two messages' worth made every one of them a late reading, so the
        # cloud's events panel stayed empty. _RESULT_DELAY_S of real time, within one window
        # and the gateway's bound (an hour: 5 s of real time at 720x).
        "grace_s": round(
            min(float(window), 3600.0, max(2.0 * speed / rate, _RESULT_DELAY_S * speed)), 3
        ),
        "interval_s": 1.0,
        "windows_per_batch": 1,
        "clock": "event",
    }


@dataclass(frozen=True)
class CloudInfo:
    """The demo's cloud: where it listens and its credentials (fresh each run)."""

    url: str
    read_token: str
    gateway_token: str


def cloud_toml(*, data_dir: Path, read_token: str, gateway_token: str) -> str:
    """The demo cloud's configuration (see cloud/config.py)."""
    lines = [
        f"database_url = {_toml('sqlite+aiosqlite:///' + str(data_dir / 'cloud.db'))}",
        'host = "127.0.0.1"',
        "port = 0",
        f"port_file = {_toml(data_dir / 'cloud.port')}",
        f"read_token = {_toml(read_token)}",
        "analytics_interval_s = 10.0",
        "",
        "[gateways]",
        f"{GATEWAY_ID} = {_toml(gateway_token)}",
        "",
    ]
    return "\n".join(lines)


def gateway_toml(
    *,
    broker: str,
    data_dir: Path,
    topic_root: str,
    cloud: CloudInfo | None = None,
    aggregation: dict[str, Any] | None = None,
    replay_from: float | None = None,
    ha_prefix: str = DEMO_HA_PREFIX,
) -> str:
    """The demo gateway's configuration (see gateway/config.py); `replay_from` is the simulated
    time of the first reading, when the devices replay history."""
    lines = [
        f"gateway_id = {_toml(GATEWAY_ID)}",
        "",
        "[mqtt]",
        f"url = {_toml(broker)}",
        f"client_id = {_toml(GATEWAY_CLIENT_ID)}",
        f"topic_root = {_toml(topic_root)}",
        'protocol = "3.1.1"  # the embedded amqtt broker speaks MQTT 3.1.1 only',
        "",
        "[storage]",
        f"path = {_toml(data_dir / 'gateway.db')}",
        "",
        "[admin]",
        'host = "127.0.0.1"',
        "port = 0",
        f"port_file = {_toml(data_dir / 'gateway.admin-port')}",
        "",
        "[homeassistant]",
        f"discovery_prefix = {_toml(ha_prefix)}",
        "",
    ]
    if aggregation:
        lines += ["[aggregation]", *(f"{k} = {_toml(v)}" for k, v in aggregation.items()), ""]
    if replay_from is not None and time.time() - replay_from > _GATEWAY_MAX_AGE_S - 3600.0:
        max_age = round(time.time() - replay_from + 86400.0)
        lines += ["[ingest]", f"max_age_s = {max_age}  # the replayed history is that old", ""]
    if cloud is not None:
        lines += [
            "[uplink]",
            f"url = {_toml(cloud.url)}",
            f"token = {_toml(cloud.gateway_token)}",
            "",
        ]
    return "\n".join(lines)


@dataclass
class Child:
    """A process the demo started, with its log file."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    def exited(self) -> bool:
        return self.proc.returncode is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log_file.close()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the demo dies, even by SIGKILL (Linux), so no
    broker or gateway outlives it unseen (their own session keeps them from the terminal)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(name: str, args: Sequence[str], log_path: Path) -> Child:
    log_file = log_path.open("wb")  # each run's log starts afresh
    # A session of its own: Ctrl-C in the terminal reaches only the demo, which then stops the
    # children in order (devices first, so the gateway stores what they sent).
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    return Child(name=name, proc=proc, log_path=log_path, log_file=log_file)


async def _wait_for(child: Child, ready: Any, what: str) -> None:
    """Poll `ready()` until true; fail with the child's log when it exits or times out."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if await ready():
            return
        if child.exited():
            raise DemoError(
                f"the {child.name} exited (status {child.proc.returncode}) before {what}; "
                f"its log ({child.log_path}):\n{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"the {child.name} did not get {what} in {_START_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.1)


async def start_broker(data_dir: Path) -> tuple[Child, str]:
    """The embedded broker on a free port (retried: another process may take the port)."""
    for _attempt in range(3):
        port = free_port()
        child = await spawn(
            "broker", ["-m", "devices.broker", "--port", str(port)], data_dir / "broker.log"
        )

        log_path = child.log_path

        async def listening(port: int = port, log_path: Path = log_path) -> bool:
            # devices.broker prints this line once it accepts connections (a probe connection
            # would make amqtt log an error).
            return f"listening on mqtt://127.0.0.1:{port}" in _read(log_path)

        try:
            await _wait_for(child, listening, f"listening on port {port}")
        except DemoError:
            await child.stop()
            continue
        return child, f"mqtt://127.0.0.1:{port}"
    raise DemoError(f"the embedded broker did not start; see {data_dir / 'broker.log'}")


async def start_gateway(
    data_dir: Path,
    broker: str,
    topic_root: str,
    cloud: CloudInfo | None = None,
    aggregation: dict[str, Any] | None = None,
    replay_from: float | None = None,
    ha_prefix: str = DEMO_HA_PREFIX,
) -> tuple[Child, str]:
    config = data_dir / "gateway.toml"
    text = gateway_toml(
        broker=broker,
        data_dir=data_dir,
        topic_root=topic_root,
        cloud=cloud,
        aggregation=aggregation,
        replay_from=replay_from,
        ha_prefix=ha_prefix,
    )
    config.write_text(text)
    config.chmod(0o600)  # it holds the uplink token
    port_file = data_dir / "gateway.admin-port"
    port_file.unlink(missing_ok=True)
    child = await spawn(
        "gateway",
        ["-m", "gateway", "--config", str(config), "--log-level", "WARNING"],
        data_dir / "gateway.log",
    )

    async def has_port() -> bool:
        return port_file.exists() and port_file.read_text().strip().isdigit()

    try:
        await _wait_for(child, has_port, "its admin port")
    except BaseException:
        await child.stop()
        raise
    return child, f"http://127.0.0.1:{int(port_file.read_text())}"


async def start_cloud(data_dir: Path) -> tuple[Child, CloudInfo]:
    """``python -m cloud`` on SQLite in `data_dir`, a free port and new random tokens."""
    read_token, gateway_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = data_dir / "cloud.toml"
    config.write_text(
        cloud_toml(data_dir=data_dir, read_token=read_token, gateway_token=gateway_token)
    )
    config.chmod(0o600)  # it holds the tokens
    port_file = data_dir / "cloud.port"
    port_file.unlink(missing_ok=True)
    child = await spawn("cloud", ["-m", "cloud", "--config", str(config)], data_dir / "cloud.log")

    async def has_port() -> bool:
        return port_file.exists() and port_file.read_text().strip().isdigit()

    try:
        await _wait_for(child, has_port, "its port")
    except BaseException:
        await child.stop()
        raise
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    return child, CloudInfo(url=url, read_token=read_token, gateway_token=gateway_token)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def count_readings(db: Path) -> int | None:
    """Rows in the gateway's readings table, read-only (None before the file exists)."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # not created yet, or busy: the next line will tell
    return int(row[0])


async def gateway_health(http: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    """The gateway's /healthz body; ``{"status": "unreachable"}`` when it does not answer."""
    try:
        async with http.get(f"{admin}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            body = await r.json(content_type=None)
            if isinstance(body, dict):
                return body
            return {"status": str(r.status)}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {"status": "unreachable"}


@dataclass(frozen=True)
class CloudProgress:
    batches: int
    temperature_windows: int
    # What the edge detected, as the cloud's analytics counted it (their last run).
    alarms: int = 0
    commands: int = 0
    anomalies: int = 0


async def cloud_progress(http: aiohttp.ClientSession, cloud: CloudInfo) -> CloudProgress | None:
    """What the cloud holds from the demo gateway, through its query API (None: no answer)."""
    headers = {"Authorization": f"Bearer {cloud.read_token}"}
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with http.get(f"{cloud.url}/api/v1/gateways", headers=headers, timeout=timeout) as r:
            gateways = (await r.json())["gateways"]
        params = {"metric": "temperature", "group_by": "gateway"}
        async with http.get(
            f"{cloud.url}/api/v1/aggregates", params=params, headers=headers, timeout=timeout
        ) as r:
            series = (await r.json())["series"]
        async with http.get(
            f"{cloud.url}/api/v1/analytics/events", headers=headers, timeout=timeout
        ) as r:
            timeline = (await r.json())["report"]["timeline"]
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return None
    batches = sum(g["batches"] for g in gateways if g["gateway"] == GATEWAY_ID)
    windows = sum(p["windows"] for s in series for p in s["points"])
    return CloudProgress(
        batches=batches,
        temperature_windows=windows,
        alarms=round(sum(p["alarms"] for p in timeline)),
        commands=round(sum(p["keywords"] for p in timeline)),
        anomalies=round(sum(p["anomalies"] for p in timeline)),
    )


def _format_cloud(progress: CloudProgress | None) -> str:
    if progress is None:
        return "cloud unreachable"
    return (
        f"cloud {progress.batches} batches, {progress.temperature_windows} temperature aggregates"
        f"; edge events {progress.alarms} alarms, {progress.commands} voice commands, "
        f"{progress.anomalies} sensor anomalies"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devices.demo",
        description="broker + gateway + simulated homes on this machine, no Docker",
    )
    parser.add_argument(
        "--broker", default=None, help="use this broker (mqtt://host:port) instead of amqtt"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds the devices run (default: Ctrl-C)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("demo-data"), help="config, logs and databases"
    )
    parser.add_argument("--topic-root", default=ROOT)
    parser.add_argument(
        "--ha-prefix",
        default=DEMO_HA_PREFIX,
        help="Home Assistant discovery prefix of the demo gateway (default: one Home "
        "Assistant does not read; 'homeassistant' shows the fake homes in it)",
    )
    parser.add_argument(
        "--progress", type=float, default=2.0, help="seconds between progress lines"
    )
    parser.add_argument("--log-level", default="WARNING")
    add_fleet_arguments(
        parser,
        defaults={
            "homes": 3,
            "rate": 1.0,
            "speed": 720.0,
            "history": 36.0,  # the sensor anomaly warm-up (24 h), then 12 h it scores
            "anomaly_rate": 2.0,
            "clips": DEMO_CLIPS if any(DEMO_CLIPS.glob("*.wav")) else None,
            # Besides chance: a smoke alarm, three commands and a CO alarm in the first minute,
            # each on the next microphone in turn, and again every ten minutes.
            "cues": DEMO_CUES if any(DEMO_CLIPS.glob("*.wav")) else (),
            "cue_every_s": 600.0,
        },
    )
    return parser


def _say(line: str) -> None:
    print(line, flush=True)


async def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    ground_truth = args.ground_truth or data_dir / "ground_truth.jsonl"
    db = data_dir / "gateway.db"
    stop = asyncio.Event()
    stop_on_signals(stop)
    children: list[Child] = []
    retained: list[str] = []  # the devices' retained state topics, for clean_broker
    async with aiohttp.ClientSession() as http:
        try:
            if args.broker:
                broker = args.broker
            else:
                child, broker = await start_broker(data_dir)
                children.append(child)
            _say(f"broker   {broker}" + ("" if args.broker else " (embedded amqtt)"))
            cloud_child, cloud = await start_cloud(data_dir)
            children.append(cloud_child)
            _say(f"cloud    {cloud.url}/api/v1  log {cloud_child.log_path}")
            _say(f"dashboard {cloud.url}/  read token {cloud.read_token}")
            aggregation = demo_aggregation(args.speed, args.rate)
            if args.start is not None:
                replay_from = args.start
            elif args.history is not None:
                replay_from = time.time() - args.history * 3600.0
            else:
                replay_from = None
            gateway, admin = await start_gateway(
                data_dir,
                broker,
                args.topic_root,
                cloud=cloud,
                aggregation=aggregation,
                replay_from=replay_from,
                ha_prefix=args.ha_prefix,
            )
            children.append(gateway)
            _say(f"gateway  {admin}/healthz  {admin}/metrics  log {gateway.log_path}")
            _say(
                f"sync     {aggregation['window_s']} s windows of simulated time, each sent "
                f"to the cloud as it closes"
            )
            _say(f"data     {db} (readings), {ground_truth} (injected anomalies)")
            config = fleet_config(
                args,
                broker=broker,
                topic_root=args.topic_root,
                duration=args.duration,
                ground_truth=ground_truth,
            )
            return await _run_fleet(
                config,
                stop,
                http,
                admin=admin,
                db=db,
                gateway=gateway,
                cloud=cloud,
                progress=args.progress,
                retained=retained,
            )
        except DemoError as exc:
            _say(f"demo: {exc}")
            return 1
        finally:
            for child in reversed(children):
                await child.stop()
            if args.broker:
                await _clean_up(args.broker, args.topic_root, db, retained)


def new_run_dir(data_dir: Path, now: float | None = None) -> Path:
    """A new directory for one run under `data_dir` (``run-YYYYmmdd-HHMMSS``, ``-2``... when
    taken) and ``data_dir/latest`` pointing to it."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    run = data_dir / stamp
    n = 1
    while True:
        try:
            run.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
            run = data_dir / f"{stamp}-{n}"
    latest = data_dir / "latest"
    tmp = data_dir / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    tmp.replace(latest)  # atomic: `latest` always names a whole run
    return run


async def _run_fleet(
    config: FleetConfig,
    stop: asyncio.Event,
    http: aiohttp.ClientSession,
    *,
    admin: str,
    db: Path,
    gateway: Child,
    cloud: CloudInfo,
    progress: float,
    retained: list[str],
) -> int:
    fleet = Fleet(config)
    retained += [
        device_topic(m.spec.home, m.spec.room, m.spec.device, Kind.STATE, root=config.topic_root)
        for m in fleet.world.models
    ]
    _say(
        f"devices  {fleet.stats.devices} in {config.homes} homes, {config.rate:g} msg/s each, "
        f"simulated time x{config.speed:g}; Ctrl-C stops"
    )
    fleet_task = asyncio.create_task(fleet.run(stop))
    published = RateMeter()
    stored_meter = RateMeter()
    stored: int | None = None
    while not fleet_task.done():
        done, _ = await asyncio.wait({fleet_task}, timeout=progress)
        if done:
            break
        stored = await asyncio.to_thread(count_readings, db)
        health = await gateway_health(http, admin)
        _say(
            f"{format_fleet(fleet.stats, published.rate(fleet.stats.published))} | gateway "
            f"{health.get('status')}, stored {stored or 0} readings "
            f"({stored_meter.rate(stored or 0):.0f}/s) | "
            f"{_format_cloud(await cloud_progress(http, cloud))}"
        )
        if gateway.exited() and not stop.is_set():
            _say(f"demo: the gateway exited; its log ({gateway.log_path}):\n{gateway.log_tail()}")
            stop.set()
    await fleet_task
    # Let the gateway store what is in flight, and upload the windows that closed, before it is
    # stopped (windows still open stay in the gateway until a later run closes them).
    deadline = time.monotonic() + _DRAIN_S
    while time.monotonic() < deadline and not gateway.exited():
        await asyncio.sleep(0.5)
        latest = await asyncio.to_thread(count_readings, db)
        health = await gateway_health(http, admin)
        outbox = health.get("sync", {}).get("outbox_depth", 0)
        if latest is not None and latest == stored and outbox == 0:
            break
        stored = latest
    s = fleet.stats
    _say(
        f"done: {s.published} messages published ({s.telemetry} telemetry, {s.audio} audio), "
        f"{stored or 0} readings stored in {db}, {s.truths} labelled events; "
        f"{_format_cloud(await cloud_progress(http, cloud))}"
    )
    return 0 if not gateway.exited() else 1


def announced_topics(db: Path) -> list[str]:
    """The Home Assistant configs the demo gateway recorded (its ``ha_announced`` table)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return [row[0] for row in con.execute("SELECT topic FROM ha_announced")]
    except sqlite3.Error:  # an older gateway database without the table
        return []


async def clean_broker(broker: str, topics: Sequence[str], *, session: str | None) -> int:
    """Clear the retained messages of `topics` (an empty retained message each, QoS 1) and end
    the persistent session of client id `session` (a clean connect under that id); how many
    topics were cleared. Only these exact topics are touched: a broker of your own keeps
    everything else it holds."""
    parts = urlsplit(broker)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    async with aiomqtt.Client(
        host, port, identifier=f"{GATEWAY_CLIENT_ID}-cleanup", clean_session=True
    ) as client:
        for topic in dict.fromkeys(topics):
            await client.publish(topic, b"", qos=1, retain=True)
    if session is not None:
        async with aiomqtt.Client(host, port, identifier=session, clean_session=True):
            pass
    return len(set(topics))


async def _clean_up(broker: str, topic_root: str, db: Path, retained: list[str]) -> None:
    topics = [
        *retained,
        gateway_status_topic(GATEWAY_ID, root=topic_root),
        *await asyncio.to_thread(announced_topics, db),
    ]
    try:
        n = await clean_broker(broker, topics, session=GATEWAY_CLIENT_ID)
    except aiomqtt.MqttError as exc:
        _say(f"demo: could not clear the retained topics it made on {broker}: {exc}")
        return
    await asyncio.to_thread(_forget_announced, db)
    _say(f"broker   cleared the {n} retained topics the demo made on {broker}")


def _forget_announced(db: Path) -> None:
    """The configs are cleared from the broker: the gateway's record of them goes too."""
    if not db.exists():
        return
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("DELETE FROM ha_announced")
        con.commit()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    args.data_dir = new_run_dir(args.data_dir.resolve())
    _say(f"run      {args.data_dir} (also {args.data_dir.parent / 'latest'})")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
