"""Home Assistant MQTT discovery, consumed: the corpus replayed through a real Mosquitto and the
real gateway into SQLite, configs checked against HA's documented schema, templates unit-tested."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml

from gateway.adapters import AdapterRegistry, AdapterSettings, HaDiscoveryAdapter
from gateway.adapters.ha_discovery import COMPONENTS, expand
from gateway.adapters.ha_templates import NoValue, TemplateProblem, compile_template
from gateway.app import Gateway
from gateway.config import AdminConfig, GatewayConfig, IngestConfig, MqttConfig, StorageConfig
from gateway.inference import discovery
from gateway.ingest import MessageDecoder, ReadingsIn
from gateway.records import DeadLetter
from tests.conftest import MosquittoBroker
from tests.waiting import wait_for

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = FIXTURES / "ecosystems" / "ha_discovery.yaml"
SCHEMA = json.loads((FIXTURES / "ha_mqtt_discovery.schema.json").read_text())


def schema_for(component: str) -> dict[str, Any]:
    return {**SCHEMA, "anyOf": [{"$ref": f"#/$defs/{component}"}]}


def encode(payload: Any) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


class Replay:
    """A publisher that sends one message at a time and waits until the gateway acked it
    (so the message was committed, and any subscription it caused was sent before)."""

    def __init__(self, port: int, gw: Gateway) -> None:
        self.gw = gw
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0

    def acks(self) -> float:
        return self.gw.metrics.registry.get_sample_value("homeedge_gateway_acks_total") or 0.0

    async def start(self) -> Replay:
        # The gateway's own retained "online" status comes back on <root>/# and is acked too.
        await wait_for(lambda: self.acks() >= 1, what="the gateway's own status to be acked")
        self.sent = int(self.acks())
        return self

    async def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 10)
        self.sent += 1
        await wait_for(lambda: self.acks() >= self.sent, what=f"the gateway to ack {topic}")
        # A config the gateway acked may have made it subscribe to its state topic: the ack is
        # counted when queued, possibly before that SUBSCRIBE is on the wire, and a state sent
        # before the broker has it would reach nobody.
        await wait_for(
            lambda: self.gw.mqtt.pending_subscriptions == 0, what=f"subscriptions after {topic}"
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def make_gateway(mosquitto: MosquittoBroker, topic_root: str, db: Path, settings: dict[str, Any]):
    registry = AdapterRegistry.from_settings(AdapterSettings.model_validate(settings))
    config = GatewayConfig(
        gateway_id=f"gw-{uuid.uuid4().hex[:6]}",
        mqtt=MqttConfig(
            url=mosquitto.url, topic_root="homeedge", reconnect_min_s=0.1, reconnect_max_s=0.5
        ),
        # Each message waits for its ack, which waits for its commit: commit sooner than the
        # SD-card default of 1 s so a replay of the corpus takes seconds.
        storage=StorageConfig(path=db, commit_interval_ms=20),
        admin=AdminConfig(port=0),
        ingest=IngestConfig(max_age_s=30 * 365 * 86400.0),
    )
    gw = Gateway(config)
    for adapter in registry:
        gw.add_adapter(adapter)
    found = [a for a in registry if isinstance(a, HaDiscoveryAdapter)]
    assert found, "discovery is on by default"
    return gw, found[0]


@pytest.mark.parametrize(("name", "at_least"), [("ha_discovery", 25), ("ha_statestream", 5)])
async def test_corpus_replayed_through_mosquitto_into_sqlite(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path, name: str, at_least: int
) -> None:
    """Every entry stores exactly its expected readings (and dead letter); the gateway's own
    discovery is ignored, and the adapter's counters say what it refused and removed (the shared
    runner, tests/test_ecosystems_corpus.py, replays every file with every adapter on)."""
    corpus = yaml.safe_load((FIXTURES / "ecosystems" / f"{name}.yaml").read_text())
    entries = corpus["entries"]
    assert len(entries) >= at_least
    assert all(e.get("source", "").startswith("https://") for e in entries)
    db = tmp_path / "gw.db"
    gw, adapter = make_gateway(mosquitto, topic_root, db, corpus.get("settings") or {})
    exact, failures = 0, []
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        pub = await Replay(mosquitto.port, gw).start()
        try:
            last_reading = last_dead = 0
            for entry in entries:
                for message in entry["messages"]:
                    await pub.send(
                        message["topic"], encode(message["payload"]), message.get("retain", False)
                    )
                stored = rows(
                    db, "SELECT id, device, metric, value FROM readings WHERE id > ?", last_reading
                )
                dead = rows(db, "SELECT id, reason FROM dead_letters WHERE id > ?", last_dead)
                last_reading = max([last_reading, *(r[0] for r in stored)])
                last_dead = max([last_dead, *(d[0] for d in dead)])
                want = {(e["device"], e["metric"]): float(e["value"]) for e in entry["expect"]}
                got = {(r[1], r[2]): r[3] for r in stored}
                for key, value in got.items():  # a wrong or unexpected value fails at once
                    assert key in want, f"{entry['id']}: unexpected reading {key}={value}"
                    assert math.isclose(value, want[key], rel_tol=1e-6), (entry["id"], key, value)
                reasons = [d[1] for d in dead]
                want_dead = [entry["expect_dead_letter"]] if "expect_dead_letter" in entry else []
                if got.keys() == want.keys() and reasons == want_dead:
                    exact += 1
                else:
                    failures.append((entry["id"], sorted(got), sorted(want), reasons))
            # The gateway's own discovery (what gateway/inference publishes) is never adopted.
            own_before = adapter.counts["own_entities"]
            for config in [
                *discovery.microphone_configs(
                    "home",
                    "kitchen",
                    "mic-1",
                    gateway_id=gw.config.gateway_id,
                    root="homeedge",
                    prefix="homeassistant",
                    off_delay_s=30,
                    availability_topic=gw.status_topic,
                ),
                discovery.occupancy_config(
                    "home",
                    "kitchen",
                    gateway_id=gw.config.gateway_id,
                    root="homeedge",
                    prefix="homeassistant",
                    availability_topic=gw.status_topic,
                ),
            ]:
                await pub.send(config.topic, config.payload, retain=True)
        finally:
            pub.close()
        # the event config is another component; the alarm and occupancy ones are ours
        assert adapter.counts["own_entities"] - own_before == 2
        assert not [k for k in adapter.entities if "homeedge_" in k]
    assert not failures, failures
    assert exact == len(entries)
    if name == "ha_discovery":
        assert adapter.counts["template_errors"] == 2
        assert adapter.counts["entities_removed"] == 1
        assert adapter.counts["no_value"] >= 2  # the OMG message without hum and batt


def test_accepted_configs_follow_has_documented_schema() -> None:
    """Every config of the corpus the adapter adopts validates against the JSON Schema written
    from HA's docs (after the abbreviations are expanded), and so do the gateway's own."""
    corpus = yaml.safe_load(CORPUS.read_text())
    adapter = HaDiscoveryAdapter(AdapterSettings())
    checked = 0
    for entry in corpus["entries"]:
        for message in entry["messages"]:
            topic, payload = message["topic"], message["payload"]
            if not topic.endswith("/config") or not payload:
                continue
            before = adapter.counts["entities"]
            adapter.adapt(topic, encode(payload), 0.0)
            if adapter.counts["entities"] == before:
                continue
            config = expand(payload)
            if "components" in config:
                shared = {k: v for k, v in config.items() if k not in ("components",)}
                for sub in config["components"].values():
                    merged = expand({**shared, **sub})
                    jsonschema.validate(merged, schema_for(merged["platform"]))
                    checked += 1
                continue
            component = topic.split("/")[1]
            assert component in COMPONENTS
            jsonschema.validate(config, schema_for(component))
            checked += 1
    assert checked >= 30
    own = discovery.anomaly_config(
        "home",
        "living",
        "th-1",
        gateway_id="gw",
        root="homeedge",
        prefix="homeassistant",
        availability_topic="s",
    )
    jsonschema.validate(json.loads(own.payload), schema_for("sensor"))
    bad = {"name": "no state topic", "device_class": "temperature"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema_for("sensor"))


async def test_removing_the_last_entity_of_a_topic_unsubscribes(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    db = tmp_path / "gw.db"
    gw, adapter = make_gateway(mosquitto, topic_root, db, {})
    node = f"n{uuid.uuid4().hex[:6]}"
    config_topic = f"homeassistant/sensor/{node}/t/config"
    config = {
        "dev_cla": "temperature",
        "unit_of_meas": "°C",
        "stat_t": f"{node}/sensor/t/state",
        "uniq_id": f"{node}t",
        "dev": {"ids": node, "name": node},
    }
    other = {
        "dev_cla": "humidity",
        "unit_of_meas": "%",
        "stat_t": f"{node}/sensor/h/state",
        "uniq_id": f"{node}h",
        "dev": {"ids": node, "name": node},
    }
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        pub = await Replay(mosquitto.port, gw).start()
        try:
            await pub.send(config_topic, encode(config), retain=True)
            await pub.send(f"homeassistant/sensor/{node}/h/config", encode(other), retain=True)
            await pub.send(f"{node}/sensor/t/state", b"20.5")
            assert gw.mqtt is not None
            await pub.send(config_topic, b"", retain=True)
            assert config_topic not in adapter.entities
            # Not subscribed any more: this one never reaches the gateway (no ack to wait for);
            # the humidity state after it does, so the gateway has seen everything before it.
            pub.client.publish(f"{node}/sensor/t/state", b"21.5", qos=1).wait_for_publish(10)
            await pub.send(f"{node}/sensor/h/state", b"40")
        finally:
            pub.close()
    stored = rows(db, "SELECT device, metric, value FROM readings ORDER BY id")
    assert stored == [(node, "temperature", 20.5), (node, "humidity", 40.0)]
    dead = rows(db, "SELECT topic, reason FROM dead_letters")
    assert dead == []


# -- templates (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value", "value_json", "want"),
    [
        ("{{ value_json.temperature }}", "", {"temperature": 21.5}, "21.5"),
        ("{{ value_json['DS18B20-1'].Temperature }}", "", {"DS18B20-1": {"Temperature": 5}}, "5"),
        ("{{ value | float * 10 }}", "2.5", None, "25.0"),
        ("{{ value_json.t | float(0) }}", "", {"t": "x"}, "0"),
        ("{{ value_json.t | round(2) }}", "", {"t": 1.23456}, "1.23"),
        ("{{ value_json.t | int }}", "", {"t": "17.9"}, "17"),
        ("{{ value_json.on | iif('ON', 'OFF') }}", "", {"on": False}, "OFF"),
        ("{{ value_json.contact }}", "", {"contact": True}, "True"),
        ("{{ value_json.x | default(3) }}", "", {}, "3"),
        ("{{ value_json.v | multiply(0.5) }}", "", {"v": 2300}, "1150.0"),
        ("{{ 'yes' if value_json.s is defined else 'no' }}", "", {}, "no"),
        ("{{ value | regex_replace('[^0-9.]', '') }}", "21.5 C", None, "21.5"),
        ("{{ value_json.a | is_number }}", "", {"a": "4"}, "True"),
    ],
)
def test_templates_follow_home_assistant(
    source: str, value: str, value_json: Any, want: str
) -> None:
    template = compile_template(source)
    got = template.render(value) if value_json is None else template.render(value, value_json)
    assert got == want


@pytest.mark.parametrize(
    "source",
    ["{{ value_json.hum | is_defined }}", "{{ value_json.a.b }}", "{{ value_json.t | float }}"],
)
def test_an_absent_value_is_no_value(source: str) -> None:
    with pytest.raises(NoValue):
        compile_template(source).render("", {"t": None})


@pytest.mark.parametrize(
    "source",
    [
        "{{ states('sensor.x') }}",
        "{{ now() }}",
        "{{ value | timestamp_custom('%H') }}",
        "{% if value %}",
        "x" * 5000,
    ],
)
def test_unsupported_templates_are_refused_at_config_time(source: str) -> None:
    with pytest.raises(TemplateProblem):
        compile_template(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 1000000 }}",
        "{{ 10 ** 100000 }}",
        "{{ value.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}",
        "{{ value_json.t | float }}",
    ],
)
def test_sandbox_and_bounds_refuse_at_render_time(source: str) -> None:
    with pytest.raises(TemplateProblem):
        compile_template(source).render("x", {"t": "n/a"})


# -- claims: who owns a discovered state topic (pure) -------------------------------------------


def config_bytes(state_topic: str, **extra: Any) -> bytes:
    body = {
        "dev_cla": "temperature",
        "unit_of_meas": "°C",
        "stat_t": state_topic,
        "uniq_id": "u-" + state_topic.replace("/", "_"),
        "dev": {"ids": ["dev-1"]},
        **extra,
    }
    return json.dumps(body).encode()


def test_a_native_adapters_topic_and_our_root_are_not_claimed() -> None:
    settings = AdapterSettings.model_validate({"zigbee2mqtt": {"enabled": True}})
    registry = AdapterRegistry.from_settings(settings)
    decoder = MessageDecoder(topic_root="homeedge", adapters=list(registry))
    subscribed: list[str] = []
    decoder.adapters.watch_claims(subscribed.append, lambda f: subscribed.remove(f))
    ha = next(a for a in registry if isinstance(a, HaDiscoveryAdapter))
    cases = {
        "homeassistant/sensor/a/t/config": "zigbee2mqtt/living_thermo",  # z2m adapter owns it
        "homeassistant/sensor/b/t/config": "homeedge/home/living/th-1/telemetry",  # ours
        "homeassistant/sensor/c/t/config": "esp-c/sensor/t/state",
        "homeassistant/sensor/d/t/config": "+/+/BTtoMQTT/A4C138000001",
    }
    for topic, state in cases.items():
        decoder.decode(topic, config_bytes(state), 0.0)
    assert ha.counts["state_topic_taken"] == 2
    assert subscribed == ["esp-c/sensor/t/state", "+/+/BTtoMQTT/A4C138000001"]
    assert decoder.adapters.owner("zigbee2mqtt/living_thermo") is not ha
    assert decoder.adapters.owner("esp-c/sensor/t/state") is ha
    assert decoder.adapters.owner("home/OMG/BTtoMQTT/A4C138000001") is ha
    # The route of a topic that was nobody's is forgotten once it is claimed.
    dead = decoder.decode("esp-e/sensor/t/state", b"20", 0.0)
    assert isinstance(dead[-1], DeadLetter) and dead[-1].reason == "unknown_topic"
    decoder.decode("homeassistant/sensor/e/t/config", config_bytes("esp-e/sensor/t/state"), 0.0)
    items = decoder.decode("esp-e/sensor/t/state", b"20", 0.0)
    assert isinstance(items[-1], ReadingsIn) and items[-1].readings[0].value == 20.0
    # Removing the only entity of a topic releases (unsubscribes) it.
    decoder.decode("homeassistant/sensor/e/t/config", b"", 0.0)
    assert "esp-e/sensor/t/state" not in subscribed
    assert decoder.adapters.owner("esp-e/sensor/t/state") is None


def test_the_entity_cap_is_counted() -> None:
    ha = HaDiscoveryAdapter(AdapterSettings.model_validate({"ha_discovery": {"max_entities": 2}}))
    for i in range(4):
        ha.adapt(f"homeassistant/sensor/n{i}/t/config", config_bytes(f"n{i}/t"), 0.0)
    assert len(ha.entities) == 2 and ha.counts["entities_refused"] == 2
    # A config sent again (every reconnect replays the retained ones) is no new entity.
    ha.adapt("homeassistant/sensor/n0/t/config", config_bytes("n0/t"), 0.0)
    assert len(ha.entities) == 2 and ha.counts["entities_refused"] == 2


def test_one_failing_template_does_not_cost_the_others_reading() -> None:
    """Two entities on one state topic: the one whose template fails is a side dead letter
    (adapter_template), the other's reading is kept."""
    registry = AdapterRegistry.from_settings(AdapterSettings())
    decoder = MessageDecoder(topic_root="homeedge", adapters=list(registry))
    good = config_bytes("dev1/state", val_tpl="{{ value_json.t }}")
    bad = json.dumps(
        {
            "dev_cla": "humidity",
            "unit_of_meas": "%",
            "stat_t": "dev1/state",
            "val_tpl": "{{ value_json.h | float }}",
            "uniq_id": "u-h",
            "dev": {"ids": ["dev-1"]},
        }
    ).encode()
    decoder.decode("homeassistant/sensor/dev1/t/config", good, 0.0)
    decoder.decode("homeassistant/sensor/dev1/h/config", bad, 0.0)
    items = decoder.decode("dev1/state", b'{"t": 19.5, "h": "err"}', 0.0)
    assert [type(i) for i in items] == [DeadLetter, ReadingsIn]
    dead, kept = items
    assert isinstance(dead, DeadLetter) and dead.reason == "adapter_template"
    assert "u-h" in dead.detail and "float" in dead.detail
    assert isinstance(kept, ReadingsIn)
    assert [(r.device, r.metric, r.value) for r in kept.readings] == [
        ("dev-1", "temperature", 19.5)
    ]
    # Both failing: the message itself is the dead letter.
    only_bad = decoder.decode("dev1/state", b'{"h": "err"}', 0.0)
    assert len(only_bad) == 1 and isinstance(only_bad[0], DeadLetter)
    assert only_bad[0].reason == "adapter_template"


async def test_claimed_topics_are_subscribed_again_on_a_new_connection(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    """A broker that lost the gateway's session (restarted without its database) still gets
    the discovered state topics subscribed: every connection subscribes to the claimed ones."""
    db = tmp_path / "gw.db"
    gw, adapter = make_gateway(mosquitto, topic_root, db, {})
    config = {
        "dev_cla": "temperature",
        "unit_of_meas": "°C",
        "stat_t": "esp-r/sensor/t/state",
        "uniq_id": "esp-r-t",
        "dev": {"ids": "esp-r", "name": "esp-r"},
    }
    async with gw:
        assert gw.mqtt is not None
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        pub = await Replay(mosquitto.port, gw).start()
        try:
            await pub.send("homeassistant/sensor/esp-r/t/config", encode(config), retain=True)
            await pub.send("esp-r/sensor/t/state", b"20.5")
        finally:
            pub.close()
        mosquitto.stop()
        (mosquitto.workdir / "mosquitto.db").unlink(missing_ok=True)  # session and retained gone
        await wait_for(lambda: not gw.mqtt.subscribed.is_set(), what="the gateway to notice")
        mosquitto.start()
        await wait_for(lambda: gw.mqtt.subscribed.is_set(), what="the gateway to resubscribe")
        assert "homeassistant/sensor/esp-r/t/config" in adapter.entities  # kept in memory
        pub2 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-after-restart")
        pub2.connect("127.0.0.1", mosquitto.port)
        pub2.loop_start()
        try:
            pub2.publish("esp-r/sensor/t/state", b"21.5", qos=1).wait_for_publish(10)
            query = "SELECT value FROM readings WHERE device = 'esp-r' ORDER BY id"
            await wait_for(lambda: len(rows(db, query)) == 2, what="the state after the restart")
        finally:
            pub2.loop_stop()
            pub2.disconnect()
    assert rows(db, query) == [(20.5,), (21.5,)]


@pytest.mark.parametrize(
    ("source", "value_json"),
    [
        ("{{ value_json.temperature }}", {"temperature": 21.9}),
        ("{{value_json['AM2301'].Temperature}}", {"AM2301": {"Temperature": 22}}),
        ("{{ value_json.contact }}", {"contact": False}),
        ("{{ value_json.x }}", {}),
        ("{{ value_json.a[0] }}", {"a": [1.5]}),
        ("{{ value_json.n }}", {"n": None}),
        ("{{ value_json.d }}", {"d": {"a": 1}}),
        ("{{ value_json.s }}", {"s": " x "}),
        ("{{ value_json.t.x }}", {"t": "text"}),
        ("{{ value_json['DS18B20-2'].Temperature }}", {"DS18B20-2": {"Temperature": -3}}),
    ],
)
def test_bare_paths_render_as_jinja_does(source: str, value_json: Any) -> None:
    """The direct lookup of ``{{ value_json.a.b }}`` gives what the sandbox's render gives."""
    from jinja2.sandbox import SandboxedEnvironment

    template = compile_template(source)
    assert template._path is not None  # the fast path is the one under test
    want = SandboxedEnvironment().from_string(source).render(value_json=value_json).strip()
    assert template.render("", value_json) == want


# -- templates that would eat the CPU or the memory (review2 finding 1; each would hang or
# exhaust memory without the bounds, so each test has its own short timeout) -----------------


@pytest.mark.timeout(10, method="thread")  # a C-level loop ignores signals
@pytest.mark.parametrize(
    "source",
    [
        # doubling a string in a loop: 64 MB at 26 iterations, more exhausts memory
        "{% set ns = namespace(s='x') %}{% for i in range(26) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        # nested loops: 10^10 iterations with the sandbox's range cap
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1",
        # loops over the payload itself, without range
        "{% for c in value %}{% for d in value %}{{ c }}{% endfor %}{% endfor %}",
        # the output built in a loop before the output cap is checked
        "{% for i in range(20000) %}{{ 'x' * 9999 }}{% endfor %}",
        "{% set x = 'y' * 9999 %}{{ x }}",
        "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}",
        "{% filter upper %}x{% endfilter %}",
        "{% with a = 1 %}{{ a }}{% endwith %}",
        "{% include 'x' %}",
        # width filters and printf formatting: 200 MB at once
        "{{ 'x'|center(200000000)|length }}",
        "{{ 'x'|indent(200000000) }}",
        "{{ 'x'|wordwrap(5) }}",
        "{{ '%s'|format(1) }}",
        "{{ ('%0200000000d' % 1)|length }}",
        "{{ ('%0' ~ '200000000d') % 1 }}",
        # jinja's globals
        "{{ lipsum(100000, false, 100000, 100000) }}",
        "{{ range(10)|list }}",
        "{{ dict(a=1) }}",
        "{{ cycler(1, 2).next() }}",
        "{{ joiner(',')() }}",
        # a str method that pads, and map() reaching a width filter by name
        "{{ value.ljust(200000000)|length }}",
        "{{ value.zfill(200000000)|length }}",
        "{{ ['x']|map('center', 200000000)|list|length }}",
    ],
)
def test_template_bombs_are_refused_at_config_time(source: str) -> None:
    with pytest.raises(TemplateProblem):
        compile_template(source).render("1", {})


@pytest.mark.timeout(10, method="thread")  # a C-level loop ignores signals
@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("{{ (((10**1000)**1000)**10)|string|length }}", "1"),  # 19 s of CPU before
        ("{{ (2**62) * (2**62) * (2**62) }}", "1"),
        ("{{ value|int ** 999 }}", "123456789"),
        ("{{ ('%0200000000d' ~ '') % 1 }}", "1"),
        ("{{ value % 1 }}", "%0200000000d"),
        ("{{ value|round(100000000) }}", "1.5"),
        ("{{ ('x' * 9999)|replace('x', 'y' * 4000)|length }}", "1"),
        ("{{ ('x' * 9999)|list|join('y' * 4000)|length }}", "1"),
        ("{{ ['x' * 9999]|map('replace', 'x', 'y' * 4000)|list|length }}", "1"),
        # catastrophic backtracking: 0.56 s at 22 characters before, hours at 40
        ("{{ value is match('(a+)+$') }}", "a" * 40 + "b"),
        ("{{ value is search('(a|aa)*c') }}", "a" * 40),
        ("{{ value | regex_search('(x+x+)+y') }}", "x" * 40),
        ("{{ value | regex_search('(?>(a+)+$)') }}", "a" * 40 + "b"),
        ("{{ value | regex_replace('(a)\\\\1*', '') }}", "a" * 40),
        ("{{ value | regex_search('a*a*a*b') }}", "a" * 200),  # 1 s at 256: three repeats
        ("{{ value | regex_search('a') }}", "a" * 257),  # input beyond MAX_REGEX_INPUT
    ],
)
def test_template_bombs_are_refused_when_rendered(source: str, value: str) -> None:
    with pytest.raises(TemplateProblem):
        compile_template(source).render(value, {})


@pytest.mark.parametrize(
    ("source", "value", "want"),
    [
        ("{{ (value|int) % 7 }}", "23", "2"),
        ("{{ 2 ** 10 }}", "", "1024"),
        ("{{ value|float ** 0.5 }}", "16", "4.0"),
        ("{{ value.split(',')[1] | float }}", "1,2.5", "2.5"),
        ("{{ value | regex_search('^\\\\d+(\\\\.\\\\d)? C$') }}", "21.5 C", "True"),
        ("{{ value | regex_replace('\\\\s+', ' ') }}", "a   b", "a b"),
        ("{{ ['a', 'b']|join(',') }}", "", "a,b"),
        ("{{ value|replace('C', '') }}", "21C", "21"),
        ("{{ 1700000000000000000 + 1 }}", "", "1700000000000000001"),
    ],
)
def test_bounded_constructs_still_render(source: str, value: str, want: str) -> None:
    assert compile_template(source).render(value, {}) == want


# -- claims over the whole broker (review2 finding 2) ------------------------------------------


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("+/#", False),
        ("+/+", False),
        ("#", False),
        ("a/#", False),
        ("+", False),
        ("/+/", False),
        ("$SYS/broker/load", False),
        ("a+/b", False),
        ("+/+/BTtoMQTT/A4C138000001", True),  # OpenMQTTGateway, in the corpus
        ("esp-c/sensor/t/state", True),
        ("+/status", True),
    ],
)
def test_only_filters_with_a_literal_level_and_no_hash_are_claimed(topic: str, ok: bool) -> None:
    ha = HaDiscoveryAdapter(AdapterSettings())
    out = ha.adapt("homeassistant/sensor/x/t/config", config_bytes(topic), 0.0)
    if ok:
        assert not isinstance(out, DeadLetter) and len(ha.entities) == 1
    else:
        assert isinstance(out, DeadLetter) and out.reason == "adapter_validation"
        assert not ha.entities and not ha._readers


def test_availability_entries_are_capped_and_broad_ones_refused() -> None:
    ha = HaDiscoveryAdapter(AdapterSettings())
    listed = [{"t": f"dev1/avail{i}"} for i in range(20)]
    ha.adapt(
        "homeassistant/sensor/x/t/config",
        config_bytes("dev1/state", avty_t="+/#", avty=listed),
        0.0,
    )
    (entity,) = ha._entities.values()
    assert [a.topic for a in entity.availability] == [f"dev1/avail{i}" for i in range(8)]
    assert ha.counts["availability_refused"] == 1 + 12
    assert "+/#" not in ha._readers


def test_the_claimed_topic_cap_is_counted() -> None:
    settings = AdapterSettings.model_validate({"ha_discovery": {"max_claimed_topics": 3}})
    ha = HaDiscoveryAdapter(settings)
    ha.adapt("homeassistant/sensor/a/t/config", config_bytes("a/t", avty_t="a/avail"), 0.0)
    ha.adapt("homeassistant/sensor/b/t/config", config_bytes("b/t", avty_t="b/avail"), 0.0)
    # b/t took the third filter; its availability topic is beyond the cap
    assert sorted(ha._readers) == ["a/avail", "a/t", "b/t"]
    ha.adapt("homeassistant/sensor/c/t/config", config_bytes("c/t"), 0.0)
    assert len(ha.entities) == 2 and ha.counts["topics_refused"] == 2
    assert ha.counts["state_topic_taken"] == 0
    # a topic claimed already costs no new filter
    ha.adapt("homeassistant/sensor/d/t/config", config_bytes("a/t", uniq_id="d"), 0.0)
    assert len(ha.entities) == 3


@pytest.mark.timeout(10, method="thread")
def test_a_bomb_config_is_an_adapter_template_dead_letter() -> None:
    ha = HaDiscoveryAdapter(AdapterSettings())
    bomb = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1"
    out = ha.adapt("homeassistant/sensor/x/t/config", config_bytes("x/t", val_tpl=bomb), 0.0)
    assert isinstance(out, DeadLetter) and out.reason == "adapter_template"
    assert "range" in out.detail and ha.counts["template_errors"] == 1
    assert not ha.entities and not ha._readers
