"""`python -m devices.demo` end to end: embedded broker + cloud + gateway + simulated homes; the
readings land in the gateway's SQLite file and pseudonymized window aggregates in the cloud's;
a rerun in the same folder gets its own run directory, fresh batches in the cloud, and leaves
the earlier run's ground truth as it was."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from devices.demo import gateway_toml
from devices.world import World
from gateway.config import load_config
from tests.conftest import MosquittoBroker


def run_demo(data: Path, *args: str) -> tuple[str, Path]:
    """One demo run in `data` (2 s progress lines; `args` add to or override the defaults of
    an 18 s run of 2 homes at 2 msg/s: the first window, up to 5 s of replay, closes after 5 s
    of grace, wherever the replay starts in it): its output and its run directory."""
    defaults = ["--duration", "18", "--homes", "2", "--rate", "2"]
    fixed = ["--progress", "2", "--data-dir", str(data)]
    proc = subprocess.run(
        [sys.executable, "-m", "devices.demo", *defaults, *args, *fixed],
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    run = re.search(r"^run +(\S+) \(also (\S+)\)$", out, re.M)
    assert run, out
    assert Path(run.group(2)).resolve() == Path(run.group(1)) and Path(run.group(1)).parent == data
    return out, Path(run.group(1))


def test_demo_stores_every_published_reading_and_a_rerun_starts_fresh(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    out, first = run_demo(data)
    check_run(out, first)
    truth = (first / "ground_truth.jsonl").read_bytes()
    again, second = run_demo(data)
    assert second != first
    check_run(again, second)  # fresh batches in the rerun's cloud, every reading stored
    assert (first / "ground_truth.jsonl").read_bytes() == truth  # kept, not overwritten
    assert (data / "latest").resolve() == second


def check_run(out: str, data: Path) -> None:
    assert re.search(r"^broker +mqtt://127\.0\.0\.1:\d+ \(embedded amqtt\)$", out, re.M), out
    assert re.search(r"gateway ok, stored \d+ readings", out), out
    assert re.search(r"^cloud +http://127\.0\.0\.1:\d+/api/v1 ", out, re.M), out
    token = re.search(r"^dashboard http://127\.0\.0\.1:\d+/  read token (\S+)$", out, re.M)
    assert token, out
    cloud_done = re.search(r"; cloud (\d+) batches, (\d+) temperature aggregates; edge", out, re.M)
    assert cloud_done, out
    batches, temperature = (int(g) for g in cloud_done.groups())
    assert batches >= 1 and temperature >= 1
    done = re.search(r"^done: (\d+) messages published \((\d+) telemetry, (\d+) audio\)", out, re.M)
    assert done, out
    published, telemetry, audio = (int(g) for g in done.groups())
    assert telemetry > 0 and audio > 0 and published == telemetry + audio

    config = (data / "gateway.toml").read_text()
    assert 'protocol = "3.1.1"' in config and "port = 0" in config

    conn = sqlite3.connect(f"file:{data / 'gateway.db'}?mode=ro", uri=True)
    try:
        stored = conn.execute(
            "SELECT count(DISTINCT home || '/' || device || '/' || seq) FROM readings"
        ).fetchone()[0]
        homes = {r[0] for r in conn.execute("SELECT DISTINCT home FROM readings")}
        devices = {tuple(r) for r in conn.execute("SELECT home, device FROM devices")}
        dead = conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason").fetchall()
    finally:
        conn.close()
    # Every telemetry message the devices published (QoS 1, acknowledged) was stored.
    assert stored == telemetry
    assert dead == []  # every reading in its range and time bounds, none rejected
    assert homes == {"home-001", "home-002"}
    world = World(homes=2, seed=0)
    assert devices == {(d.home, d.device) for d in world.devices}

    for line in (data / "ground_truth.jsonl").read_text().splitlines():
        assert json.loads(line)["home"] in homes

    # The cloud got what the progress line said, under pseudonyms, with no sequence gap.
    assert token.group(1) in (data / "cloud.toml").read_text()
    assert 'clock = "event"' in config and "[uplink]" in config
    conn = sqlite3.connect(f"file:{data / 'cloud.db'}?mode=ro", uri=True)
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM batches ORDER BY seq")]
        cloud_homes = {r[0] for r in conn.execute("SELECT DISTINCT home FROM aggregates")}
        n_temperature = conn.execute(
            "SELECT count(*) FROM aggregates WHERE metric = 'temperature'"
        ).fetchone()[0]
    finally:
        conn.close()
    # At least what the last progress line saw (the gateway may upload one more window while it
    # stops, after that line), with no sequence gap.
    assert len(seqs) >= batches and seqs == list(range(1, len(seqs) + 1))
    assert n_temperature >= temperature
    # two homes; four if the replay crossed a pseudonym rotation (every 30 days)
    assert len(cloud_homes) in (2, 4) and all(h.startswith("h-") for h in cloud_homes)
    assert not cloud_homes & homes


def test_a_replay_older_than_the_gateways_age_bound_raises_it(tmp_path: Path) -> None:
    def config(replay_from: float | None) -> Path:
        path = tmp_path / "gateway.toml"
        text = gateway_toml(
            broker="mqtt://127.0.0.1:1", data_dir=tmp_path, topic_root="t", replay_from=replay_from
        )
        path.write_text(text)
        return path

    ten_days_ago = time.time() - 10 * 86400
    assert load_config(config(ten_days_ago)).ingest.max_age_s > 10 * 86400
    default = load_config(config(None)).ingest.max_age_s
    assert default == 7 * 86400  # the demo's constant follows the gateway's default
    assert load_config(config(time.time() - 86400)).ingest.max_age_s == default


def retained_topics(port: int) -> list[str]:
    """Every retained topic on the broker: what a new subscriber to '#' gets before a marker
    (a retained message of its own, cleared afterwards)."""
    import uuid

    import paho.mqtt.client as mqtt

    marker = f"zz-probe/{uuid.uuid4().hex}"
    got: list[str] = []
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.retain:
            got.append(msg.topic)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{marker[-8:]}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(marker, b"x", qos=1, retain=True).wait_for_publish(10)
        client.subscribe("#", qos=1)
        assert done.wait(10), "the probe's own retained marker never came back"
        client.publish(marker, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_demo_leaves_a_broker_of_your_own_as_it_was(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    data = tmp_path / "demo"
    before = retained_topics(mosquitto.port)
    out, run = run_demo(
        data, "--broker", mosquitto.url, "--duration", "10", "--homes", "1", "--rate", "1"
    )
    cleared = re.search(r"^broker +cleared the (\d+) retained topics the demo made", out, re.M)
    assert cleared, out
    # The devices' states, the gateway's status and its Home Assistant configs (the gateway
    # device and at least one entity per device) were there to clear.
    world = World(homes=1, seed=0)
    assert int(cleared.group(1)) > len(world.devices) + 2, out
    config = (run / "gateway.toml").read_text()
    assert 'discovery_prefix = "demo-homeassistant"' in config
    assert retained_topics(mosquitto.port) == before == []
