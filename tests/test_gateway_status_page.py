"""The gateway's local status page against a real ``python -m gateway`` and a real Mosquitto:
devices with room, last seen, availability and battery; dead letters with their reason and
never their payload; recent events; no secret in any reply; the page itself with its CSP; bad
queries get a 400 JSON error; the page can be turned off."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.admin import fetch_health
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.conftest import MosquittoBroker
from tests.test_dashboard_browser import ARTIFACTS, CHROMIUM_ARGS, chromium  # noqa: F401
from tests.test_gateway_devices import LoopPublisher
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cret-broker-password-never-shown"

pytestmark = pytest.mark.timeout(120)


class Gateway:
    def __init__(
        self, tmp_path: Path, broker: MosquittoBroker, root: str, *, page: bool = True
    ) -> None:
        self.db = tmp_path / "gateway.db"
        self.port_file = tmp_path / "admin.port"
        config = tmp_path / "gateway.toml"
        # The broker needs no password; the gateway sends this one anyway, so a reply that
        # leaked configuration would show it.
        config.write_text(
            f'gateway_id = "gw-status"\n[mqtt]\nurl = "{broker.url}"\n'
            f'topic_root = "{root}"\nclient_id = "gw-{root}"\n'
            f'username = "owner"\npassword = "{SECRET}"\n'
            f'[storage]\npath = "{self.db}"\n'
            f'[admin]\nport = 0\nport_file = "{self.port_file}"\n'
            f"status_page = {'true' if page else 'false'}\n"
            "[inference]\nenabled = false\n"
        )
        self.log = tmp_path / "gateway.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config)],
                cwd=REPO,
                stdout=log,
                stderr=log,
            )

        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return fetch_health(self.port_file).get("mqtt_subscribed") is True

        wait_until(up, within=60, what="the gateway to subscribe")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        url = f"http://127.0.0.1:{self.port_file.read_text().strip()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()

    def json(self, path: str) -> dict[str, Any]:
        status, headers, body = self.get(path)
        assert status == 200, (path, status, body)
        assert headers["Content-Type"].startswith("application/json")
        return dict(json.loads(body))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, mosquitto, topic_root)
    try:
        yield gw
    finally:
        gw.close()


def test_status_api_shows_devices_events_and_dead_letters(
    gateway: Gateway, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    now = time.time()
    pub = LoopPublisher(mosquitto.port)
    try:
        pub.publish(
            [
                (
                    device_topic("home-a", "kitchen", "th-1", "telemetry", root=topic_root),
                    encode_telemetry(now - 5, {"temperature": 21.5, "battery": 12.0}, seq=1),
                ),
                (
                    device_topic("home-a", "hall", "door-1", "telemetry", root=topic_root),
                    encode_telemetry(now - 3, {"door": 1.0}, seq=1),
                ),
                (
                    device_topic("home-a", "hall", "door-1", "state", root=topic_root),
                    b"offline",
                ),
                (
                    device_topic("home-a", "kitchen", "th-1", "telemetry", root=topic_root),
                    b'{"ts": "yesterday", "token": "payload-secret-xyz"}',
                ),
            ]
        )
    finally:
        pub.close()

    def devices() -> dict[str, dict[str, Any]]:
        body = gateway.json("/api/status/devices")
        return {d["device"]: d for d in body["devices"]}

    wait_until(
        lambda: (d := devices()).get("door-1", {}).get("availability") == "offline" and "th-1" in d,
        within=30,
        what="both devices and the door's availability on the status API",
    )
    found = devices()
    th = found["th-1"]
    assert th["room"] == "kitchen" and th["home"] == "home-a"
    assert th["battery"] == pytest.approx(12.0)
    assert th["last_seen"] is not None and abs(th["last_seen"] - now) < 120
    assert found["door-1"]["battery"] is None  # no battery reading: not invented

    wait_until(
        lambda: gateway.json("/api/status/dead-letters")["count"] >= 1,
        within=30,
        what="the malformed payload as a dead letter",
    )
    status, headers, raw = gateway.get("/api/status/dead-letters?limit=10")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    letters = json.loads(raw)["dead_letters"]
    assert letters[0]["reason"] and letters[0]["topic"].endswith("/th-1/telemetry")
    assert letters[0]["payload_bytes"] > 0
    assert b"payload-secret-xyz" not in raw  # the payload stays in the database

    # Events: rows as the inference engine stores them (inference is off in this gateway);
    # per-window decisions ("normal", "empty") are not events.
    with sqlite3.connect(gateway.db) as conn:
        rows = [
            ("alarm", "smoke_t3", now - 60),
            ("sensor_anomaly", "normal", now - 50),
            ("occupancy", "empty", now - 40),
            ("keyword", "lights_on", now - 30),
        ]
        conn.executemany(
            "INSERT INTO inferences (model, version, home, room, device, window_start, "
            "window_end, score, label) VALUES (?, '1', 'home-a', 'kitchen', 'mic-1', ?, ?, 0.9, ?)",
            [(m, t - 1, t, label) for m, label, t in rows],
        )
    events = gateway.json("/api/status/events")["events"]
    assert [e["label"] for e in events] == ["lights_on", "smoke_t3"]  # newest first
    assert gateway.json("/api/status/events?limit=1")["count"] == 1

    for path in ("/api/status/devices", "/api/status/events", "/api/status/dead-letters", "/"):
        assert SECRET.encode() not in gateway.get(path)[2]


def test_status_page_in_a_browser_on_a_phone(
    gateway: Gateway,
    mosquitto: MosquittoBroker,
    topic_root: str,
    chromium: Path,  # noqa: F811
) -> None:
    """The page as a person sees it: the tables filled from the API (as text), health shown,
    nothing wider than a 390 px screen; a screenshot in test-artifacts/gateway-status.png."""
    from playwright.sync_api import sync_playwright

    pub = LoopPublisher(mosquitto.port)
    try:
        pub.publish(
            [
                (
                    device_topic("home-a", "kitchen", "th-1", "telemetry", root=topic_root),
                    encode_telemetry(time.time() - 5, {"temperature": 21.5, "battery": 9.0}, 1),
                ),
                (  # a topic that would be markup if the page used innerHTML: a dead letter
                    f"{topic_root}/home-a/hall/x<b>y</b>/telemetry",
                    encode_telemetry(time.time() - 5, {"temperature": 19.0}, 1),
                ),
            ]
        )
    finally:
        pub.close()
    wait_until(
        lambda: (
            gateway.json("/api/status/devices")["count"] >= 1
            and gateway.json("/api/status/dead-letters")["count"] >= 1
        ),
        within=30,
        what="a device and a dead letter on the status API",
    )
    names = {d["device"] for d in gateway.json("/api/status/devices")["devices"]}
    url = f"http://127.0.0.1:{gateway.port_file.read_text().strip()}/"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            # Selectors, not predicates: a predicate string is eval'd, which the page's CSP refuses.
            page.wait_for_selector("#devices tbody tr")
            cells = page.eval_on_selector_all(
                "#devices tbody tr", "rows => rows.map(r => r.cells[2].textContent)"
            )
            assert sorted(cells) == sorted(names)
            battery = page.inner_text("#devices tbody tr.low td.battery")
            assert battery == "9 %"  # low battery is marked
            page.wait_for_selector("#dead-letters tbody tr")
            assert "x<b>y</b>" in page.inner_text("#dead-letters tbody")
            assert page.eval_on_selector_all("main b", "bs => bs.length") == 0  # text only
            page.wait_for_selector("#health.ok, #health.bad")
            assert page.inner_text("#health") == "Healthy"
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            assert not errors, errors
            page.screenshot(path=str(ARTIFACTS / "gateway-status.png"), full_page=True)
        finally:
            browser.close()


def test_status_page_and_its_errors(gateway: Gateway) -> None:
    status, headers, body = gateway.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert b'<script src="/status.js">' in body and b"<script>" not in body
    status, headers, js = gateway.get("/status.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"textContent" in js and b"innerHTML" not in js
    assert gateway.get("/status.css")[0] == 200

    status, headers, body = gateway.get("/api/status/events?limit=lots")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "bad_limit"
    assert gateway.get("/api/status/nothing")[0] == 404
    assert gateway.get("/status/../../etc/passwd")[0] == 404


def test_status_page_can_be_turned_off(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    gw = Gateway(tmp_path, mosquitto, topic_root, page=False)
    try:
        assert gw.get("/")[0] == 404
        assert gw.get("/api/status/devices")[0] == 404
        assert gw.get("/healthz")[0] == 200
    finally:
        gw.close()
