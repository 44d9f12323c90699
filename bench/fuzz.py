"""Fuzz benchmark: hostile input against a real gateway and a real cloud; what breaks, and how much.

    .venv/bin/python bench/fuzz.py [--messages 100000] [--requests 5000] [--seed 0]
        [--seconds 150] [--st-seconds 60] [--postgres] [--skip mqtt,http,schemathesis] [--json]

Three phases, each against real processes started here (temp dir, free ports):

1. MQTT: ``python -m gateway`` (inference on, every format adapter enabled, otherwise the
   default config) on a Mosquitto of its own. One seeded publisher sends ``--messages`` QoS 1
   messages: valid telemetry from many devices, mutated telemetry (bit flips, truncation, huge
   and 2^63+ numbers, NaN-ish exponents, 1,000-deep nesting in unknown fields, lone surrogates,
   trailing-newline metric names, years 2099/2000, implausible values), random bytes, random
   topics under the root (the reserved ``gateway`` room too), the adapters' topics
   (Zigbee2MQTT, Tasmota, Shelly Gen1/Gen2, Home Assistant statestream), audio frames with bad
   headers and state messages. A last valid "sentinel" message marks the end: once its row is
   committed, everything before it went through (one publisher, so the broker keeps the order).
   Accounting: the gateway's own decoder, run here on the same config and the same message
   order, says what each message should become; a message is accounted for when its readings
   are in ``readings`` (on (device, metric, ts) or (device, metric, seq); readings timed by
   their receive time on (device, metric, value)), its dead letter is in ``dead_letters`` (topic
   and payload), or it stores nothing by design (gateway output topics, audio, availability,
   adapter messages without numbers). ``lost`` = messages the broker acknowledged to the
   publisher that are none of these (minus dead letters the gateway counted but did not keep).
   Messages on topics the gateway does not subscribe to are counted apart.
2. HTTP: ``python -m cloud`` (SQLite, or a fresh PostgreSQL database with ``--postgres``), then
   ``--requests`` requests over raw sockets (so malformed bytes go out as they are) to every
   route of schemas/openapi.json: valid and mutated batches (bad/truncated gzip, a small gzip
   bomb, unknown Content-Encoding, wrong Content-Type, bad JSON, huge ints, lone surrogates),
   odd tokens (non-UTF-8 too), ``POST /login`` with non-UTF-8 forms, multipart without boundary
   or truncated, unknown charsets, fuzzed queries, wrong methods and paths, and malformed HTTP
   (bad chunking, oversized headers, conflicting lengths). A non-JSON error is a >= 400 answer
   whose body is not JSON where the OpenAPI does not document another type (/login's HTML).
3. schemathesis (4.x) against the running cloud (its served /openapi.json if it has one, else
   schemas/openapi.json), ``--checks all``, both bearer schemes authenticated, bounded by
   ``--st-max-examples`` and ``--st-seconds``. It runs from a venv of its own outside the repo
   (``$HOMEEDGE_BENCH_CACHE``, default ~/.cache/homeedge-bench/schemathesis-venv), made on first
   use with ``python -m venv`` + ``pip install 'schemathesis>=4,<5'``: its pytest plugin must
   never load into the test venv.

Figures depend on what else runs on the machine: say so with them (the load average is printed).
``failures`` lists each distinct failure seen (phase, route or topic class, input class, status
or the last line of a traceback) with a count and one example.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import json
import math
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import start_broker  # noqa: E402  (bench/ingest.py, beside this file)

from schemas.metrics import METRICS  # noqa: E402

PG_DSN = os.environ.get("HOMEEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CACHE = Path(os.environ.get("HOMEEDGE_BENCH_CACHE", Path.home() / ".cache" / "homeedge-bench"))
GATEWAY_TOKEN = "fuzz-gateway-token-0123456789"
OTHER_TOKEN = "fuzz-other-gateway-token-0123456789"
READ_TOKEN = "fuzz-read-token-0123456789abcdef"
GATEWAY_ID = "fuzz-gw"
OTHER_ID = "fuzz-gw2"
SENTINEL_HOME = "fuzzsentinel"
REQUEST_TIMEOUT_S = 10.0


def mb(n: float) -> float:
    return round(n / 2**20, 1)


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def peak_rss(pid: int) -> int:
    """The kernel's high-water mark of resident memory (VmHWM), 0 where there is none."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- failures and logs ------------------------------------------------------------------------


@dataclass
class Failures:
    """Distinct failures: (phase, where, input class, what) -> count and one example."""

    seen: dict[tuple[str, str, str, str], list[Any]] = field(default_factory=dict)

    def add(
        self, phase: str, where: str, cls: str, what: str, example: str = "", n: int = 1
    ) -> None:
        key = (phase, where, cls, what[:300])
        entry = self.seen.setdefault(key, [0, example[:300]])
        entry[0] += n

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {"phase": p, "where": w, "input": c, "what": what, "count": n, "example": ex}
            for (p, w, c, what), (n, ex) in sorted(self.seen.items())
        ]


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?::|$)")
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?:\d+ )?")


def tracebacks(log: str) -> tuple[int, list[tuple[str, str]]]:
    """(lines containing 'Traceback', [(log record's message, its final exception line)]).

    A record is a line starting with a timestamp and what follows up to the next one, so a
    chained traceback is one entry, named by its last exception (plus the indented first line
    of aiohttp's multi-line messages)."""
    count = 0
    found = []
    head = ""
    body: list[str] = []

    def close() -> None:
        if not any("Traceback" in line for line in body):
            return
        last = ""
        for i, line in enumerate(body):
            # "module.Error: message" (SQLAlchemy's [SQL: ...] and [parameters: ...] lines after
            # it are not what went wrong)
            if _EXCEPTION.match(line) and "Traceback" not in line:
                last = line
                if line.endswith("message:") and i + 1 < len(body):
                    last += " " + body[i + 1].strip()
        found.append((head, re.sub(r"\d{6,}", "N", last)))  # one entry for any big number

    for line in log.splitlines():
        count += "Traceback" in line
        if _RECORD.match(line):
            close()
            head, body = _RECORD.sub("", line), []
        else:
            body.append(line)
    close()
    return count, found


# --- phase 1: MQTT against the gateway -------------------------------------------------------

HOMES = ("h1", "h2", "h3")
ROOMS = ("living", "kitchen", "bedroom", "office", "hallway")
CLASSES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "thermostat": (("temperature", 15.0, 28.0), ("humidity", 30.0, 70.0)),
    "air_quality": (("co2", 400.0, 1500.0), ("temperature", 18.0, 25.0)),
    "plug": (("power", 0.0, 2000.0), ("energy", 0.0, 5000.0)),
    "motion": (("motion", 0.0, 1.0),),
    "door": (("door", 0.0, 1.0),),
    "wearable": (("heart_rate", 50.0, 120.0),),
}
DEEP = 1000
# Raw JSON tokens spliced in place of a number (json.dumps cannot write most of them).
ODD_NUMBERS = (
    "1e308",
    "1e309",
    "-1e309",
    "1.7976931348623157e308",
    "123456789012345678901234567890",
    str(2**63),
    str(2**64 + 1),
    str(-(2**63) - 1),
    str(2**1000),
    "1e99999",
    "-1E+99999",
    "1e-400",
    "-0",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e",
    "0x10",
    "01",
    "1.",
    ".5",
)
IMPLAUSIBLE = (
    ("temperature", 900.0), ("temperature", -1e9), ("temperature", 85.0), ("temperature", -127.0),
    ("temperature", 1e15), ("humidity", 150.0), ("humidity", -3.0), ("co2", -5.0),
    ("heart_rate", 0.0), ("motion", 7.0), ("power", -1e12),
)  # fmt: skip
ODD_SEGMENTS = (
    "gateway", "", "x" * 65, "x" * 64, "wohnzimmer-ü", "a b", ".", "..", "-x", "_x", "Room.1",
    "日本", "💡", "$SYS", "telemetry", "audio", "state",
)  # fmt: skip


@dataclass
class Device:
    home: str
    room: str
    device: str
    metrics: tuple[tuple[str, float, float], ...]
    seq: int = 0


class MqttCorpus:
    """Seeded hostile MQTT traffic: `next()` gives (topic, payload, input class)."""

    def __init__(self, rng: random.Random, root: str, t0: float) -> None:
        self.rng = rng
        self.root = root
        self.t0 = t0
        self.devices: list[Device] = []
        self.serial = 0
        self.z2m_names = ["living room/th-1", "kitchen_plug", "door 2", "été", "a/b/c/d"]
        self.kinds: list[tuple[float, Callable[[], tuple[str, bytes, str]]]] = [
            (0.30, self.valid), (0.25, self.mutated), (0.04, self.random_bytes),
            (0.08, self.random_topic), (0.02, self.reserved), (0.06, self.zigbee2mqtt),
            (0.05, self.tasmota), (0.04, self.shelly_gen1), (0.03, self.shelly_gen2),
            (0.05, self.ha_statestream), (0.05, self.audio), (0.03, self.state),
        ]  # fmt: skip
        self._weights = [w for w, _ in self.kinds]

    def next(self) -> tuple[str, bytes, str]:
        return self.rng.choices(self.kinds, self._weights)[0][1]()

    # -- native telemetry

    def device(self) -> Device:
        # Many distinct devices: a third of the picks makes a new one.
        if not self.devices or self.rng.random() < 0.3:
            cls = self.rng.choice(list(CLASSES))
            self.serial += 1
            dev = Device(
                self.rng.choice(HOMES), self.rng.choice(ROOMS), f"{cls}-{self.serial}", CLASSES[cls]
            )
            self.devices.append(dev)
            return dev
        return self.rng.choice(self.devices)

    def topic(self, dev: Device, kind: str = "telemetry") -> str:
        return f"{self.root}/{dev.home}/{dev.room}/{dev.device}/{kind}"

    def body(self, dev: Device) -> dict[str, Any]:
        dev.seq += 1
        readings = {}
        for name, low, high in dev.metrics:
            if low == 0.0 and high == 1.0:
                readings[name] = float(self.rng.random() < 0.2)
            else:
                readings[name] = round(self.rng.uniform(low, high), 2)
        # ts unique per device (the readings table keeps one row per device, metric, ts)
        return {"ts": round(self.t0 + dev.seq * 0.01, 2), "seq": dev.seq, "readings": readings}

    def valid(self) -> tuple[str, bytes, str]:
        dev = self.device()
        return self.topic(dev), json.dumps(self.body(dev)).encode(), "valid"

    def mutated(self) -> tuple[str, bytes, str]:
        dev = self.device()
        name, payload = self.mutate(self.body(dev))
        return self.topic(dev), payload, f"mutated:{name}"

    def mutate(self, obj: dict[str, Any]) -> tuple[str, bytes]:
        rng = self.rng
        raw = json.dumps(obj).encode()
        metric = next(iter(obj["readings"]))
        how = rng.choice(
            (
                "bitflip", "truncate", "odd_number", "bigint", "deep_unknown", "deep_value",
                "surrogate", "surrogate_raw", "newline_metric", "odd_metric", "ts_2099",
                "ts_edges", "implausible", "structure", "oversized", "garbage",
            )
        )  # fmt: skip
        if how == "bitflip":
            data = bytearray(raw)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return how, bytes(data)
        if how == "truncate":
            return how, raw[: rng.randrange(len(raw))]
        if how in ("odd_number", "bigint"):
            token = (
                rng.choice(ODD_NUMBERS)
                if how == "odd_number"
                else str(rng.choice((2**63, 2**64, 2**63 - 1, -(2**63) - 1, 10**30, 2**200)))
            )
            where = rng.choice(("value", "ts", "seq"))
            if where == "value":
                obj["readings"][metric] = "@@"
            else:
                obj[where] = "@@"
            return f"{how}:{where}", json.dumps(obj).replace('"@@"', token).encode()
        if how == "deep_unknown":
            nest = rng.choice(("[" * DEEP + "]" * DEEP, '{"a":' * DEEP + "1" + "}" * DEEP))
            obj["extra"] = "@@"
            return how, json.dumps(obj).replace('"@@"', nest).encode()
        if how == "deep_value":
            obj["readings"][metric] = "@@"
            return how, json.dumps(obj).replace('"@@"', "[" * DEEP + "]" * DEEP).encode()
        if how == "surrogate":
            where = rng.choice(("metric", "unknown", "ts"))
            if where == "metric":
                obj["readings"]["t\ud800"] = 1.0
            elif where == "unknown":
                obj["note"] = "\udfff x \ud83d"
            else:
                obj["ts"] = "\ud800"
            return f"{how}:{where}", json.dumps(obj).encode()  # ensure_ascii: \\ud800 escapes
        if how == "surrogate_raw":  # UTF-8-encoded surrogates: not valid UTF-8
            obj["note"] = "@@"
            return how, json.dumps(obj).encode().replace(b'"@@"', b'"\xed\xa0\x80\xff"')
        if how == "newline_metric":
            bad = rng.choice(("\n", "\r\n", "\n\n"))
            obj["readings"] = {metric + bad: 1.0}
            return how, json.dumps(obj).encode()
        if how == "odd_metric":
            name = rng.choice(("Temperature", " temperature", "tempé", "1x", "a" * 65, "", "a-b"))
            obj["readings"] = {name: 1.0}
            return how, json.dumps(obj).encode()
        if how == "ts_2099":
            obj["ts"] = 4070908800.0 + rng.randrange(10**6)
            return how, json.dumps(obj).encode()
        if how == "ts_edges":
            obj["ts"] = rng.choice(
                (946684800.0, 946684800, 946684799.0, 4102444800.0, 4102444801.0, 0, -1, 1e10)
            )
            return how, json.dumps(obj).encode()
        if how == "implausible":
            name, value = rng.choice(IMPLAUSIBLE)
            obj["readings"] = {name: value}
            return f"{how}:{name}={value:g}", json.dumps(obj).encode()
        if how == "structure":
            variant = rng.randrange(12)
            if variant == 0:
                obj["readings"] = {}
            elif variant == 1:
                obj["readings"] = [1.0]
            elif variant == 2:
                del obj["ts"]
            elif variant == 3:
                obj["ts"] = "2026-12-01T10:00:00Z"
            elif variant == 4:
                obj["seq"] = -1
            elif variant == 5:
                obj["seq"] = 1.5
            elif variant == 6:
                obj["readings"] = {f"m{i}": float(i) for i in range(65)}
            elif variant == 7:
                return "structure:duplicate_keys", raw.replace(b'{"ts"', b'{"ts": 1, "ts"', 1)
            elif variant == 8:
                return "structure:list", b"[" + raw + b"]"
            elif variant == 9:
                return "structure:null", b"null"
            elif variant == 10:
                return "structure:empty", b""
            else:
                obj["readings"] = {metric: None}
            return f"structure:{variant}", json.dumps(obj).encode()
        if how == "oversized":
            obj["pad"] = "x" * rng.choice((16 * 1024, 40 * 1024, 70 * 1024))
            return how, json.dumps(obj).encode()
        return how, rng.choice(
            (b"\xef\xbb\xbf" + raw, raw + b"garbage", raw + b"\x00", raw.replace(b":", b":\x00", 1))
        )

    def random_bytes(self) -> tuple[str, bytes, str]:
        dev = self.device()
        kind = self.rng.choice(("telemetry", "telemetry", "audio", "state"))
        n = self.rng.choice((0, 1, 8, 64, 512, 4096))
        return self.topic(dev, kind), self.rng.randbytes(n), f"random_bytes:{kind}"

    def segment(self) -> str:
        if self.rng.random() < 0.5:
            return self.rng.choice(ODD_SEGMENTS)
        return f"s{self.rng.randrange(1000)}"

    def random_topic(self) -> tuple[str, bytes, str]:
        levels = [self.segment() for _ in range(self.rng.randint(1, 7))]
        if self.rng.random() < 0.5 and len(levels) >= 4:
            levels[3] = self.rng.choice(("telemetry", "audio", "state"))
        dev = self.device()
        payload = (
            json.dumps(self.body(dev)).encode()
            if self.rng.random() < 0.6
            else self.rng.randbytes(self.rng.choice((0, 16, 256)))
        )
        return "/".join([self.root, *levels]), payload, f"random_topic:{len(levels)}"

    def reserved(self) -> tuple[str, bytes, str]:
        dev = self.device()
        home = dev.home
        topic, payload = self.rng.choice(
            (
                (f"{self.root}/{home}/gateway/{dev.device}/telemetry", self.body(dev)),
                (f"{self.root}/{home}/gateway/status", "online"),
                (f"{self.root}/{home}/gateway/events/alarm", {"x": 1}),
                (f"{self.root}/{home}/gateway", self.body(dev)),
                (f"{self.root}/gateway/gateway/gateway/telemetry", self.body(dev)),
            )
        )
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        return topic, data, "reserved_gateway"

    # -- format adapters

    def maybe_mutate_json(self, obj: Any, cls: str) -> tuple[bytes, str]:
        rng = self.rng
        if rng.random() < 0.5:
            return json.dumps(obj, ensure_ascii=False).encode(), f"{cls}:valid"
        how = rng.choice(("bitflip", "truncate", "odd_number", "deep", "surrogate", "type"))
        raw = json.dumps(obj).encode()
        if how == "bitflip":
            data = bytearray(raw)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return bytes(data), f"{cls}:bitflip"
        if how == "truncate":
            return raw[: rng.randrange(len(raw))], f"{cls}:truncate"
        if how == "odd_number":
            token = rng.choice(ODD_NUMBERS)
            return re.sub(rb"(?<=[:\[,])\s*-?\d+(\.\d+)?", token.encode(), raw, count=1), (
                f"{cls}:odd_number"
            )
        if how == "deep":
            if isinstance(obj, dict):
                obj["extra"] = "@@"
                return json.dumps(obj).replace('"@@"', "[" * DEEP + "]" * DEEP).encode(), (
                    f"{cls}:deep"
                )
            return ("[" * DEEP + "]" * DEEP).encode(), f"{cls}:deep"
        if how == "surrogate":
            return raw.replace(b'"', b'"\\ud800', 1), f"{cls}:surrogate"
        odd: Any = rng.choice(([], {}, None, "x", True, 2**64, 1e300))
        if isinstance(obj, dict) and obj:
            key = rng.choice(list(obj))
            obj[key] = odd
            return json.dumps(obj).encode(), f"{cls}:type"
        return json.dumps(odd).encode(), f"{cls}:type"

    def zigbee2mqtt(self) -> tuple[str, bytes, str]:
        rng = self.rng
        name = rng.choice(self.z2m_names) if rng.random() < 0.7 else f"dev{rng.randrange(500)}"
        sub = rng.random()
        if sub < 0.1:
            return (
                f"zigbee2mqtt/{name}/availability",
                rng.choice((b'{"state":"online"}', b"offline", b'{"state":7}', b"")),
                "zigbee2mqtt:availability",
            )
        if sub < 0.15:
            return "zigbee2mqtt/bridge/state", b'{"state":"online"}', "zigbee2mqtt:bridge"
        obj: dict[str, Any] = {
            "temperature": round(rng.uniform(15, 28), 2),
            "humidity": round(rng.uniform(30, 70), 1),
            "battery": rng.randrange(101),
            "linkquality": rng.randrange(255),
            "occupancy": rng.random() < 0.5,
            "contact": rng.random() < 0.5,
        }
        if rng.random() < 0.5:
            obj["last_seen"] = rng.choice(
                (
                    int(time.time() * 1000),
                    "2026-12-01T10:00:00+01:00",
                    "2099-01-01T00:00:00Z",
                    "not a time",
                    2**64,
                )
            )
        payload, cls = self.maybe_mutate_json(obj, "zigbee2mqtt")
        return f"zigbee2mqtt/{name}", payload, cls

    def tasmota(self) -> tuple[str, bytes, str]:
        rng = self.rng
        name = f"tasmota_{rng.randrange(200):03X}"
        sub = rng.random()
        if sub < 0.1:
            return f"tele/{name}/LWT", rng.choice((b"Online", b"Offline", b"\xff")), "tasmota:lwt"
        if sub < 0.2:
            return (
                f"tele/{name}/STATE",
                b'{"Time":"2026-12-01T10:00:00","POWER":"ON"}',
                ("tasmota:state"),
            )
        sensor = {
            "Time": rng.choice(("2026-12-01T10:00:00", "2026-12-01T10:00:00+01:00", "garbage")),
            rng.choice(("AM2301", "BME280", "DS18B20-1")): {
                "Temperature": round(rng.uniform(-10, 30), 1),
                "Humidity": round(rng.uniform(20, 80), 1),
            },
            "TempUnit": rng.choice(("C", "F", "K", "")),
        }
        if rng.random() < 0.3:
            sensor["ENERGY"] = {"Power": rng.randrange(3000), "Total": rng.uniform(0, 100)}
        if sub < 0.3:
            payload, cls = self.maybe_mutate_json({"StatusSNS": sensor}, "tasmota:status8")
            return f"stat/{name}/STATUS8", payload, cls
        payload, cls = self.maybe_mutate_json(sensor, "tasmota:sensor")
        return f"tele/{name}/SENSOR", payload, cls

    def shelly_gen1(self) -> tuple[str, bytes, str]:
        rng = self.rng
        sid = f"shellyplug-s-{rng.randrange(100):06X}"
        path, value = rng.choice(
            (
                ("relay/0/power", f"{rng.uniform(0, 2000):.2f}"),
                ("relay/1/energy", str(rng.randrange(10**6))),
                ("emeter/0/total", f"{rng.uniform(0, 1e5):.1f}"),
                ("sensor/temperature", f"{rng.uniform(-10, 30):.1f}"),
                ("sensor/motion", rng.choice(("true", "false"))),
                ("sensor/state", rng.choice(("open", "close"))),
                ("online", rng.choice(("true", "false"))),
            )
        )
        if rng.random() < 0.4:
            value = rng.choice((*ODD_NUMBERS, "", "\x00", "  12 ", "12\n", "true\n"))
            return f"shellies/{sid}/{path}", value.encode(), "shelly_gen1:odd"
        return f"shellies/{sid}/{path}", value.encode(), "shelly_gen1:valid"

    def shelly_gen2(self) -> tuple[str, bytes, str]:
        rng = self.rng
        sid = f"shellyplus1pm-{rng.randrange(100):012x}"
        sub = rng.random()
        if sub < 0.1:
            return f"{sid}/online", rng.choice((b"true", b"false", b"maybe")), "shelly_gen2:online"
        if sub < 0.2:  # a component status topic (the device's status_ntf on)
            return f"{sid}/status/switch:0", b'{"apower": 1.0}', "shelly_gen2:status"
        frame = {
            "src": sid,
            "dst": f"{sid}/events",
            "method": rng.choice(("NotifyStatus", "NotifyFullStatus", "NotifyEvent")),
            "params": {
                "ts": rng.choice((time.time(), 4070908800.0, 0, "x")),
                "switch:0": {"apower": rng.uniform(0, 2000), "aenergy": {"total": 1.5}},
                "temperature:0": {"tC": rng.uniform(-5, 30)},
            },
        }
        payload, cls = self.maybe_mutate_json(frame, "shelly_gen2:rpc")
        return f"{sid}/events/rpc", payload, cls

    def ha_statestream(self) -> tuple[str, bytes, str]:
        rng = self.rng
        domain = rng.choice(("sensor", "binary_sensor"))
        obj_id = f"ent_{rng.randrange(300)}"
        base = f"homeassistant/{domain}/{obj_id}"
        what = rng.random()
        if what < 0.25:
            cls = "temperature" if domain == "sensor" else "motion"
            value = rng.choice((f'"{cls}"', '"humidity"', '"nonsense"', "7", '"\\ud800"', ""))
            return f"{base}/device_class", value.encode(), "ha:device_class"
        if what < 0.4:
            unit = rng.choice(('"°C"', '"°F"', '"%"', '"K"', "null", '"' + "u" * 100 + '"'))
            return f"{base}/unit_of_measurement", unit.encode(), "ha:unit"
        if what < 0.45:
            return f"{base}/friendly_name", b'"Kitchen"', "ha:attribute"
        if domain == "binary_sensor":
            value = rng.choice(("on", "off", "unavailable", "unknown", "ON", "2"))
        else:
            value = rng.choice(
                (f"{rng.uniform(15, 28):.2f}", "unavailable", "unknown", *ODD_NUMBERS[:12])
            )
        return f"{base}/state", value.encode(), "ha:state"

    # -- audio and state

    def audio(self) -> tuple[str, bytes, str]:
        rng = self.rng
        dev = Device(rng.choice(HOMES), "living", f"microphone-{rng.randrange(20)}", ())
        topic = self.topic(dev, "audio")
        ts = time.time()
        samples = struct.pack(f"<{800}h", *(rng.randrange(-300, 300) for _ in range(800)))
        good = struct.pack("<4sBBHdII", b"HEAF", 1, 0, 0, ts, rng.randrange(2**32), 16000)
        if rng.random() < 0.1:
            return topic, good + samples, "audio:valid"
        variant = rng.choice(
            (
                "magic", "version", "codec", "rate", "ts_nan", "ts_inf", "ts_2200", "short",
                "odd", "empty", "oversized",
            )
        )  # fmt: skip
        fields: list[Any] = [b"HEAF", 1, 0, 0, ts, 1, 16000]
        body = samples
        if variant == "magic":
            fields[0] = b"FAEH"
        elif variant == "version":
            fields[1] = 9
        elif variant == "codec":
            fields[2] = 3
        elif variant == "rate":
            fields[6] = rng.choice((8000, 0, 2**32 - 1))
        elif variant == "ts_nan":
            fields[4] = math.nan
        elif variant == "ts_inf":
            fields[4] = math.inf
        elif variant == "ts_2200":
            fields[4] = 7258118400.0
        elif variant == "short":
            return topic, good[: rng.randrange(24)], "audio:short"
        elif variant == "odd":
            body = samples + b"\x01"
        elif variant == "empty":
            body = b""
        else:
            body = samples * 41  # > 2 s of audio
        return topic, struct.pack("<4sBBHdII", *fields) + body, f"audio:{variant}"

    def state(self) -> tuple[str, bytes, str]:
        dev = self.device()
        value = self.rng.choice((b"online", b"offline", b"ONLINE", b"{}", b"\xff\xfe", b""))
        return self.topic(dev, "state"), value, "state"


@dataclass
class Expect:
    """What one published message should have become (the oracle's word)."""

    cls: str
    kind: str  # "readings", "dead", "nothing", "unsubscribed"
    fixed: list[tuple[str, str, str, float, int | None]] = field(default_factory=list)
    timed: list[tuple[str, str, str, float]] = field(default_factory=list)
    dead: tuple[str, bytes] | None = None
    topic: str = ""
    payload: bytes = b""


class Oracle:
    """The gateway's own decoder on the gateway's own config, run on the same message order."""

    def __init__(self, config_path: Path) -> None:
        import logging

        from gateway.adapters import AdapterRegistry
        from gateway.config import load_config
        from gateway.device_table import DeviceTable
        from gateway.ingest import MessageDecoder
        from gateway.topic_filters import TopicFilters
        from schemas.topics import device_subscription

        logging.getLogger("gateway").setLevel(logging.CRITICAL)
        cfg = load_config(config_path)
        registry = AdapterRegistry.from_settings(cfg.adapters)
        # Built as gateway/app.py builds it; a decoder that grows a setting needs it here too.
        self.decoder = MessageDecoder(
            topic_root=cfg.mqtt.topic_root,
            adapters=list(registry),
            max_dead_letter_bytes=cfg.storage.max_dead_letter_bytes,
            # Same cap, same message order: the same devices are refused (nothing goes idle
            # within a run).
            devices=DeviceTable(
                max_devices=cfg.devices.max_devices,
                max_microphones=cfg.devices.max_microphones,
                idle_s=cfg.devices.idle_s,
            ),
            checks=cfg.ingest.reading_checks(),
        )
        self.subscribed = TopicFilters(
            [device_subscription(None, root=cfg.mqtt.topic_root), *registry.filters()]
        )
        self.raised = 0
        self.ats: set[float] = set()  # every receive time handed to the decoder

    def expect(self, topic: str, payload: bytes, cls: str, at: float) -> Expect:
        from gateway.ingest import ReadingsIn
        from gateway.records import DeadLetter

        if not self.subscribed.matches(topic):
            return Expect(cls, "unsubscribed")
        self.ats.add(at)
        try:
            items = self.decoder.decode(topic, payload, at)
        except Exception as exc:  # what the gateway's MQTT thread turns into internal_error
            self.raised += 1
            items = [self.decoder.dead(topic, payload, "internal_error", repr(exc), at)]
        item = items[-1]
        if isinstance(item, DeadLetter):
            return Expect(
                cls, "dead", dead=(item.topic, item.payload), topic=topic, payload=payload[:200]
            )
        if isinstance(item, ReadingsIn) and item.readings:
            exp = Expect(cls, "readings", topic=topic, payload=payload[:200])
            for r in item.readings:
                # Timed by its receive time (a held Home Assistant state: an earlier message's):
                # the gateway's receive time differs from ours.
                if r.ts in self.ats:
                    exp.timed.append((r.home, r.device, r.metric, r.value))
                else:
                    exp.fixed.append((r.home, r.device, r.metric, r.ts, r.seq))
            return exp
        return Expect(cls, "nothing")


class FuzzGateway:
    """``python -m gateway`` with adapters on, logging to a file."""

    def __init__(self, workdir: Path, port: int, root: str) -> None:
        self.db = workdir / "gateway.db"
        self.port_file = workdir / "admin.port"
        self.log_path = workdir / "gateway.log"
        self.config = workdir / "gateway.toml"
        adapters = "".join(
            f"[adapters.{name}]\nenabled = true\n"
            for name in ("zigbee2mqtt", "tasmota", "shelly", "ha_statestream")
        )
        self.config.write_text(
            f'gateway_id = "fuzz"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
            f'topic_root = "{root}"\n[storage]\npath = "{self.db}"\n'
            f'[admin]\nport = 0\nport_file = "{self.port_file}"\n{adapters}'
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while self.health().get("mqtt_subscribed") is not True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; see {self.log_path}")
            time.sleep(0.1)

    def health(self) -> dict[str, Any]:
        """/healthz's body, whatever its status ({} when nothing answers)."""
        try:
            url = f"http://127.0.0.1:{self.port_file.read_text().strip()}/healthz"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as exc:
            try:
                return dict(json.loads(exc.read()))
            except ValueError:
                return {"status": exc.code}
        except (OSError, ValueError):
            return {}

    def metrics(self) -> str:
        try:
            url = f"http://127.0.0.1:{self.port_file.read_text().strip()}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def counter_total(metrics_text: str, name: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0].split("{")[0]
            if head == name:
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
    return total


class Publisher:
    """One paho client (one connection: the broker keeps its order), QoS 1, a bounded window."""

    def __init__(self, port: int, window: int = 1000) -> None:
        import paho.mqtt.client as paho

        self.window = window
        self._slots = threading.Semaphore(window)
        self.acked = 0
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:8]}"
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, *_args: Any) -> None:
        self.acked += 1
        self._slots.release()

    def publish(self, topic: str, payload: bytes) -> bool:
        self._slots.acquire()
        try:
            self.client.publish(topic, payload, qos=1)
        except (ValueError, UnicodeEncodeError):  # paho refuses it: never sent
            self._slots.release()
            return False
        return True

    def drain(self, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        taken = 0
        while taken < self.window and time.monotonic() < deadline:
            if self._slots.acquire(timeout=0.5):
                taken += 1
        for _ in range(taken):
            self._slots.release()
        return taken == self.window

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


ADAPTER_PREFIXES = ("zigbee2mqtt", "tele", "stat", "shellies", "homeassistant")


def topic_family(topic: str, root: str) -> str:
    """A topic without its device names: where a failure happened, not on which device."""
    levels = topic.split("/")
    if topic.startswith(root + "/"):
        rest = levels[1:]
        if len(rest) == 4:
            return f"{root}/+/+/+/{rest[3]}"
        return f"{root}/<{len(rest)} levels>"
    if levels[0] in ADAPTER_PREFIXES:
        tail = [re.sub(r"\d+", "N", lv) for lv in levels[2:]]
        return "/".join([levels[0], "+", *tail])
    return "/".join(["+", *levels[1:]])


def device_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM devices").fetchone()[0])
    finally:
        conn.close()


def account(db: Path, expects: list[Expect], root: str, failures: Failures) -> dict[str, Any]:
    """Match what the oracle expected against the gateway's tables."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    fixed_ts: set[tuple[str, str, str, float]] = set()
    fixed_seq: set[tuple[str, str, str, int]] = set()
    by_value: Counter[tuple[str, str, str, float]] = Counter()
    # What was stored that a strict reading of the contract would refuse: a metric name that
    # only Python's `$` (which matches before a trailing newline) lets through, a value outside
    # the metric registry's plausible range, a timestamp more than a day ahead.
    strict_name = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z")
    future = time.time() + 86400
    odd: Counter[str] = Counter()
    for home, device, metric, ts, value, seq in conn.execute(
        "SELECT home, device, metric, ts, value, seq FROM readings"
    ):
        if not strict_name.match(metric):
            odd["bad_metric_name"] += 1
        known = METRICS.get(metric)
        if known is not None and not known.plausible(value):
            odd["implausible_value"] += 1
        if ts > future:
            odd["future_ts"] += 1
        fixed_ts.add((home, device, metric, ts))
        if seq is not None:
            fixed_seq.add((home, device, metric, seq))
        by_value[(home, device, metric, value)] += 1
    dead: dict[tuple[str, bytes], list[tuple[str, str]]] = {}
    reasons: Counter[str] = Counter()
    # One row per distinct bad message (and reason): `count` says how many times it came fresh.
    for topic, payload, reason, detail, count in conn.execute(
        "SELECT topic, payload, reason, detail, count FROM dead_letters"
    ):
        dead.setdefault((topic, bytes(payload)), []).extend([(reason, detail)] * count)
        reasons[reason] += count
    conn.close()
    lost: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    for exp in expects:
        kinds[exp.kind] += 1
        ok = True
        if exp.kind == "dead":
            assert exp.dead is not None
            rows = dead.get(exp.dead)
            if rows:
                reason, detail = rows.pop()
                if reason == "internal_error":
                    failures.add(
                        "mqtt", topic_family(exp.topic, root), exp.cls, f"internal_error: {detail}"
                    )
            else:
                ok = False
        elif exp.kind == "readings":
            for home, device, metric, ts, seq in exp.fixed:
                if (home, device, metric, ts) not in fixed_ts and (
                    seq is None or (home, device, metric, seq) not in fixed_seq
                ):
                    ok = False
            for key in exp.timed:
                if by_value[key] > 0:
                    by_value[key] -= 1
                else:
                    ok = False
        if not ok:
            lost[(topic_family(exp.topic, root), exp.cls)] += 1
            if len(examples) < 10:
                examples.append(
                    {
                        "class": exp.cls,
                        "expected": exp.kind,
                        "topic": exp.topic,
                        "payload": exp.payload[:120].decode("utf-8", "replace"),
                    }
                )
    for (where, cls), n in lost.items():
        failures.add("mqtt", where, cls, "lost: neither stored nor dead-lettered", n=n)
    return {
        "reasons": dict(sorted(reasons.items())),
        "lost_by_class": dict(sorted(Counter(cls for (_, cls) in lost.elements()).items())),
        "lost": sum(lost.values()),
        "expected": dict(kinds),
        "lost_examples": examples,
        "stored_odd": dict(sorted(odd.items())),
        "devices": device_count(db),
    }


def run_mqtt(args: argparse.Namespace, workdir: Path, failures: Failures) -> dict[str, Any]:
    root = "homeedge"
    broker, port = start_broker(workdir)
    gw: FuzzGateway | None = None
    try:
        gw = FuzzGateway(workdir, port, root)
        oracle = Oracle(gw.config)
        rss_before = rss(gw.proc.pid)
        rng = random.Random(args.seed)
        corpus = MqttCorpus(rng, root, time.time() - 3600)
        pub = Publisher(port)
        expects: list[Expect] = []
        refused = 0
        started = time.perf_counter()
        for _ in range(args.messages):
            if time.perf_counter() - started > args.seconds:
                break
            topic, payload, cls = corpus.next()
            at = time.time()
            exp = oracle.expect(topic, payload, cls, at)
            if pub.publish(topic, payload):
                expects.append(exp)
            else:
                refused += 1
        published_s = time.perf_counter() - started
        all_acked = pub.drain()
        # The sentinel: once its row is committed, every message before it has been handled.
        sentinel_ts = time.time()
        sentinel_topic = f"{root}/{SENTINEL_HOME}/lab/sentinel-1/telemetry"
        pub.publish(
            sentinel_topic,
            json.dumps({"ts": sentinel_ts, "readings": {"temperature": 20.0}}).encode(),
        )
        pub.drain()
        pub.close()
        seen = False
        deadline = time.monotonic() + max(60.0, args.seconds)
        conn = sqlite3.connect(f"file:{gw.db}?mode=ro", uri=True, timeout=10)
        while time.monotonic() < deadline and gw.proc.poll() is None:
            with contextlib.suppress(sqlite3.OperationalError):
                # Stored, or refused as a new device past max_devices (a dead letter): either
                # way committed after everything published before it.
                if conn.execute(
                    "SELECT 1 FROM readings WHERE home = ? UNION ALL "
                    "SELECT 1 FROM dead_letters WHERE topic = ? LIMIT 1",
                    (SENTINEL_HOME, sentinel_topic),
                ).fetchone():
                    seen = True
                    break
            time.sleep(0.1)
        conn.close()
        elapsed = time.perf_counter() - started
        time.sleep(1.0)  # let RSS settle after the last batch
        alive = gw.proc.poll() is None
        health = gw.health() if alive else {}
        rss_after = rss(gw.proc.pid) if alive else 0
        rss_peak = peak_rss(gw.proc.pid) if alive else 0
        metrics_text = gw.metrics() if alive else ""
    finally:
        if gw is not None:
            gw.stop()
        broker.terminate()
        broker.wait(timeout=10)
    acc = account(gw.db, expects, root, failures)
    dl_counted = counter_total(metrics_text, "homeedge_dead_letters_total")
    dl_kept = sum(acc["reasons"].values())
    not_kept = max(0, int(dl_counted) - dl_kept) if metrics_text else 0
    log = gw.log_path.read_text(errors="replace")
    tb_count, tbs = tracebacks(log)
    for context, last in tbs:
        m = re.search(r" on (\S+) failed", context)
        where = topic_family(m.group(1), root) if m else context[:120]
        failures.add("mqtt", where, "traceback", last)
    internal = acc["reasons"].get("internal_error", 0)
    for what, n in acc["stored_odd"].items():
        failures.add("mqtt", "readings", "stored", what, n=n)
    if not alive:
        failures.add("mqtt", "gateway", "process", f"exited with {gw.proc.returncode}")
    elif not seen:
        failures.add("mqtt", "gateway", "sentinel", "the last message was never committed")
    if health and health.get("status") not in (None, "ok"):
        failures.add("mqtt", "gateway", "healthz", f"status {health.get('status')}")
    published = len(expects)
    return {
        "mqtt_messages": published,
        "mqtt_refused_by_client": refused,
        "mqtt_unsubscribed": acc["expected"].get("unsubscribed", 0),
        "mqtt_publish_rate": round(published / published_s, 1) if published_s else None,
        "mqtt_rate": round(published / elapsed, 1) if elapsed else None,
        "mqtt_all_acked": all_acked,
        "mqtt_sentinel_committed": seen,
        "gateway_alive": alive,
        "gateway_health": health.get("status"),
        "gateway_tracebacks": tb_count,
        "gateway_log_lines": log.count("\n"),
        "gateway_log_warnings": len(re.findall(r"^\S+ \S+ (?:WARNING|ERROR|CRITICAL) ", log, re.M)),
        "internal_errors": internal,
        "oracle_raised": oracle.raised,
        "lost": max(0, acc["lost"] - not_kept),
        "lost_by_class": acc["lost_by_class"],
        "lost_examples": acc["lost_examples"],
        "dead_letters_by_reason": acc["reasons"],
        "dead_letters_counted_not_kept": not_kept,
        "expected_outcomes": acc["expected"],
        "stored_odd_readings": acc["stored_odd"],
        "gateway_devices": acc["devices"],
        "gateway_rss_before_mb": mb(rss_before),
        "gateway_rss_after_mb": mb(rss_after),
        "gateway_rss_peak_mb": mb(rss_peak),
    }


# --- phase 2: HTTP against the cloud ---------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """One request: `raw` is the whole request as sent (None: built from the other fields)."""

    route: str
    cls: str
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    raw: bytes | None = None
    eof: bool = False  # half-close after sending (a request the server would wait on)

    def wire(self, host: str) -> bytes:
        if self.raw is not None:
            return self.raw
        names = {k.lower() for k, _ in self.headers}
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if "content-length" not in names and "transfer-encoding" not in names:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> Resp | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        out = b""
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        body = out
    return Resp(status, headers, body)


def complete(data: bytes) -> bool:
    """A whole response is in `data` (a keep-alive server would not close after it)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    return re.search(rb"(?im)^transfer-encoding:.*chunked", head) is not None and body.endswith(
        b"0\r\n\r\n"
    )


async def send(port: int, req: Req) -> Resp | None:
    timeout = REQUEST_TIMEOUT_S
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(req.wire(f"127.0.0.1:{port}"))
        if req.eof and writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
        data = b""
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(timeout):
                while not complete(data) and (chunk := await reader.read(65536)):
                    data += chunk
        return parse_response(data)
    except OSError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


@functools.cache
def bomb(prefix: bytes, size: int) -> bytes:
    """`prefix` and `size` zeros, gzipped (once: compressing megabytes per request is slow)."""
    return gz(prefix + b"0" * size)


class HttpCorpus:
    """Seeded hostile HTTP requests against every route of the OpenAPI document."""

    def __init__(self, rng: random.Random, openapi: dict[str, Any]) -> None:
        self.rng = rng
        self.routes = [
            (method.upper(), path) for path, ops in openapi["paths"].items() for method in ops
        ]
        self.seq = 0
        self.sent_batches: list[dict[str, Any]] = []
        self.kinds: list[tuple[float, Callable[[], Req]]] = [
            (0.10, self.batch_valid), (0.15, self.batch_mutated), (0.07, self.batch_bytes),
            (0.08, self.batch_encoding), (0.06, self.batch_headers), (0.10, self.login),
            (0.22, self.get_query), (0.06, self.methods_paths), (0.12, self.malformed),
            (0.04, self.dashboard),
        ]  # fmt: skip
        self._weights = [w for w, _ in self.kinds]

    def next(self) -> Req:
        return self.rng.choices(self.kinds, self._weights)[0][1]()

    # -- batches

    def batch(self, gateway: str = GATEWAY_ID) -> dict[str, Any]:
        rng = self.rng
        self.seq += 1
        now = time.time()
        start = (int(now) // 60) * 60 - 60 * rng.randrange(1, 600)
        aggs = []
        for _ in range(rng.randint(1, 8)):
            values = sorted(rng.uniform(15, 28) for _ in range(5))
            aggs.append(
                {
                    "window_start": float(start),
                    "window_s": 60,
                    "home": f"p-{rng.getrandbits(32):08x}",
                    "room_class": rng.choice(("living", "kitchen", "bedroom")),
                    "device_class": rng.choice(("thermostat", "air_quality")),
                    "metric": "temperature",
                    "unit": "°C",
                    "policy": "aggregate",
                    "count": 60.0,
                    "sum": sum(values) * 12,
                    "mean": sum(values) / 5,
                    "min": values[0],
                    "max": values[-1],
                    "std": 0.5,
                    "p50": values[2],
                    "p95": values[-1],
                }
            )
        return {
            "batch_id": f"{rng.getrandbits(128):032x}",
            "gateway": gateway,
            "seq": self.seq,
            "created_at": now,
            "aggregates": aggs,
            "privacy": {"epsilon_spent": 0.0, "suppressed_windows": 0},
            "stats": {"ingested_messages": rng.randrange(10**6), "ingested_bytes": 100},
            "version": 1,
        }

    def post_batch(
        self,
        cls: str,
        body: bytes,
        *,
        token: str | None = GATEWAY_TOKEN,
        encoding: str | None = "gzip",
        ctype: str | None = "application/json",
        eof: bool = False,
    ) -> Req:
        headers = []
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        if encoding is not None:
            headers.append(("Content-Encoding", encoding))
        if ctype is not None:
            headers.append(("Content-Type", ctype))
        return Req("/api/v1/batches", cls, "POST", "/api/v1/batches", tuple(headers), body, eof=eof)

    def batch_valid(self) -> Req:
        rng = self.rng
        if self.sent_batches and rng.random() < 0.15:  # a resend: duplicate, or changed: 409
            old = dict(rng.choice(self.sent_batches))
            if rng.random() < 0.5:
                old["created_at"] = old["created_at"] + 1
                return self.post_batch("batch:conflicting_resend", gz(json.dumps(old).encode()))
            return self.post_batch("batch:duplicate", gz(json.dumps(old).encode()))
        obj = self.batch()
        self.sent_batches = [*self.sent_batches[-50:], obj]
        return self.post_batch("batch:valid", gz(json.dumps(obj).encode()))

    WEIRD: tuple[Any, ...] = (
        2**63,
        2**64,
        2**63 - 1,
        -(2**63) - 1,
        10**30,
        1e308,
        -1e308,
        0,
        -1,
        "",
        "x" * 5000,
        None,
        [],
        {},
        True,
        "\ud800",
        "temperature\n",
        "a\x00b",
        1.5,
        "NaN",
        "@DEEP@",
        "@NUM@",
    )

    def batch_mutated(self) -> Req:
        rng = self.rng
        obj = self.batch(rng.choice((GATEWAY_ID, GATEWAY_ID, OTHER_ID)))
        agg = obj["aggregates"][0]
        target = rng.choice(("top", "agg", "privacy", "stats", "shape"))
        if target == "shape":
            variant = rng.randrange(6)
            if variant == 0:
                obj["aggregates"] = [agg] * 5001
            elif variant == 1:
                obj["unknown"] = 1
            elif variant == 2:
                del obj[rng.choice(("batch_id", "gateway", "seq", "aggregates"))]
            elif variant == 3:
                obj["aggregates"] = []
            elif variant == 4:
                agg["policy"] = rng.choice(("local", "noised", "x"))
            else:
                obj["version"] = 2
            name = f"shape:{variant}"
        else:
            holder = {"top": obj, "agg": agg, "privacy": obj["privacy"], "stats": obj["stats"]}[
                target
            ]
            key = rng.choice(list(holder))
            value = rng.choice(self.WEIRD)
            holder[key] = value
            kind = type(value).__name__ if not isinstance(value, str) else repr(value[:12])
            if isinstance(value, int) and abs(value) >= 2**63 - 1:
                kind = "bigint"
            name = f"{target}.{key}={kind}"
        text = json.dumps(obj)
        text = text.replace('"@DEEP@"', "[" * DEEP + "]" * DEEP)
        text = text.replace('"@NUM@"', rng.choice(ODD_NUMBERS))
        return self.post_batch(f"batch_json:{name}", gz(text.encode()))

    def batch_bytes(self) -> Req:
        rng = self.rng
        raw = json.dumps(self.batch()).encode()
        how = rng.choice(("bitflip", "truncate", "bad_json", "surrogate_raw", "gzip_bitflip"))
        if how == "bitflip":
            data = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return self.post_batch("batch_bytes:bitflip", gz(bytes(data)))
        if how == "truncate":
            return self.post_batch("batch_bytes:truncate", gz(raw[: rng.randrange(len(raw))]))
        if how == "bad_json":
            bad = rng.choice((b"{", b"[]", b"null", b"{'a': 1}", b'{"a":NaN}', b"\xff\xfe{}", b""))
            return self.post_batch("batch_bytes:bad_json", gz(bad))
        if how == "surrogate_raw":
            return self.post_batch(
                "batch_bytes:invalid_utf8", gz(raw.replace(b'"living"', b'"\xed\xa0\x80\xff"'))
            )
        data = bytearray(gz(raw))
        data[rng.randrange(10, len(data))] ^= 1 << rng.randrange(8)
        return self.post_batch("batch_bytes:gzip_bitflip", bytes(data))

    def batch_encoding(self) -> Req:
        rng = self.rng
        raw = json.dumps(self.batch()).encode()
        how = rng.randrange(11)
        if how == 0:
            return self.post_batch("encoding:not_gzip", rng.randbytes(200))
        if how == 1:
            return self.post_batch("encoding:truncated_gzip", gz(raw)[: rng.randrange(5, 60)])
        if how == 2:  # 10 MB of zeros in ~10 KB: over max_body_bytes once inflated
            return self.post_batch("encoding:gzip_bomb", bomb(b"", 10 * 2**20))
        if how == 3:  # inflates to just under the limit, whitespace after valid JSON
            return self.post_batch("encoding:gzip_padding", gz(raw + b" " * (4 * 2**20 - 4096)))
        if how == 4:
            enc = rng.choice(("br", "zstd", "x-unknown", "compress", "gzip;q=1", "GZIP"))
            return self.post_batch(f"encoding:unknown:{enc}", gz(raw), encoding=enc)
        if how == 5:
            return self.post_batch("encoding:deflate_of_gzip", gz(raw), encoding="deflate")
        if how == 6:
            return self.post_batch("encoding:gzip,gzip", gz(gz(raw)), encoding="gzip, gzip")
        if how == 7:
            return self.post_batch("encoding:identity", raw, encoding="identity")
        if how == 8:
            return self.post_batch("encoding:none", raw, encoding=None)
        if how == 9:
            return self.post_batch("encoding:gzip_of_plain_declared_none", gz(raw), encoding=None)
        return self.post_batch("encoding:short_body", gz(raw)[:20], encoding="gzip")

    def batch_headers(self) -> Req:
        rng = self.rng
        body = gz(json.dumps(self.batch()).encode())
        how = rng.randrange(6)
        if how == 0:
            ctype = rng.choice(
                (
                    "text/plain", "multipart/form-data", "application/x-www-form-urlencoded",
                    "application/json; charset=x-unknown", "application/json; charset=latin-1",
                    "",
                )
            )  # fmt: skip
            return self.post_batch(f"content_type:{ctype or 'empty'}", body, ctype=ctype)
        if how == 1:
            return self.post_batch("content_type:missing", body, ctype=None)
        if how == 2:
            tok = rng.choice(
                (None, "", READ_TOKEN, OTHER_TOKEN, "x" * 10000, "tökén", "Bearer", " ")
            )
            return self.post_batch(f"auth:{'none' if tok is None else len(tok)}", body, token=tok)
        if how == 3:
            req = self.post_batch("auth:basic", body, token=None)
            return Req(
                req.route,
                req.cls,
                "POST",
                req.path,
                (*req.headers, ("Authorization", "Basic Zm9vOmJhcg==")),
                body,
            )
        if how == 4:  # non-UTF-8 bytes in the Authorization header
            head = (
                b"POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer \xff\xfe\xed\xa0\x80token\r\n"
                b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
            )
            return Req(
                "/api/v1/batches",
                "auth:non_utf8",
                "POST",
                raw=head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body,
            )
        return Req(
            "/api/v1/batches",
            "content_length:longer_than_body",
            "POST",
            "/api/v1/batches",
            (
                ("Authorization", f"Bearer {GATEWAY_TOKEN}"),
                ("Content-Encoding", "gzip"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body) + 100)),
            ),
            body,
            eof=True,
        )

    # -- the dashboard's login

    def login(self) -> Req:
        rng = self.rng
        form = "application/x-www-form-urlencoded"
        how = rng.randrange(12)
        if how == 0:
            return Req(
                "/login",
                "login:valid",
                "POST",
                "/login",
                (("Content-Type", form),),
                f"token={READ_TOKEN}".encode(),
            )
        if how == 1:
            return Req(
                "/login", "login:wrong", "POST", "/login", (("Content-Type", form),), b"token=wrong"
            )
        if how == 2:
            body = rng.choice((b"token=\xff\xfe\xfd", b"\xff=\xfe", b"token=%ff%fe", b"t\x00=1"))
            return Req(
                "/login", "login:non_utf8_form", "POST", "/login", (("Content-Type", form),), body
            )
        if how == 3:
            return Req(
                "/login",
                "login:multipart_no_boundary",
                "POST",
                "/login",
                (("Content-Type", "multipart/form-data"),),
                b"--x\r\n\r\ntoken\r\n--x--",
            )
        if how == 4:
            body = (
                b'--B\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
                + READ_TOKEN.encode()[: rng.randrange(20)]
            )
            return Req(
                "/login",
                "login:multipart_truncated",
                "POST",
                "/login",
                (("Content-Type", "multipart/form-data; boundary=B"),),
                body,
            )
        if how == 5:
            cs = rng.choice(("x-unknown", "utf-7", "utf-16", "ebcdic", ""))
            return Req(
                "/login",
                f"login:charset:{cs or 'empty'}",
                "POST",
                "/login",
                (("Content-Type", f"{form}; charset={cs}"),),
                b"token=abc\xff",
            )
        if how == 6:
            return Req(
                "/login",
                "login:json",
                "POST",
                "/login",
                (("Content-Type", "application/json"),),
                b'{"token": 1}',
            )
        if how == 7:
            return Req(
                "/login",
                "login:gzip_bomb",
                "POST",
                "/login",
                (("Content-Type", form), ("Content-Encoding", "gzip")),
                bomb(b"token=", 8 * 2**20),
            )
        if how == 8:
            return Req(
                "/login",
                "login:huge_field",
                "POST",
                "/login",
                (("Content-Type", form),),
                b"token=" + b"a" * 200_000,
            )
        if how == 9:
            return Req("/login", "login:no_body", "POST", "/login", (("Content-Type", form),))
        if how == 10:
            body = (
                b'--B\r\nContent-Disposition: form-data; name="token"; filename="t"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n\xff\xfe\r\n--B--\r\n"
            )
            return Req(
                "/login",
                "login:multipart_file",
                "POST",
                "/login",
                (("Content-Type", "multipart/form-data; boundary=B"),),
                body,
            )
        return Req("/logout", "logout", "POST", "/logout")

    # -- reads

    QUERY_VALUES = (
        "", "nan", "inf", "-inf", "1e309", "-1e309", "9" * 400, "%ff", "%ed%a0%80", "%00", "a%0a",
        "x" * 5000, "temperature", "temperature%0a", "1764403200", "-1", "hour", "day", "raw",
        "gateway,home", "home,home", "true", "%27%3B%20DROP%20TABLE%20batches%3B%20--",
    )  # fmt: skip

    def reader_headers(self) -> tuple[tuple[str, str], ...]:
        rng = self.rng
        r = rng.random()
        if r < 0.7:
            return (("Authorization", f"Bearer {READ_TOKEN}"),)
        if r < 0.8:
            return (("Cookie", f"homeedge_session={rng.choice(('1.abc', '9' * 30 + '.x', ''))}"),)
        if r < 0.9:
            return (("Authorization", f"Bearer {GATEWAY_TOKEN}"),)
        return ()

    def get_query(self) -> Req:
        rng = self.rng
        gets = [p for m, p in self.routes if m == "GET" and "{" not in p]
        path = rng.choice(gets)
        params = []
        names = [
            "metric", "bucket", "group_by", "gateway", "home", "room_class", "device_class",
            "policy", "start", "end", "flagged", "x",
        ]  # fmt: skip
        if path == "/api/v1/aggregates" and rng.random() < 0.7:
            params.append("metric=temperature")
        for _ in range(rng.randint(0, 4)):
            params.append(f"{rng.choice(names)}={rng.choice(self.QUERY_VALUES)}")
        query = "&".join(params)
        cls = "query:fuzzed" if params else "query:none"
        return Req(path, cls, "GET", path + ("?" + query if query else ""), self.reader_headers())

    def methods_paths(self) -> Req:
        rng = self.rng
        _method, route = rng.choice(self.routes)
        path = route.replace("{name}", rng.choice(("dashboard.css", "x", "..%2f..%2fetc", "%ff")))
        how = rng.randrange(3)
        if how == 0:
            other = rng.choice(("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "GET", "POST"))
            return Req(route, f"method:{other}", other, path, self.reader_headers())
        if how == 1:
            junk = rng.choice(
                (
                    "/x", "/%ff", "//", "/api/v1/batches/1", "/api/v1/../../x", "/" + "a" * 3000,
                    "/api/v1/aggregates%00",
                )
            )  # fmt: skip
            return Req("other", "path", "GET", junk, self.reader_headers())
        return Req(
            "/api/v1/analytics/run",
            "analytics_run",
            "POST",
            "/api/v1/analytics/run",
            self.reader_headers(),
        )

    def dashboard(self) -> Req:
        rng = self.rng
        how = rng.randrange(4)
        if how == 0:
            return Req("/", "dashboard", "GET", "/", self.reader_headers())
        if how == 1:
            name = rng.choice(("dashboard.css", "dashboard.js", "plotly.min.js", "nope.js"))
            return Req(
                "/assets/{name}",
                "asset",
                "GET",
                f"/assets/{name}",
                (("If-None-Match", rng.choice(('"x"', "*", "\x7f"))),),
            )
        if how == 2:  # a cookie with non-UTF-8 bytes
            return Req(
                "/",
                "dashboard:cookie_non_utf8",
                "GET",
                raw=b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Cookie: homeedge_session=\xff\xfe.\xed\xa0\x80\r\n\r\n",
            )
        return Req(
            "/healthz" if rng.random() < 0.5 else "/metrics",
            "liveness",
            "GET",
            rng.choice(("/healthz", "/metrics")),
        )

    # -- malformed HTTP

    def malformed(self) -> Req:
        rng = self.rng
        body = gz(json.dumps(self.batch()).encode())
        auth = f"Authorization: Bearer {GATEWAY_TOKEN}\r\n".encode()
        post = (
            b"POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + auth
            + b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        )
        how = rng.randrange(14)
        route = "/api/v1/batches"
        if how == 0:
            raw = post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n"
            return Req(route, "raw:bad_chunk_size", "POST", raw=raw)
        if how == 1:
            raw = post + b"Transfer-Encoding: chunked\r\n\r\n" + b"ffffffffffffffffff\r\n" + body
            return Req(route, "raw:huge_chunk_size", "POST", raw=raw, eof=True)
        if how == 2:
            chunk = f"{len(body):x}\r\n".encode() + body
            raw = post + b"Transfer-Encoding: chunked\r\n\r\n" + chunk
            return Req(route, "raw:missing_last_chunk", "POST", raw=raw, eof=True)
        if how == 3:
            raw = (
                post
                + f"Content-Length: {len(body)}\r\n".encode()
                + b"Transfer-Encoding: chunked\r\n\r\n"
                + body
            )
            return Req(route, "raw:length_and_chunked", "POST", raw=raw)
        if how == 4:
            cl = rng.choice((b"-1", b"abc", b"99999999999999999999", b"1, 2", b""))
            return Req(
                route,
                f"raw:content_length:{cl.decode()}",
                "POST",
                raw=post + b"Content-Length: " + cl + b"\r\n\r\n" + body,
            )
        if how == 5:
            big = b"X-Big: " + b"a" * rng.choice((9000, 70000)) + b"\r\n"
            return Req(
                "/healthz",
                "raw:oversized_header",
                "GET",
                raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n",
            )
        if how == 6:
            many = b"".join(f"X-H{i}: v\r\n".encode() for i in range(rng.choice((150, 1000))))
            return Req(
                "/healthz",
                "raw:many_headers",
                "GET",
                raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n",
            )
        if how == 7:
            return Req(
                "other",
                "raw:oversized_request_line",
                "GET",
                raw=b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            )
        if how == 8:
            line = rng.choice(
                (
                    b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01",
                    b"GET / HTTP/1.1\nHost: x\n\n", b"\r\n\r\n",
                )
            )  # fmt: skip
            return Req("other", "raw:bad_request_line", "GET", raw=line, eof=True)
        if how == 9:
            raw = (
                b"GET /api/v1/aggregates?metric=\xff\xfe&start=\xed\xa0\x80 HTTP/1.1\r\n"
                b"Host: x\r\nConnection: close\r\n"
                + f"Authorization: Bearer {READ_TOKEN}\r\n\r\n".encode()
            )
            return Req("/api/v1/aggregates", "raw:non_utf8_query", "GET", raw=raw)
        if how == 10:
            raw = (
                b"GET /api/v1/gateways HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer \xff\xfe\r\n\r\n"
            )
            return Req("/api/v1/gateways", "raw:non_utf8_auth", "GET", raw=raw)
        if how == 11:
            raw = (
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"X-Request-Id: \xff\x00\x01\r\nBad Header: x\r\n\r\n"
            )
            return Req("/healthz", "raw:bad_header_bytes", "GET", raw=raw)
        if how == 12:
            raw = (
                b"POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b"5\r\ntoken\r\n3;ext=\xff\r\n=ab\r\n0\r\n\r\n"
            )
            return Req("/login", "raw:chunked_login_ext", "POST", raw=raw)
        raw = post + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + b"5\r\nhello\r\n0\r\n\r\n"
        return Req(route, "raw:transfer_encoding_gzip", "POST", raw=raw)


def documented_types(openapi: dict[str, Any]) -> dict[tuple[str, str, int], set[str]]:
    out: dict[tuple[str, str, int], set[str]] = {}
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            for status, resp in op.get("responses", {}).items():
                if status.isdigit():
                    out[(method.upper(), path, int(status))] = set(resp.get("content", {}))
    return out


def is_json_error(resp: Resp) -> bool:
    if "json" not in resp.headers.get("content-type", ""):
        return False
    try:
        body = json.loads(resp.body)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


class FuzzCloud:
    """``python -m cloud`` on a free port, logging to a file."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.port_file = workdir / "cloud.port"
        self.log_path = workdir / "cloud.log"
        config = workdir / "cloud.toml"
        config.write_text(
            f'database_url = "{database_url}"\nport = 0\nport_file = "{self.port_file}"\n'
            f'workers = 1\nread_token = "{READ_TOKEN}"\nanalytics_interval_s = 0\n'
            f'log_level = "INFO"\n[gateways]\n"{GATEWAY_ID}" = "{GATEWAY_TOKEN}"\n'
            f'"{OTHER_ID}" = "{OTHER_TOKEN}"\n',
            encoding="utf-8",
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud", "--config", str(config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cloud did not start; see {self.log_path}")
            time.sleep(0.1)
        self.port = int(self.port_file.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def cloud_log(phase: str, log: str, failures: Failures) -> dict[str, int]:
    """Tracebacks in the cloud's log, and the app's own warnings (each distinct one a failure:
    a fuzzed request must never look like a database outage, for instance)."""
    count, found = tracebacks(log)
    app = 0
    for context, last in found:
        m = re.search(r"request (\S+ \S+) failed", context)
        where = m.group(1) if m else re.sub(r" from \S+$", "", context)
        failures.add(phase, where[:120], "traceback", last)
        app += "aiohttp." not in context
    warnings = 0
    for line in log.splitlines():
        m = re.match(r"^\S+ \S+ \d+ (WARNING|ERROR|CRITICAL) (cloud[\w.]*): (.*)", line)
        if m and "failed (request id" not in line:
            warnings += 1
            what = re.sub(r"[0-9a-f]{32}|\d+", "N", m.group(3))[:200]
            failures.add(phase, m.group(2), "log", f"{m.group(1)} {what}")
    return {"tracebacks": count, "app_records": app, "warnings": warnings}


async def fuzz_http(
    port: int, corpus: HttpCorpus, total: int, seconds: float, concurrency: int
) -> tuple[list[tuple[Req, Resp | None]], float]:
    results: list[tuple[Req, Resp | None]] = []
    started = time.perf_counter()
    made = 0

    async def worker() -> None:
        nonlocal made
        while made < total and time.perf_counter() - started < seconds:
            made += 1
            req = corpus.next()
            results.append((req, await send(port, req)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def run_http(
    args: argparse.Namespace, cloud: FuzzCloud, openapi: dict[str, Any], failures: Failures
) -> dict[str, Any]:
    rss_before = rss(cloud.proc.pid)
    corpus = HttpCorpus(random.Random(args.seed + 1), openapi)
    results, elapsed = asyncio.run(
        fuzz_http(cloud.port, corpus, args.requests, args.seconds, args.concurrency)
    )
    time.sleep(0.5)
    alive = cloud.proc.poll() is None
    rss_after = rss(cloud.proc.pid) if alive else 0
    documented = documented_types(openapi)
    by_status: Counter[str] = Counter()
    five: Counter[str] = Counter()
    non_json: Counter[str] = Counter()
    non_json_app: Counter[str] = Counter()
    no_response: Counter[str] = Counter()
    for req, resp in results:
        if resp is None:
            no_response[req.cls.split(":")[0]] += 1
            continue
        by_status[str(resp.status)] += 1
        if resp.status >= 500:
            five[req.route] += 1
            failures.add(
                "http",
                req.route,
                req.cls,
                f"{resp.status}",
                resp.body[:200].decode("utf-8", "replace"),
            )
        if resp.status >= 400 and req.method != "HEAD" and not is_json_error(resp):
            types = documented.get((req.method, req.route, resp.status), {"application/json"})
            if "application/json" in types or not types:
                non_json[req.route] += 1
                # The app's middleware stamps every answer it makes with X-Request-Id; one
                # without it came from aiohttp's HTTP parser before any handler ran.
                if "x-request-id" in resp.headers:
                    non_json_app[req.route] += 1
                failures.add(
                    "http",
                    req.route,
                    req.cls,
                    f"{resp.status} non-JSON ({resp.headers.get('content-type', 'no type')})",
                    resp.body[:120].decode("utf-8", "replace"),
                )
    log = cloud.log()
    logged = cloud_log("http", log, failures)
    if not alive:
        failures.add("http", "cloud", "process", f"exited with {cloud.proc.returncode}")
    return {
        "http_requests": len(results),
        "http_rate": round(len(results) / elapsed, 1) if elapsed else None,
        "http_by_status": dict(sorted(by_status.items())),
        "http_5xx": sum(five.values()),
        "http_5xx_by_route": dict(sorted(five.items())),
        "http_non_json_errors": sum(non_json.values()),
        "http_non_json_by_route": dict(sorted(non_json.items())),
        "http_non_json_from_app": sum(non_json_app.values()),
        "http_no_response": dict(sorted(no_response.items())),
        "cloud_alive": alive,
        "cloud_tracebacks": logged["tracebacks"],
        "cloud_traceback_records_app": logged["app_records"],
        "cloud_log_warnings": logged["warnings"],
        "cloud_rss_before_mb": mb(rss_before),
        "cloud_rss_after_mb": mb(rss_after),
        "_log_offset": len(log),
    }


# --- phase 3: schemathesis -------------------------------------------------------------------


def schemathesis_cli() -> Path:
    """The `st` of a venv outside the repo, made on first use."""
    venv = CACHE / "schemathesis-venv"
    st = venv / "bin" / "st"
    if st.exists():
        return st
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"fuzz: installing schemathesis into {venv} (first use)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "schemathesis>=4,<5"],
        check=True,
    )
    return st


def served_openapi(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as resp:
            return "paths" in json.load(resp)
    except (OSError, ValueError):
        return False


def run_schemathesis(
    args: argparse.Namespace, cloud: FuzzCloud, workdir: Path, failures: Failures, offset: int
) -> dict[str, Any]:
    st = schemathesis_cli()
    stdir = workdir / "schemathesis"
    stdir.mkdir(exist_ok=True)
    (stdir / "schemathesis.toml").write_text(
        f'[auth.openapi.gatewayToken]\nbearer = "{GATEWAY_TOKEN}"\n'
        f'[auth.openapi.readToken]\nbearer = "{READ_TOKEN}"\n',
        encoding="utf-8",
    )
    base = f"http://127.0.0.1:{cloud.port}"
    location = (
        f"{base}/openapi.json"
        if served_openapi(cloud.port)
        else str(ROOT / "schemas" / "openapi.json")
    )
    report = stdir / "report.ndjson"
    cmd = [
        str(st), "--config-file", str(stdir / "schemathesis.toml"), "run", location,
        "--url", base, "--checks", "all", "--max-examples", str(args.st_max_examples),
        "--max-time", str(int(args.st_seconds)), "--seed", str(args.seed), "--workers", "2",
        "--request-timeout", "10", "--no-color", "--generation-database", "none",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    rss_before = rss(cloud.proc.pid)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=stdir, capture_output=True, text=True, timeout=args.st_seconds + 120,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = str(exc.stdout or "") + str(exc.stderr or "")
        code = None
    elapsed = time.perf_counter() - started
    (stdir / "output.txt").write_text(output, encoding="utf-8")
    parsed = parse_schemathesis(report, failures)
    log = cloud.log()[offset:]
    logged = cloud_log("schemathesis", log, failures)
    return {
        "schemathesis_exit": code,
        "schemathesis_location": location,
        "schemathesis_seconds": round(elapsed, 1),
        "schemathesis_cases": parsed["cases"],
        "schemathesis_5xx": parsed["5xx"],
        "schemathesis_mismatches": parsed["mismatches"],
        "schemathesis_failures": parsed["failures"],
        "schemathesis_by_check": parsed["by_check"],
        "schemathesis_tracebacks": logged["tracebacks"],
        "schemathesis_output": str(stdir / "output.txt"),
        "cloud_rss_after_schemathesis_mb": mb(rss(cloud.proc.pid)) if rss_before else None,
    }


MISMATCH_CHECKS = {
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
}


def parse_schemathesis(report: Path, failures: Failures) -> dict[str, Any]:
    """Counts from schemathesis' NDJSON event stream: one entry per distinct failure."""
    by_check: Counter[str] = Counter()
    cases = 0
    seen: set[tuple[str, str, str]] = set()
    if not report.exists():
        failures.add("schemathesis", "run", "report", "no report written")
        return {"cases": 0, "5xx": None, "mismatches": None, "failures": None, "by_check": {}}
    for line in report.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        for kind, body in event.items():
            if not isinstance(body, dict):
                continue
            if kind == "ScenarioFinished":
                recorder = body.get("recorder", {})
                cases += len(recorder.get("cases", {}))
                label = recorder.get("label", "?")
                for check_list in recorder.get("checks", {}).values():
                    for check in check_list:
                        if str(check.get("status", "")).lower() != "failure":
                            continue
                        name = check.get("name", "?")
                        failure = (check.get("failure_info") or {}).get("failure") or {}
                        title = f"{failure.get('code', '')} {failure.get('title', name)}".strip()
                        key = (label, name, title)
                        if key in seen:
                            continue
                        seen.add(key)
                        by_check[name] += 1
                        failures.add("schemathesis", label, name, title)
            elif kind == "NonFatalError":
                label = body.get("label", "?")
                info = body.get("info", {}) or {}
                title = str(info.get("title") or info.get("message") or "error")[:200]
                by_check["error"] += 1
                failures.add("schemathesis", str(label), "error", title)
    server_errors = by_check.get("not_a_server_error", 0)
    mismatches = sum(n for c, n in by_check.items() if c in MISMATCH_CHECKS)
    other = sum(by_check.values()) - server_errors - mismatches
    return {
        "cases": cases,
        "5xx": server_errors,
        "mismatches": mismatches,
        "failures": other,
        "by_check": dict(sorted(by_check.items())),
    }


# --- the run ---------------------------------------------------------------------------------


async def _pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def run_cloud_phases(
    args: argparse.Namespace, workdir: Path, failures: Failures, skip: set[str]
) -> dict[str, Any]:
    openapi = json.loads((ROOT / "schemas" / "openapi.json").read_text(encoding="utf-8"))
    pg_name = None
    if args.postgres:
        pg_name = f"homeedge_fuzz_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg(f'CREATE DATABASE "{pg_name}"'))
        base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        url = f"{base}/{pg_name}"
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'cloud.db'}"
    result: dict[str, Any] = {"cloud_database": "postgresql" if pg_name else "sqlite"}
    cloud = FuzzCloud(workdir, url)
    try:
        offset = 0
        if "http" not in skip:
            result.update(run_http(args, cloud, openapi, failures))
            offset = result.pop("_log_offset")
        if "schemathesis" not in skip:
            result.update(run_schemathesis(args, cloud, workdir, failures, offset))
    finally:
        cloud.stop()
        if pg_name:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="MQTT messages to publish")
    parser.add_argument("--requests", type=int, default=5000, help="HTTP requests to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seconds", type=float, default=150.0, help="cap on each of the MQTT and HTTP phases"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight")
    parser.add_argument("--st-seconds", type=float, default=60.0, help="schemathesis time budget")
    parser.add_argument(
        "--st-max-examples", type=int, default=25, help="schemathesis cases per operation"
    )
    parser.add_argument(
        "--postgres", action="store_true", help=f"cloud on a fresh database at {PG_DSN}"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated phases to skip: mqtt, http, schemathesis"
    )
    parser.add_argument(
        "--keep", type=Path, help="work in this directory and keep it (logs, databases, reports)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    failures = Failures()
    result: dict[str, Any] = {"seed": args.seed}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = args.keep.resolve()
            workdir.mkdir(parents=True, exist_ok=False)
        else:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="homeedge-fuzz-"))
            )
        if "mqtt" not in skip:
            (workdir / "mqtt").mkdir()
            result.update(run_mqtt(args, workdir / "mqtt", failures))
            if not args.json:
                print(f"mqtt phase done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        if not {"http", "schemathesis"} <= skip:
            (workdir / "cloud").mkdir()
            result.update(run_cloud_phases(args, workdir / "cloud", failures, skip))
    result["failures"] = failures.as_list()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_avg"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        if key != "failures":
            print(f"{key}: {value}")
    print(f"distinct failures ({len(result['failures'])}):")
    for f in result["failures"]:
        print(
            f"  [{f['phase']}] {f['where']} | {f['input']} | {f['what']} x{f['count']}"
            + (f" | {f['example']!r}" if f["example"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
