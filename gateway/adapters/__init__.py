"""Format adapters: real smart-home ecosystems' MQTT payloads as homeedge readings.

`AdapterRegistry.from_settings(settings)` builds the adapters enabled in the ``[adapters]``
settings (`AdapterSettings`). The ingest path then needs two things from it:

- ``registry.filters()``: the MQTT filters to subscribe to, besides homeedge's own topics;
- ``registry.hooks()``: ``[(topic_filter, adapt)]`` where
  ``adapt(topic: str, payload: bytes, received_at: float) -> list[Reading] | DeadLetter``;
  or, equivalently, ``registry.match(topic)`` -> the adapter whose filters match, or None.

The first adapter (in the order Zigbee2MQTT, Tasmota, Shelly, Home Assistant) whose filter
matches a topic owns it. An ``adapt`` call never raises for bad input; it returns a dead letter
with a reason (``adapter_invalid_json``, ``adapter_validation``, ``adapter_unit``,
``adapter_oversized``) and counts in ``adapter.counts`` what it ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from gateway.adapters.base import (
    AdaptFn,
    AdaptResult,
    AvailabilityChange,
    BaseAdapter,
    TopicFilters,
)
from gateway.adapters.ha_statestream import HaStatestreamAdapter
from gateway.adapters.settings import AdapterSettings
from gateway.adapters.shelly import ShellyAdapter
from gateway.adapters.tasmota import TasmotaAdapter
from gateway.adapters.zigbee2mqtt import Zigbee2MqttAdapter

__all__ = [
    "ADAPTER_TYPES",
    "AdaptFn",
    "AdaptResult",
    "AdapterRegistry",
    "AdapterSettings",
    "AvailabilityChange",
    "BaseAdapter",
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
    "ha_statestream": HaStatestreamAdapter,
}


class AdapterRegistry:
    """The enabled adapters and the dispatch from a topic to the one that owns it."""

    def __init__(self, adapters: list[BaseAdapter[Any]]) -> None:
        self.adapters = list(adapters)
        pairs = [(f, adapter) for adapter in self.adapters for f in adapter.filters]
        self._filters = TopicFilters(f for f, _ in pairs)
        self._owners = [adapter for _, adapter in pairs]

    @classmethod
    def from_settings(
        cls,
        settings: AdapterSettings,
        *,
        on_availability: Callable[[AvailabilityChange], None] | None = None,
    ) -> AdapterRegistry:
        """Build every adapter whose section has ``enabled = true``."""
        adapters: list[BaseAdapter[Any]] = []
        for adapter_type in ADAPTER_TYPES.values():
            if getattr(settings, adapter_type.name).enabled:
                adapters.append(adapter_type(settings, on_availability=on_availability))
        return cls(adapters)

    def __iter__(self) -> Iterator[BaseAdapter[Any]]:
        return iter(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    def filters(self) -> list[str]:
        """Every topic filter the enabled adapters need, without duplicates, in order."""
        return list(dict.fromkeys(f for adapter in self.adapters for f in adapter.filters))

    def hooks(self) -> list[tuple[str, AdaptFn]]:
        """``(topic filter, adapt)`` pairs in matching priority order."""
        return [(f, adapter.adapt) for adapter in self.adapters for f in adapter.filters]

    def named_hooks(self) -> list[tuple[str, AdaptFn, str]]:
        """``(topic filter, adapt, adapter name)``, for ``Gateway.add_adapter``."""
        return [
            (f, adapter.adapt, adapter.name) for adapter in self.adapters for f in adapter.filters
        ]

    def match(self, topic: str) -> BaseAdapter[Any] | None:
        """The adapter that owns `topic`, or None when no enabled adapter subscribes to it."""
        index = self._filters.first(topic)
        return None if index < 0 else self._owners[index]

    def adapt(self, topic: str, payload: bytes, received_at: float) -> AdaptResult | None:
        """Adapt through the owning adapter; None when no adapter owns `topic`."""
        adapter = self.match(topic)
        return None if adapter is None else adapter.adapt(topic, payload, received_at)
