"""The cloud service's configuration: a TOML file plus ``HOMEEDGE_CLOUD__<FIELD>`` overrides.

    database_url = "postgresql+asyncpg://cloud@127.0.0.1:5432/homeedge"
    host = "0.0.0.0"
    port = 8080
    read_token = "a-long-random-dashboard-token"
    workers = 2

    [gateways]
    gw-home-1 = "a-long-random-gateway-token"

    [http]
    header_timeout_s = 30

    [database]
    pool_size = 5

    [ingest]
    max_in_flight = 64

Environment variables win over the file: ``HOMEEDGE_CLOUD__PORT=9000``,
``HOMEEDGE_CLOUD__GATEWAYS='{"gw-1": "..."}'``. Unknown fields are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.batch import MAX_BATCH_BYTES
from schemas.batch_rules import MAX_CLOCK_SKEW_S, MIN_WINDOW_COUNT

ENV_PREFIX = "HOMEEDGE_CLOUD__"

GatewayId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
MIN_TOKEN_CHARS = 16


# Words that mark a token as a placeholder (the shipped examples' say change-me), compared after
# lower-casing and dropping everything but letters and digits: change_me, CHANGEME, change.me.
PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "yourtoken", "example")


def placeholder_word(token: str) -> str | None:
    """The placeholder word `token` contains, or None."""
    folded = "".join(c for c in token.lower() if c.isalnum())
    return next((w for w in PLACEHOLDER_WORDS if w in folded), None)


def _long_enough(token: SecretStr) -> SecretStr:
    # Tokens are compared in constant time, but a short token can still be guessed.
    if len(token.get_secret_value()) < MIN_TOKEN_CHARS:
        raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters")
    return token


Token = Annotated[SecretStr, AfterValidator(_long_enough)]


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the offending field."""


class HttpLimits(BaseModel):
    """How long and how much one connection may take (the ``[http]`` table).

    A slow or hostile client holds a connection and a little memory only this long: a
    connection that has not sent a complete request head within `header_timeout_s` of
    connecting or of its previous answer is closed (aiohttp's keep-alive timer, which covers
    the idle wait and the head's arrival alike); a body the handler reads must arrive within
    `body_timeout_s` (408); a body the handler does not read is never inflated, and is drained
    for at most `lingering_s` so the client sees the answer, then the connection closes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    header_timeout_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="seconds a connection may take to send a request's head, idle keep-alive "
        "included (longer than clients' own idle timeout: aiohttp's client keeps 15 s)",
    )
    body_timeout_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="seconds to receive a body the route reads (408 after)",
    )
    lingering_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="seconds an unread body is drained (not inflated) before the connection "
        "closes; 0 closes at once (the client may then miss the answer)",
    )
    max_header_bytes: int = Field(
        default=8190,
        ge=1024,
        le=65536,
        description="longest request line and header field (400 above)",
    )
    max_headers: int = Field(
        default=64, ge=8, le=1024, description="most header fields per request"
    )


class DatabaseLimits(BaseModel):
    """The serving engine's connection pool and statement limits (the ``[database]`` table).

    Each worker process holds at most `pool_size` + `max_overflow` connections; all workers
    together (plus a migration connection at start-up) must stay below PostgreSQL's
    ``max_connections`` minus its ``superuser_reserved_connections`` (100 and 3 by default):
    with the defaults, 12 workers fit. Ingest itself uses three connections per worker at a time
    (`cloud.ingest.GROUP_WRITERS`); the rest serve the query API, the dashboard and analytics.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool_size: int = Field(
        default=5,
        ge=1,
        le=100,
        description="connections each worker keeps open (SQLAlchemy pool_size)",
    )
    max_overflow: int = Field(
        default=3,
        ge=0,
        le=100,
        description="connections a worker may open beyond pool_size under load, closed when "
        "returned (SQLAlchemy max_overflow)",
    )
    pool_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="seconds a request waits for a free connection before it is answered 503 "
        "with Retry-After (the database is behind); SQLAlchemy's pool_timeout",
    )
    statement_timeout_s: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        description="PostgreSQL statement_timeout of the serving sessions: a statement running "
        "longer is cancelled and its request answered 503 with Retry-After, before a gateway's "
        "own request timeout (30 s by default); 0 = none. Migrations and analytics runs are "
        "not bound by it",
    )


class IngestLimits(BaseModel):
    """How much upload work one worker holds at once (the ``[ingest]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="uploads one worker accepts at a time; one more is answered 503 with "
        "Retry-After before its body is read (each holds up to max_body_bytes in memory)",
    )
    retry_after_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="seconds a 503 asks the client to wait (Retry-After), for every "
        "backpressure answer: uploads over max_in_flight, no free connection, a statement "
        "timeout, a database that does not answer",
    )


class RetentionConfig(BaseModel):
    """How long stored rows are kept, and the upkeep that enforces it (the ``[retention]``
    table; see `cloud.storage`).

    On PostgreSQL expired rows go a whole partition at a time (daily partitions of the
    aggregates, weekly of the rollups; DROP TABLE, no DELETE scan), on SQLite by DELETE in small
    chunks. Either way a row is kept at least the days set, at most one partition width more.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregates_days: int = Field(
        default=0,
        ge=0,
        le=36500,
        description="days of raw window aggregates kept (by window start); 0 keeps them all",
    )
    rollups_days: int = Field(
        default=0,
        ge=0,
        le=36500,
        description="days of hour and day rollups kept (by bucket start); 0 keeps them all. "
        "Must be >= aggregates_days (and not set while aggregates_days is 0) and >= "
        "analytics_lookback_days: the dashboard's hour and day views and the analytics read "
        "the rollups",
    )
    partitions_ahead_days: int = Field(
        default=7,
        ge=1,
        le=366,
        description="PostgreSQL: partitions are created this many days ahead of the clock",
    )
    interval_s: float = Field(
        default=3600.0,
        ge=0,
        le=86400,
        description="seconds between upkeep runs (partitions ahead, retention); 0 = never",
    )


class UpdatesConfig(BaseModel):
    """Fleet rollouts (the ``[updates]`` table; see `cloud.release`, `cloud.updates` and
    `cloud.rollouts`): the signed repository the gateways update from and who may roll out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository_dir: Path | None = Field(
        default=None,
        description="the TUF repository (python -m cloud.release init) served under "
        "/api/v1/updates/; unset: those endpoints answer 404",
    )
    keys_dir: Path | None = Field(
        default=None,
        description="the online keys (targets, snapshot, timestamp); default "
        "<repository_dir>/keys. Never the offline root key",
    )
    operator_token: Token | None = Field(
        default=None,
        description="bearer token for rollout writes (create, pause, resume, abort, gateway "
        "tags); unset: no rollout can be created. Reads take the read token too",
    )
    scheduler_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="seconds between rollout scheduler runs (one worker acts at a time, "
        "through a PostgreSQL advisory lock); 0 = never",
    )
    refresh_interval_s: float = Field(
        default=3600.0,
        ge=0,
        le=86400,
        description="seconds between re-signing checks of the repository's snapshot and "
        "timestamp (needs keys_dir or <repository_dir>/keys); 0 = never (then run "
        "python -m cloud.release refresh from cron)",
    )
    report_grace_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="a gateway of a wave that began (reported downloading, staged or applied) "
        "and has not reported healthy within the rollout's soak_s plus this many seconds after "
        "its first report counts as failed",
    )
    offline_after_s: float = Field(
        default=3600.0,
        ge=0,
        le=30 * 86400,
        description="a gateway of a wave that has not reported at all this many seconds after "
        "its wave started is offline: no failure, its wave goes on without it, and it gets "
        "the version at its next poll. Keep it well above the gateways' [updates] poll_s "
        "(300 s +-20 %)",
    )


class CloudConfig(BaseSettings):
    """Everything `python -m cloud` needs."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: str = Field(
        "sqlite+aiosqlite:///cloud.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://...",
        min_length=1,
    )
    host: str = Field("127.0.0.1", description="address to listen on", min_length=1)
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one")
    port_file: Path | None = Field(
        None, description="when set, the port actually listened on is written here once ready"
    )
    gateways: dict[GatewayId, Token] = Field(
        default_factory=dict, description="gateway id -> bearer token that gateway uploads with"
    )
    read_token: Token = Field(description="bearer token of the dashboard and the query API")
    metrics_token: Token | None = Field(
        None,
        description="bearer token /metrics requires; unset: /metrics needs no credential "
        "(fine on the default loopback bind; set it when the cloud listens beyond loopback)",
    )
    max_body_bytes: int = Field(
        MAX_BATCH_BYTES,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest accepted request body, after gzip decompression (413 above it)",
    )
    min_window_count: int = Field(
        MIN_WINDOW_COUNT,
        ge=1,
        description="a batch with a window of fewer readings is refused (422 window_too_small), "
        "whatever the gateway's own min_window_count; keep it <= the gateways' setting",
    )
    max_clock_skew_s: float = Field(
        MAX_CLOCK_SKEW_S,
        ge=0,
        le=86400,
        description="a batch with a window ending (or made) later than now plus this many "
        "seconds is refused (422 window_in_future / created_in_future)",
    )
    workers: int = Field(
        1, ge=1, le=64, description="processes serving the same port (SO_REUSEPORT, Linux)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="logging level of `python -m cloud`"
    )
    analytics_interval_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="seconds between analytics runs (fleet, clusters, anomalies); 0 = never",
    )
    analytics_lookback_days: int = Field(
        14, ge=1, le=366, description="days of rollups the analytics look at"
    )
    cluster_k: int = Field(
        0, ge=0, le=20, description="clusters of daily profiles; 0 = choose k by silhouette"
    )
    cluster_k_max: int = Field(6, ge=2, le=20, description="largest k tried when cluster_k = 0")
    cluster_sample_homes: int = Field(
        2000,
        ge=10,
        le=1_000_000,
        description="clusters are fitted (and k chosen) on at most this many homes, the same "
        "ones each run; every home is then assigned to its nearest centroid. Bounds a run's "
        "clustering cost whatever the fleet's size",
    )
    anomaly_threshold: float = Field(
        3.5, gt=0, description="robust z-score from which a home's metric counts as anomalous"
    )
    anomaly_top: int = Field(50, ge=1, le=10000, description="anomalies listed, highest first")
    online_after_s: float = Field(
        300.0, gt=0, description="a gateway counts as online when it uploaded this recently"
    )
    dashboard_poll_s: float = Field(
        5.0, ge=0.5, le=3600, description="seconds between the dashboard's live updates"
    )
    http: HttpLimits = Field(
        default_factory=HttpLimits, description="per-connection time and size limits"
    )
    database: DatabaseLimits = Field(
        default_factory=DatabaseLimits, description="connection pool and statement limits"
    )
    ingest: IngestLimits = Field(
        default_factory=IngestLimits, description="uploads in flight per worker, Retry-After"
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="how long aggregates and rollups are kept; time partitions (PostgreSQL)",
    )
    updates: UpdatesConfig = Field(
        default_factory=UpdatesConfig,
        description="fleet rollouts: the signed update repository, the operator token",
    )
    demo: bool = Field(
        False,
        description="a throw-away demo: accept the placeholder tokens of the shipped examples "
        "(any token containing change-me, replace-me, placeholder, your-token or example, in "
        "any case and punctuation), which a real deployment must replace",
    )

    @model_validator(mode="after")
    def _no_placeholder_tokens(self) -> CloudConfig:
        # The example files' tokens are public: a cloud started with one is open to anyone who
        # read the README. Refuse, naming the field, unless the operator says this is a demo.
        if self.demo:
            return self
        named = [("read_token", self.read_token)]
        if self.metrics_token is not None:
            named.append(("metrics_token", self.metrics_token))
        if self.updates.operator_token is not None:
            named.append(("updates.operator_token", self.updates.operator_token))
        named += [(f"gateways.{g}", t) for g, t in self.gateways.items()]
        for field, token in named:
            word = placeholder_word(token.get_secret_value())
            if word is not None:
                raise ValueError(
                    f"{field} is a placeholder ({word!r}) as in the example files: set a "
                    "random token (python -c 'import secrets; print(secrets.token_urlsafe(24))'), "
                    "or demo = true for a throw-away demo"
                )
        return self

    @model_validator(mode="after")
    def _rollups_outlive_what_reads_them(self) -> CloudConfig:
        # The dashboard's hour and day views and the analytics read the rollups: kept shorter
        # than the aggregates or the analytics' lookback, those views show gaps (review2 #9).
        kept = self.retention.rollups_days
        if kept == 0:
            return self  # kept forever
        aggregates = self.retention.aggregates_days
        if aggregates == 0 or kept < aggregates:
            held = "forever (0)" if aggregates == 0 else f"{aggregates} days"
            raise ValueError(
                f"retention.rollups_days = {kept} is shorter than retention.aggregates_days "
                f"({held}): the dashboard's hour and day views read the rollups; set "
                "rollups_days >= aggregates_days, or 0 to keep them all"
            )
        if kept < self.analytics_lookback_days:
            raise ValueError(
                f"retention.rollups_days = {kept} is shorter than analytics_lookback_days "
                f"({self.analytics_lookback_days}): the analytics read the rollups; set "
                "rollups_days >= analytics_lookback_days, or 0 to keep them all"
            )
        return self

    @model_validator(mode="after")
    def _tokens_are_distinct(self) -> CloudConfig:
        # A token must name exactly one principal, or one gateway could write as another.
        seen: dict[str, str] = {self.read_token.get_secret_value(): "read_token"}
        if self.metrics_token is not None:
            other = seen.setdefault(self.metrics_token.get_secret_value(), "metrics_token")
            if other != "metrics_token":
                raise ValueError(f"metrics_token reuses the token of {other}")
        if self.updates.operator_token is not None:
            operator = self.updates.operator_token.get_secret_value()
            other = seen.setdefault(operator, "updates.operator_token")
            if other != "updates.operator_token":
                raise ValueError(f"updates.operator_token reuses the token of {other}")
        for gateway, token in self.gateways.items():
            other = seen.setdefault(token.get_secret_value(), f"gateways.{gateway}")
            if other != f"gateways.{gateway}":
                raise ValueError(f"gateways.{gateway} reuses the token of {other}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Init arguments win, then the environment, then the TOML file (when a subclass names one).
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def load_config(path: Path | None) -> CloudConfig:
    """Read `path` (TOML, optional) and the environment; raise ConfigError naming the field."""
    if path is not None:
        try:
            # Parse once here so a syntax error is reported as such, with its line.
            tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    class _FromFile(CloudConfig):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        loaded = _FromFile()  # type: ignore[call-arg]  # values come from the sources
    except ValidationError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid cloud config{where}: {_describe(exc)}") from None
    # Rebuild as the plain class, so the config pickles into worker processes.
    return CloudConfig.model_construct(**dict(loaded))
