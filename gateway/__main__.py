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

from gateway.app import create_gateway
from gateway.config import ENV_PREFIX, ConfigError, GatewayConfig, load_config
from gateway.schema import SchemaVersionError

log = logging.getLogger("gateway")


async def serve(config: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with create_gateway(config) as gw:
        # The libraries' ~80k start-up objects never die; without this every full collection
        # walks them all (tens of ms in the MQTT and writer threads: the p99 latency).
        gc.freeze()
        print(
            f"gateway {config.gateway_id}: admin on http://{config.admin.host}:{gw.admin_port}, "
            f"uplink {config.uplink.url or 'disabled'}",
            flush=True,
        )
        await stop.wait()
        log.info("signal received: shutting down")


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
    try:
        asyncio.run(serve(config))
    except SchemaVersionError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
