"""`HomeAssistantSettings`: the ``[homeassistant]`` section of the gateway config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.homeassistant.entities import ENTITY_OF


class HomeAssistantSettings(BaseModel):
    """Home Assistant MQTT discovery of the gateway, its devices and their stored metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True,
        description="announce the gateway, its devices and their metrics to Home Assistant "
        "(retained discovery configs on the gateway's broker, never the cloud) and publish "
        "their states; false removes what an earlier run announced, at start-up",
    )
    discovery_prefix: str = Field(
        default="homeassistant",
        description="Home Assistant's discovery_prefix (its MQTT integration's setting)",
    )
    state_interval_s: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="at most one state per entity this often: a value arriving sooner waits "
        "(the latest wins) and is published when the interval is over; 0 publishes every "
        "stored reading",
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="entities whose newest value waits for its interval; beyond that the "
        "oldest waiting value is dropped and counted (ha_states{outcome=pending_full})",
    )
    metrics: list[str] | None = Field(
        default=None,
        description="metrics that get an entity; default: every one Home Assistant has a "
        "device class for (temperature, humidity, co2, light, power, energy, battery, "
        "pressure, motion, door, ...; never health data)",
    )
    adapter_devices: bool = Field(
        default=False,
        description="also announce devices that reach the gateway through an ecosystem adapter "
        "(Zigbee2MQTT, Tasmota, Shelly, ESPHome, Home Assistant's own): their ecosystem "
        "usually announces them to Home Assistant already, and a second device for each "
        "would be a duplicate; the gateway's inference entities are announced either way",
    )
    expire_after_s: int = Field(
        default=0,
        ge=0,
        description="Home Assistant shows an entity as unavailable after this long without a "
        "state (its expire_after); 0: never",
    )

    @field_validator("discovery_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if (
            not value
            or value.startswith("/")
            or value.endswith("/")
            or any(c in value for c in "+#\0")
        ):
            raise ValueError(
                f"{value!r} is not a topic prefix (non-empty, no '+', '#' or edge slashes)"
            )
        return value

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        unknown = [m for m in value if m not in ENTITY_OF]
        if unknown:
            raise ValueError(f"no Home Assistant entity for {unknown}; known: {sorted(ENTITY_OF)}")
        return value

    def announces(self, metric: str) -> bool:
        return metric in ENTITY_OF if self.metrics is None else metric in self.metrics
