"""What the gateway runs at start: its local config, or the active slot's models and overlay.

`boot_config(local)` reads the slot state (`gateway.updates.slots`) and returns the
configuration to start with: the local one when no bundle is active, else the local one with
the active bundle's overlay over it and ``inference.models_dir`` pointing into the slot, so a
restart keeps the applied version. A bundle still on trial counts the start (`Trial.boots`);
past ``[updates] max_trial_boots`` starts (a bundle that crashes the gateway) or when its
overlay no longer passes against the local config (edited since), it is reverted here, before
anything runs, and a ``rolled_back`` report waits in the state for the cloud.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.updates.bundle import BundleError
from gateway.updates.overlay import OverlayError, apply_overlay
from gateway.updates.slots import SlotState, SlotStore

log = logging.getLogger(__name__)


def slots_dir(config: GatewayConfig) -> Path:
    return config.updates.slots_dir or config.storage.path.parent / "updates"


def running_config(local: GatewayConfig, store: SlotStore, state: SlotState) -> GatewayConfig:
    """`local` as the state's active slot changes it; raise BundleError/OverlayError."""
    if state.active is None:
        return local
    info = store.bundle(state.active)
    config = apply_overlay(local, info.overlay).config
    update: dict[str, Any] = {"models_dir": store.models_dir(state.active)}
    if info.priors is not None:
        update["priors_file"] = store.slot(state.active) / "bundle" / info.priors
    inference = config.inference.model_copy(update=update)
    return config.model_copy(update={"inference": inference})


def revert_state(state: SlotState, reason: str, *, mark_failed: bool = True) -> SlotState:
    """The state after giving up the active version: back to the previous slot (or the
    built-in models), the version marked failed (unless the cloud asked for the revert), a
    ``rolled_back`` report to deliver."""
    failed = state.version if mark_failed else None
    rollout = state.trial.rollout if state.trial else state.rollout
    if rollout is None and state.report is not None and state.report.get("state") == "rolled_back":
        # A revert right after another (the previous slot cannot run either): the report
        # replaced is the rollout's; its id must reach the cloud with this one.
        rollout = state.report.get("rollout")
    return replace(
        state,
        active=state.previous,
        version=state.previous_version,
        previous=None,
        previous_version=None,
        staged=None,
        staged_version=None,
        trial=None,
        rollout=None,
        failed=tuple(sorted({*state.failed, failed})) if failed is not None else state.failed,
        report={
            "rollout": rollout,
            "running_version": state.previous_version,
            "staged_version": None,
            "state": "rolled_back",
            "reason": reason,
        },
    )


def boot_config(local: GatewayConfig) -> GatewayConfig:
    """The configuration to start with (see the module docstring)."""
    if not local.updates_on and not slots_dir(local).joinpath("state.json").exists():
        return local
    store = SlotStore(slots_dir(local))
    state = store.read_or_set_aside()
    if state.trial is not None:
        trial = replace(state.trial, boots=state.trial.boots + 1)
        state = replace(state, trial=trial)
        if trial.boots > local.updates.max_trial_boots:
            reason = f"the gateway started {trial.boots - 1} times on trial without confirming it"
            log.error("updates: version %s: %s; reverting", state.version, reason)
            state = revert_state(state, reason)
        store.write(state)
    for _ in range(3):  # the active slot, then (if it fails) the one before, then none
        try:
            config = running_config(local, store, state)
        except (BundleError, OverlayError, OSError) as exc:
            log.error("updates: version %s cannot run: %s; reverting", state.version, exc)
            state = revert_state(state, f"cannot run at start: {exc}")
            store.write(state)
            continue
        if state.active is not None:
            log.info(
                "updates: starting on bundle version %s (slot %s)", state.version, state.active
            )
        return config
    return local
