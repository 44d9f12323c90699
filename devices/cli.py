"""Command-line plumbing shared by ``python -m devices`` and ``python -m devices.demo``: the
fleet's flags, signal handling and the progress line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devices.fleet import Cue, FleetConfig, FleetStats


def parse_time(value: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither Unix seconds nor an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _cue_list(cues: Sequence[Cue]) -> str:
    return " ".join(f"{c.at_s:g}:{c.label}" for c in cues) or "none"


def add_fleet_arguments(parser: argparse.ArgumentParser, *, defaults: dict[str, Any]) -> None:
    """The simulator's flags; `defaults` lets the demo choose demo-friendly values."""
    d = FleetConfig.model_fields
    g = parser.add_argument_group("simulated devices")
    g.add_argument("--homes", type=int, default=defaults.get("homes", d["homes"].default))
    g.add_argument("--seed", type=int, default=defaults.get("seed", d["seed"].default))
    g.add_argument(
        "--rate",
        type=float,
        default=defaults.get("rate", d["rate"].default),
        help="messages per second per device (wall clock)",
    )
    g.add_argument(
        "--speed",
        type=float,
        default=defaults.get("speed", d["speed"].default),
        help="simulated seconds per second (e.g. 720: a day in 2 minutes)",
    )
    when = g.add_mutually_exclusive_group()
    when.add_argument(
        "--start", type=parse_time, default=None, help="simulated start (Unix s or ISO 8601)"
    )
    when.add_argument(
        "--history",
        type=float,
        default=defaults.get("history"),
        metavar="HOURS",
        help="start this many simulated hours ago (replayed at --speed, then live)",
    )
    g.add_argument("--count", type=int, default=None, help="stop after N messages per device")
    g.add_argument(
        "--anomaly-rate",
        type=float,
        default=defaults.get("anomaly_rate", d["anomaly_rate"].default),
        help="injected faults per device per simulated day",
    )
    g.add_argument(
        "--frame-seconds",
        type=float,
        default=d["frame_seconds"].default,
        help="microphone frame length (s)",
    )
    g.add_argument(
        "--clips",
        type=Path,
        default=defaults.get("clips"),
        metavar="DIR",
        help="WAV clips the microphones play (<label>[_<n>].wav, mono 16 kHz)",
    )
    g.add_argument(
        "--cue",
        dest="cues",
        action="append",
        type=Cue.parse,
        default=None,
        metavar="SECONDS:LABEL",
        help="a clip played SECONDS after the start, on the next microphone in turn "
        f"(repeatable; default: {_cue_list(defaults.get('cues', ()))})",
    )
    g.add_argument("--no-cues", action="store_true", help="no scheduled clips, chance only")
    g.set_defaults(default_cues=tuple(defaults.get("cues", ())))
    g.add_argument(
        "--cue-every",
        type=float,
        default=defaults.get("cue_every_s"),
        metavar="SECONDS",
        help="play the cues again this often",
    )
    g.add_argument(
        "--ground-truth",
        type=Path,
        default=defaults.get("ground_truth"),
        help="write injected anomalies here (JSON lines)",
    )
    g.add_argument(
        "--shared-connection",
        action="store_true",
        help="one MQTT connection for all devices (load; no per-device last will)",
    )
    g.add_argument("--client-prefix", default=d["client_prefix"].default)


def fleet_config(args: argparse.Namespace, **overrides: Any) -> FleetConfig:
    start = args.start
    if start is None and args.history is not None:
        start = time.time() - args.history * 3600.0
    values: dict[str, Any] = {
        "homes": args.homes,
        "seed": args.seed,
        "rate": args.rate,
        "speed": args.speed,
        "start": start,
        "count": args.count,
        "anomaly_rate": args.anomaly_rate,
        "frame_seconds": args.frame_seconds,
        "ground_truth": args.ground_truth,
        "clips": args.clips,
        "cues": () if args.no_cues else tuple(args.cues or args.default_cues),
        "cue_every_s": args.cue_every,
        "shared_connection": args.shared_connection,
        "client_prefix": args.client_prefix,
    }
    values.update(overrides)
    return FleetConfig(**values)


def stop_on_signals(stop: asyncio.Event) -> None:
    """Ctrl-C and SIGTERM set `stop` (a clean shutdown) instead of raising."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class RateMeter:
    """Messages per second between two calls."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._count = 0

    def rate(self, count: int) -> float:
        now = time.monotonic()
        elapsed = max(now - self._last, 1e-9)
        value = (count - self._count) / elapsed
        self._last, self._count = now, count
        return value


def format_fleet(stats: FleetStats, rate: float) -> str:
    sim = datetime.fromtimestamp(stats.sim_time, UTC).strftime("%Y-%m-%d %H:%M")
    failed = f", {stats.failed} failed" if stats.failed else ""
    return (
        f"devices {stats.connected}/{stats.devices} online, sim {sim} UTC, "
        f"published {stats.published} ({rate:.0f} msg/s; {stats.audio} audio){failed}, "
        f"labelled events {stats.truths}"
    )
