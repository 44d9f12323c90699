"""Per-device stream state of the engine, keyed by (home, device): each microphone's
`AudioStream`, alarm debouncer and running speech summary, and each sensor's `SensorStream` and
last occupancy decision.

Only the inference thread touches it. A device's room is refreshed from its newest input (a
device moved to another room keeps its stream).

Bounded (`DeviceLimits`, the gateway's ``[devices]`` section): a device with no input for
``idle_s`` is evicted, and beyond ``max_devices`` sensors or ``max_microphones`` microphones
the least recently used one is, whether idle or not (a backstop: the decoder's admission
already keeps the gateway's devices under those numbers). `evict` hands the evicted state to
the caller, which scores what it still holds (a sensor's open window, a microphone's partial
speech summary) before it is dropped. A sensor's learned baseline outlives its eviction when the
engine persists baselines (`gateway.inference.baselines`): `restore` gives a device seen for the
first time its stored state; without one it is learned again from its next windows.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.inference.audio import AlarmDebouncer, AudioStream
from gateway.inference.priors import FleetPriors, MetricPrior
from gateway.inference.runtime import LoadedModel
from gateway.inference.sensors import SensorStream
from gateway.inference.settings import InferenceSettings


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """How much per-device state the engine keeps (from the gateway's ``[devices]``)."""

    idle_s: float = 86400.0
    max_devices: int = 2000
    max_microphones: int = 64


@dataclass(slots=True)
class Microphone:
    home: str
    room: str
    device: str
    stream: AudioStream = field(default_factory=AudioStream)
    debouncer: AlarmDebouncer | None = None
    speech_start: float | None = None
    speech_end: float | None = None
    speech_blocks: int = 0
    speech_hits: int = 0
    used: float = 0.0  # the clock of its last input


@dataclass(slots=True)
class Sensor:
    home: str
    room: str
    device: str
    stream: SensorStream
    occupied: bool | None = None
    used: float = 0.0
    # Fleet priors of its room class, for a device without a stored baseline (seeded metric by
    # metric as it reports them, `gateway.inference.priors`); None: learned from scratch.
    priors: Mapping[str, MetricPrior] | None = None


@dataclass(frozen=True, slots=True)
class Evicted:
    """State `DeviceStreams.evict` dropped, for the scorers to flush."""

    sensors: list[Sensor]
    microphones: list[Microphone]

    def __bool__(self) -> bool:
        return bool(self.sensors or self.microphones)


class DeviceStreams:
    """The registry: a device's state is made at its first input, kept in least recently used
    order and evicted by `evict` (see the module docstring)."""

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        alarm: LoadedModel | None,
        limits: DeviceLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        restore: Callable[[str, str], SensorStream | None] | None = None,
        priors: FleetPriors | None = None,
        room_class: Callable[[str], str] | None = None,
    ) -> None:
        """`restore(home, device)`: a new sensor's stored stream, or None to start fresh;
        `priors` start such a fresh stream from the fleet's levels for its room's class
        (`room_class(room)`)."""
        self._settings = settings
        self.priors = priors
        self._room_class = room_class
        self._restore = restore
        self._alarm = alarm  # its thresholds set each microphone's debouncer
        self.limits = limits or DeviceLimits()
        self._clock = clock
        self.microphones: OrderedDict[tuple[str, str], Microphone] = OrderedDict()
        self.sensors: OrderedDict[tuple[str, str], Sensor] = OrderedDict()

    def set_alarm(self, alarm: LoadedModel | None) -> None:
        """A new alarm model (a swap): its thresholds for new microphones and, where a
        microphone has a debouncer already, for it too (its hold-off state stays)."""
        self._alarm = alarm
        if alarm is None:
            return
        t = alarm.manifest.thresholds
        for mic in self.microphones.values():
            if mic.debouncer is not None:
                mic.debouncer.threshold = t.get("threshold", 0.8)
                mic.debouncer.cooldown_s = t.get("cooldown_s", 3.5)

    def microphone(self, home: str, room: str, device: str) -> Microphone:
        key = (home, device)
        mic = self.microphones.get(key)
        if mic is None:
            deb = None
            if self._alarm is not None:
                t = self._alarm.manifest.thresholds
                deb = AlarmDebouncer(t.get("threshold", 0.8), t.get("cooldown_s", 3.5))
            mic = self.microphones[key] = Microphone(home, room, device, debouncer=deb)
        else:
            self.microphones.move_to_end(key)
        mic.room = room
        mic.used = self._clock()
        return mic

    def sensor(self, home: str, room: str, device: str) -> Sensor:
        key = (home, device)
        sensor = self.sensors.get(key)
        if sensor is None:
            stream = self._restore(home, device) if self._restore is not None else None
            if stream is None:
                s = self._settings
                stream = SensorStream(
                    s.sensor_window_s,
                    baseline_s=s.baseline_hours * 3600.0,
                    warmup_s=s.warmup_hours * 3600.0,
                    relearn_s=s.relearn_hours * 3600.0,
                )
                sensor = self.sensors[key] = Sensor(home, room, device, stream)
                if self.priors is not None and self._room_class is not None:
                    sensor.priors = self.priors.of_class(self._room_class(room)) or None
            else:
                sensor = self.sensors[key] = Sensor(home, room, device, stream)
        else:
            self.sensors.move_to_end(key)
        sensor.room = room
        sensor.used = self._clock()
        return sensor

    def evict(self) -> Evicted:
        """Drop the idle devices and those beyond the limits; O(1) when there are none."""
        cutoff = self._clock() - self.limits.idle_s
        return Evicted(
            _evict(self.sensors, cutoff, self.limits.max_devices),
            _evict(self.microphones, cutoff, self.limits.max_microphones),
        )


S = TypeVar("S", Sensor, Microphone)


def _evict(table: OrderedDict[tuple[str, str], S], cutoff: float, limit: int) -> list[S]:
    out: list[S] = []
    while table:
        key, state = next(iter(table.items()))
        if state.used > cutoff and len(table) <= limit:
            break
        del table[key]
        out.append(state)
    return out
