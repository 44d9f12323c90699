"""Cloud configuration: TOML plus environment overrides, and errors that name the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.config import ConfigError, load_config

GOOD = """
database_url = "sqlite+aiosqlite:///x.db"
port = 0
read_token = "read-token-0123456789"

[gateways]
gw-1 = "gateway-token-0123456789"
"""


def _write(tmp_path: Path, text: str, name: str = "cloud.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMEEDGE_CLOUD__PORT", "9123")
    config = load_config(_write(tmp_path, GOOD))
    assert config.port == 9123
    assert config.database_url == "sqlite+aiosqlite:///x.db"
    assert config.gateways["gw-1"].get_secret_value() == "gateway-token-0123456789"
    assert "gateway-token" not in repr(config)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (GOOD.replace("port = 0", "port = 70000"), "port"),
        (GOOD.replace("port = 0", "prot = 1"), "prot"),
        (
            GOOD.replace('read_token = "read-token-0123456789"', 'read_token = "short"'),
            "read_token",
        ),
        (GOOD.replace('read_token = "read-token-0123456789"', ""), "read_token"),
        (GOOD + 'gw-2 = "gateway-token-0123456789"\n', "gateways.gw-2"),
        (GOOD.replace("gw-1 =", '"bad id!" ='), "gateways"),
        (GOOD.replace("port = 0", "workers = 0"), "workers"),
        (GOOD + "[http]\nheader_timeout_s = 0\n", "http.header_timeout_s"),
        (GOOD + "[http]\nbody_timeout = 5\n", "http.body_timeout"),
        (GOOD.replace("port = 0", 'metrics_token = "read-token-0123456789"'), "metrics_token"),
        (GOOD.replace("port = 0", 'metrics_token = "short"'), "metrics_token"),
        (GOOD + '[updates]\noperator_token = "read-token-0123456789"\n', "updates.operator_token"),
        (GOOD + '[updates]\noperator_token = "change-me-0123456789"\n', "updates.operator_token"),
        (GOOD + "[updates]\nscheduler_interval_s = -1\n", "updates.scheduler_interval_s"),
        (GOOD + "[updates]\nrepo = 'x'\n", "updates.repo"),
        # review2 #9: the rollups must outlive the aggregates and the analytics' lookback
        (GOOD + "[retention]\naggregates_days = 30\nrollups_days = 20\n", "retention.rollups_days"),
        (GOOD + "[retention]\nrollups_days = 20\n", "retention.rollups_days"),
        (
            GOOD.replace("port = 0", "analytics_lookback_days = 30")
            + "[retention]\naggregates_days = 7\nrollups_days = 20\n",
            "retention.rollups_days",
        ),
    ],
)
def test_a_bad_field_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_the_cli_exits_2_with_one_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEEDGE_CLOUD__")}
    cases = {
        "max_body_bytes": _write(tmp_path, GOOD.replace("port = 0", 'max_body_bytes = "lots"')),
        "not valid TOML": _write(tmp_path, GOOD + "[[broken\n", "broken.toml"),
        "cannot read": tmp_path / "missing.toml",
    }
    for named, path in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "cloud", "--config", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 2, (named, proc.stderr)
        assert named in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


EXAMPLE = Path(__file__).parent.parent / "cloud" / "example.toml"


def test_the_shipped_example_config_refuses_its_placeholder_tokens() -> None:
    with pytest.raises(ConfigError, match=r"read_token is a placeholder \('changeme'\)"):
        load_config(EXAMPLE)


def test_the_shipped_example_config_loads_as_a_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMEEDGE_CLOUD__DEMO", "true")
    config = load_config(EXAMPLE)
    assert config.demo
    assert config.database_url.startswith("sqlite+aiosqlite://")
    assert list(config.gateways) == ["gw-demo"]


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("port = 0", 'port = 0\nmetrics_token = "my-Change-Me-metrics-token"', "metrics_token"),
        ("gateway-token-0123456789", "gateway-token-change-me-1", "gateways.gw-1"),
        ("read-token-0123456789", "read-token-CHANGE_ME-0123", "read_token"),
        ("read-token-0123456789", "replace.me-with-a-real-token", "read_token"),
        ("read-token-0123456789", "example-read-token-0123", "read_token"),
    ],
)
def test_every_placeholder_token_is_named(tmp_path: Path, old: str, new: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"{named} is a placeholder"):
        load_config(_write(tmp_path, GOOD.replace(old, new)))


def test_the_http_limits_come_from_the_http_table_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMEEDGE_CLOUD__HTTP__BODY_TIMEOUT_S", "7.5")
    text = GOOD.replace("port = 0", 'metrics_token = "metrics-token-0123456789"')
    config = load_config(
        _write(tmp_path, text + "[http]\nheader_timeout_s = 12\nmax_headers = 40\n")
    )
    assert (config.http.header_timeout_s, config.http.body_timeout_s) == (12.0, 7.5)
    assert (config.http.max_headers, config.http.lingering_s) == (40, 2.0)
    assert config.metrics_token is not None
    assert "metrics-token" not in repr(config)


@pytest.mark.parametrize(
    "retention",
    ["", "rollups_days = 0\naggregates_days = 30\n", "aggregates_days = 30\nrollups_days = 30\n"],
)
def test_rollups_kept_at_least_as_long_are_accepted(tmp_path: Path, retention: str) -> None:
    config = load_config(_write(tmp_path, GOOD + "[retention]\n" + retention))
    assert config.retention.rollups_days in (0, 30)
