"""How homeedge names things in Home Assistant: ids, discovery topics and device blocks.

Pure functions, shared by the metric entities (`gateway.homeassistant.entities`) and the
inference entities (`gateway.inference.discovery`), so every config of one device carries the
same device block and every id the same shape.

- Every id starts with ``homeedge_`` and the gateway id: two gateways whose homes and devices
  have the same names announce different entities and devices (the ingest-side
  ``ha_discovery`` adapter skips configs with that prefix, so a gateway never adopts its own).
- ``unique_id`` and the device ``identifiers`` join the exact names with ``/`` (a character no
  topic segment may contain), so they are one-to-one with (gateway, home, device, entity).
- The discovery topic's node and object ids allow only ``[A-Za-z0-9_-]``: names are slugged
  (``.`` becomes ``_``) and the object id ends with 8 hex digits of the unique id's SHA-256, so
  two names that slug alike (``a.b``/``a_b``, or ``_`` split differently between home and
  device) still get two topics.
- ``default_entity_id`` (HA 2025.10+, ``<component>.<id>``) and ``object_id`` (older HA;
  deprecated since 2025.10, to stop working in 2026.4) suggest a readable entity id of
  ``[a-z0-9_]`` only; HA adds ``_2`` on a clash.
- Each homeedge device is a HA device (identifiers, name, model, its room as
  ``suggested_area``) ``via_device`` the gateway's device (model, sw_version).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any

from schemas.metrics import infer_device_class

PREFIX = "homeedge_"
MANUFACTURER = "homeedge"
GATEWAY_MODEL = "homeedge edge gateway"


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """One retained discovery message: its topic and JSON payload."""

    topic: str
    payload: bytes


def slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)


@lru_cache(maxsize=1)
def sw_version() -> str:
    try:
        return metadata.version("homeedge")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def gateway_identifier(gateway_id: str) -> str:
    return f"{PREFIX}{gateway_id}"


def device_identifier(gateway_id: str, home: str, device: str) -> str:
    return f"{PREFIX}{gateway_id}/{home}/{device}"


def unique_id(gateway_id: str, *parts: str) -> str:
    """``homeedge_<gateway>/<part>/...``: the exact names, one-to-one."""
    return "/".join([f"{PREFIX}{gateway_id}", *parts])


def entity_ids(component: str, gateway_id: str, *parts: str) -> dict[str, str]:
    """``unique_id``, ``object_id`` and ``default_entity_id`` of one entity."""
    # An entity id is lower-case letters, digits and '_' only (HA refuses a '-' in one).
    readable = re.sub(r"[^a-z0-9_]", "_", "_".join(("homeedge", gateway_id, *parts)).lower())
    return {
        "unique_id": unique_id(gateway_id, *parts),
        "object_id": readable,
        "default_entity_id": f"{component}.{readable}",
    }


def discovery_topic(prefix: str, component: str, gateway_id: str, *parts: str) -> str:
    """``<prefix>/<component>/homeedge_<gateway>/<parts>_<digest>/config``."""
    digest = hashlib.sha256(unique_id(gateway_id, *parts).encode()).hexdigest()[:8]
    obj = "_".join([*(slug(p) for p in parts), digest])
    return f"{prefix}/{component}/{slug(PREFIX + gateway_id)}/{obj}/config"


def gateway_device(gateway_id: str) -> dict[str, Any]:
    """The gateway's own HA device."""
    return {
        "identifiers": [gateway_identifier(gateway_id)],
        "name": f"homeedge gateway {gateway_id}",
        "manufacturer": MANUFACTURER,
        "model": GATEWAY_MODEL,
        "sw_version": sw_version(),
    }


def device_block(gateway_id: str, home: str, room: str, device: str) -> dict[str, Any]:
    """The HA device of one homeedge device, reached through the gateway's device."""
    return {
        "identifiers": [device_identifier(gateway_id, home, device)],
        "name": device,
        "manufacturer": MANUFACTURER,
        "model": infer_device_class(device).value,
        "suggested_area": room,
        "via_device": gateway_identifier(gateway_id),
    }


def availability(status_topic: str | None) -> dict[str, Any]:
    """The gateway's retained status topic as the entity's availability (none without one)."""
    if status_topic is None:
        return {}
    return {
        "availability_topic": status_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def origin() -> dict[str, Any]:
    return {"name": "homeedge", "sw_version": sw_version()}
