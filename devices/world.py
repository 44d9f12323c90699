"""The simulated world: a seeded fleet of homes whose devices produce messages for any time.

This is the generator's public face, free of MQTT, for the fleet publisher, tests, benchmarks
and model training::

    world = World(homes=20, seed=7)
    for emission in world.run(start=1764403200.0, step=60.0, steps=1440):  # one day, per minute
        emission.topic("homeedge"), emission.payload   # what a device would publish
        emission.readings or emission.label            # what it means
        emission.truth                                 # injected anomalies / sound events

Same seed, same arguments: same emissions, byte for byte (`seq_base` aside, which the fleet sets
from the wall clock so a restarted fleet's sequence numbers keep growing).
"""

from __future__ import annotations

from collections.abc import Iterator

from devices.audio import ClipSet
from devices.climate import RoomClimate
from devices.layout import DeviceSpec, HomeSpec, build_layout
from devices.occupancy import Household
from devices.sensors import MODEL_CLASSES, DeviceModel, Emission, ModelContext


class World:
    """Homes, their households and rooms, and one model per device."""

    def __init__(
        self,
        *,
        homes: int = 1,
        seed: int = 0,
        anomaly_rate: float = 0.5,
        utc_offset_hours: float = 0.0,
        frame_seconds: float = 0.5,
        clips: ClipSet | None = None,
        seq_base: int = 0,
    ) -> None:
        """`anomaly_rate`: injected faults per device per simulated day (0 disables them).
        `frame_seconds`: length of a microphone's audio frame (at most 2 s, the schema's cap)."""
        if not 0.0 < frame_seconds <= 2.0:
            raise ValueError(f"frame_seconds must be in (0, 2], got {frame_seconds}")
        if anomaly_rate < 0:
            raise ValueError(f"anomaly_rate must be >= 0, got {anomaly_rate}")
        self.seed = seed
        self.homes: tuple[HomeSpec, ...] = build_layout(homes, seed)
        self.households = {
            h.home: Household(h, seed, utc_offset_hours=utc_offset_hours) for h in self.homes
        }
        self._climates: dict[tuple[str, str], RoomClimate] = {}
        self._models: dict[tuple[str, str], DeviceModel] = {}
        for home in self.homes:
            for spec in home.devices:
                ctx = ModelContext(
                    household=self.households[home.home],
                    climate=self.climate(home.home, spec.room),
                    seed=seed,
                    anomaly_rate=anomaly_rate,
                    seq_base=seq_base,
                    frame_seconds=frame_seconds,
                    clips=clips,
                )
                self._models[(home.home, spec.device)] = MODEL_CLASSES[spec.device_class](spec, ctx)

    @property
    def devices(self) -> tuple[DeviceSpec, ...]:
        return tuple(m.spec for m in self._models.values())

    @property
    def models(self) -> tuple[DeviceModel, ...]:
        return tuple(self._models.values())

    def model(self, home: str, device: str) -> DeviceModel:
        return self._models[(home, device)]

    def household(self, home: str) -> Household:
        return self.households[home]

    def climate(self, home: str, room: str) -> RoomClimate:
        key = (home, room)
        climate = self._climates.get(key)
        if climate is None:
            climate = self._climates[key] = RoomClimate(self.households[home], room)
        return climate

    def run(self, *, start: float, step: float, steps: int) -> Iterator[Emission]:
        """Every device's message at ``start + i * step`` for i in range(steps), time-ordered."""
        if step <= 0:
            raise ValueError(f"step must be > 0, got {step}")
        models = self.models
        for i in range(steps):
            ts = start + i * step
            for model in models:
                yield model.next(ts)
