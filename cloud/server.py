"""Running the cloud service: one process, or a supervisor with N workers on one port.

With ``workers = N`` (N > 1, Linux), this process migrates the database once, then starts N
worker processes that each bind the same port with SO_REUSEPORT, so the kernel spreads
connections over them; it supervises them and stops them on SIGTERM/SIGINT. When one worker dies
the others are stopped too and the exit status is 1, so a service manager restarts the whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from cloud.app import create_app, migrate
from cloud.config import CloudConfig, ConfigError
from cloud.protocol import CloudRunner

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0


def setup_logging(config: CloudConfig) -> None:
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def write_port_file(path: Path, port: int) -> None:
    # Write then rename, so a reader never sees a half-written number.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    tmp.replace(path)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


async def start(config: CloudConfig, *, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """The app listening on config.host:config.port; returns its runner and the port."""
    runner = CloudRunner(create_app(config))
    await runner.setup()  # runs the app's cleanup_ctx set-up: database open and migrated
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def serve(
    config: CloudConfig,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; `on_ready(port)` runs once the socket listens."""
    if config.demo:
        log.warning(
            "demo = true: placeholder tokens are accepted; never run a real fleet like this"
        )
    if config.metrics_token is None and not _is_loopback(config.host):
        log.warning(
            "/metrics needs no credential and %s is not a loopback address: set metrics_token",
            config.host,
        )
    runner, port = await start(config, reuse_port=reuse_port)
    # The libraries' start-up objects never die; without this every full collection walks
    # them all (~120 ms here, at the p95 of a large series answer), as in the gateway.
    gc.freeze()
    try:
        log.info(
            "homeedge cloud listening on http://%s:%d (pid %d)", config.host, port, os.getpid()
        )
        if on_ready is not None:
            on_ready(port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping (pid %d)", os.getpid())
    finally:
        await runner.cleanup()


def run_single(config: CloudConfig) -> int:
    def ready(port: int) -> None:
        if config.port_file is not None:
            write_port_file(config.port_file, port)

    asyncio.run(serve(config, on_ready=ready))
    return 0


def _worker_main(config: CloudConfig, ready: Any) -> None:
    setup_logging(config)
    asyncio.run(serve(config, reuse_port=True, on_ready=lambda _port: ready.put(os.getpid())))


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket: it fixes the port (0 = any free one) for the
    workers and never receives a connection itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _stop_all(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    for proc in processes:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in processes:
        proc.join(STOP_TIMEOUT_S)
        if proc.is_alive():
            log.warning("worker %s did not stop in %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
            proc.kill()
            proc.join()


def run_workers(config: CloudConfig) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("workers > 1 needs SO_REUSEPORT (Linux); set workers = 1")
    # Migrate once here, so N workers never race on the schema (SQLite has no advisory lock).
    asyncio.run(migrate(config.database_url))
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    with _reserve_port(config.host, config.port) as reserved:
        port = int(reserved.getsockname()[1])
        worker_config = config.model_copy(update={"port": port, "port_file": None, "workers": 1})
        processes = [
            ctx.Process(target=_worker_main, args=(worker_config, ready), name=f"cloud-worker-{i}")
            for i in range(config.workers)
        ]
        for proc in processes:
            proc.start()
        try:
            started = 0
            while started < len(processes):
                if stopping or any(not p.is_alive() for p in processes):
                    log.error("a worker exited before it was ready")
                    return 1
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.5)
                    started += 1
            log.info(
                "homeedge cloud listening on http://%s:%d with %d workers",
                config.host,
                port,
                len(processes),
            )
            if config.port_file is not None:
                write_port_file(config.port_file, port)
            sentinels = [p.sentinel for p in processes]
            while not stopping:
                if multiprocessing.connection.wait(sentinels, timeout=0.5):
                    dead = [p for p in processes if not p.is_alive()]
                    log.error("worker(s) %s exited; stopping the rest", [p.pid for p in dead])
                    return 1
            return 0
        finally:
            _stop_all(processes)
