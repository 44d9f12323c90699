"""`EventSink`: where the inference engine sends its events and Home Assistant discovery.

In the gateway this is the gateway's own MQTT session (`gateway.inference.wiring.HostEvents`
over `gateway.host.GatewayHost.publish`): the engine has no connection of its own, so events,
discovery, status and ingest share one client id, one availability topic and one reconnect
schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.homeassistant.naming import DiscoveryConfig


class EventSink(Protocol):
    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue one message (QoS 1); False when it was dropped (a full queue)."""
        ...


class DiscoverySink(Protocol):
    """Where the engine's Home Assistant discovery configs go: in the gateway, the Home
    Assistant plug-in's `gateway.homeassistant.wiring.Announcer` (retained on the gateway's
    session, recorded so that they can be removed)."""

    @property
    def gateway_id(self) -> str: ...

    @property
    def prefix(self) -> str:
        """Home Assistant's discovery prefix."""
        ...

    def announce(self, home: str, device: str, configs: Sequence[DiscoveryConfig]) -> bool:
        """Queue the retained configs of a device ('' for a room's); False when one was
        dropped (try again later)."""
        ...

    def has(self, home: str, device: str, topic: str) -> bool:
        """True while the config on `topic` of the device is announced (False again once
        removed, although the device's other configs may have been announced anew since)."""
        ...
