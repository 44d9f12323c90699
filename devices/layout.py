"""The simulated fleet's layout: homes, their households, rooms and devices, drawn from a seed.

Device ids follow ``<class>-<n>`` with hyphens (``air-quality-1``), numbered per home and class,
so `schemas.metrics.infer_device_class` recognises them. The same seed and home count always give
the same layout; adding homes keeps the earlier homes unchanged (each home has its own stream).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from schemas.metrics import DeviceClass

ROOMS = ("hallway", "living", "kitchen", "bedroom", "office")


def sub_seed(*parts: int) -> int:
    """A 64-bit seed derived from `parts` (stable across processes, unlike ``hash``)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2)[0])


def device_id(device_class: DeviceClass, n: int) -> str:
    """The id of the `n`-th device of `device_class` in a home: ``air-quality-1``."""
    return f"{device_class.value.replace('_', '-')}-{n}"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device: where it is and what it is."""

    home: str
    room: str
    device: str
    device_class: DeviceClass
    home_index: int
    index: int  # position in the home's device list; part of the device's seed


@dataclass(frozen=True, slots=True)
class HomeSpec:
    """One simulated home and the habits of its household."""

    home: str
    index: int
    residents: int
    works_away: bool  # leaves the home on weekdays
    wake_hour: float  # local hour, before the per-day jitter
    sleep_hour: float  # local hour, may exceed 24 (after midnight)
    resting_heart_rate: float  # of the wearable's owner
    devices: tuple[DeviceSpec, ...]

    @property
    def rooms(self) -> tuple[str, ...]:
        return tuple(r for r in ROOMS if any(d.room == r for d in self.devices))

    def has_room(self, room: str) -> bool:
        return any(d.room == room for d in self.devices)


# What each room may hold: (class, probability). Probabilities vary homes without making any
# home useless: every home gets a door, a thermostat, motion and a living-room microphone.
_ROOM_DEVICES: dict[str, tuple[tuple[DeviceClass, float], ...]] = {
    "hallway": ((DeviceClass.DOOR, 1.0), (DeviceClass.MOTION, 1.0)),
    "living": (
        (DeviceClass.THERMOSTAT, 1.0),
        (DeviceClass.AIR_QUALITY, 1.0),
        (DeviceClass.MOTION, 1.0),
        (DeviceClass.PLUG, 1.0),
        (DeviceClass.MICROPHONE, 1.0),
    ),
    "kitchen": (
        (DeviceClass.MOTION, 1.0),
        (DeviceClass.PLUG, 1.0),
        (DeviceClass.AIR_QUALITY, 0.5),
        (DeviceClass.MICROPHONE, 0.5),
    ),
    "bedroom": (
        (DeviceClass.THERMOSTAT, 0.7),
        (DeviceClass.AIR_QUALITY, 0.6),
        (DeviceClass.MOTION, 1.0),
        (DeviceClass.WEARABLE, 1.0),
    ),
    "office": (
        (DeviceClass.MOTION, 1.0),
        (DeviceClass.PLUG, 1.0),
        (DeviceClass.AIR_QUALITY, 0.5),
    ),
}


def home_name(index: int) -> str:
    return f"home-{index + 1:03d}"


def build_home(index: int, seed: int) -> HomeSpec:
    """Home number `index` (0-based) of the fleet drawn from `seed`."""
    rnd = random.Random(sub_seed(seed, index, 0x40E))
    home = home_name(index)
    rooms = [r for r in ROOMS if r != "office" or rnd.random() < 0.5]
    counters: dict[DeviceClass, int] = {}
    devices: list[DeviceSpec] = []
    for room in rooms:
        for device_class, p in _ROOM_DEVICES[room]:
            if rnd.random() >= p:
                continue
            counters[device_class] = counters.get(device_class, 0) + 1
            devices.append(
                DeviceSpec(
                    home=home,
                    room=room,
                    device=device_id(device_class, counters[device_class]),
                    device_class=device_class,
                    home_index=index,
                    index=len(devices),
                )
            )
    return HomeSpec(
        home=home,
        index=index,
        residents=rnd.choice((1, 2, 2, 3, 4)),
        works_away=rnd.random() < 0.7,
        wake_hour=rnd.uniform(6.0, 8.0),
        sleep_hour=rnd.uniform(22.0, 24.5),
        resting_heart_rate=rnd.uniform(52.0, 72.0),
        devices=tuple(devices),
    )


def build_layout(homes: int, seed: int) -> tuple[HomeSpec, ...]:
    """The fleet: `homes` homes drawn from `seed`."""
    if homes < 1:
        raise ValueError(f"homes must be >= 1, got {homes}")
    return tuple(build_home(i, seed) for i in range(homes))
