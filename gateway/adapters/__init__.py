"""Format adapters: real smart-home ecosystems' MQTT payloads as homeedge readings.

`AdapterRegistry.from_settings(settings)` builds the adapters enabled in the ``[adapters]``
settings (`AdapterSettings`), in the order Zigbee2MQTT, Tasmota, Shelly, Home Assistant
discovery (on by default), Home Assistant statestream. Each is
a `gateway.ingest.TopicAdapter`: the gateway subscribes to its ``filters`` and its decoder gives
it the topics it owns (the first adapter whose filter matches a topic owns it: one rule,
`gateway.ingest.AdapterTable`, which ``registry.match`` uses too).

``adapter.adapt(topic, payload, received_at)`` never raises for bad input: it returns `Adapted`
(readings, possibly none, and availability changes) or a dead letter with a reason
(``adapter_invalid_json``, ``adapter_validation``, ``adapter_unit``, ``adapter_oversized``,
``adapter_too_deep``, ``adapter_template``), and counts in ``adapter.counts`` what it ignored
(``ignored_fields``, by name in ``adapter.ignored_fields``) and the mapped fields whose value it
could not use (``bad_fields``, by name in ``adapter.bad_fields``: skipped, the message's other
fields kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.adapters.base import AdaptResult, BaseAdapter
from gateway.adapters.ha_discovery import HaDiscoveryAdapter
from gateway.adapters.ha_statestream import HaStatestreamAdapter
from gateway.adapters.settings import AdapterSettings
from gateway.adapters.shelly import ShellyAdapter
from gateway.adapters.tasmota import TasmotaAdapter
from gateway.adapters.zigbee2mqtt import Zigbee2MqttAdapter
from gateway.ingest import Adapted, AdapterTable, AvailabilityChange

__all__ = [
    "ADAPTER_TYPES",
    "AdaptResult",
    "Adapted",
    "AdapterRegistry",
    "AdapterSettings",
    "AvailabilityChange",
    "BaseAdapter",
    "HaDiscoveryAdapter",
    "HaStatestreamAdapter",
    "ShellyAdapter",
    "TasmotaAdapter",
    "Zigbee2MqttAdapter",
]

# Adapter (and settings section) name -> adapter class, in matching priority order.
ADAPTER_TYPES: dict[str, type[BaseAdapter[Any]]] = {
    "zigbee2mqtt": Zigbee2MqttAdapter,
    "tasmota": TasmotaAdapter,
    "shelly": ShellyAdapter,
    # Before ha_statestream: with both on the default "homeassistant" prefix, the config
    # topics are discovery's (statestream's <base>/sensor/+/+ matches them too).
    "ha_discovery": HaDiscoveryAdapter,
    "ha_statestream": HaStatestreamAdapter,
}


class AdapterRegistry:
    """The enabled adapters, in matching priority order."""

    def __init__(self, adapters: list[BaseAdapter[Any]]) -> None:
        self.adapters = list(adapters)
        self._table = AdapterTable(self.adapters)

    @classmethod
    def from_settings(cls, settings: AdapterSettings) -> AdapterRegistry:
        """Build every adapter whose section has ``enabled = true``."""
        adapters: list[BaseAdapter[Any]] = []
        for adapter_type in ADAPTER_TYPES.values():
            if getattr(settings, adapter_type.name).enabled:
                adapters.append(adapter_type(settings))
        return cls(adapters)

    def __iter__(self) -> Iterator[BaseAdapter[Any]]:
        return iter(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    def filters(self) -> list[str]:
        """Every topic filter the enabled adapters need, without duplicates, in order."""
        return self._table.filters

    def match(self, topic: str) -> BaseAdapter[Any] | None:
        """The adapter that owns `topic`, or None when no enabled adapter subscribes to it."""
        owner = self._table.owner(topic)
        assert owner is None or isinstance(owner, BaseAdapter)
        return owner

    def adapt(self, topic: str, payload: bytes, received_at: float) -> AdaptResult | None:
        """Adapt through the owning adapter; None when no adapter owns `topic`."""
        adapter = self.match(topic)
        return None if adapter is None else adapter.adapt(topic, payload, received_at)
