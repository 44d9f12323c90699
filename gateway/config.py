"""The gateway's configuration: a TOML file plus environment overrides, validated by pydantic.

Precedence (highest first): keyword arguments, the environment
(``HOMEEDGE_GATEWAY__<SECTION>__<FIELD>``, e.g. ``HOMEEDGE_GATEWAY__MQTT__URL``;
``HOMEEDGE_GATEWAY__GATEWAY_ID`` for a top-level field), the TOML file, then the defaults below.
A relative ``storage.path`` is relative to the working directory.

Adding a section is one field on `GatewayConfig` whose type is a `Section` subclass with a
default, e.g. ``aggregation: AggregationConfig = AggregationConfig()``; a table of that name in
the TOML file and ``HOMEEDGE_GATEWAY__AGGREGATION__...`` variables then fill it. Every model
forbids unknown keys, so a typo is an error that names the field.

The environment is read by pydantic-settings' `EnvSettingsSource` (nested ``__`` names, JSON for
complex values), imported only when a ``HOMEEDGE_GATEWAY__`` variable is set: the package and
what it pulls in are ~1 MB resident that a gateway configured by its file alone does not need.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.actions.settings import ActionsSettings
from gateway.adapters.settings import AdapterSettings
from gateway.homeassistant.settings import HomeAssistantSettings
from gateway.inference.settings import InferenceSettings
from gateway.sync.settings import AggregationSettings, PrivacySettings, UplinkSettings
from gateway.updates.settings import UpdatesSettings
from gateway.validation import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_CLOCK_SKEW_S,
    MetricRange,
    ReadingChecks,
)
from schemas.metrics import METRIC_NAME
from schemas.topics import ROOT, TopicError, device_subscription, valid_segment

ENV_PREFIX = "HOMEEDGE_GATEWAY__"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the bad field(s)."""


class Section(BaseModel):
    """Base class of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(Section):
    """TLS towards the broker (the ``[mqtt.tls]`` table; ``mqtts://`` alone uses the defaults)."""

    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the broker's certificate; "
        "default: the system's trust store",
    )
    cert_file: Path | None = Field(
        default=None, description="client certificate (PEM), for brokers that require one"
    )
    key_file: Path | None = Field(
        default=None,
        description="private key of cert_file (PEM); default: the key is inside cert_file",
    )
    key_password: SecretStr | None = Field(default=None, description="password of key_file")
    insecure: bool = Field(
        default=False,
        description="skip the check that the broker's certificate names the host of mqtt.url "
        "(the certificate chain is still verified); for test brokers only",
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsConfig:
        if self.cert_file is None and (self.key_file is not None or self.key_password):
            raise ValueError("key_file/key_password need cert_file")
        return self


class MqttConfig(Section):
    """How the gateway reaches its broker."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="broker address: mqtt://host:port (port 1883 by default) or "
        "mqtts://host:port (TLS, port 8883 by default)",
    )
    client_id: str | None = Field(
        default=None,
        description="fixed MQTT client id (the persistent session is keyed by it); "
        "default: homeedge-gateway-<gateway_id>",
    )
    topic_root: str = Field(default=ROOT, description="first topic level of device topics")
    qos: int = Field(
        default=1,
        ge=0,
        le=1,
        description="subscription QoS; 1 gives at-least-once with ack-after-commit",
    )
    protocol: Literal["3.1.1", "5"] = Field(default="3.1.1", description="MQTT protocol version")
    keepalive: int = Field(default=30, ge=5, le=3600, description="keepalive interval, seconds")
    reconnect_min_s: float = Field(
        default=0.5, gt=0, le=60, description="first reconnect delay (doubles each attempt)"
    )
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, description="reconnect delay cap")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="MQTT 5 session expiry: how long the broker keeps our queue while we are down",
    )
    receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: un-acked messages the broker may have in flight",
    )
    username: str | None = Field(default=None, description="broker user name")
    password: SecretStr | None = Field(default=None, description="broker password")
    tls: TlsConfig | None = Field(
        default=None,
        description="TLS settings; the table turns TLS on even with an mqtt:// url",
    )
    shared_group: str | None = Field(
        default=None,
        description="subscribe as $share/<group>/<filter>: gateways with the same group split "
        "the stream (each needs its own client_id)",
    )
    publish_queue: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="messages the gateway publishes (events, discovery) held while the broker "
        "is away; beyond that new ones are dropped and counted",
    )

    @model_validator(mode="after")
    def _check_reconnect(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is smaller than reconnect_min_s")
        return self

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"expected mqtt:// or mqtts://host:port, got scheme {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("expected mqtt://host:port, the host is missing")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if port is not None and port == 0:
            raise ValueError("port 0 is not a broker port")
        return value

    @field_validator("topic_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        try:
            device_subscription(None, root=value)
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("shared_group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        if value is not None and not valid_segment(value):
            raise ValueError("must be 1-64 characters of [A-Za-z0-9_.-] (it is a topic level)")
        return value

    @property
    def inflight_window(self) -> int | None:
        """How many un-acked QoS 1 messages the broker sends us before it waits for acks, when
        the gateway knows it: MQTT 5's Receive Maximum, which the gateway announces. With
        3.1.1 it is the broker's setting (Mosquitto's ``max_inflight_messages``): None."""
        return self.receive_maximum if self.protocol == "5" else None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def use_tls(self) -> bool:
        return self.tls is not None or urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.use_tls else 1883)


class StorageConfig(Section):
    """The SQLite file and how readings are batched into transactions.

    A batch commits by size (`batch_rows`) or by time (`commit_interval_ms`), whichever comes
    first, and early when the broker's window of un-acked messages is full (acks wait for the
    commit, so the broker sends nothing more until then; see `gateway.writer`). Defaults are
    chosen for an SD card: few, large commits and rare checkpoints (README, "Storage")."""

    path: Path = Field(default=Path("gateway.db"), description="SQLite database file")
    batch_rows: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="commit when a batch holds this many rows (readings, devices, dead "
        "letters): bounds the latency of a busy stream (200 rows fill in 40 ms at 5,000 msg/s)",
    )
    commit_interval_ms: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="commit at the latest this long after the batch's first message: the "
        "most a quiet stream's reading waits for its commit and ack; longer means fewer "
        "commits (each rewrites the pages it touches: SD-card wear)",
    )
    idle_commit_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="commit early after a pause of at least this long that is also 8 times "
        "the stream's recent gap between messages: the broker has stopped sending because its "
        "in-flight window is full of messages waiting for our acks; a steady stream never "
        "pauses like that. 0 turns this off (then a full window waits for commit_interval_ms "
        "unless mqtt.protocol = '5', whose receive_maximum the gateway knows)",
    )
    queue_size: int = Field(
        default=2000,
        ge=10,
        le=1_000_000,
        description="bounded hand-off queue between the MQTT thread and the writer thread; "
        "when full the MQTT thread waits (backpressure to the broker)",
    )
    checkpoint_interval_ms: int = Field(
        default=60_000,
        ge=0,
        le=3_600_000,
        description="copy the WAL into the database this often (a PASSIVE checkpoint beside "
        "the writer): a page changed by many commits in between reaches the database file "
        "once; the WAL holds that much traffic (and is checkpointed inside a commit past "
        "wal_max_pages). 0 leaves it to SQLite's automatic checkpoint inside the writer's "
        "commits every 1000 pages (tail-latency stalls, more writes)",
    )
    wal_max_pages: int = Field(
        default=16_384,
        ge=100,
        le=1_000_000,
        description="with checkpoint_interval_ms: a WAL grown past this many pages (a burst) "
        "is checkpointed by the writer's commit at once instead of waiting for the interval",
    )
    last_seen_interval_ms: int = Field(
        default=30_000,
        ge=0,
        le=3_600_000,
        description="write the devices' last_seen at most this often (a device's first "
        "message, or a room change, is written at once): updating it on every commit rewrote "
        "the devices page every commit. The status page's last_seen may lag this much; a "
        "crash loses at most this much of last_seen, never a reading. 0: every commit",
    )
    page_size: int = Field(
        default=1024,
        ge=512,
        le=65536,
        description="SQLite page size of a NEW database file (an existing one keeps its own): "
        "a commit writes every page it touched whole, so smaller pages write less per small "
        "commit and larger ones less per large one; a power of two from 512 to 65536",
    )

    @field_validator("page_size")
    @classmethod
    def _check_page_size(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (512, 1024, ..., 65536)")
        return value

    max_dead_letter_bytes: int = Field(
        default=65536, ge=0, description="payload bytes kept with a dead letter (the rest is cut)"
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite synchronous mode of the writer: 'full' = a message is acked only "
        "once its batch is on disk, even across a power cut or OS crash (one fsync per commit "
        "of up to batch_rows rows); 'normal' = no fsync at commit, only at WAL checkpoints: "
        "faster on slow storage (SD cards), but a power cut can roll back the last commits "
        "after their messages were acked (a killed process alone loses nothing)",
    )
    retention_s: float = Field(
        default=30 * 86400.0,
        ge=0,
        description="readings received longer ago than this are deleted, but only once their "
        "window has been aggregated (ts below the sync watermark); local window aggregates "
        "older than this too. 0 keeps them forever (the database then grows without bound)",
    )
    dead_letter_retention_s: float = Field(
        default=7 * 86400.0,
        ge=0,
        description="dead letters last received longer ago than this are deleted; 0 keeps "
        "them forever",
    )
    baseline_retention_s: float = Field(
        default=30 * 86400.0,
        ge=0,
        description="a sensor's persisted baseline (table sensor_baselines) is deleted when it "
        "has not changed for this long (the device has sent nothing); 0 keeps them forever",
    )
    retention_interval_s: float = Field(
        default=600.0,
        gt=0,
        description="how often the retention job runs (also once at start); it deletes in "
        "chunks of 10,000 rows, one writer transaction each, so acks wait at most one chunk",
    )


class AdminConfig(Section):
    """The admin HTTP endpoint (/healthz, /metrics, the local status page)."""

    host: str = Field(
        default="127.0.0.1",
        description="listen address; loopback by default: the status page lists the home's "
        "devices, so expose it (e.g. 0.0.0.0) only on a network you trust",
    )
    port: int = Field(default=8081, ge=0, le=65535, description="listen port; 0 picks a free one")
    port_file: Path | None = Field(
        default=None, description="file the chosen port is written to (useful with port 0)"
    )
    status_page: bool = Field(
        default=True,
        description="serve the local status page (/ and /status) and its JSON (/api/status/...)",
    )


class IngestConfig(Section):
    """What ingest accepts as a reading (`gateway.validation`), and its hand-off queues towards
    the asyncio side (inference, aggregation)."""

    max_clock_skew_s: float = Field(
        default=DEFAULT_MAX_CLOCK_SKEW_S,
        ge=0,
        le=86400,
        description="a reading timed more than this ahead of the gateway's receive time is a "
        "dead letter (ts_out_of_range); the gateway's own clock must be right (NTP)",
    )
    max_age_s: float = Field(
        default=DEFAULT_MAX_AGE_S,
        gt=0,
        description="a reading timed more than this before the gateway's receive time is a "
        "dead letter (ts_out_of_range); default 7 days, as long as mqtt.session_expiry_s "
        "keeps our queued messages at the broker",
    )
    ranges: dict[str, MetricRange] = Field(
        default_factory=dict,
        description="per metric ([ingest.ranges.<metric>]): min, max, error_values overriding "
        "the registry's plausible range; a reading outside is a dead letter (out_of_range)",
    )

    callback_queue_batches: int = Field(
        default=256,
        ge=1,
        description="committed-reading batches waiting for callbacks; when full the oldest "
        "batch is dropped (the rows are stored already) and counted",
    )
    audio_queue_frames: int = Field(
        default=64,
        ge=1,
        description="audio frames waiting for callbacks; when full the oldest is dropped, counted",
    )

    @field_validator("ranges")
    @classmethod
    def _check_metric_names(cls, value: dict[str, MetricRange]) -> dict[str, MetricRange]:
        bad = [name for name in value if not METRIC_NAME.match(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a metric name ([a-z][a-z0-9_]{{0,63}})")
        return value

    def reading_checks(self) -> ReadingChecks:
        return ReadingChecks(
            max_clock_skew_s=self.max_clock_skew_s, max_age_s=self.max_age_s, ranges=self.ranges
        )


class DevicesConfig(Section):
    """How many device ids the gateway keeps state for, and for how long (the ``[devices]``
    table). Every message that names a device (native telemetry, audio and state topics, and
    every format adapter's readings and availability) is admitted by the decoder first; see
    `gateway.device_table`."""

    max_devices: int = Field(
        default=2000,
        ge=1,
        le=1_000_000,
        description="device ids (home, device) tracked at once; a message of a new device "
        "beyond this is a dead letter 'too_many_devices' (known devices keep working; one "
        "forgotten after idle_s is new again). Several times a large home's devices; raise it "
        "for a gateway of many homes. A sensor costs ~2.5 KB until its inference baseline "
        "fills, then ~40 KB per model metric (~200 KB with five)",
    )
    max_microphones: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="of those, devices that send audio (an audio stream holds ~40-250 KB and "
        "~1 % of a core); the audio of a device beyond this is a dead letter "
        "'too_many_devices', its other messages are admitted as usual",
    )
    idle_s: float = Field(
        default=86400.0,
        gt=0,
        description="a device not heard from for this long is forgotten: its slot, its "
        "inference windows (an open window is scored first; its learned baseline stays in "
        "SQLite and resumes when it comes back). A day: far above any reporting interval "
        "(hourly heartbeats, a 16-minute sensor), and the span of the default baseline",
    )


class GatewayConfig(BaseModel):
    """The whole gateway configuration (`load_config` reads it from the file and environment)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    gateway_id: str = Field(
        description="this gateway's id; also the home segment of its status topic"
    )
    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    admin: AdminConfig = AdminConfig()
    ingest: IngestConfig = IngestConfig()
    devices: DevicesConfig = DevicesConfig()
    adapters: AdapterSettings = AdapterSettings()
    # Cloud sync (gateway/sync): what leaves the home, and how. An empty uplink.url keeps
    # everything local (windows are still aggregated into the outbox).
    aggregation: AggregationSettings = AggregationSettings.model_validate({})
    privacy: PrivacySettings = PrivacySettings.model_validate({})
    uplink: UplinkSettings = UplinkSettings.model_validate({})
    # Edge inference (gateway/inference): models, batching, events, HA discovery.
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    # Local actions (gateway/actions): events -> MQTT commands and notifications.
    actions: ActionsSettings = ActionsSettings()
    # Home Assistant discovery and entity states (gateway/homeassistant), local broker only.
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    # Signed bundles from the cloud (gateway/updates): models and safe config overlays.
    updates: UpdatesSettings = UpdatesSettings()

    @field_validator("gateway_id")
    @classmethod
    def _check_gateway_id(cls, value: str) -> str:
        if not valid_segment(value):
            raise ValueError("must be 1-64 characters of [A-Za-z0-9_.-] (it is a topic level)")
        return value

    @model_validator(mode="after")
    def _check_command_topics(self) -> GatewayConfig:
        # The gateway subscribes to <topic_root>/#: a command there would come back as input.
        root = self.mqtt.topic_root + "/"
        for i, rule in enumerate(self.actions.rules):
            if rule.mqtt is not None and rule.mqtt.topic.startswith(root):
                raise ValueError(
                    f"actions.rules[{i}].mqtt.topic: {rule.mqtt.topic!r} is under mqtt.topic_root "
                    f"{self.mqtt.topic_root!r}, which the gateway reads as device input; publish "
                    "commands on the device's own topic (e.g. zigbee2mqtt/<name>/set)"
                )
        return self

    @model_validator(mode="after")
    def _check_updates_transport(self) -> GatewayConfig:
        # The /desired answer is not signed: it picks which signed bundle runs. Over plain
        # HTTP anyone on the path could make a gateway install an older (signed) bundle.
        url = self.uplink.url
        if self.updates_on and url and url.startswith("http://"):
            host = (urlsplit(url).hostname or "").lower()
            if host not in ("localhost", "::1") and not host.startswith("127."):
                raise ValueError(
                    f"uplink.url: {url!r} is plain HTTP while [updates] is on; bundles need "
                    "https:// (or a loopback address): the cloud's answer chooses which signed "
                    "version runs"
                )
        return self

    @property
    def updates_on(self) -> bool:
        """Whether the gateway polls for bundles: `updates.enabled` when set, else whether both
        `updates.root_file` and `uplink.url` are."""
        if self.updates.enabled is not None:
            return self.updates.enabled
        return self.updates.root_file is not None and bool(self.uplink.url)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"homeedge-gateway-{self.gateway_id}"

    def commit_policy_warnings(self) -> list[str]:
        """Settings that work but defeat the commit policy (`StorageConfig`), logged at start.

        Acks wait for the commit, so a batch can hold at most the broker's in-flight window of
        messages: a window smaller than `batch_rows` ends batches there (more, smaller
        commits: more writes to the card), and with the stall trigger off a full window waits
        for the whole commit interval (throughput collapses to a window per interval)."""
        storage, window = self.storage, self.mqtt.inflight_window
        notes = []
        if window is not None and window < storage.batch_rows:
            notes.append(
                f"mqtt.receive_maximum = {window} is below storage.batch_rows = "
                f"{storage.batch_rows}: a batch commits whenever {window} messages wait for "
                "their ack (more, smaller commits); raise mqtt.receive_maximum"
            )
        if window is None and storage.idle_commit_ms == 0:
            notes.append(
                "storage.idle_commit_ms = 0 with mqtt.protocol = '3.1.1': when the broker's "
                "in-flight window (Mosquitto's max_inflight_messages) is full, the batch waits "
                f"for storage.commit_interval_ms = {storage.commit_interval_ms} before anything "
                "is acked; use protocol '5' or idle_commit_ms > 0"
            )
        return notes


_NAMES_FIELD = re.compile(r"[a-z_]+(\.[a-z_]+|\[\d+\])+: ")


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``mqtt.url: expected mqtt://host:port ...``; list items by index,
    ``actions.rules[1].webhook.url: ...``."""
    lines = []
    for err in exc.errors():
        where = ""
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        msg = err["msg"]
        if not where and _NAMES_FIELD.match(msg.removeprefix("Value error, ")):
            # A check across sections names its field itself ("actions.rules[0].mqtt.topic: ").
            lines.append(msg.removeprefix("Value error, "))
            continue
        lines.append(f"{where or '(top level)'}: {msg}")
    return "\n".join(lines)


def environment_values() -> dict[str, Any]:
    """The ``HOMEEDGE_GATEWAY__...`` variables as nested values (names case-insensitive)."""
    if not any(name.upper().startswith(ENV_PREFIX) for name in os.environ):
        return {}
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(
        GatewayConfig,  # type: ignore[arg-type]  # it reads only the model's fields and config
        case_sensitive=False,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )
    return dict(source())


def merged_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `top`, table by table (a value that is not a table replaces)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged_tables(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, **overrides: Any) -> GatewayConfig:
    """Read the TOML file at `path` (optional) plus the environment; raise `ConfigError`."""
    values: dict[str, Any] = {}
    if path is not None:
        toml_path = Path(path)
        try:
            with toml_path.open("rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {toml_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {toml_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {toml_path} cannot be read: {exc}") from None
    try:
        env = environment_values()
    except ValueError as exc:  # pydantic-settings' SettingsError: a value that is not valid JSON
        raise ConfigError(f"environment ({ENV_PREFIX}...): {exc}") from None
    try:
        values = merged_tables(merged_tables(values, env), overrides)
        return GatewayConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
