"""Remote configuration overlays: what a bundle from the cloud may change, checked against the
gateway's own configuration.

An overlay is ``{section: {field: value}}`` with the TOML file's names. It is merged over the
running configuration (`gateway.config.merged_tables`, table by table) and the result is
validated by `GatewayConfig` itself, so an overlay is refused for everything a local file
would be refused for, plus:

- only the fields in `ALLOWED` may be named (inference thresholds and windows, aggregation
  windows, uplink pacing, privacy settings); mqtt, storage, admin, credentials, URLs, tokens,
  paths and everything else are refused, naming the field;
- privacy only towards more privacy, compared with the local configuration (`_privacy_errors`):
  a metric's policy may only move towards ``local`` (aggregate < noised < local: noised
  releases less than exact aggregates), unless the home lists the metric in
  ``[updates] remote_may_release``; ``default_policy`` likewise; ``epsilon`` and
  ``budget_epsilon`` may only shrink, ``budget_period_s`` and ``min_window_count`` only grow,
  ``significant_digits`` only shrink, pseudonyms only rotate more often (never turn rotation
  off).

Of the allowed fields, ``inference.thresholds`` takes effect live (the models are swapped with
the new thresholds, `gateway.inference.engine.InferenceEngine.swap_runtime`); every other field
is read by its component at start, so an overlay naming one asks for a restart of the gateway
(`Overlay.needs_restart`; `python -m gateway` restarts in-process, the MQTT session resumes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.config import GatewayConfig, format_validation_error, merged_tables
from schemas.batch import Policy

ALLOWED: dict[str, frozenset[str]] = {
    "inference": frozenset(
        {
            "thresholds",
            "sensor_window_s",
            "sensor_grace_s",
            "baseline_hours",
            "warmup_hours",
            "relearn_hours",
            "speech_summary_s",
            "alarm_off_delay_s",
        }
    ),
    "aggregation": frozenset(
        {
            "window_s",
            "grace_s",
            "interval_s",
            "windows_per_batch",
            "max_windows_per_pass",
            "max_rows_per_pass",
        }
    ),
    "uplink": frozenset(
        {
            "batch_max_aggregates",
            "send_interval_s",
            "backoff_min_s",
            "backoff_max_s",
            "retry_after_max_s",
            "retry_after_jitter",
            "catchup_batches_per_s",
            "catchup_burst",
            "request_timeout_s",
        }
    ),
    "privacy": frozenset(
        {
            "policies",
            "default_policy",
            "epsilon",
            "budget_epsilon",
            "budget_period_s",
            "min_window_count",
            "significant_digits",
            "pseudonym_rotation_days",
        }
    ),
}
LIVE = frozenset({"inference.thresholds"})
"""Fields that take effect without a restart."""

# How private a policy is: a change may only go up this scale.
_PRIVACY_RANK = {Policy.AGGREGATE: 0, Policy.NOISED: 1, Policy.LOCAL: 2}


class OverlayError(ValueError):
    """An overlay the gateway refuses; the message names the field(s)."""


@dataclass(frozen=True)
class Overlay:
    """A checked overlay: the configuration it makes and the fields it names."""

    config: GatewayConfig
    fields: tuple[str, ...]  # "section.field", sorted

    @property
    def needs_restart(self) -> bool:
        return any(f not in LIVE for f in self.fields)


def apply_overlay(config: GatewayConfig, overlay: Mapping[str, Any] | None) -> Overlay:
    """`config` with `overlay` merged over it, checked (see the module docstring); raise
    `OverlayError` naming every refused field."""
    if not overlay:
        return Overlay(config, ())
    if not isinstance(overlay, Mapping):
        raise OverlayError("overlay: expected a table of sections")
    errors: list[str] = []
    fields: list[str] = []
    for section, table in overlay.items():
        allowed = ALLOWED.get(section)
        if allowed is None:
            errors.append(f"overlay: section {section!r} may not be changed remotely")
            continue
        if not isinstance(table, Mapping):
            errors.append(f"overlay: {section}: expected a table of fields")
            continue
        for name in table:
            if name not in allowed:
                errors.append(f"overlay: {section}.{name} may not be changed remotely")
            else:
                fields.append(f"{section}.{name}")
    if errors:
        raise OverlayError("\n".join(errors))
    merged = merged_tables(config.model_dump(), dict(overlay))
    try:
        new = GatewayConfig.model_validate(merged)
    except ValidationError as exc:
        text = format_validation_error(exc)
        raise OverlayError("\n".join(f"overlay: {line}" for line in text.splitlines())) from None
    errors = _privacy_errors(config, new) + _threshold_errors(new)
    if errors:
        raise OverlayError("\n".join(errors))
    return Overlay(new, tuple(sorted(fields)))


def _privacy_errors(local: GatewayConfig, new: GatewayConfig) -> list[str]:
    """What in `new` releases more than `local` would (see the module docstring)."""
    old_p, new_p = local.privacy, new.privacy
    may_release = set(local.updates.remote_may_release)
    errors = []
    for name in sorted(set(old_p.policies) | set(new_p.policies)):
        before, after = old_p.policy_of(name), new_p.policy_of(name)
        if _PRIVACY_RANK[after] < _PRIVACY_RANK[before] and name not in may_release:
            errors.append(
                f"overlay: privacy.policies.{name}: {after.value} would release more than the "
                f"local policy {before.value} (allowed only for metrics in "
                "[updates] remote_may_release)"
            )
    if _PRIVACY_RANK[Policy(new_p.default_policy)] < _PRIVACY_RANK[Policy(old_p.default_policy)]:
        errors.append(
            f"overlay: privacy.default_policy: {new_p.default_policy} would release more than "
            f"the local {old_p.default_policy}"
        )

    def must(ok: bool, field: str, what: str) -> None:
        if not ok:
            errors.append(
                f"overlay: privacy.{field}: {getattr(new_p, field)!r} is less private than the "
                f"local {getattr(old_p, field)!r} ({what})"
            )

    must(new_p.epsilon <= old_p.epsilon, "epsilon", "it may only shrink")
    must(new_p.budget_epsilon <= old_p.budget_epsilon, "budget_epsilon", "it may only shrink")
    must(new_p.budget_period_s >= old_p.budget_period_s, "budget_period_s", "it may only grow")
    must(new_p.min_window_count >= old_p.min_window_count, "min_window_count", "it may only grow")
    must(
        new_p.significant_digits <= old_p.significant_digits,
        "significant_digits",
        "it may only shrink",
    )
    old_days, new_days = old_p.pseudonym_rotation_days, new_p.pseudonym_rotation_days
    must(
        new_days == old_days or (new_days > 0 and (old_days == 0 or new_days < old_days)),
        "pseudonym_rotation_days",
        "pseudonyms may only rotate more often; 0 (never) is refused",
    )
    return errors


def _threshold_errors(new: GatewayConfig) -> list[str]:
    errors = []
    for model, table in new.inference.thresholds.items():
        for key, value in table.items():
            if not math.isfinite(value):
                errors.append(f"overlay: inference.thresholds.{model}.{key}: not a finite number")
    return errors
