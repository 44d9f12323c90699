"""`DeviceTable`: which device ids the gateway keeps state for; the ingest path's admission.

Every per-device structure of the gateway (the inference engine's sensor windows, baselines and
audio streams, its Home Assistant discovery memory, the adapters' entity memory) is sized by the
devices it hears from. A device that invents ids (a counter in a Zigbee2MQTT friendly name, a
misconfigured fleet, a hostile client) would grow them without limit, so the decoder asks this
table about every device a message names before anything else sees it:

- a known device (home, device) is admitted and its last-heard time refreshed;
- a new one is admitted while fewer than ``max_devices`` are tracked, else refused (the decoder
  turns the message into a dead letter ``too_many_devices``);
- audio needs a microphone slot too (``max_microphones``): audio streams cost 20-150 times a
  sensor's state;
- a device not heard from for ``idle_s`` is forgotten (evicted, counted): it is new again when it
  comes back. Eviction is in last-heard order, so it is O(1) per message (an idle device is
  always at the front); it runs when a new device arrives and in `sweep` (the gateway calls it
  every quarter of ``idle_s``, at most a minute apart).

The table holds ids and times only; the inference streams it protects evict their own idle state
after the same ``idle_s`` (and keep at most the same number of devices), in their own thread.
Two memories are bounded by count instead, least recently used first: the Home Assistant
statestream adapter's entities (``MAX_ENTITIES``) and the discovery configs announced
(``max_announced``).

Thread-safe: the MQTT thread admits, the event loop sweeps and scrapes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

REFUSED = "too_many_devices"


class DeviceTable:
    """See the module docstring."""

    def __init__(
        self,
        *,
        max_devices: int,
        max_microphones: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_evicted: Callable[[int], None] | None = None,
        on_forgotten: Callable[[list[tuple[str, str]]], None] | None = None,
    ) -> None:
        """`on_evicted(n)` counts evictions; `on_forgotten(keys)` gets the (home, device) keys
        evicted (both called with the table's lock held, from the thread that evicted)."""
        self.max_devices = max_devices
        self.max_microphones = max_microphones
        self.idle_s = idle_s
        self._clock = clock
        self._on_evicted = on_evicted
        self._on_forgotten = on_forgotten
        self._lock = threading.Lock()
        # (home, device) -> last heard (clock), least recently heard first.
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._microphones: set[tuple[str, str]] = set()
        # Devices admitted through an ecosystem adapter (`admit(adapted=True)`): a subset of
        # `_seen`, forgotten with it.
        self._adapted: set[tuple[str, str]] = set()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def microphones(self) -> int:
        return len(self._microphones)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def admit(
        self,
        home: str,
        device: str,
        *,
        audio: bool = False,
        replay: bool = False,
        adapted: bool = False,
    ) -> bool:
        """True when the device may be stored and processed (it is then tracked as heard now);
        False when it is new and the table is full (nothing changes).

        A `replay` (a retained message the broker sends again on every subscription) is always
        admitted and changes nothing: it is old state, not the device heard now, so it neither
        takes a slot nor keeps one alive (thousands of retained topics must not lock new
        devices out after a reconnect)."""
        if replay:
            return True
        key = (home, device)
        now = self._clock()
        with self._lock:
            seen = self._seen
            if key in seen:
                if audio and key not in self._microphones:
                    if len(self._microphones) >= self.max_microphones:
                        self._evict_idle(now)
                        if len(self._microphones) >= self.max_microphones:
                            return False
                    self._microphones.add(key)
                # The known device's path is the hot one: no eviction here (only a new device
                # needs room; `sweep` forgets the idle ones meanwhile).
                seen[key] = now
                seen.move_to_end(key)
                if adapted:
                    self._adapted.add(key)
                return True
            self._evict_idle(now)
            if len(seen) >= self.max_devices:
                return False
            if audio:
                if len(self._microphones) >= self.max_microphones:
                    return False
                self._microphones.add(key)
            seen[key] = now
            if adapted:
                self._adapted.add(key)
            return True

    def adapted(self, home: str, device: str) -> bool:
        """True when the device was admitted as one read through an ecosystem adapter
        (Zigbee2MQTT, Tasmota, ...: its ecosystem announces it to Home Assistant itself) and
        not forgotten since. A device only replayed from retained messages is not marked."""
        return (home, device) in self._adapted

    def refusal(self, *, audio: bool) -> str:
        """The dead letter's detail for a refused device."""
        if audio and len(self._microphones) >= self.max_microphones:
            return (
                f"{len(self._microphones)} microphones tracked (devices.max_microphones); "
                f"one is forgotten after devices.idle_s = {self.idle_s:g} s without a message"
            )
        return (
            f"{len(self._seen)} devices tracked (devices.max_devices); one is forgotten after "
            f"devices.idle_s = {self.idle_s:g} s without a message"
        )

    def sweep(self) -> int:
        """Forget every device idle for ``idle_s``; returns how many (also counted)."""
        with self._lock:
            return self._evict_idle(self._clock())

    def _evict_idle(self, now: float) -> int:
        seen = self._seen
        cutoff = now - self.idle_s
        gone: list[tuple[str, str]] = []
        while seen:
            key, last = next(iter(seen.items()))
            if last > cutoff:
                break
            del seen[key]
            self._microphones.discard(key)
            self._adapted.discard(key)
            gone.append(key)
        n = len(gone)
        if n:
            self.evicted += n
            if self._on_evicted is not None:
                self._on_evicted(n)
            if self._on_forgotten is not None:
                self._on_forgotten(gone)
        return n
