"""The simulated households' days: who is in which room when, front-door events, daylight and
outdoor weather.

Everything here is a pure function of (seed, home, time): each local day has a `DayPlan` drawn
from its own seed, so every device of a home sees the same people, whatever order it is asked in.
Local time is UTC shifted by the world's ``utc_offset_hours``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from devices.layout import HomeSpec, sub_seed

DAY = 86400.0
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One household's local day; hours are local hours since that day's midnight."""

    day: int  # local days since the epoch
    weekend: bool
    wake: float
    sleep: float  # may exceed 24: bedtime after midnight belongs to this day
    away: tuple[float, float] | None  # the household is out (work, school)
    errands: tuple[tuple[float, float], ...]  # short trips out
    exercise: tuple[float, float] | None  # the wearable's owner works out (home or away)
    kettle: float  # when the kettle boils in the morning
    cloud: float  # 0 overcast .. 1 clear sky
    weather: float  # offset of the outdoor temperature from the season's mean, °C

    def out_intervals(self) -> tuple[tuple[float, float], ...]:
        return ((self.away,) if self.away else ()) + self.errands

    def is_out(self, hour: float) -> bool:
        return any(a <= hour < b for a, b in self.out_intervals())

    def is_asleep(self, hour: float) -> bool:
        # Hours before `wake` belong to last night; hours past `sleep` to tonight.
        return hour < self.wake or hour >= self.sleep


def day_plan(home: HomeSpec, seed: int, day: int) -> DayPlan:
    """The plan of `home` for local day `day`, drawn from its own seed."""
    rnd = random.Random(sub_seed(seed, home.index, day, 0xDA7))
    weekend = (day + _EPOCH_WEEKDAY) % 7 >= 5
    wake = home.wake_hour + rnd.gauss(0.0, 0.25) + (1.0 if weekend else 0.0)
    sleep = home.sleep_hour + rnd.gauss(0.0, 0.3) + (0.5 if weekend else 0.0)
    away = None
    if home.works_away and not weekend:
        leave = wake + rnd.uniform(0.8, 1.4)
        away = (leave, rnd.uniform(16.5, 18.5))
    errands: list[tuple[float, float]] = []
    if weekend or rnd.random() < 0.3:
        start = rnd.uniform(10.0, 15.0)
        if away is None or not (away[0] - 0.5 < start < away[1] + 0.5):
            errands.append((start, start + rnd.uniform(0.5, 2.0)))
    exercise = None
    if rnd.random() < 0.4:
        start = rnd.uniform(17.0, 20.0) if not weekend else rnd.uniform(9.0, 11.0)
        exercise = (start, start + rnd.uniform(0.5, 1.0))
    return DayPlan(
        day=day,
        weekend=weekend,
        wake=wake,
        sleep=sleep,
        away=away,
        errands=tuple(errands),
        exercise=exercise,
        kettle=wake + rnd.uniform(0.1, 0.4),
        cloud=rnd.uniform(0.1, 1.0),
        weather=rnd.gauss(0.0, 3.0),
    )


@dataclass(frozen=True, slots=True)
class LocalTime:
    """A timestamp seen from a home: local day number and hour of that day."""

    day: int
    hour: float
    day_of_year: float


def local_time(ts: float, utc_offset_hours: float) -> LocalTime:
    local = ts + utc_offset_hours * 3600.0
    day = math.floor(local / DAY)
    return LocalTime(day=day, hour=(local - day * DAY) / 3600.0, day_of_year=day % 365.25)


class Household:
    """Where a home's residents are over time, and what the sky does outside."""

    def __init__(self, home: HomeSpec, seed: int, utc_offset_hours: float = 0.0) -> None:
        self.home = home
        self.seed = seed
        self.utc_offset_hours = utc_offset_hours
        self._plans: dict[int, DayPlan] = {}

    def day(self, day: int) -> DayPlan:
        plan = self._plans.get(day)
        if plan is None:
            if len(self._plans) > 64:  # a long run walks forward; old days are not asked again
                self._plans.clear()
            plan = self._plans[day] = day_plan(self.home, self.seed, day)
        return plan

    def plan(self, ts: float) -> tuple[DayPlan, float]:
        """The day plan at `ts` and the local hour (of that plan's day)."""
        lt = local_time(ts, self.utc_offset_hours)
        plan = self.day(lt.day)
        if lt.hour < 3.0:
            # Early hours: yesterday's plan may still be running (bedtime after midnight).
            previous = self.day(lt.day - 1)
            if previous.sleep > 24.0 + lt.hour:
                return previous, lt.hour + 24.0
        return plan, lt.hour

    def asleep(self, ts: float) -> bool:
        plan, hour = self.plan(ts)
        return plan.is_asleep(hour)

    def home_count(self, ts: float) -> int:
        """How many residents are home."""
        plan, hour = self.plan(ts)
        return 0 if plan.is_out(hour) else self.home.residents

    def occupants(self, room: str, ts: float) -> int:
        """How many residents are in `room` at `ts`."""
        plan, hour = self.plan(ts)
        n = self.home.residents
        if plan.is_asleep(hour):
            return n if room == "bedroom" else 0
        if plan.is_out(hour):
            return 0
        meal = plan.wake <= hour < plan.wake + 0.75 or 12.25 <= hour < 13.0 or 18.5 <= hour < 19.25
        if meal:
            return n if room == "kitchen" else 0
        if room == "hallway":
            return 0
        if self.home.has_room("office") and not plan.weekend and 9.0 <= hour < 17.0:
            return {"office": 1, "living": n - 1}.get(room, 0)
        return n if room == "living" else 0

    def door_events(self, start: float, end: float) -> int:
        """Front-door openings of the household in (start, end]: leaving and coming back."""
        count = 0
        day = local_time(start, self.utc_offset_hours).day
        last = local_time(end, self.utc_offset_hours).day
        while day <= last:
            plan = self.day(day)
            midnight = day * DAY - self.utc_offset_hours * 3600.0
            for a, b in plan.out_intervals():
                for hour in (a, b):
                    if start < midnight + hour * 3600.0 <= end:
                        count += 1
            day += 1
        return count

    def exercising(self, ts: float) -> bool:
        plan, hour = self.plan(ts)
        return plan.exercise is not None and plan.exercise[0] <= hour < plan.exercise[1]

    # --- outside ------------------------------------------------------------------------------

    def daylight(self, ts: float) -> float:
        """Outdoor illuminance in lux: a half-sine between sunrise and sunset, dimmed by cloud."""
        lt = local_time(ts, self.utc_offset_hours)
        plan = self.day(lt.day)
        # Day length from 8 h (winter) to 16 h (summer), solar noon at 12:30 local.
        length = 12.0 + 4.0 * math.cos(2 * math.pi * (lt.day_of_year - 172.0) / 365.25)
        sunrise = 12.5 - length / 2
        if not sunrise < lt.hour < sunrise + length:
            return 0.0
        elevation = math.sin(math.pi * (lt.hour - sunrise) / length)
        return 60000.0 * elevation * (0.25 + 0.75 * plan.cloud)

    def outdoor_temperature(self, ts: float) -> float:
        lt = local_time(ts, self.utc_offset_hours)
        plan = self.day(lt.day)
        season = 10.0 + 9.0 * math.cos(2 * math.pi * (lt.day_of_year - 200.0) / 365.25)
        daily = 4.0 * math.cos(2 * math.pi * (lt.hour - 15.0) / 24.0)
        return season + daily + plan.weather
