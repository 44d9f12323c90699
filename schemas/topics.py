"""Topic builders and parsers.

Device topics are ``<root>/<home>/<room>/<device>/<kind>``; the root defaults to ``homeedge`` and
may itself contain slashes (tests use a unique root each). Gateway output lives under
``<root>/<home>/gateway/...``: ``status``, ``events/<model>``, ``notify`` and the Home Assistant
entity states ``states/<home>/<device>/<metric>`` (`GATEWAY_OUTPUTS`), so
``gateway`` is not a valid room name. Every topic string in the code base comes from these
functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType

from schemas.errors import TopicError

ROOT = "homeedge"
GATEWAY_SEGMENT = "gateway"
# The gateway's outputs under <root>/<home>/gateway/, and whether each has levels below it
# (``events/<model>``, ``states/...``) or not (``status``, ``notify``). A gateway ignores these
# topics on its ``<root>/#`` subscription; anything else under a "gateway" room is a device
# misconfigured into it.
GATEWAY_OUTPUTS: Mapping[str, bool] = MappingProxyType(
    {"status": False, "events": True, "notify": False, "states": True}
)
# \Z, not $: "$" also matches before a final newline ("kitchen\n" is no room name).
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


class Kind(StrEnum):
    """What a device publishes on a topic."""

    TELEMETRY = "telemetry"
    AUDIO = "audio"
    STATE = "state"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed device topic."""

    home: str
    room: str
    device: str
    kind: Kind


def valid_segment(value: str) -> bool:
    """True when `value` may be used as a home, room or device name in a topic."""
    return bool(_SEGMENT.match(value))


def _check(name: str, value: str) -> str:
    if not valid_segment(value):
        raise TopicError(f"{name} {value!r} is not a valid topic segment ([A-Za-z0-9_.-], 1-64)")
    return value


def _check_root(root: str) -> str:
    if not root or any(c in root for c in "+#\0") or root.startswith("/") or root.endswith("/"):
        raise TopicError(f"topic root {root!r} is not valid")
    return root


def device_topic(home: str, room: str, device: str, kind: Kind | str, *, root: str = ROOT) -> str:
    """The topic a device publishes `kind` messages on."""
    kind = Kind(kind)
    _check("home", home)
    _check("room", room)
    if room == GATEWAY_SEGMENT:
        raise TopicError("room name 'gateway' is reserved for the gateway's own topics")
    _check("device", device)
    return f"{_check_root(root)}/{home}/{room}/{device}/{kind.value}"


# Devices publish on the same few topics again and again: remember the parsed ones (errors are
# not cached, so a bad topic is re-checked each time).
@lru_cache(maxsize=8192)
def parse_device_topic(topic: str, *, root: str = ROOT) -> DeviceTopic:
    """Parse a device topic; raise `TopicError` naming what is wrong."""
    prefix = _check_root(root) + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"topic {topic!r} is not under {root!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 4:
        raise TopicError(
            f"topic {topic!r} has {len(parts)} levels under the root, expected "
            "<home>/<room>/<device>/<kind>"
        )
    home, room, device, kind = parts
    _check("home", home)
    _check("room", room)
    if room == GATEWAY_SEGMENT:
        raise TopicError(f"topic {topic!r} is a gateway topic, not a device topic")
    _check("device", device)
    try:
        parsed_kind = Kind(kind)
    except ValueError:
        raise TopicError(f"topic {topic!r} has unknown kind {kind!r}") from None
    return DeviceTopic(home=home, room=room, device=device, kind=parsed_kind)


def device_subscription(kind: Kind | str | None = None, *, root: str = ROOT) -> str:
    """The filter matching every device's `kind` topic (all kinds and shapes when None)."""
    if kind is None:
        return f"{_check_root(root)}/#"
    return f"{_check_root(root)}/+/+/+/{Kind(kind).value}"


_KINDS = frozenset(k.value for k in Kind)


def is_gateway_output(levels: str) -> bool:
    """True when `levels`, what follows ``<root>/<home>/gateway/`` in a topic, names one of the
    gateway's own outputs (``status``, ``events/<model>``, ``notify``, ``states/...``)."""
    head, sep, rest = levels.partition("/")
    nested = GATEWAY_OUTPUTS.get(head)
    if nested is None:
        return False
    # events/telemetry would be a device "events" in the reserved room: no model has that name.
    return bool(rest) and rest not in _KINDS if nested else not sep


def gateway_topic(home: str, *parts: str, root: str = ROOT) -> str:
    """A topic the gateway publishes on: ``<root>/<home>/gateway/<parts...>``, where the first
    part is one of `GATEWAY_OUTPUTS` (other gateways ignore exactly those)."""
    _check("home", home)
    if not parts or parts[0] not in GATEWAY_OUTPUTS:
        raise TopicError(f"gateway topics start with one of {sorted(GATEWAY_OUTPUTS)}")
    if parts[1:] and parts[1] in _KINDS:
        raise TopicError(f"{parts[1]!r} is a device topic kind, not a gateway topic level")
    for part in parts:
        _check("gateway topic level", part)
    return "/".join([_check_root(root), home, GATEWAY_SEGMENT, *parts])


def gateway_events_topic(home: str, model: str, *, root: str = ROOT) -> str:
    """Where inference events of `model` for `home` are published (QoS 1, not retained)."""
    return gateway_topic(home, "events", model, root=root)


def gateway_status_topic(home: str, *, root: str = ROOT) -> str:
    """The gateway's retained availability topic (``online``/``offline``, last will)."""
    return gateway_topic(home, "status", root=root)


def gateway_notify_topic(gateway_id: str, *, root: str = ROOT) -> str:
    """Where the gateway's local actions publish notifications (``[actions]``; QoS 1, not
    retained): one topic per gateway, beside its status topic, whatever home an event is from."""
    return gateway_topic(gateway_id, "notify", root=root)


def gateway_state_topic(
    gateway_id: str, home: str, device: str, metric: str, *, root: str = ROOT
) -> str:
    """Where the gateway publishes the newest value of one device's metric for Home Assistant:
    ``<root>/<gateway_id>/gateway/states/<home>/<device>/<metric>`` (QoS 1, not retained)."""
    _check("gateway id", gateway_id)
    _check("home", home)
    _check("device", device)
    _check("metric", metric)
    return "/".join(
        [_check_root(root), gateway_id, GATEWAY_SEGMENT, "states", home, device, metric]
    )
