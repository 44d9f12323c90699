"""Gateway configuration: TOML + environment, errors that name the field, the CLI's exit code."""

from __future__ import annotations

import logging
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


def test_keywords_over_environment_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'gateway_id = "from-file"\n[mqtt]\nkeepalive = 40\nclient_id = "c1"\n'
        "[storage]\nbatch_rows = 10\n",
    )
    assert load_config(path).mqtt.keepalive == 40
    monkeypatch.setenv("HOMEEDGE_GATEWAY__GATEWAY_ID", "from-env")
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__KEEPALIVE", "50")
    cfg = load_config(path)
    assert (cfg.gateway_id, cfg.mqtt.keepalive, cfg.mqtt.client_id) == ("from-env", 50, "c1")
    cfg = load_config(path, gateway_id="from-kw", mqtt={"keepalive": 60})
    assert (cfg.gateway_id, cfg.mqtt.keepalive, cfg.mqtt.client_id) == ("from-kw", 60, "c1")
    assert cfg.storage.batch_rows == 10  # sections no layer names come from the file


def test_nested_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable three levels deep fills one field of the file's [mqtt.tls] table."""
    path = write(tmp_path, 'gateway_id = "g"\n[mqtt.tls]\nca_file = "/etc/ca.pem"\n')
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__TLS__INSECURE", "true")
    monkeypatch.setenv("homeedge_gateway__storage__batch_rows", "7")  # names ignore case
    cfg = load_config(path)
    assert cfg.mqtt.tls is not None and cfg.mqtt.use_tls
    assert cfg.mqtt.tls.insecure is True and cfg.mqtt.tls.ca_file == Path("/etc/ca.pem")
    assert cfg.storage.batch_rows == 7
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__TLS__INSECURE", "maybe")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith("mqtt.tls.insecure: ")


def test_section_as_json_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'gateway_id = "g"\n[admin]\nport_file = "/run/port"\n')
    monkeypatch.setenv("HOMEEDGE_GATEWAY__ADMIN", '{"host": "0.0.0.0", "port": 0}')
    monkeypatch.setenv("HOMEEDGE_GATEWAY__MQTT__TLS", '{"insecure": true}')
    cfg = load_config(path)
    assert (cfg.admin.host, cfg.admin.port) == ("0.0.0.0", 0)
    assert cfg.admin.port_file == Path("/run/port")  # merged into the file's table
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.insecure is True
    monkeypatch.setenv("HOMEEDGE_GATEWAY__ADMIN", '{"port": 70000}')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith("admin.port: ")


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
    """A gateway wired from a file-only configuration loads neither aiohttp (needed only by
    webhooks and bundle updates; the uplink posts with http.client), nor pydantic-settings
    (only when HOMEEDGE_GATEWAY__ variables are set), nor numpy (only inference and audio
    frames need it; [inference] is off here)."""
    path = write(tmp_path, 'gateway_id = "g"\n[inference]\nenabled = false\n')
    heavy = {"aiohttp", "pydantic_settings", "numpy"}
    code = (
        "import sys\n"
        "import gateway.__main__, gateway.sync\n"
        "from gateway.app import create_gateway\n"
        "from gateway.config import load_config\n"
        f"create_gateway(load_config({str(path)!r}))\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r}))\n"
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


def test_an_environment_section_that_is_not_json_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOMEEDGE_GATEWAY__ADMIN", "{bad")
    with pytest.raises(ConfigError, match="HOMEEDGE_GATEWAY__"):
        load_config(gateway_id="gw-env")


def test_retired_inference_fields_still_load_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config from before the time-based baseline and the [homeassistant] section starts."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        'gateway_id = "gw-old"\n[inference]\nbaseline_windows = 288\nbaseline_min_windows = 288\n'
        'discovery_prefix = "homeassistant"\n'
    )
    caplog.set_level(logging.WARNING, "gateway.inference.settings")
    cfg = load_config(path)
    assert cfg.inference.warmup_hours == 24.0
    assert "inference.baseline_windows is no longer used" in caplog.text
    assert "[homeassistant] discovery_prefix" in caplog.text


def test_updates_need_an_https_uplink_unless_it_is_loopback(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")

    def config(url: str) -> Path:
        path = tmp_path / "gw.toml"
        path.write_text(
            f'gateway_id = "g"\n[uplink]\nurl = "{url}"\ntoken = "t-0123456789abcdef"\n'
            f'[updates]\nroot_file = "{root}"\n'
        )
        return path

    with pytest.raises(ConfigError, match=r"uplink\.url: 'http://cloud\.example:8080' is plain"):
        load_config(config("http://cloud.example:8080"))
    assert load_config(config("https://cloud.example")).uplink.url == "https://cloud.example"
    assert load_config(config("http://127.0.0.1:8080")).updates.root_file == root
    # A URL the uplink could not send to is refused at load, not at every send.
    for bad in ("https://cloud.example:99999", "https://cloud.example:abc", "https://:443"):
        with pytest.raises(ConfigError, match=r"uplink\.url"):
            load_config(config(bad))
