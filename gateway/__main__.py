"""``python -m gateway --config FILE``: run the gateway until SIGTERM or SIGINT.

A configuration error prints one line per bad field (``mqtt.url: ...``) and exits with 2; so does
a database whose schema version is newer than this gateway's (`gateway.schema.SchemaVersionError`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable

from gateway.app import create_gateway
from gateway.config import ENV_PREFIX, ConfigError, GatewayConfig, load_config
from gateway.memory import pin_malloc_thresholds
from gateway.schema import SchemaVersionError
from gateway.updates.boot import boot_config

log = logging.getLogger("gateway")


async def serve(local: GatewayConfig, reload: Callable[[], GatewayConfig] | None = None) -> None:
    """Run until a signal. A bundle whose overlay only a restart applies stops the gateway
    and starts it again in this process, from `reload()` (the config file read again) and the
    active slot (`gateway.updates.boot.boot_config`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while True:
        config = boot_config(local)
        async with create_gateway(config, local=local) as gw:
            # The libraries' ~80k start-up objects never die; without this every full
            # collection walks them all (tens of ms in the MQTT and writer threads: p99).
            gc.freeze()
            print(
                f"gateway {config.gateway_id}: admin on http://{config.admin.host}:"
                f"{gw.admin_port}, uplink {config.uplink.url or 'disabled'}",
                flush=True,
            )
            stopping = asyncio.ensure_future(stop.wait())
            restarting = asyncio.ensure_future(gw.restart_requested.wait())
            await asyncio.wait([stopping, restarting], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            restarting.cancel()
            if stop.is_set():
                log.info("signal received: shutting down")
                return
            log.info("restarting for the applied bundle's configuration")
        gc.unfreeze()
        if reload is not None:
            local = reload()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="The homeedge edge gateway. Settings come from the TOML file and "
        f"{ENV_PREFIX}<SECTION>__<FIELD> environment variables.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: bad configuration:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The MQTT thread is CPU-bound under load; the writer thread gives up the GIL at every
    # SQLite step and then waits up to the switch interval to get it back. 5 ms (the default)
    # per step made each commit tens of ms; 1 ms keeps commits short at little cost.
    sys.setswitchinterval(0.001)
    # Before any thread or model session exists: big buffers keep mappings of their own.
    pin_malloc_thresholds()
    try:
        asyncio.run(serve(config, lambda: load_config(args.config)))
    except SchemaVersionError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
