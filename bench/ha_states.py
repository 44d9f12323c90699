"""CPU cost of the Home Assistant plug-in's readings callback (`gateway.homeassistant.wiring`),
the part that runs for every committed reading on the gateway's event loop.

    .venv/bin/python bench/ha_states.py [--devices 200] [--batches 2000] [--runs 5]

A host stand-in (no broker, no database: publishes are counted, not sent) receives batches of
200 committed readings (temperature, humidity, co2, battery of `--devices` devices, fresh
timestamps) after every entity was announced once; each run times `--batches` batches through
``on_readings`` and the publishing task's ``take_due`` + publish calls together, with
``state_interval_s`` 30 (the default: most readings only replace a waiting value) and 0 (every
reading published). Prints the median microseconds per reading and the load average. Not
measured: paho's own cost per published message, and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.homeassistant.settings import HomeAssistantSettings
from gateway.homeassistant.wiring import install_homeassistant
from gateway.records import Reading


class Host:
    def __init__(self) -> None:
        self.config = GatewayConfig(gateway_id="bench")
        self.registry = CollectorRegistry()
        self.status_topic = "homeedge/bench/gateway/status"
        self.published = 0
        self.readings: list[Callable[[Any], Any]] = []
        self.tasks: list[Callable[[], Any]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        self.published += 1
        return True

    async def run_db(self, fn: Any) -> Any:
        return []

    async def mqtt_ready(self) -> None:
        return None

    def on_readings(self, cb: Any) -> None:
        self.readings.append(cb)

    def on_device_forgotten(self, cb: Any) -> None:
        pass

    def via_adapter(self, home: str, device: str) -> bool:
        return False

    def add_task(self, name: str, factory: Any) -> None:
        self.tasks.append(factory)

    def add_health(self, name: str, fn: Any) -> None:
        pass

    def add_lifetime(self, fn: Callable[[], AsyncIterator[None]]) -> None:
        pass


async def one_run(interval: float, devices: int, batches: int) -> float:
    host = Host()
    install_homeassistant(host, HomeAssistantSettings(state_interval_s=interval))  # type: ignore[arg-type]
    (cb,) = host.readings
    task = asyncio.create_task(host.tasks[0]())
    metrics = ("temperature", "humidity", "co2", "battery")
    now = time.time()
    keys = [(f"d-{i}", m) for i in range(devices) for m in metrics]

    def batch(k: int) -> list[Reading]:
        out = []
        for j in range(200):
            dev, metric = keys[(k * 200 + j) % len(keys)]
            ts = now + k * 0.01 + j * 1e-5
            out.append(Reading("home-1", "living", dev, metric, ts, 20.0 + j % 7, None, ts))
        return out

    await cb(batch(0))  # every entity announced once (not timed)
    for k in range(len(keys) // 200 + 1):
        await cb(batch(k))
    await asyncio.sleep(0)
    prepared = [batch(k) for k in range(batches)]
    start = time.process_time()
    for b in prepared:
        await cb(b)
        await asyncio.sleep(0)  # the publishing task's turn
    spent = time.process_time() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return spent / (batches * 200) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for interval in (30.0, 0.0):
        runs = [
            asyncio.run(one_run(interval, args.devices, args.batches)) for _ in range(args.runs)
        ]
        print(
            f"state_interval_s={interval:g}: {statistics.median(runs):.2f} us CPU per reading "
            f"(median of {args.runs}; runs {', '.join(f'{r:.2f}' for r in runs)})"
        )
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
