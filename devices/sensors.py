"""Device models: what each class of simulated device reports at a given time.

A model is asked for its next message with ``model.next(ts)`` (simulated Unix seconds,
non-decreasing) and returns an `Emission`: the encoded payload (from `schemas`), the readings
or audio label behind it, and any ground truth that began with it. Models know nothing about
MQTT. Each has its own random streams from the world's seed, so the same seed and the same
sequence of times give the same emissions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from devices.anomalies import AnomalyInjector, GroundTruth
from devices.audio import BACKGROUND, AudioSynth, ClipSet, Samples
from devices.climate import RoomClimate
from devices.layout import DeviceSpec, sub_seed
from devices.occupancy import Household
from schemas.audio import SAMPLE_RATE, encode_audio_frame
from schemas.metrics import DeviceClass
from schemas.metrics import metric as registry_metric
from schemas.telemetry import encode_telemetry
from schemas.topics import ROOT, Kind, device_topic

_AUDIO_SEQ_MOD = 2**32  # the audio header's seq is a u32
_DECIMALS = {"co2": 0, "light": 1, "power": 1, "energy": 4, "heart_rate": 0, "battery": 1}


@dataclass(frozen=True, slots=True)
class Emission:
    """One message a device sends: payload plus what it means."""

    spec: DeviceSpec
    kind: Kind
    ts: float
    seq: int
    payload: bytes
    readings: Mapping[str, float] | None = None  # telemetry
    samples: Samples | None = None  # audio
    label: str | None = None  # audio scene
    truth: tuple[GroundTruth, ...] = field(default=())  # events that began with this message

    def topic(self, root: str = ROOT) -> str:
        return device_topic(self.spec.home, self.spec.room, self.spec.device, self.kind, root=root)


def _finish(name: str, value: float) -> float:
    entry = registry_metric(name)
    if entry is not None:
        value = min(entry.high, max(entry.low, value))
    return round(value, _DECIMALS.get(name, 2))


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a device model needs from its world."""

    household: Household
    climate: RoomClimate  # of the device's room
    seed: int
    anomaly_rate: float  # faults per device per simulated day
    seq_base: int = 0
    frame_seconds: float = 0.5
    clips: ClipSet | None = None


class DeviceModel:
    """Base class: sequence numbers, time steps and the anomaly injector."""

    kind = Kind.TELEMETRY

    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        self.spec = spec
        self.household = ctx.household
        self.climate = ctx.climate
        self.rnd = random.Random(sub_seed(ctx.seed, spec.home_index, spec.index, 1))
        self.injector = AnomalyInjector(
            home=spec.home,
            room=spec.room,
            device=spec.device,
            seed=sub_seed(ctx.seed, spec.home_index, spec.index, 2),
            rate_per_day=ctx.anomaly_rate,
        )
        self.seq = ctx.seq_base
        self.last_ts: float | None = None

    def _dt(self, ts: float) -> float:
        """Simulated seconds since the previous message (a minute for the first)."""
        dt = 60.0 if self.last_ts is None else max(0.0, ts - self.last_ts)
        self.last_ts = ts
        return dt

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        """The true (anomaly-free, unrounded) readings at `ts`."""
        raise NotImplementedError

    def next(self, ts: float) -> Emission:
        dt = self._dt(ts)
        raw = self.readings(ts, dt)
        faulty, started = self.injector.apply(ts, dt, raw)
        values = {name: _finish(name, value) for name, value in faulty.items()}
        seq = self.seq
        self.seq += 1
        return Emission(
            spec=self.spec,
            kind=Kind.TELEMETRY,
            ts=ts,
            seq=seq,
            payload=encode_telemetry(ts, values, seq),
            readings=values,
            truth=(started,) if started else (),
        )


class Battery:
    """A battery draining slowly (a coin cell lasts about a year)."""

    def __init__(self, rnd: random.Random, drain_per_hour: float) -> None:
        self.level = rnd.uniform(35.0, 100.0)
        self.drain_per_hour = drain_per_hour * rnd.uniform(0.7, 1.3)

    def step(self, dt: float) -> float:
        self.level = max(0.0, self.level - self.drain_per_hour * dt / 3600.0)
        return self.level


class ThermostatModel(DeviceModel):
    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        self.bias = self.rnd.gauss(0.0, 0.3)  # each unit's calibration differs a little

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        return {
            "temperature": self.climate.temperature(ts) + self.bias + self.rnd.gauss(0.0, 0.08),
            "humidity": self.climate.humidity(ts) + self.rnd.gauss(0.0, 0.6),
        }


class AirQualityModel(ThermostatModel):
    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        self.battery = Battery(self.rnd, 0.02)

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        out = super().readings(ts, dt)
        out["co2"] = self.climate.co2(ts) * (1.0 + self.rnd.gauss(0.0, 0.02))
        out["battery"] = self.battery.step(dt)
        return out


class MotionModel(DeviceModel):
    """Motion (anything in the interval since the last report) and the light level."""

    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        self.battery = Battery(self.rnd, 0.01)

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        hh = self.household
        if self.spec.room == "hallway":
            # People pass through the hallway now and then, and whenever the front door opens.
            rate = hh.home_count(ts) * (0.0 if hh.asleep(ts) else 1 / 1200.0)
            passes = hh.door_events(ts - dt, ts)
        else:
            people = hh.occupants(self.spec.room, ts)
            rate = people * (1 / 2400.0 if hh.asleep(ts) else 1 / 90.0)
            passes = 0
        moved = passes > 0 or self.rnd.random() < 1.0 - math.exp(-rate * dt)
        light = self.climate.light(ts) * (1.0 + self.rnd.gauss(0.0, 0.03))
        return {"motion": 1.0 if moved else 0.0, "light": light, "battery": self.battery.step(dt)}


class DoorModel(DeviceModel):
    """The front door: 1 when it opened since the last report."""

    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        self.battery = Battery(self.rnd, 0.01)

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        hh = self.household
        opened = hh.door_events(ts - dt, ts) > 0
        # Deliveries, bins, a neighbour: occasional openings while someone is up and home.
        if not opened and hh.home_count(ts) and not hh.asleep(ts):
            opened = self.rnd.random() < 1.0 - math.exp(-dt / (4 * 3600.0))
        return {"door": 1.0 if opened else 0.0, "battery": self.battery.step(dt)}


class PlugModel(DeviceModel):
    """A smart plug: its appliance depends on the room (fridge + kettle, TV, desk)."""

    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        rnd = self.rnd
        self.energy = rnd.uniform(5.0, 500.0)
        self.cycle_s = rnd.uniform(35.0, 50.0) * 60.0
        self.duty = rnd.uniform(0.3, 0.45)
        self.phase = rnd.uniform(0.0, self.cycle_s)
        self.running_w = rnd.uniform(80.0, 140.0)
        self.kettle_w = rnd.uniform(1800.0, 2200.0)
        self.appliance_w = rnd.uniform(60.0, 140.0)

    def power(self, ts: float) -> float:
        hh = self.household
        room = self.spec.room
        if room == "kitchen":
            # The fridge's compressor cycles on and off all day; the kettle boils after waking.
            on = (ts + self.phase) % self.cycle_s < self.duty * self.cycle_s
            watts = self.running_w if on else 3.0
            plan, hour = hh.plan(ts)
            if 0.0 <= hour - plan.kettle < 4 / 60 and not plan.is_out(hour):
                watts += self.kettle_w
            return watts
        people = hh.occupants(room, ts)
        if people and not hh.asleep(ts):
            return self.appliance_w * (1.0 + 0.5 * math.sin(ts / 700.0))
        return 0.8  # standby

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        watts = max(0.0, self.power(ts) * (1.0 + self.rnd.gauss(0.0, 0.02)))
        self.energy += watts * dt / 3.6e6
        return {"power": watts, "energy": self.energy}


class WearableModel(DeviceModel):
    """A wrist wearable: heart rate at rest, asleep, out, exercising; charged every morning."""

    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        self.rest = ctx.household.home.resting_heart_rate
        self.heart = self.rest
        self.battery = self.rnd.uniform(40.0, 100.0)

    def _target(self, ts: float) -> float:
        hh = self.household
        if hh.exercising(ts):
            return self.rest + 85.0
        if hh.asleep(ts):
            return self.rest - 6.0
        return self.rest + (15.0 if hh.home_count(ts) == 0 else 8.0)

    def readings(self, ts: float, dt: float) -> dict[str, float]:
        plan, hour = self.household.plan(ts)
        charging = plan.wake <= hour < plan.wake + 1.0
        if charging:
            self.battery = min(100.0, self.battery + 45.0 * dt / 3600.0)
            return {"battery": self.battery}
        self.battery = max(0.0, self.battery - 1.2 * dt / 3600.0)
        # An Ornstein-Uhlenbeck walk around the activity's target (exact update for any dt).
        decay = math.exp(-dt / 180.0)
        target = self._target(ts)
        self.heart = target + (self.heart - target) * decay
        self.heart += 4.0 * math.sqrt(1.0 - decay * decay) * self.rnd.gauss(0.0, 1.0)
        return {"heart_rate": self.heart, "battery": self.battery}


class MicrophoneModel(DeviceModel):
    """A microphone: one audio frame per message; its room's occupancy picks the scene.

    A sound's ground truth is logged with the frame that ends it (a clip may span frames):
    `start` is the first frame's ts, `end` the last frame's ts plus its length."""

    kind = Kind.AUDIO

    def __init__(self, spec: DeviceSpec, ctx: ModelContext) -> None:
        super().__init__(spec, ctx)
        rng = np.random.default_rng(sub_seed(ctx.seed, spec.home_index, spec.index, 3))
        self.synth = AudioSynth(rng, frame_seconds=ctx.frame_seconds, clips=ctx.clips)
        self._sound_start: float | None = None

    def next(self, ts: float) -> Emission:
        self._dt(ts)
        hh = self.household
        occupied = hh.occupants(self.spec.room, ts) > 0 and not hh.asleep(ts)
        out = self.synth.frame(occupied)
        seq = self.seq % _AUDIO_SEQ_MOD
        self.seq += 1
        if out.started or self._sound_start is None:
            self._sound_start = ts
        truth: tuple[GroundTruth, ...] = ()
        single = not out.started and not out.finished and self.synth.playing is None
        if out.label not in BACKGROUND and (out.finished or single):
            truth = (
                GroundTruth(
                    home=self.spec.home,
                    room=self.spec.room,
                    device=self.spec.device,
                    metric="audio",
                    start=self._sound_start,
                    end=ts + len(out.samples) / SAMPLE_RATE,
                    kind=out.label,
                ),
            )
        if self.synth.playing is None:
            self._sound_start = None
        return Emission(
            spec=self.spec,
            kind=Kind.AUDIO,
            ts=ts,
            seq=seq,
            payload=encode_audio_frame(ts, seq, out.samples),
            samples=out.samples,
            label=out.label,
            truth=truth,
        )


MODEL_CLASSES: Mapping[DeviceClass, type[DeviceModel]] = {
    DeviceClass.THERMOSTAT: ThermostatModel,
    DeviceClass.AIR_QUALITY: AirQualityModel,
    DeviceClass.MOTION: MotionModel,
    DeviceClass.DOOR: DoorModel,
    DeviceClass.PLUG: PlugModel,
    DeviceClass.WEARABLE: WearableModel,
    DeviceClass.MICROPHONE: MicrophoneModel,
}
