"""The format adapters inside a running gateway: subscriptions, availability rows, metrics.

`install_adapters(host, settings)` builds the `AdapterRegistry` of the ``[adapters]`` section
and

- hands every enabled adapter to ``host.add_adapter``: the gateway subscribes to its filters and
  its decoder gives it the topics it owns (the route of each topic is remembered, so the
  filters are matched once per topic);
- each adapter's availability report (Zigbee2MQTT ``/availability``, Tasmota ``LWT``, Shelly
  ``online``, Home Assistant ``unavailable``, discovered availability topics) comes back with
  its message's result, and the decoder turns it into a ``devices`` row update queued to the
  writer ahead of that message, so it is committed no later than the message is acknowledged;
- exports the adapters' counters on the gateway's Prometheus registry, read at scrape time:
  ``homeedge_gateway_adapter_events_total{adapter, event}`` is every key of each adapter's
  ``counts`` (messages, readings = mapped readings, ignored_fields, bad_fields, dead_letters,
  ignored_topics, null_values, availability, and whatever an adapter adds, e.g. held Home
  Assistant states or template errors: a new key needs no change here), and
  ``..._adapter_ignored_fields_total`` / ``..._adapter_bad_fields_total{adapter, field}`` name
  the fields.

Caveat (Home Assistant statestream): a numeric state that arrives before its entity's
``device_class``/``unit_of_measurement`` is held in memory and its message is acknowledged; the
reading is stored when the attribute arrives. A gateway killed in between loses that one state
(the next state change of that entity brings it back). Closing the gap would mean holding
that message's acknowledgement across messages, which the writer's per-batch acks do not do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.adapters import AdapterRegistry, AdapterSettings
from gateway.host import GatewayHost
from gateway.monitoring import PREFIX

log = logging.getLogger(__name__)


class AdapterCollector(Collector):
    """The adapters' own counters as Prometheus counters (read when scraped)."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[CounterMetricFamily]:
        events = CounterMetricFamily(
            f"{PREFIX}_adapter_events",
            "format adapter events by adapter and kind (messages, readings: mapped readings, "
            "ignored_fields, bad_fields, dead_letters, ignored_topics, null_values, "
            "availability, and each adapter's own kinds)",
            labels=["adapter", "event"],
        )
        fields = CounterMetricFamily(
            f"{PREFIX}_adapter_ignored_fields",
            "foreign fields an adapter ignored (not in its table or field_metrics), by name; "
            "at most 256 names per adapter, the rest as '<other>'",
            labels=["adapter", "field"],
        )
        bad = CounterMetricFamily(
            f"{PREFIX}_adapter_bad_fields",
            "mapped foreign fields whose value was unusable (skipped; the message's other "
            "fields kept), by name; at most 256 names per adapter, the rest as '<other>'",
            labels=["adapter", "field"],
        )
        for adapter in self._registry:
            # dict() of a Counter is one C-level copy: safe against the MQTT thread's updates.
            for event, count in dict(adapter.counts).items():
                events.add_metric([adapter.name, event], count)
            for name, count in dict(adapter.ignored_fields).items():
                fields.add_metric([adapter.name, name], count)
            for name, count in dict(adapter.bad_fields).items():
                bad.add_metric([adapter.name, name], count)
        yield events
        yield fields
        yield bad


def install_adapters(host: GatewayHost, settings: AdapterSettings) -> AdapterRegistry:
    """Wire every adapter enabled in `settings` into the gateway (before it starts)."""
    registry = AdapterRegistry.from_settings(settings)
    for adapter in registry:
        host.add_adapter(adapter)
    host.registry.register(AdapterCollector(registry))
    if len(registry):
        log.info(
            "format adapters: %s (filters %s)",
            ", ".join(a.name for a in registry),
            registry.filters(),
        )
    return registry
