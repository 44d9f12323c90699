"""Local actions' pure parts: rule matching, rate limits, quiet hours, the notification body
(what a webhook may say), `LocalActions` over a recording publish function, and the
``[actions]`` config's validation messages."""

from __future__ import annotations

import datetime
import json
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from gateway.actions.metrics import ActionMetrics
from gateway.actions.rules import RateLimiter, matches, notification, quiet
from gateway.actions.runner import LocalActions
from gateway.actions.settings import ActionsSettings, QuietHours, Rule
from gateway.config import ConfigError, load_config
from gateway.records import EdgeEvent, EventKind
from schemas.notify import decode_notification, encode_notification

UTC = zoneinfo.ZoneInfo("UTC")
# 2026-01-01 23:30 UTC: inside 22:00-07:00 quiet hours.
NIGHT = datetime.datetime(2026, 1, 1, 23, 30, tzinfo=UTC).timestamp()
NOON = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()


def event(
    kind: EventKind = EventKind.KEYWORD,
    label: str = "lights_on",
    *,
    room: str = "kitchen",
    device: str = "microphone-1",
    home: str = "home-1",
    score: float = 0.9,
    ts: float = NOON,
) -> EdgeEvent:
    return EdgeEvent(
        kind=kind,
        model=str(kind),
        home=home,
        room=room,
        device=device,
        label=label,
        score=score,
        window_start=ts - 2,
        window_end=ts,
        ts=ts,
    )


def rule(**fields: Any) -> Rule:
    base: dict[str, Any] = {"name": "r", "notify": True}
    return Rule.model_validate(base | fields)


def test_every_given_selector_must_match() -> None:
    r = rule(kinds=["keyword"], labels=["lights_on"], rooms=["kitchen"], min_score=0.5)
    assert matches(r, event())
    assert not matches(r, event(label="lights_off"))
    assert not matches(r, event(room="hall"))
    assert not matches(r, event(score=0.4))
    assert not matches(r, event(EventKind.ALARM, "lights_on"))
    by_device = rule(labels=["lights_on"], devices=["microphone-2"])
    assert not matches(by_device, event()) and matches(by_device, event(device="microphone-2"))
    # A label no model emits yet (level_change) is a valid selector.
    assert matches(rule(labels=["level_change"]), event(EventKind.ANOMALY, "level_change"))


def test_rate_limit_is_a_sliding_window_per_room_and_label() -> None:
    r = rule(kinds=["alarm"], rate_limit={"count": 2, "per_s": 60})
    limiter = RateLimiter()
    smoke = event(EventKind.ALARM, "smoke_t3")
    assert limiter.allow(r, smoke, 0.0) and limiter.allow(r, smoke, 10.0)
    assert not limiter.allow(r, smoke, 59.9)
    # Another room, another label: counted apart.
    assert limiter.allow(r, event(EventKind.ALARM, "smoke_t3", room="garage"), 20.0)
    assert limiter.allow(r, event(EventKind.ALARM, "co_t4"), 20.0)
    assert limiter.allow(r, smoke, 60.0)  # the first firing left the window
    assert not limiter.allow(r, smoke, 69.0)
    assert limiter.allow(r, smoke, 70.0)


def test_rate_limit_scope_rule_counts_every_source_together() -> None:
    r = rule(kinds=["keyword"], rate_limit={"per_s": 5, "scope": "rule"})
    limiter = RateLimiter(max_keys=1)
    assert limiter.allow(r, event(room="a"), 0.0)
    assert not limiter.allow(r, event(room="b", label="stop"), 1.0)


def test_quiet_hours_wrap_midnight_and_alarms_ignore_them_by_default() -> None:
    hours = QuietHours(start=datetime.time(22), end=datetime.time(7))
    assert hours.contains(datetime.time(23, 30)) and hours.contains(datetime.time(6, 59))
    assert not hours.contains(datetime.time(7)) and not hours.contains(datetime.time(12))
    anomaly = event(EventKind.ANOMALY, "anomaly", ts=NIGHT)
    alarm = event(EventKind.ALARM, "smoke_t3", ts=NIGHT)
    r = rule(labels=["anomaly", "smoke_t3"])
    assert quiet(r, anomaly, hours, UTC)
    assert not quiet(r, alarm, hours, UTC)
    assert not quiet(r, event(EventKind.ANOMALY, "anomaly", ts=NOON), hours, UTC)
    # The rule decides when it says so; its own hours replace the section's.
    assert quiet(rule(labels=["smoke_t3"], ignore_quiet_hours=False), alarm, hours, UTC)
    assert not quiet(rule(labels=["anomaly"], ignore_quiet_hours=True), anomaly, hours, UTC)
    own = rule(labels=["anomaly"], quiet_hours={"start": "12:00", "end": "13:00"})
    assert quiet(own, event(EventKind.ANOMALY, "anomaly", ts=NOON), None, UTC)
    # The zone matters: 23:30 UTC is 08:30 in Tokyo, outside 22:00-07:00.
    assert not quiet(r, anomaly, hours, zoneinfo.ZoneInfo("Asia/Tokyo"))


def test_webhook_body_leaves_home_and_device_out_by_default() -> None:
    settings = ActionsSettings.model_validate(
        {"rules": [{"name": "phone", "kinds": ["alarm"], "webhook": {"url": "https://x/y"}}]}
    )
    r = settings.rules[0]
    assert r.webhook is not None
    e = event(EventKind.ALARM, "co_t4", device="mic-secret", home="smith-family", ts=NIGHT)
    raw = encode_notification(notification(r, e, r.webhook.fields, UTC))
    body = json.loads(raw)
    assert set(body) == {"id", "rule", "kind", "label", "room", "time", "score"}
    assert (body["kind"], body["label"], body["room"]) == ("alarm", "co_t4", "kitchen")
    assert body["time"] == "2026-01-01T23:30:00+00:00"
    assert b"mic-secret" not in raw and b"smith-family" not in raw
    opted = json.loads(encode_notification(notification(r, e, ["label", "device"], UTC)))
    assert opted["device"] == "mic-secret" and "room" not in opted
    # What is sent is what the published schema describes (schemas/json/notify.schema.json).
    assert decode_notification(raw).label == "co_t4"


class Published:
    def __init__(self, accept: bool = True) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.accept = accept

    def __call__(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if self.accept:
            self.messages.append((topic, payload, retain))
        return self.accept


def actions_for(settings: dict[str, Any], publish: Published, now: list[float]) -> LocalActions:
    return LocalActions(
        ActionsSettings.model_validate(settings),
        publish=publish,
        notify_topic="root/gw/gateway/notify",
        metrics=ActionMetrics(),
        senders={},
        clock=lambda: now[0],
    )


def test_defaults_notify_alarms_locally_and_commands_ignore_quiet_hours() -> None:
    publish, now = Published(), [0.0]
    actions = actions_for(
        {
            "timezone": "UTC",
            "quiet_hours": {"start": "22:00", "end": "07:00"},
            "rules": [
                {
                    "name": "light",
                    "labels": ["lights_on"],
                    "notify": True,
                    "mqtt": {"topic": "zigbee2mqtt/lamp/set", "payload": {"state": "ON"}},
                }
            ],
        },
        publish,
        now,
    )
    actions.on_event(event(ts=NIGHT))  # the command runs, the notification is quiet
    actions.on_event(event(EventKind.ALARM, "smoke_t3", ts=NIGHT))
    actions.on_event(event(EventKind.ALARM, "smoke_t3", ts=NIGHT))  # within the alarms' minute
    actions.on_event(event(EventKind.ANOMALY, "anomaly", ts=NIGHT))  # quiet
    topics = [(t, p) for t, p, _ in publish.messages]
    assert topics[0] == ("zigbee2mqtt/lamp/set", b'{"state":"ON"}')
    assert [t for t, _ in topics] == ["zigbee2mqtt/lamp/set", "root/gw/gateway/notify"]
    note = decode_notification(topics[1][1])
    assert (note.rule, note.label, note.device, note.home) == (
        "alarms",
        "smoke_t3",
        "microphone-1",
        "home-1",
    )
    m = actions._metrics
    assert m.value("light", "notify", "quiet") == 1 and m.value("light", "mqtt", "sent") == 1
    assert m.value("alarms", "notify", "rate_limited") == 1
    assert m.value("anomalies", "notify", "quiet") == 1
    now[0] = 61.0
    actions.on_event(event(EventKind.ALARM, "smoke_t3", ts=NIGHT))
    assert m.value("alarms", "notify", "sent") == 2


def test_a_full_mqtt_queue_is_counted_as_dropped() -> None:
    publish = Published(accept=False)
    actions = actions_for({}, publish, [0.0])
    actions.on_event(event(EventKind.ALARM, "co_t4"))
    assert actions._metrics.value("alarms", "notify", "dropped") == 1


def test_builtin_rules_can_be_turned_off() -> None:
    off = ActionsSettings(notify_alarms=False, notify_anomalies=False)
    assert off.all_rules() == []
    assert [r.name for r in ActionsSettings().all_rules()] == ["alarms", "anomalies"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '[[actions.rules]]\nname = "a"\nkinds = ["alarm"]\nnotify = true\n'
            '[[actions.rules]]\nname = "b"\nkinds = ["alarm"]\nwebhook = { url = "ftp://x" }\n',
            "actions.rules[1].webhook.url: ",
        ),
        (
            '[[actions.rules]]\nname = "a"\nkinds = ["alarm"]\n',
            "actions.rules[0]: Value error, the rule does nothing",
        ),
        ('[[actions.rules]]\nname = "a"\nnotify = true\n', "actions.rules[0]: Value error, the"),
        (
            '[[actions.rules]]\nname = "a"\nkinds = ["smoke"]\nnotify = true\n',
            "actions.rules[0].kinds[0]: ",
        ),
        (
            '[[actions.rules]]\nname = "a"\nlabels = ["x"]\n'
            'mqtt = { topic = "zigbee2mqtt/+/set", payload = "ON" }\n',
            "actions.rules[0].mqtt.topic: ",
        ),
        (
            '[[actions.rules]]\nname = "a"\nlabels = ["x"]\n'
            'mqtt = { topic = "homeedge/h/kitchen/lamp/set", payload = "ON" }\n',
            "actions.rules[0].mqtt.topic: 'homeedge/h/kitchen/lamp/set' is under mqtt.topic_root",
        ),
        (
            '[[actions.rules]]\nname = "a"\nlabels = ["x"]\nnotify = true\n'
            'quiet_hours = { start = "07:00", end = "07:00" }\n',
            "actions.rules[0].quiet_hours: ",
        ),
        (
            '[[actions.rules]]\nname = "a"\nlabels = ["x"]\nnotify = true\n'
            "rate_limit = { count = 0, per_s = 10 }\n",
            "actions.rules[0].rate_limit.count: ",
        ),
        ('[actions]\ntimezone = "Mars/Olympus"\n', "actions.timezone: "),
        (
            '[[actions.rules]]\nname = "a"\nlabels = ["x"]\n'
            'mqtt = { topic = "cmnd/blind/POSITION", payload = { at = 07:00:00 } }\n',
            "actions.rules[0].mqtt: Value error, payload cannot be sent as JSON",
        ),
        (
            '[[actions.rules]]\nname = "alarms"\nlabels = ["x"]\nnotify = true\n',
            "two rules are named 'alarms'",
        ),
        (
            '[[actions.rules]]\nname = "a"\nkinds = ["alarm"]\n'
            'webhook = { url = "https://x", field = ["device"] }\n',
            "actions.rules[0].webhook.field: Extra inputs are not permitted",
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_its_field(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('gateway_id = "gw"\n' + table)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def test_example_rules_parse(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'gateway_id = "gw"\n[actions]\ntimezone = "Europe/Berlin"\n'
        "quiet_hours = { start = 22:00:00, end = 07:00:00 }\n"
        '[[actions.rules]]\nname = "kitchen-light-on"\nkinds = ["keyword"]\n'
        'labels = ["lights_on"]\nrooms = ["kitchen"]\n'
        'mqtt = { topic = "zigbee2mqtt/kitchen_light/set", payload = { state = "ON" } }\n'
        '[[actions.rules]]\nname = "phone"\nkinds = ["alarm"]\n'
        '[actions.rules.webhook]\nurl = "https://ntfy.example/home"\n'
        'headers = { Authorization = "Bearer t" }\n'
    )
    cfg = load_config(path).actions
    assert cfg.quiet_hours == QuietHours(start=datetime.time(22), end=datetime.time(7))
    light, phone = cfg.rules
    assert light.mqtt is not None and light.mqtt.encoded() == b'{"state":"ON"}'
    assert phone.webhook is not None and "Bearer t" not in repr(phone.webhook)


def test_the_readme_and_docker_examples_are_valid(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Local actions") :]
    block = section[
        section.index("```toml\n") + 8 : section.index("```\n", section.index("```toml"))
    ]
    path = tmp_path / "gateway.toml"
    path.write_text('gateway_id = "gw"\n' + block)
    names = [r.name for r in load_config(path).actions.all_rules()]
    assert names == ["alarms", "anomalies", "kitchen-light-on", "phone", "sensor-faults-by-mail"]
    docker = (root / "docker" / "gateway.toml").read_text()
    commented = docker[docker.index("# [actions]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in commented.splitlines())
    path.write_text('gateway_id = "gw"\n' + uncommented.replace("\n#\n", "\n"))
    assert [r.name for r in load_config(path).actions.rules] == ["kitchen-light-on", "phone"]


def test_results_reach_on_event_with_their_kind_even_without_mqtt_events() -> None:
    from gateway.inference.manifest import ModelKind
    from gateway.inference.results import InferenceResult, ResultHandler
    from gateway.inference.settings import InferenceSettings
    from gateway.inference.stats import EngineStats

    got: list[EdgeEvent] = []

    async def nothing(_: Any) -> None:
        return None

    handler = ResultHandler(
        InferenceSettings(publish_events=False),
        write=nothing,
        store=nothing,
        publisher=None,
        stats=EngineStats(),
        clock=lambda: NOON,
        on_event=got.append,
    )

    def result(kind: ModelKind, label: str, *, is_event: bool = True) -> InferenceResult:
        return InferenceResult(
            "m", "1", kind, "h", "kitchen", "mic", NOON - 4, NOON - 1, 0.8, label, 1.0, is_event
        )

    handler.emit(
        [
            result(ModelKind.AUDIO_ALARM, "smoke_t3"),
            result(ModelKind.SENSOR_ANOMALY, "anomaly"),
            result(ModelKind.SENSOR_OCCUPANCY, "occupied", is_event=False),  # not an event
        ]
    )
    assert [(e.kind, e.label, e.ts, e.window_end) for e in got] == [
        (EventKind.ALARM, "smoke_t3", NOON, NOON - 1),
        (EventKind.ANOMALY, "anomaly", NOON, NOON - 1),
    ]


def test_a_failing_event_callback_does_not_stop_the_others(tmp_path: Path) -> None:
    from gateway.app import Gateway

    gw = Gateway(load_config(None, gateway_id="gw", storage={"path": str(tmp_path / "g.db")}))
    got: list[EdgeEvent] = []

    def broken(_: EdgeEvent) -> None:
        raise RuntimeError("a plug-in bug")

    gw.on_event(broken)
    gw.on_event(got.append)
    gw.emit_event(event())
    assert got == [event()]
    restarts = gw.registry.get_sample_value(
        "homeedge_gateway_task_restarts_total", {"task": "event-callback"}
    )
    assert restarts == 1
