"""Per-device stream state of the engine, keyed by (home, device): each microphone's
`AudioStream`, alarm debouncer and running speech summary, and each sensor's `SensorStream` and
last occupancy decision.

Only the inference thread touches it. A device's room is refreshed from its newest input (a
device moved to another room keeps its stream)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.inference.audio import AlarmDebouncer, AudioStream
from gateway.inference.runtime import LoadedModel
from gateway.inference.sensors import SensorStream
from gateway.inference.settings import InferenceSettings


@dataclass
class Microphone:
    home: str
    room: str
    device: str
    stream: AudioStream = field(default_factory=AudioStream)
    debouncer: AlarmDebouncer | None = None
    speech_start: float | None = None
    speech_blocks: int = 0
    speech_hits: int = 0


@dataclass
class Sensor:
    home: str
    room: str
    device: str
    stream: SensorStream
    occupied: bool | None = None


class DeviceStreams:
    """The registry: a device's state is made at its first input and kept for the process."""

    def __init__(self, settings: InferenceSettings, *, alarm: LoadedModel | None) -> None:
        self._settings = settings
        self._alarm = alarm  # its thresholds set each microphone's debouncer
        self.microphones: dict[tuple[str, str], Microphone] = {}
        self.sensors: dict[tuple[str, str], Sensor] = {}

    def microphone(self, home: str, room: str, device: str) -> Microphone:
        mic = self.microphones.get((home, device))
        if mic is None:
            deb = None
            if self._alarm is not None:
                t = self._alarm.manifest.thresholds
                deb = AlarmDebouncer(t.get("threshold", 0.8), t.get("cooldown_s", 3.5))
            mic = self.microphones[(home, device)] = Microphone(home, room, device, debouncer=deb)
        mic.room = room
        return mic

    def sensor(self, home: str, room: str, device: str) -> Sensor:
        sensor = self.sensors.get((home, device))
        if sensor is None:
            s = self._settings
            stream = SensorStream(s.sensor_window_s, s.baseline_windows)
            sensor = self.sensors[(home, device)] = Sensor(home, room, device, stream)
        sensor.room = room
        return sensor
