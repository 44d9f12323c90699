"""The JSON bodies of the fleet API (requests and answers); the handlers decode and encode these,
and the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

GatewayName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
Tag = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,31}$")]
Version = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Share = Annotated[float, msgspec.Meta(gt=0, le=1)]

RolloutState = Literal["running", "paused", "halted", "aborted", "completed"]
WaveState = Literal["pending", "running", "succeeded", "failed", "aborted"]
AssignmentState = Literal[
    "pending",
    "assigned",
    "downloading",
    "staged",
    "applied",
    "healthy",
    "failed",
    "rolled_back",
    "reverted",
    "offline",
    "skipped",
]
ReportState = Literal["downloading", "staged", "applied", "healthy", "failed", "rolled_back"]


class CreateRollout(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A rollout of bundle `version` to the gateways named and those with any of the tags.

    The canary wave holds `canary_count` gateways (or `canary_share` of them, rounded up);
    each next wave is `wave_factor` times the previous one. A wave is done when each of its
    gateways reported healthy on the version, or failed (a failure report, or no healthy
    report within `soak_s` plus the cloud's report_grace_s of its own first report), or is
    offline (no report at all within the cloud's offline_after_s: no failure, it catches up
    at its next poll) and one gateway of the wave is healthy; more failures in a wave than
    `max_failures` (or than `max_failure_share` of the wave) halt the rollout and ask that
    whole wave back to what it ran before.
    """

    version: Version
    gateways: list[GatewayName] = []
    tags: list[Tag] = []
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    canary_count: Annotated[int, msgspec.Meta(ge=1)] | None = None
    canary_share: Share | None = None
    wave_factor: Annotated[float, msgspec.Meta(ge=1, le=100)] = 2.0
    soak_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 300.0
    max_failures: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_failure_share: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class TagsBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    tags: Annotated[list[Tag], msgspec.Meta(max_length=32)]


class GatewayHealth(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A gateway's own health checks since it applied the bundle."""

    models_loaded: bool
    warmed_up: bool
    # Not bound below: a count the gateway got wrong must not turn its report into a 400 (an
    # unconfirmed report makes it revert); the scheduler judges by `state`, not by these.
    inference_errors: int
    dropped_frames: int
    ingest_ok: bool
    sync_ok: bool


class Report(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /api/v1/gateway/report``: where a gateway is with a rollout."""

    rollout: Annotated[str, msgspec.Meta(max_length=32)] | None
    running_version: Version | None
    staged_version: Version | None
    state: ReportState
    health: GatewayHealth
    # Any length (the body is bounded); stored cut to MAX_REASON_CHARS.
    reason: str = ""


class Desired(msgspec.Struct, frozen=True):
    """``GET /api/v1/gateway/desired``: the version this gateway should run (null: stay), or
    `rollback_to` a version to go back to (0: the built-in models)."""

    version: int | None
    target: str | None
    rollout: str | None
    soak_s: float
    rollback_to: int | None


class Ok(msgspec.Struct, frozen=True):
    ok: bool


class WaveProgress(msgspec.Struct, frozen=True):
    number: int
    size: int
    state: WaveState
    started_at: float | None
    finished_at: float | None
    # Assignments of the wave by state (only states that occur).
    counts: dict[str, int]


class GatewayAssignment(msgspec.Struct, frozen=True):
    gateway: str
    wave: int
    state: AssignmentState
    reason: str
    previous_version: int | None
    rollback_to: int | None
    updated_at: float | None
    began_at: float | None  # its first report in the wave: its soak deadline counts from here


class RolloutSummary(msgspec.Struct, frozen=True):
    id: str
    version: int
    description: str
    state: RolloutState
    reason: str
    gateways: int
    healthy: int
    failed: int
    created_at: float
    updated_at: float
    finished_at: float | None


class RolloutDetail(msgspec.Struct, frozen=True):
    id: str
    version: int
    description: str
    state: RolloutState
    reason: str
    selector: dict[str, list[str]]
    canary_count: int | None
    canary_share: float | None
    wave_factor: float
    soak_s: float
    max_failures: int | None
    max_failure_share: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    waves: list[WaveProgress]
    gateways: list[GatewayAssignment]
    # The assignments that failed (reported failed or rolled back, or timed out).
    failures: list[GatewayAssignment]
    # The assignments the cloud asked back (rollback_to), failed or not.
    rollbacks: list[GatewayAssignment]


class RolloutsResponse(msgspec.Struct, frozen=True):
    rollouts: list[RolloutSummary]


class GatewayVersion(msgspec.Struct, frozen=True):
    gateway: str
    tags: list[str]
    running_version: int | None
    staged_version: int | None
    state: str | None
    reason: str
    rollout: str | None
    health: GatewayHealth | None
    reported_at: float | None
    # The version the cloud wants it on now (GET /api/v1/gateway/desired), if any.
    desired_version: int | None


class FleetVersions(msgspec.Struct, frozen=True):
    now: float
    gateways: list[GatewayVersion]
    # Gateways per running version ("builtin" for the built-in models, "unknown" unreported).
    versions: dict[str, int]
