"""`UpdatesSettings`: the ``[updates]`` section of the gateway config (cloud -> edge bundles)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.metrics import METRIC_NAME


class UpdatesSettings(BaseModel):
    """Signed bundles (models and config overlays) from the cloud, through TUF: see
    `gateway.updates`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(
        default=None,
        description="poll the cloud for bundles; default: on when root_file and uplink.url "
        "are both set",
    )
    root_file: Path | None = Field(
        default=None,
        description="the trusted TUF root.json the operator ships with the gateway (every "
        "bundle is verified from it; later roots are fetched and verified by TUF)",
    )
    poll_s: float = Field(
        default=300.0, ge=1, le=86400, description="how often /api/v1/gateway/desired is polled"
    )
    poll_jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="each poll waits poll_s * uniform(1 - jitter, 1 + jitter): a fleet started "
        "at once does not poll in step",
    )
    slots_dir: Path | None = Field(
        default=None,
        description="A/B slots, their state file and TUF's metadata cache; default: the "
        "directory 'updates' beside storage.path",
    )
    soak_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="how long an applied bundle is watched before it is reported healthy, "
        "when the cloud's /desired does not say",
    )
    report_margin_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="a 'healthy' report the cloud has not confirmed within soak_s + this "
        "makes the gateway revert to its previous slot (the version is not marked failed: it "
        "is installed again when the cloud answers and still asks for it)",
    )
    max_trial_boots: int = Field(
        default=3,
        ge=1,
        le=100,
        description="a bundle on trial (not yet confirmed healthy) that has seen this many "
        "starts of the gateway (crashes, kills) is reverted at the next start",
    )
    remote_may_release: list[str] = Field(
        default_factory=list,
        description="metrics whose local policy a remote overlay may relax (e.g. from local to "
        "aggregate); every other privacy change from the cloud must be stricter than this "
        "config",
    )

    @field_validator("remote_may_release")
    @classmethod
    def _check_metric_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not METRIC_NAME.match(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a metric name ([a-z][a-z0-9_]{{0,63}})")
        return value
