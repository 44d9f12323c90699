"""Settings of the gateway's cloud-sync path: the ``[aggregation]``, ``[privacy]`` and ``[uplink]``
sections of the gateway config.

Decisions recorded here:

- A metric that no policy names is ``local`` (it never leaves the home) unless `default_policy`
  says ``aggregate``: private by default, so a new device cannot leak a new kind of data.
- Health metrics (``schemas.metrics`` ``health=True``, e.g. heart rate) are ``noised`` by default
  and may only be ``noised`` or ``local``; a config that asks for them in plain is refused.
- A registered metric's policy is its registry `default_policy` (``aggregate`` but for room
  occupancy, ``local``: it says when a home is empty) unless ``policies`` names it.
- Event metrics (``schemas.metrics`` ``kind=event``: alarms, keywords, anomalies) release the
  count of events of a window, down to one (`schemas.batch_rules`), not `min_window_count`.
- ``noised`` needs the metric's registered range (it bounds one reading's influence), so it is
  refused for a metric the registry does not know.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from schemas.batch import MAX_AGGREGATES_PER_BATCH, Policy
from schemas.batch_rules import (
    MIN_WINDOW_COUNT,
    PSEUDONYM_HEX_MAX,
    PSEUDONYM_HEX_MIN,
    PSEUDONYM_PREFIX,
    RoomClass,
    must_be_noised,
)
from schemas.metrics import METRICS, metric

__all__ = ["AggregationSettings", "PrivacySettings", "RoomClass", "UplinkSettings"]


def _default_policies() -> dict[str, Policy]:
    return {
        m.name: Policy.NOISED if must_be_noised(m.name) else Policy(m.default_policy)
        for m in METRICS.values()
    }


class AggregationSettings(BaseModel):
    """``[aggregation]``: tumbling windows over the committed readings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: int = Field(
        60, ge=1, le=86400, description="Window length in seconds; windows align to Unix time."
    )
    grace_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="A window is aggregated once window_end + grace_s <= now; readings for it "
        "stored later count as late.",
    )
    interval_s: float = Field(
        5.0, gt=0, le=3600, description="How often the aggregation pass runs."
    )
    max_windows_per_pass: int = Field(
        60,
        ge=1,
        description="Catch-up bound: at most this many windows per pass, so one pass after a long "
        "pause stays a short transaction.",
    )
    max_rows_per_pass: int = Field(
        200_000,
        ge=1,
        description="Catch-up bound in readings: a pass stops before a window that would take it "
        "past this many rows (it always does at least one window), so after an outage at high "
        "ingest rates each pass holds the writer thread, and so the acks, only briefly.",
    )
    windows_per_batch: int = Field(
        10,
        ge=1,
        description="Windows are closed in groups of this many, so one pass makes one batch of "
        "them: bigger groups compress better on the uplink, at the cost of cloud latency.",
    )
    clock: Literal["wall", "event"] = Field(
        "wall",
        description="What 'now' is when deciding that a window is closed: 'wall' = this "
        "machine's clock; 'event' = the newest stored reading's timestamp (capped at the wall "
        "clock), for devices that replay history faster than real time (the demo). With 'event' "
        "a window stays open until newer readings arrive.",
    )
    backfill_s: float = Field(
        3600.0,
        ge=0,
        description="On the very first pass, readings older than now - backfill_s are not "
        "aggregated (history from before sync was enabled).",
    )

    @model_validator(mode="after")
    def _check_groups(self) -> AggregationSettings:
        if self.max_windows_per_pass < self.windows_per_batch:
            raise ValueError("max_windows_per_pass is smaller than windows_per_batch")
        return self


class PrivacySettings(BaseModel):
    """``[privacy]``: what may leave the home, and in which form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_file: Path = Field(
        Path("homeedge-sync.secret"),
        description="File holding the pseudonym key; created with mode 0600 on first start. "
        "The key never leaves the gateway. In the gateway config the default is next to the "
        "SQLite file: storage.path with the suffix .secret.",
    )
    secret: SecretStr | None = Field(
        None, description="The pseudonym key itself (overrides secret_file; for tests)."
    )
    pseudonym_rotation_days: int = Field(
        30, ge=0, description="Home pseudonyms change every this many days; 0 = never."
    )
    pseudonym_prefix: str = Field(
        "h-", pattern=f"^{PSEUDONYM_PREFIX}$", description="Prefix of home pseudonyms."
    )
    pseudonym_hex_chars: int = Field(
        PSEUDONYM_HEX_MIN,
        ge=PSEUDONYM_HEX_MIN,
        le=PSEUDONYM_HEX_MAX,
        description="Length of the HMAC-SHA256 hex digest kept in a pseudonym (the batch "
        "contract's bounds, schemas.batch_rules).",
    )
    min_window_count: int = Field(
        MIN_WINDOW_COUNT,
        ge=1,
        description="Windows with fewer readings than this are suppressed (for noised metrics: "
        "fewer than this noisy count). Below the cloud's own floor (its min_window_count, 5 by "
        "default) the cloud refuses the windows that pass here. Event metrics (alarms, "
        "keywords, anomalies) are released from one event up: their count is the statistic.",
    )
    policies: dict[str, Policy] = Field(
        default_factory=_default_policies,
        description="metric -> local | aggregate | noised, merged over the defaults: registry "
        "metrics their default policy (aggregate; inference_occupancy local), health metrics "
        "noised.",
    )
    default_policy: Literal["local", "aggregate"] = Field(
        "local", description="Policy of a metric that `policies` does not name."
    )
    epsilon: float = Field(
        0.5, gt=0, le=100, description="Epsilon spent by one noised window aggregate."
    )
    budget_epsilon: float = Field(
        100.0,
        gt=0,
        description="Epsilon one home may spend per budget period (all noised releases summed).",
    )
    budget_period_s: int = Field(
        86400, ge=60, description="Length of a budget period in seconds (aligned to Unix time)."
    )
    significant_digits: int = Field(
        7,
        ge=3,
        le=17,
        description="Released statistics are rounded to this many significant digits (float noise "
        "past a sensor's precision costs uplink bytes and says nothing); the local aggregates "
        "table keeps full precision.",
    )
    rooms: dict[str, RoomClass] = Field(
        default_factory=dict,
        description="room name -> room class; rooms not named here get a class from their name "
        "(kitchen, living, bedroom, bathroom, office, hall, garage, outdoor, other).",
    )

    @field_validator("policies", mode="after")
    @classmethod
    def _merge_defaults(cls, value: dict[str, Policy]) -> dict[str, Policy]:
        return {**_default_policies(), **value}

    @model_validator(mode="after")
    def _check_policies(self) -> PrivacySettings:
        for name, policy in self.policies.items():
            known = metric(name)
            if policy is Policy.NOISED and known is None:
                raise ValueError(
                    f"policy of {name!r} is noised but the metric has no registered range"
                )
            if must_be_noised(name) and policy is Policy.AGGREGATE:
                raise ValueError(f"{name!r} is health data: its policy is noised or local")
        if self.budget_epsilon < self.epsilon:
            raise ValueError("budget_epsilon is smaller than one release's epsilon")
        return self

    def policy_of(self, name: str) -> Policy:
        policy = self.policies.get(name)
        if policy is not None:
            return policy
        # A health metric left out of an explicit `policies` table stays private.
        if must_be_noised(name):
            return Policy.NOISED
        return Policy(self.default_policy)


class UplinkSettings(BaseModel):
    """``[uplink]``: the durable outbox and the HTTP client that drains it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        "",
        pattern=r"^(https?://.+)?$",
        description="Base URL of the cloud; batches go to <url>/api/v1/batches. Empty (the "
        "default): no uplink; windows are still aggregated and batches wait in the outbox.",
    )
    token: SecretStr = Field(SecretStr(""), description="This gateway's bearer token.")
    batch_max_aggregates: int = Field(
        1000,
        ge=1,
        le=MAX_AGGREGATES_PER_BATCH,
        description="Aggregates per batch; a pass with more makes several batches.",
    )
    send_interval_s: float = Field(
        5.0, gt=0, description="Idle poll interval of the uplink when nobody notifies it."
    )
    backoff_min_s: float = Field(0.5, gt=0, description="First retry delay (full jitter).")
    backoff_max_s: float = Field(60.0, gt=0, description="Retry delay cap.")
    retry_after_max_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Longest wait a cloud's Retry-After (on 429 or 503) can ask for; a longer "
        "one is cut to this, so a broken proxy cannot stall the uplink for days.",
    )
    retry_after_jitter: float = Field(
        0.5,
        ge=0,
        le=10,
        description="A Retry-After of s seconds waits uniform(s, s * (1 + this)): a fleet told "
        "to come back in 5 s does not come back in the same millisecond.",
    )
    catchup_batches_per_s: float = Field(
        20.0, gt=0, description="Token-bucket rate of sends, so a backlog drains paced."
    )
    catchup_burst: int = Field(5, ge=1, description="Token-bucket size (sends without waiting).")
    outbox_max_rows: int = Field(
        10000, ge=1, description="Pending batches kept at most (the full policy applies beyond)."
    )
    outbox_ttl_s: float = Field(
        7 * 86400.0, gt=0, description="A pending batch older than this is dropped (counted)."
    )
    full_policy: Literal["drop_oldest", "refuse_new"] = Field(
        "drop_oldest", description="What a full outbox does with a new batch."
    )
    sent_retention_s: float = Field(
        3600.0, ge=0, description="Sent batches are kept this long for inspection, then pruned."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Total timeout of one POST.")
    compression: Literal["gzip"] = Field("gzip", description="Body encoding on the wire.")

    @field_validator("url")
    @classmethod
    def _url_parses(cls, url: str) -> str:
        # The pattern admits a port out of range, a non-numeric one or no host, which the
        # uplink's `CloudSession` only finds when it sends (a traceback every pass instead of
        # a config error at start).
        if url:
            parts = urllib.parse.urlsplit(url)  # ValueError for a bad IPv6 literal
            if not parts.hostname:
                raise ValueError(f"no host in {url!r}")
            parts.port  # noqa: B018  ValueError for a port out of range or not a number
        return url

    @model_validator(mode="after")
    def _check_backoff(self) -> UplinkSettings:
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s is smaller than backoff_min_s")
        # Without a token every batch would be refused (401) and parked: refuse the config.
        if self.url and not self.token.get_secret_value():
            raise ValueError("url is set but token is empty")
        return self
