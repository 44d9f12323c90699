"""The format adapters inside a running gateway: subscriptions, availability rows, metrics.

`install_adapters(gateway, settings)` builds the `AdapterRegistry` of the ``[adapters]`` section
and

- registers every enabled adapter's filters and ``adapt`` with ``gateway.add_adapter`` (the
  decoder remembers which adapter owns each topic, so paho's matcher runs once per topic);
- turns each adapter's availability report (Zigbee2MQTT ``/availability``, Tasmota ``LWT``,
  Shelly ``online``, Home Assistant ``unavailable``) into a ``devices`` row update: the report
  happens on the MQTT network thread while the message is decoded, and is queued to the writer
  ahead of that message (`MqttBridge.put_side_item`), so it is committed before the message is
  acknowledged;
- exports the adapters' counters (messages, readings, dead letters, ignored fields and topics,
  held Home Assistant states...) on the gateway's Prometheus registry, read at scrape time.

Caveat (Home Assistant statestream): a numeric state that arrives before its entity's
``device_class``/``unit_of_measurement`` is held in memory and its message is acknowledged; the
reading is stored when the attribute arrives. A gateway killed in between loses that one state
(the next state change of that entity brings it back). Closing the gap would mean holding
that message's acknowledgement across messages, which the writer's per-batch acks do not do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.adapters import AdapterRegistry, AdapterSettings, AvailabilityChange
from gateway.ingest import StateIn
from gateway.monitoring import PREFIX
from schemas.state import Availability

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.mqtt import MqttBridge

log = logging.getLogger(__name__)


class AdapterCollector(Collector):
    """The adapters' own counters as Prometheus counters (read when scraped)."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[CounterMetricFamily]:
        events = CounterMetricFamily(
            f"{PREFIX}_adapter_events",
            "format adapter events by adapter and kind (messages, readings, dead_letters, "
            "ignored_fields, ignored_topics, null_values, availability, pending...)",
            labels=["adapter", "event"],
        )
        fields = CounterMetricFamily(
            f"{PREFIX}_adapter_ignored_fields",
            "foreign fields an adapter ignored (not in its table or field_metrics), by name; "
            "at most 256 names per adapter, the rest as '<other>'",
            labels=["adapter", "field"],
        )
        for adapter in self._registry:
            # dict() of a Counter is one C-level copy: safe against the MQTT thread's updates.
            for event, count in dict(adapter.counts).items():
                events.add_metric([adapter.name, event], count)
            for name, count in dict(adapter.ignored_fields).items():
                fields.add_metric([adapter.name, name], count)
        yield events
        yield fields


class _AvailabilityRows:
    """An adapter's availability report -> a `StateIn` for the writer (MQTT network thread)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._bridge: MqttBridge | None = None

    def __call__(self, change: AvailabilityChange) -> None:
        if self._bridge is None:
            try:
                self._bridge = self._gateway.mqtt
            except RuntimeError:  # stopping: the message being decoded is not acked either
                log.warning("availability of %s dropped: the gateway is stopping", change.device)
                return
        state = Availability.ONLINE if change.online else Availability.OFFLINE
        self._bridge.put_side_item(
            StateIn(change.home, change.room, change.device, state, change.ts)
        )


def install_adapters(gateway: Gateway, settings: AdapterSettings) -> AdapterRegistry:
    """Wire every adapter enabled in `settings` into `gateway` (before it starts)."""
    registry = AdapterRegistry.from_settings(settings, on_availability=_AvailabilityRows(gateway))
    for topic_filter, adapt, name in registry.named_hooks():
        gateway.add_adapter(topic_filter, adapt, name)
    gateway.metrics.registry.register(AdapterCollector(registry))
    if len(registry):
        log.info(
            "format adapters: %s (filters %s)",
            ", ".join(a.name for a in registry),
            registry.filters(),
        )
    return registry
