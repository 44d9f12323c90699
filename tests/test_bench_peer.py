"""bench/peer.py runs: its broker and gateway legs, on a small stream, store every message.

Benchmarks are not tests and no figure is asserted here. This only keeps the bench from rotting
unseen: bench/ingest.py's payloads carried a fixed date that the gateway began to dead-letter
a week later (older than [ingest] max_age_s), and the bench then waited for rows that never came.
The Node-RED leg is left out: it needs npm and a few minutes of compiling on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "broker_rate",
    "homeedge_rate",
    "nodered_rate",
    "he_over_nodered",
    "he_over_broker",
    "homeedge_cpu_us_per_msg",
    "nodered_cpu_us_per_msg",
    "homeedge_rss_mb",
    "nodered_rss_mb",
    "per_round",
    "loadavg_before",
    "loadavg_after",
}


def test_peer_bench_broker_and_gateway_legs_store_every_message() -> None:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_pub") is None:
        need("mosquitto and mosquitto-clients are not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--legs", "broker,homeedge", "--messages", "2000", "--rounds", "1", "--json"]
    run = subprocess.run(
        [sys.executable, "bench/peer.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result.keys() >= KEYS
    (only_round,) = result["per_round"]
    assert set(only_round) == {"broker", "homeedge"}
    assert only_round["homeedge"]["lost"] == 0
    assert result["homeedge_rate"] > 0 and result["broker_rate"] > 0
    assert result["homeedge_cpu_us_per_msg"] > 0 and result["homeedge_rss_mb"] > 0
    assert result["he_over_broker"] == pytest.approx(
        result["homeedge_rate"] / result["broker_rate"], rel=0.01
    )
    assert result["nodered_rate"] is None and result["he_over_nodered"] is None
