"""A running gateway imports nothing that only the cloud, the simulators or training need.

tests/test_gateway_imports.py reads the source; this runs it, in child processes whose import
system refuses those packages (a meta-path finder in front of every other one) and records
every attempt, so an ``except ImportError`` fallback cannot hide one, and a dynamic import
(``importlib.import_module``) the syntax tree does not see is caught too:

- every module under gateway/ imported in one process;
- ``python -m gateway`` with inference on, the uplink set and every adapter enabled, until it
  is subscribed and has committed a reading and run the audio models on a microphone's
  frames (a smoke alarm clip); what it imported is read at exit.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho

from devices.clips import CLIP_DIR, read_wav
from gateway.admin import fetch_health
from schemas.audio import encode_audio_frame
from schemas.topics import Kind, device_topic
from tests.conftest import MosquittoBroker, free_port
from tests.import_graph import module_names
from tests.test_gateway_imports import CLOUD_OR_TRAINING_ONLY, FORBIDDEN
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = (*FORBIDDEN, *CLOUD_OR_TRAINING_ONLY)

# Runs first in the child: refuse BLOCKED, record who asked, report at exit.
BLOCKER = """
import atexit, importlib.abc, json, sys
BLOCKED = set({blocked!r})
REPORT = {report!r}
attempts = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"blocked for the gateway: {{name}}", name=name)
        return None

sys.meta_path.insert(0, Refuse())

@atexit.register
def _report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    with open(REPORT, "w") as fh:
        json.dump({{"attempts": attempts, "loaded": loaded, "modules": len(sys.modules)}}, fh)
"""


def blocker(report: Path) -> str:
    return BLOCKER.format(blocked=sorted(BLOCKED), report=str(report))


def read_report(report: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads(report.read_text())
    return result


def test_the_blocker_refuses_and_records(tmp_path: Path) -> None:
    # The check can fail: a child that imports a blocked package is refused and reported.
    report = tmp_path / "report.json"
    code = blocker(report) + (
        "try:\n    import sklearn\nexcept ImportError as exc:\n    print(exc)\n"
        "import importlib\ntry:\n    importlib.import_module('devices.world')\n"
        "except ImportError:\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "blocked for the gateway: sklearn" in proc.stdout
    assert read_report(report)["attempts"] == ["sklearn", "devices"]


def test_every_gateway_module_imports_without_cloud_simulator_or_training_packages(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    # From the files: gateway/inference is a namespace package, which pkgutil does not walk.
    names = sorted(module_names(ROOT / "gateway", "gateway"))
    assert "gateway.inference.engine" in names and "gateway.sync.uplink" in names
    code = blocker(report) + (
        f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = read_report(report)
    assert result["attempts"] == [] and result["loaded"] == []


def test_a_running_gateway_with_everything_on_imports_none_of_them(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    report = tmp_path / "report.json"
    db = tmp_path / "gateway.db"
    port_file = tmp_path / "admin.port"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'gateway_id = "gw-imports"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'topic_root = "{topic_root}"\n[storage]\npath = "{db}"\n'
        f'[admin]\nport = 0\nport_file = "{port_file}"\n'
        "[inference]\nenabled = true\n"
        # A closed port: the uplink runs (and imports its HTTP client), retrying.
        f'[uplink]\nurl = "http://127.0.0.1:{free_port()}"\ntoken = "t"\n'
        "[adapters.zigbee2mqtt]\nenabled = true\n[adapters.tasmota]\nenabled = true\n"
        "[adapters.shelly]\nenabled = true\n[adapters.ha_statestream]\nenabled = true\n",
        encoding="utf-8",
    )
    code = blocker(report) + (
        "import runpy\n"
        f"sys.argv = ['gateway', '--config', {str(config)!r}]\n"
        "runpy.run_module('gateway', run_name='__main__', alter_sys=True)\n"
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=out)
    try:
        wait_until(
            lambda: (
                proc.poll() is not None or fetch_health(port_file).get("mqtt_subscribed") is True
            ),
            within=60,
            what="the gateway to subscribe",
        )
        assert proc.poll() is None, log.read_text()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="imports-dev")
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            now = time.time()
            topic = device_topic("h1", "lab", "t-1", Kind.TELEMETRY, root=topic_root)
            client.publish(topic, json.dumps({"ts": now, "readings": {"temperature": 21.5}}), 1)
            mic = device_topic("h1", "lab", "mic-1", Kind.AUDIO, root=topic_root)
            # A T3 smoke alarm: the audio models run and the alarm is stored as an inference.
            pcm = read_wav(CLIP_DIR / "alarm_smoke_t3.wav")
            for seq, i in enumerate(range(0, len(pcm), 8000)):
                frame = encode_audio_frame(now + seq * 0.5, seq, pcm[i : i + 8000])
                client.publish(mic, frame, qos=1)

            def stored() -> bool:
                if not db.exists():
                    return False
                with sqlite3.connect(db) as con:
                    try:
                        readings = con.execute("SELECT count(*) FROM readings").fetchone()[0]
                        inferences = con.execute("SELECT count(*) FROM inferences").fetchone()[0]
                    except sqlite3.OperationalError:
                        return False
                return bool(readings >= 1 and inferences >= 1)

            wait_until(stored, within=60, what="a reading and an inference to be stored")
        finally:
            client.loop_stop()
            client.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = read_report(report)
    assert result["attempts"] == [] and result["loaded"] == [], log.read_text()
    assert isinstance(result["modules"], int) and result["modules"] > 300  # the app did run
