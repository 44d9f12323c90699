"""`python -m devices.demo` end to end: embedded broker + gateway + simulated homes, and the
readings land in the gateway's SQLite file."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from devices.world import World


def test_demo_stores_every_published_reading(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "devices.demo",
            "--duration",
            "8",
            "--homes",
            "2",
            "--rate",
            "2",
            "--progress",
            "2",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"^broker +mqtt://127\.0\.0\.1:\d+ \(embedded amqtt\)$", out, re.M), out
    assert re.search(r"gateway ok, stored \d+ readings", out), out
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
    finally:
        conn.close()
    # Every telemetry message the devices published (QoS 1, acknowledged) was stored.
    assert stored == telemetry
    assert homes == {"home-001", "home-002"}
    world = World(homes=2, seed=0)
    assert devices == {(d.home, d.device) for d in world.devices}

    for line in (data / "ground_truth.jsonl").read_text().splitlines():
        assert json.loads(line)["home"] in homes
