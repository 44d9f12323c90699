"""Indoor physics of one room: temperature, CO2, humidity and illuminance over time.

Pure functions of time (given the household): values live on a 5-minute grid aligned to the
epoch and are interpolated in between. A grid value is a weighted sum over the past hours (an
exponential response to heating, sun and people), so it does not depend on the order or spacing
of the calls: a thermostat and an air-quality sensor in the same room agree.
"""

from __future__ import annotations

import math

from devices.occupancy import Household

GRID = 300.0  # seconds between grid points
_TEMP_TAU = 90 * 60.0  # how fast a room follows its heating/solar target
_CO2_TAU = 60 * 60.0  # air exchange time constant
_WINDOW = 48  # grid points summed: 4 h, where exp(-4h/tau) is negligible for CO2
OUTDOOR_CO2 = 420.0
_CO2_PER_PERSON_MIN = {"bedroom": 10.0, "office": 9.0}  # ppm per person-minute (small rooms)
_DAYLIGHT_FACTOR = {
    "living": 0.012,
    "kitchen": 0.008,
    "bedroom": 0.006,
    "office": 0.010,
    "hallway": 0.003,
}
_LAMP_LUX = {"living": 280.0, "kitchen": 350.0, "bedroom": 180.0, "office": 400.0, "hallway": 150.0}

_TEMP_WEIGHTS = [math.exp(-k * GRID / _TEMP_TAU) for k in range(_WINDOW)]
_TEMP_NORM = sum(_TEMP_WEIGHTS)
_CO2_WEIGHTS = [math.exp(-k * GRID / _CO2_TAU) for k in range(_WINDOW)]


class RoomClimate:
    """The indoor climate of one room of one household."""

    def __init__(self, household: Household, room: str) -> None:
        self.household = household
        self.room = room
        self._targets: dict[int, tuple[float, int]] = {}
        self._grid: dict[int, tuple[float, float]] = {}

    def setpoint(self, ts: float) -> float:
        """The heating setpoint: comfortable when someone is up and home, set back otherwise."""
        if self.household.home_count(ts) == 0:
            return 17.0
        return 18.0 if self.household.asleep(ts) else 21.0

    def _target(self, g: int) -> tuple[float, int]:
        """(temperature the room tends to, occupants) at grid point `g`."""
        hit = self._targets.get(g)
        if hit is None:
            ts = g * GRID
            people = self.household.occupants(self.room, ts)
            outdoor = self.household.outdoor_temperature(ts)
            # Heating holds the setpoint; in warm weather the house floats above the outside.
            base = max(self.setpoint(ts), outdoor + 4.0)
            solar = 1.5 * self.household.daylight(ts) / 60000.0
            hit = (base + solar + 0.3 * people, people)
            self._targets[g] = hit
        return hit

    def _at_grid(self, g: int) -> tuple[float, float]:
        hit = self._grid.get(g)
        if hit is None:
            if len(self._grid) > 20000:  # bounded: runs walk forward in time
                self._grid.clear()
                self._targets.clear()
            temp = 0.0
            co2 = 0.0
            per_min = _CO2_PER_PERSON_MIN.get(self.room, 7.0)
            for k in range(_WINDOW):
                target, people = self._target(g - k)
                temp += _TEMP_WEIGHTS[k] * target
                co2 += _CO2_WEIGHTS[k] * people * per_min * (GRID / 60.0)
            hit = (temp / _TEMP_NORM, OUTDOOR_CO2 + co2)
            self._grid[g] = hit
        return hit

    def _interpolate(self, ts: float) -> tuple[float, float]:
        g = math.floor(ts / GRID)
        frac = ts / GRID - g
        t0, c0 = self._at_grid(g)
        t1, c1 = self._at_grid(g + 1)
        return t0 + (t1 - t0) * frac, c0 + (c1 - c0) * frac

    def temperature(self, ts: float) -> float:
        return self._interpolate(ts)[0]

    def co2(self, ts: float) -> float:
        return self._interpolate(ts)[1]

    def humidity(self, ts: float) -> float:
        """Relative humidity: people add moisture (tracked by CO2), warm air holds more."""
        temp, co2 = self._interpolate(ts)
        value = 45.0 + (co2 - OUTDOOR_CO2) / 60.0 - 1.5 * (temp - 21.0)
        return min(90.0, max(15.0, value))

    def light(self, ts: float) -> float:
        """Illuminance: daylight through the windows, plus lamps when people are up and it is
        dark."""
        daylight = self.household.daylight(ts) * _DAYLIGHT_FACTOR.get(self.room, 0.008)
        lamps = 0.0
        if (
            daylight < 150.0
            and self.household.occupants(self.room, ts) > 0
            and not self.household.asleep(ts)
        ):
            lamps = _LAMP_LUX.get(self.room, 250.0)
        return daylight + lamps
