"""`EventSink`: where the inference engine sends its events and Home Assistant discovery.

In the gateway this is the gateway's own MQTT session (`gateway.inference.wiring.HostEvents`
over `gateway.host.GatewayHost.publish`): the engine has no connection of its own, so events,
discovery, status and ingest share one client id, one availability topic and one reconnect
schedule.
"""

from __future__ import annotations

from typing import Protocol


class EventSink(Protocol):
    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue one message (QoS 1); False when it was dropped (a full queue)."""
        ...
