"""Gateway configuration: TOML + environment, errors that name the field, the CLI's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_toml_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'gateway_id = "gw-1"\n[mqtt]\nurl = "mqtt://broker.lan:1884"\nprotocol = "5"\n'
        '[storage]\npath = "/data/gw.db"\nbatch_rows = 500\n[admin]\nport = 0\n',
    )
    cfg = load_config(path)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol) == ("broker.lan", 1884, "5")
    assert cfg.mqtt.topic_root == "homeedge" and cfg.mqtt.qos == 1
    assert cfg.client_id == "homeedge-gateway-gw-1"
    assert cfg.storage.path == Path("/data/gw.db") and cfg.storage.batch_rows == 500
    assert cfg.admin.port == 0 and cfg.admin.port_file is None


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'gateway_id = "gw-1"\n[mqtt]\nurl = "mqtt://a:1"\nclient_id = "c1"\n')
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__URL", "mqtt://b:2")
    monkeypatch.setenv("HOMEEDGE_GATEWAY__STORAGE__QUEUE_SIZE", "123")
    cfg = load_config(path)
    assert cfg.mqtt.url == "mqtt://b:2"
    assert cfg.mqtt.client_id == "c1"  # the rest of the [mqtt] table is kept
    assert cfg.storage.queue_size == 123


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('gateway_id = "g"\n[mqtt]\nurl = "http://x:1"\n', "mqtt.url"),
        ('gateway_id = "g"\n[mqtt]\nurl = "mqtt://x:99999"\n', "mqtt.url"),
        ('gateway_id = "g"\n[mqtt]\nprotocol = "3"\n', "mqtt.protocol"),
        ('gateway_id = "g"\n[mqtt]\nqos = 2\n', "mqtt.qos"),
        ('gateway_id = "g"\n[mqtt]\ntopic_root = "a/#"\n', "mqtt.topic_root"),
        ('gateway_id = "g"\n[mqtt]\nprot = 1883\n', "mqtt.prot"),
        ('gateway_id = "g"\n[storage]\nbatch_rows = 0\n', "storage.batch_rows"),
        ('gateway_id = "g"\n[admin]\nport = -1\n', "admin.port"),
        ('gateway_id = "g"\n[nonsense]\nx = 1\n', "nonsense"),
        ('gateway_id = "a/b"\n', "gateway_id"),
        ("[mqtt]\n", "gateway_id"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, toml))
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "gateway_id = \n"))


def test_sections_are_frozen_models() -> None:
    cfg = GatewayConfig(gateway_id="g")
    with pytest.raises(ValueError, match="frozen"):
        cfg.mqtt.qos = 0  # type: ignore[misc]


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, 'gateway_id = "g"\n[mqtt]\nurl = "mqtt://x:70000"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "mqtt.url:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_storage_synchronous_defaults_to_full(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'gateway_id = "g"\n')).storage.synchronous == "full"
    cfg = load_config(write(tmp_path, 'gateway_id = "g"\n[storage]\nsynchronous = "normal"\n'))
    assert cfg.storage.synchronous == "normal"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, 'gateway_id = "g"\n[storage]\nsynchronous = "off"\n'))
    assert str(err.value).startswith("storage.synchronous: ")


def test_storage_retention_defaults_and_bounds(tmp_path: Path) -> None:
    storage = load_config(write(tmp_path, 'gateway_id = "g"\n')).storage
    assert (storage.retention_s, storage.dead_letter_retention_s) == (30 * 86400, 7 * 86400)
    cfg = load_config(write(tmp_path, 'gateway_id = "g"\n[storage]\nretention_s = 0\n'))
    assert cfg.storage.retention_s == 0  # keep forever
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, 'gateway_id = "g"\n[storage]\ndead_letter_retention_s = -1\n'))
    assert str(err.value).startswith("storage.dead_letter_retention_s: ")


def test_gateway_start_up_imports_stay_lean(tmp_path: Path) -> None:
    """The gateway's wiring and a file-only configuration load neither aiohttp (needed only by a
    running uplink) nor pydantic-settings (only when HOMEEDGE_GATEWAY__ variables are set)."""
    path = write(tmp_path, 'gateway_id = "g"\n')
    code = (
        "import sys\n"
        "import gateway.app\n"
        "from gateway.config import load_config\n"
        f"load_config({str(path)!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'pydantic_settings'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HOMEEDGE_GATEWAY__")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == "[]"
