"""Lenient, exact value parsing shared by every adapter (gateway.adapters.base.coerce) and the
rule that a bad field is skipped and counted while the message's other fields are kept."""

from __future__ import annotations

import pytest

from gateway.adapters import AdapterSettings
from gateway.adapters.base import AdapterError, ValueKind, coerce
from gateway.adapters.zigbee2mqtt import Zigbee2MqttAdapter
from gateway.records import DeadLetter
from tests.fixtures.adapters.support import T0, readings

N, B, INV, A = ValueKind.NUMBER, ValueKind.BINARY, ValueKind.INVERTED, ValueKind.AUTO


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        (21.5, N, 21.5),
        (3, N, 3.0),
        ("37.00", N, 37.0),
        (" 21.5 ", N, 21.5),
        ("-4", N, -4.0),
        ("1e3", N, 1000.0),
        (".5", N, 0.5),
        (True, B, 1.0),
        (False, B, 0.0),
        ("ON", B, 1.0),
        ("off", B, 0.0),
        ("Open", B, 1.0),
        ("closed", B, 0.0),
        ("1", B, 1.0),
        (0, B, 0.0),
        (False, INV, 1.0),  # Zigbee contact: false = open
        ("true", INV, 0.0),
        ("OFF", INV, 1.0),
        (1, INV, 0.0),
        ("0", INV, 1.0),
        # review2 #8: a state word says the door's state itself, so it is never inverted
        ("open", INV, 1.0),
        (" Opened ", INV, 1.0),
        ("closed", INV, 0.0),
        ("close", INV, 0.0),
        ("12.5", A, 12.5),
        ("detected", A, 1.0),
        (7, A, 7.0),
    ],
)
def test_values_that_are_read(raw: object, kind: ValueKind, value: float) -> None:
    assert coerce(raw, kind, "f") == value


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("warm", N),
        ("nan", N),
        ("inf", N),
        ("1e400", N),  # a number, but not finite
        ("1e16", N),  # beyond +-1e15
        (True, N),  # a boolean is no temperature
        ("", N),
        ("21.5 °C", N),
        ("maybe", B),
        (2, B),
        ("2", B),
        (None, B),
        ("warm", A),
        ("detected", INV),  # inverted or not is a guess: refused, not stored wrong
        ("offline", INV),
        (2, INV),
    ],
)
def test_values_that_are_refused(raw: object, kind: ValueKind) -> None:
    with pytest.raises(AdapterError) as err:
        coerce(raw, kind, "f")
    assert err.value.reason == "adapter_validation" and err.value.detail.startswith("f: ")


def test_a_bad_field_is_counted_and_the_others_kept() -> None:
    z2m = Zigbee2MqttAdapter(AdapterSettings.model_validate({"zigbee2mqtt": {"enabled": True}}))
    good = readings(
        z2m.adapt("zigbee2mqtt/s", b'{"temperature":"--","humidity":"48.5","occupancy":2}', T0)
    )
    assert [(r.metric, r.value) for r in good] == [("humidity", 48.5)]
    assert z2m.bad_fields == {"temperature": 1, "occupancy": 1}
    assert z2m.counts["bad_fields"] == 2 and z2m.counts["dead_letters"] == 0
    # Nothing usable at all: the message is kept as a dead letter with the first problem.
    dead = z2m.adapt("zigbee2mqtt/s", b'{"temperature":"warm","humidity":"x"}', T0)
    assert isinstance(dead, DeadLetter) and dead.reason == "adapter_validation"
    assert "temperature" in dead.detail
    assert z2m.counts["bad_fields"] == 4 and z2m.counts["dead_letters"] == 1


@pytest.mark.parametrize(
    ("payload", "door"),
    [(b"open", 1.0), (b"closed", 0.0), (b"false", 1.0), (b"true", 0.0)],
)
def test_zigbee2mqtt_contact_words_are_the_door_state(payload: bytes, door: float) -> None:
    """review2 #8: Zigbee2MQTT's `contact` is true when closed, so booleans are inverted, but
    `open`/`closed` already say the door's state (attribute output of a bridge or a user script)."""
    z2m = Zigbee2MqttAdapter(AdapterSettings.model_validate({"zigbee2mqtt": {"enabled": True}}))
    got = readings(z2m.adapt("zigbee2mqtt/front/contact", payload, T0))
    assert [(r.metric, r.value) for r in got] == [("door", door)]
