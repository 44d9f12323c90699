"""``python -m devices``: run a seeded fleet of simulated homes against an MQTT broker.

Example: ``python -m devices --broker mqtt://127.0.0.1:1883 --homes 20 --rate 1 --speed 60``.
A progress line goes to stderr every ``--progress`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from devices.cli import (
    RateMeter,
    add_fleet_arguments,
    fleet_config,
    format_fleet,
    setup_logging,
    stop_on_signals,
)
from devices.fleet import Fleet, FleetStats
from schemas.topics import ROOT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devices", description=__doc__)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    parser.add_argument("--topic-root", default=ROOT)
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument(
        "--progress", type=float, default=5.0, help="seconds between progress lines (0: none)"
    )
    parser.add_argument("--log-level", default="WARNING")
    add_fleet_arguments(parser, defaults={})
    return parser


async def _progress(stats: FleetStats, every: float) -> None:
    meter = RateMeter()
    while True:
        await asyncio.sleep(every)
        print(format_fleet(stats, meter.rate(stats.published)), file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> FleetStats:
    config = fleet_config(
        args,
        broker=args.broker,
        topic_root=args.topic_root,
        qos=args.qos,
        duration=args.duration,
    )
    fleet = Fleet(config)
    stop = asyncio.Event()
    stop_on_signals(stop)
    reporter = None
    if args.progress > 0:
        reporter = asyncio.create_task(_progress(fleet.stats, args.progress))
    try:
        return await fleet.run(stop)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    stats = asyncio.run(run(args))
    print(format_fleet(stats, 0.0).replace(" (0 msg/s;", " (done;"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
