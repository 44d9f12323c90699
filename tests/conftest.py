"""Shared fixtures: real brokers, real databases.

Services: a test that needs Mosquitto or PostgreSQL skips when it is missing, unless
``HOMEEDGE_REQUIRE_SERVICES=1`` (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("HOMEEDGE_REQUIRE_SERVICES", "") not in ("", "0", "false")
PG_DSN = os.environ.get("HOMEEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def need(reason: str) -> None:
    """Skip for a missing service, or fail when services are required (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class MosquittoBroker:
    """A mosquitto of the test's own on a free port; persistence on, so restarts keep sessions."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    # Replaces the default listener block (plain TCP on `port`, anonymous allowed), e.g. with a
    # TLS listener and password authentication; it must still listen on 127.0.0.1:`port`.
    listener_config: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        listener = self.listener_config
        if listener is None:
            listener = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        conf.write_text(
            listener + "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            # A gateway that waits for commits before acking needs a wide in-flight window,
            # and a persistent session must queue everything while the gateway is down.
            "max_inflight_messages 1000\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            # As root, mosquitto drops to the `mosquitto` user, which cannot write the 0700
            # tmp_path: no log, no persistence file, so restart() would lose every session.
             + ("user root\n" if os.geteuid() == 0 else "") + self.extra_config
        )
        return conf

    def start(self) -> None:
        conf = self.write_config()
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh mosquitto on a free port, stopped after the test."""
    if shutil.which("mosquitto") is None:
        need("the mosquitto binary is not installed")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = MosquittoBroker(workdir=workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_root() -> str:
    """A unique topic root per test, so tests never see each other's messages."""
    return f"homeedge-test-{uuid.uuid4().hex[:10]}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test (SQLAlchemy asyncpg URL); dropped afterwards."""
    name = f"homeedge_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, ImportError) as exc:
        need(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    except Exception as exc:  # asyncpg's own errors (auth, missing role) also mean "no server"
        need(f"PostgreSQL at {PG_DSN} refused: {exc}")
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
