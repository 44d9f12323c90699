"""docker-compose.yml is valid and runs what the tests run: `docker-compose config` accepts it,
every homeedge service runs ``python -m gateway|cloud|devices``, the config files it mounts load
with the real loaders under the environment it sets, and the services find each other."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cloud.config import load_config as load_cloud_config
from devices.__main__ import build_parser as devices_parser
from devices.cli import fleet_config
from gateway.config import load_config as load_gateway_config
from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
MODULES = {"gateway", "cloud", "devices"}


def services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(COMPOSE.read_text())
    result: dict[str, dict[str, Any]] = doc["services"]
    return result


def homeedge_services() -> dict[str, dict[str, Any]]:
    """Services built from our Dockerfile (the others are stock images)."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounted_config(service: dict[str, Any]) -> Path:
    """The host file mounted where the service's ``--config`` points."""
    command = service["command"]
    target = command[command.index("--config") + 1]
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if container == target:
            return (ROOT / host).resolve()
    raise AssertionError(f"{target} is not mounted from the repository")


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(mapping).rsplit(":", 1)[1]) for mapping in service.get("ports", [])}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # Only the variables compose sets may reach the loaders.
    for key in list(os.environ):
        if key.startswith("HOMEEDGE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        need("docker-compose is not installed")
        return
    proc = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_homeedge_service_runs_a_homeedge_module() -> None:
    ours = homeedge_services()
    modules = set()
    for name, svc in ours.items():
        command = svc["command"]
        assert isinstance(command, list), f"{name}: command as a list, no shell"
        assert command[:2] == ["python", "-m"] and command[2] in MODULES, (name, command)
        modules.add(command[2])
    assert modules == MODULES
    assert (ROOT / "Dockerfile").exists()


def test_each_image_installs_only_its_roles_extra() -> None:
    # The gateway's image must not carry the cloud's scikit-learn, SciPy, plotly, asyncpg...:
    # the Dockerfile installs `.[ROLE]` and each service builds with its own module as ROLE.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG ROLE" in dockerfile and 'pip install ".[${ROLE}]"' in dockerfile
    for name, svc in homeedge_services().items():
        build = svc["build"]
        assert isinstance(build, dict), f"{name}: build with args"
        assert build["args"]["ROLE"] == svc["command"][2], name


def test_mounted_configs_load_and_point_at_each_other(clean_env: pytest.MonkeyPatch) -> None:
    svcs = services()
    by_module = {svc["command"][2]: (name, svc) for name, svc in homeedge_services().items()}
    cloud_name, cloud_svc = by_module["cloud"]
    _, gateway_svc = by_module["gateway"]

    for key, value in environment(cloud_svc).items():
        clean_env.setenv(key, value)
    cloud = load_cloud_config(mounted_config(cloud_svc))
    for key in environment(cloud_svc):
        clean_env.delenv(key)
    for key, value in environment(gateway_svc).items():
        clean_env.setenv(key, value)
    gateway = load_gateway_config(mounted_config(gateway_svc))

    # The gateway uploads to the cloud service, with the token the cloud expects from it.
    uplink = urlsplit(gateway.uplink.url)
    assert uplink.hostname == cloud_name and uplink.port == cloud.port
    assert cloud.port in container_ports(cloud_svc) and cloud.host == "0.0.0.0"
    assert gateway.gateway_id in cloud.gateways
    token = gateway.uplink.token.get_secret_value()
    assert token and token == cloud.gateways[gateway.gateway_id].get_secret_value()
    # The cloud's database is the postgres service, the gateway's broker the broker service.
    db = urlsplit(cloud.database_url)
    assert db.scheme == "postgresql+asyncpg" and db.hostname in svcs
    assert "postgres" in svcs[db.hostname]["image"]
    assert gateway.mqtt.host in svcs and "mosquitto" in svcs[gateway.mqtt.host]["image"]
    assert gateway.admin.port in container_ports(gateway_svc) and gateway.admin.host == "0.0.0.0"
    # State lives on the gateway's volume, and windows are sent as they close.
    volumes = {v.split(":")[1]: v.split(":")[0] for v in gateway_svc["volumes"]}
    assert gateway.storage.path.parent == Path("/data") and "/data" in volumes
    assert gateway.privacy.secret_file.parent == Path("/data")
    assert gateway.aggregation.windows_per_batch == 1


def test_devices_command_parses_with_the_devices_cli() -> None:
    by_module = {svc["command"][2]: svc for svc in homeedge_services().values()}
    args = devices_parser().parse_args(by_module["devices"]["command"][3:])
    config = fleet_config(args, broker=args.broker, topic_root=args.topic_root)
    assert urlsplit(config.broker).hostname in services()
    assert config.homes >= 1
