"""The demo's embedded MQTT broker (amqtt, pure Python, MQTT 3.1.1): ``python -m devices.broker``.

Run as its own process by the demo so the broker's event loop never competes with the
simulators'. Two amqtt 0.12 behaviours shape the configuration:

- its `AnonymousAuthPlugin` marks every client anonymous when anonymous access is allowed, and
  amqtt neither queues QoS 1 messages for an anonymous persistent session (``clean_session=0``)
  nor keeps the session after a disconnect; the gateway relies on that queue, so this module
  installs `OpenAuthPlugin`, which lets everyone in without the anonymous mark;
- its default plugins log every packet and publish ``$SYS`` topics; they are left out.

Known amqtt quirks that do not hurt the demo: messages queued for an offline session are
delivered with the retain flag set, and a new client is sent the retained messages matching
other clients' subscriptions. Mosquitto has neither; tests use Mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

log = logging.getLogger(__name__)


class OpenAuthPlugin(BaseAuthPlugin):
    """Accept every client without marking its session anonymous (see the module docstring).

    For a local demo broker on 127.0.0.1 only; never expose it."""

    async def authenticate(self, *, session: Session) -> bool:
        return True

    @dataclass
    class Config:
        """No options."""


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"devices.broker.OpenAuthPlugin": {}},
    }


async def serve(
    host: str, port: int, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Run a broker on host:port until `stop` is set."""
    broker = Broker(broker_config(host, port))
    await broker.start()
    log.info("broker listening on %s:%d", host, port)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


async def _main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(host, port, stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        # The demo waits for this line before it starts anything that connects.
        print(f"listening on mqtt://{host}:{port}", flush=True)
    else:
        waiter.cancel()
    await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devices.broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # amqtt logs each connection at INFO and each client error as a warning with a traceback.
    logging.getLogger("amqtt").setLevel(max(logging.WARNING, logging.root.level))
    asyncio.run(_main(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
