"""The gateway against a Mosquitto that requires TLS (with client certificates), passwords and
per-device ACLs: stores over TLS, the broker refuses a device writing outside its own topics,
bad credentials and a wrong CA fail with a clear error and retry on the backoff schedule.

The certificates are made here with `cryptography` (a throwaway CA, a server certificate for
127.0.0.1/localhost, client certificates, and an unrelated CA for the wrong-CA case); the
password file with ``mosquitto_passwd``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import random
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.app import Gateway
from gateway.backoff import Backoff
from gateway.config import (
    AdminConfig,
    GatewayConfig,
    MqttConfig,
    StorageConfig,
    TlsConfig,
    load_config,
)
from gateway.mqtt import build_tls_context
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic, gateway_status_topic
from tests.conftest import MosquittoBroker, need
from tests.test_gateway_ingest import TS0, metric_value, query
from tests.waiting import wait_for

GATEWAY_USER, GATEWAY_PASSWORD = "gateway", "gw-secret"
DEVICE_PASSWORD = "dev-secret"
DEVICES = ("thermo-1", "plug-2")


# -- a throwaway PKI -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # a CA that signed nothing the broker uses
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca("homeedge test CA")
    other, _ = _make_ca("some other CA")
    server, server_key = _issue(ca, ca_key, "localhost", server=True)
    client, client_key = _issue(ca, ca_key, "homeedge gateway", server=False)
    return Pki(
        ca=_write_cert(d / "ca.pem", ca),
        other_ca=_write_cert(d / "other-ca.pem", other),
        server_cert=_write_cert(d / "server.pem", server),
        server_key=_write_key(d / "server.key", server_key),
        client_cert=_write_cert(d / "client.pem", client),
        client_key=_write_key(d / "client.key", client_key),
    )


# -- a broker that wants TLS, a client certificate, a password, and obeys an ACL --------------


def _acl(topic_root: str) -> str:
    # A device (user name = its device id) may write only under its own device level and read
    # the gateways' output; the gateway reads everything and writes only its own output topics
    # (status, last will, Home Assistant discovery). `pattern` lines apply to every user.
    return (
        f"pattern write {topic_root}/+/+/%u/#\n"
        f"pattern read {topic_root}/+/gateway/#\n"
        f"\nuser {GATEWAY_USER}\n"
        "topic read #\n"
        f"topic write {topic_root}/+/gateway/#\n"
        "topic write homeassistant/#\n"
    )


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki, topic_root: str) -> Iterator[MosquittoBroker]:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        need("mosquitto and mosquitto_passwd are not installed")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    passwords = workdir / "passwd"
    users = [(GATEWAY_USER, GATEWAY_PASSWORD)] + [(d, DEVICE_PASSWORD) for d in DEVICES]
    for i, (user, password) in enumerate(users):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(passwords), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    acl = workdir / "acl"
    acl.write_text(_acl(topic_root))
    broker = MosquittoBroker(workdir=workdir)
    broker.listener_config = (
        f"listener {broker.port} 127.0.0.1\n"
        f"cafile {pki.ca}\n"
        f"certfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\n"
        "require_certificate true\n"
        "allow_anonymous false\n"
        f"password_file {passwords}\n"
        f"acl_file {acl}\n"
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def secure_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    topic_root: str,
    pki: Pki,
    *,
    password: str = GATEWAY_PASSWORD,
    ca: Path | None = None,
) -> GatewayConfig:
    return GatewayConfig(
        gateway_id="gw-secure",
        mqtt=MqttConfig.model_validate(
            {
                "url": f"mqtts://127.0.0.1:{broker.port}",
                "topic_root": topic_root,
                "client_id": f"gw-{topic_root}",
                "username": GATEWAY_USER,
                "password": password,
                "tls": {
                    "ca_file": ca or pki.ca,
                    "cert_file": pki.client_cert,
                    "key_file": pki.client_key,
                },
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
            }
        ),
        storage=StorageConfig(path=tmp_path / "gateway.db"),
        admin=AdminConfig(port=0),
    )


class Device:
    """A device's own MQTT connection (TLS, client certificate, its user name and password).

    MQTT 5, so the broker can answer a denied publish with PUBACK "Not authorized". Mosquitto 2
    then also closes the connection (MQTT allows either); paho reconnects and sends what was
    queued meanwhile, so `publish` waits for the PUBACK rather than for the first send."""

    def __init__(self, broker: MosquittoBroker, pki: Pki, user: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user}-{uuid.uuid4()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.tls_set_context(
            build_tls_context(
                TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
            )
        )
        self.client.username_pw_set(user, DEVICE_PASSWORD)
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set() if not a[3].is_failure else None
        self.acks: dict[int, ReasonCode] = {}
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(10), f"device {user} could not connect"

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.acks[mid] = reason

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1; the reason code of the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.acks:
            assert time.monotonic() < deadline, f"no PUBACK for {topic}"
            time.sleep(0.01)
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RecordingBackoff(Backoff):
    """The gateway's reconnect `Backoff`, keeping every delay it draws and the attempt number
    (since the last reset) each was drawn for, so a test checks the schedule itself instead of
    counting attempts against the wall clock."""

    def __init__(self, min_s: float, max_s: float) -> None:
        super().__init__(min_s, max_s, random.Random(7))
        self.drawn: list[tuple[int, float]] = []
        self.drawn_at: list[float] = []

    def next_delay(self) -> float:
        attempt = self.attempt
        delay = super().next_delay()
        self.drawn.append((attempt, delay))
        self.drawn_at.append(time.monotonic())
        return delay

    def assert_on_schedule(self) -> None:
        """Delays within [min, cap(n)], and really waited: a delay drawn after a failure
        (attempt n >= 1) is followed by the next failure's draw (n + 1) no sooner than that
        delay, since paho waits it before trying again. A lower bound only: a loaded machine
        can only make the gap longer, never shorter."""
        for attempt, delay in self.drawn:
            assert self.min_s <= delay <= self.cap(attempt), (attempt, delay)
        assert max(a for a, _ in self.drawn) >= 1, "the schedule never grew"
        paced = 0
        for i in range(len(self.drawn) - 1):
            (a0, d0), (a1, _) = self.drawn[i], self.drawn[i + 1]
            if a0 >= 1 and a1 == a0 + 1:
                gap = self.drawn_at[i + 1] - self.drawn_at[i]
                assert gap >= d0 - 0.01, f"retried after {gap:.3f}s, the delay was {d0:.3f}s"
                paced += 1
        assert paced >= 1, "no retry was paced"


# -- tests ------------------------------------------------------------------------------------


async def test_tls_password_and_acl(
    tmp_path: Path, secure_broker: MosquittoBroker, topic_root: str, pki: Pki
) -> None:
    """Over TLS with a client certificate and a password the gateway stores a device's
    message; a message a device writes under ANOTHER device's topic is refused by the broker
    (PUBACK "Not authorized"; the gateway never sees it, so no row and no dead letter); the
    gateway's birth and offline messages are allowed by the ACL."""
    config = secure_config(tmp_path, secure_broker, topic_root, pki)
    thermo = Device(secure_broker, pki, "thermo-1")
    status: list[bytes] = []
    try:
        async with Gateway(config) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "never subscribed"
            own = device_topic("h1", "lab", "thermo-1", "telemetry", root=topic_root)
            other = device_topic("h1", "lab", "plug-2", "telemetry", root=topic_root)
            denied = thermo.publish(other, encode_telemetry(TS0, {"power": 99.0}, seq=1))
            assert denied.getName() == "Not authorized"
            allowed = thermo.publish(own, encode_telemetry(TS0, {"temperature": 21.5}, seq=1))
            assert not allowed.is_failure
            db = config.storage.path
            # The allowed message is the marker for the denied one: it was sent only after the
            # broker had answered the denied one, on the same device connection, and the
            # gateway's session gets what the broker routes in order (one queue per session),
            # its writer commits in arrival order. Once its row is there, a routed denied
            # message would be too (checked below).
            await wait_for(
                lambda: query(db, "SELECT count(*) FROM readings")[0][0] >= 1, what="the marker"
            )
            # The birth message passed the ACL: a device sees it, retained.
            got = threading.Event()
            thermo.client.on_message = lambda _c, _u, m: (status.append(m.payload), got.set())
            thermo.client.subscribe(gateway_status_topic("gw-secure", root=topic_root), 1)
            assert await asyncio.to_thread(got.wait, 10), "no retained status"
        # ... and so did the offline message of the clean shutdown.
        await wait_for(lambda: len(status) >= 2, within=10, what="offline status")
    finally:
        thermo.close()
    assert query(db, "SELECT device, metric, value FROM readings") == [
        ("thermo-1", "temperature", 21.5)
    ]
    assert query(db, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert status == [b"online", b"offline"]


async def test_wrong_password_is_a_clear_error_retried_with_backoff(
    tmp_path: Path,
    secure_broker: MosquittoBroker,
    topic_root: str,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = secure_config(tmp_path, secure_broker, topic_root, pki, password="wrong")
    backoff = RecordingBackoff(0.2, 1.0)
    with caplog.at_level(logging.ERROR, logger="gateway.mqtt"):
        async with Gateway(config, mqtt_backoff=backoff) as gw:
            name = "homeedge_gateway_mqtt_connect_failures_total"
            await wait_for(
                lambda: metric_value(gw, name, {"reason": "refused"}) >= 3,
                what="three refused attempts",
            )
            attempts = metric_value(gw, "homeedge_gateway_mqtt_connect_attempts_total")
            refused = metric_value(gw, name, {"reason": "refused"})
            drawn = len(backoff.drawn)
            assert not gw.mqtt.connected
    errors = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
    assert errors, "no error line for the refused connection"
    assert "Not authorized" in errors[0] or "Bad user name or password" in errors[0], errors[0]
    assert "mqtt.username/mqtt.password" in errors[0]
    # It keeps trying, but on the schedule: every attempt after the first waited a delay the
    # backoff drew (paho waits what the bridge set), and the delays grow within their bounds.
    assert 3 <= attempts <= drawn, (attempts, drawn)
    assert refused >= attempts - 1
    assert len(errors) <= drawn
    backoff.assert_on_schedule()


async def test_wrong_ca_fails_verification_with_a_clear_error(
    tmp_path: Path,
    secure_broker: MosquittoBroker,
    topic_root: str,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = secure_config(tmp_path, secure_broker, topic_root, pki, ca=pki.other_ca)
    with caplog.at_level(logging.ERROR, logger="gateway.mqtt"):
        async with Gateway(config) as gw:
            await wait_for(
                lambda: (
                    metric_value(
                        gw, "homeedge_gateway_mqtt_connect_failures_total", {"reason": "tls"}
                    )
                    >= 2
                ),
                what="two failed TLS attempts",
            )
            assert not gw.mqtt.connected
    errors = [r.getMessage() for r in caplog.records]
    assert any("certificate failed verification" in e for e in errors), errors
    assert any("mqtt.tls.ca_file" in e for e in errors), errors


def test_tls_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """mqtts:// alone turns TLS on (port 8883, system trust store); [mqtt.tls] with mqtt://
    too; the environment can fill the TLS table; a key without a certificate is an error; the
    password is not shown in reprs."""
    plain = MqttConfig(url="mqtt://broker.lan")
    assert (plain.use_tls, plain.port) == (False, 1883)
    tls = MqttConfig(url="mqtts://broker.lan")
    assert (tls.use_tls, tls.port) == (True, 8883)
    table = MqttConfig.model_validate({"url": "mqtt://b:8884", "tls": {"insecure": True}})
    assert (table.use_tls, table.port) == (True, 8884)
    ctx = build_tls_context(table.tls)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
    strict = build_tls_context(None)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    with pytest.raises(ValueError, match="need cert_file"):
        TlsConfig(key_file=Path("k.pem"))
    secret = MqttConfig(username="u", password="hunter2")  # type: ignore[arg-type]
    assert "hunter2" not in repr(secret)
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__TLS__CA_FILE", "/etc/homeedge/ca.pem")
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__PASSWORD", "from-env")
    env = load_config(None, gateway_id="g").mqtt
    assert env.use_tls and env.tls is not None and env.tls.ca_file == Path("/etc/homeedge/ca.pem")
    assert env.password is not None and env.password.get_secret_value() == "from-env"
