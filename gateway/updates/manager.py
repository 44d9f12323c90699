"""`UpdateManager`: polls the cloud for the desired bundle, applies it, soaks, reports, reverts.

One task (``updates``) does everything in order, so there is one owner of the slot state:

1. poll ``GET <uplink.url>/api/v1/gateway/desired`` with the uplink's bearer token and the last
   ETag (``If-None-Match``: an idle poll is a 304 without a body), every ``poll_s`` with
   jitter; failures back off (`gateway.backoff.Backoff`, the uplink's schedule);
2. for a new version: report ``downloading``, fetch it through TUF (`gateway.updates.fetch`),
   unpack and check it into the inactive slot, check its overlay against the local config
   (`gateway.updates.overlay`), report ``staged``;
3. apply: load and warm up the slot's models beside the running ones, write the state (the
   slot is active, on trial), swap the models into the running engine between two batches
   (`InferenceControl.swap`); an overlay naming more than ``inference.thresholds`` asks for a
   restart instead (the state already names the slot, so the restarted gateway runs it, and
   resumes the soak). Report ``applied``;
4. soak for the cloud's ``soak_s``: the bundle fails when a model did not load or warm up,
   the inference engine counts errors or dropped frames since the apply, or ingest is
   unhealthy (the writer or the MQTT session down). Sync health is reported, not judged (the
   cloud being away is not the bundle's fault);
5. report ``healthy``; a report the cloud has not confirmed within ``soak_s +
   report_margin_s`` is a failure. On failure: report ``failed``, revert to the previous slot
   (or the built-in models), report ``rolled_back``. A version that failed here is not tried
   again; ``rollback_to`` from the cloud reverts on request.

An older version than the running one is refused unless the cloud asks for it with
``rollback_to``. A gateway that was offline simply finds the desired version at its next
successful poll. Reports that could not be delivered stay in the state and are sent first at
the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gateway.backoff import Backoff
from gateway.config import GatewayConfig
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import ModelStatus
from gateway.updates.boot import revert_state, running_config, slots_dir
from gateway.updates.bundle import BundleError
from gateway.updates.fetch import FetchError, fetch_bundle
from gateway.updates.overlay import LIVE, OverlayError, apply_overlay
from gateway.updates.slots import SlotState, SlotStore, Trial, kill_point

log = logging.getLogger(__name__)

DESIRED_PATH = "/api/v1/gateway/desired"
REPORT_PATH = "/api/v1/gateway/report"
_CHECK_EVERY_S = 2.0  # how often health is looked at during a soak


class InferenceControl(Protocol):
    """What the updates need of the inference engine (`gateway.inference.wiring`)."""

    def status(self) -> ModelStatus: ...

    async def load(self, settings: InferenceSettings, models_dir: Path) -> tuple[Any, list[str]]:
        """Load and warm up a model set beside the running one: (runtime, load errors)."""
        ...

    async def swap(self, runtime: Any) -> None:
        """Serve with `runtime` from the next batch on."""
        ...


@dataclass(frozen=True)
class Desired:
    version: int | None
    target: str | None
    rollout: str | None
    soak_s: float | None
    rollback_to: int | None

    @classmethod
    def parse(cls, body: Any) -> Desired:
        if not isinstance(body, Mapping):
            raise ValueError("expected a JSON object")

        def opt_int(name: str, low: int = 1) -> int | None:
            v = body.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise ValueError(f"{name}: expected an integer >= {low} or null")
            return v

        target, rollout, soak = body.get("target"), body.get("rollout"), body.get("soak_s")
        if target is not None and not isinstance(target, str):
            raise ValueError("target: expected a string or null")
        if rollout is not None and not isinstance(rollout, str):
            raise ValueError("rollout: expected a string or null")
        if soak is not None and (not isinstance(soak, int | float) or soak < 0):
            raise ValueError("soak_s: expected a number >= 0")
        # rollback_to 0: back to the built-in models (what the cloud sends a gateway that ran
        # none of its bundles before the rollout).
        return cls(opt_int("version"), target, rollout, soak, opt_int("rollback_to", 0))


def target_of(version: int) -> str:
    return f"bundles/bundle-{version}.tar.gz"


def restart_part(overlay: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of an overlay that only a restart applies (everything but `LIVE`)."""
    out: dict[str, Any] = {}
    for section, table in (overlay or {}).items():
        rest = {k: v for k, v in table.items() if f"{section}.{k}" not in LIVE}
        if rest:
            out[section] = rest
    return out


class UpdateManager:
    """See the module docstring."""

    def __init__(
        self,
        *,
        local: GatewayConfig,
        running: GatewayConfig,
        inference: InferenceControl | None,
        gateway_health: Callable[[], dict[str, Any]],
        restart: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`local`: the configuration without any bundle's overlay (what overlays are checked
        against); `running`: what this process started with; `restart`: ask for an
        in-process restart (a new config is read at the next start)."""
        self._local = local
        self._running = running
        self._settings = local.updates
        self._inference = inference
        self._gateway_health = gateway_health
        self._restart = restart
        self._clock = clock
        self.store = SlotStore(slots_dir(local))
        self.state = self.store.read_or_set_aside()
        self._etag: str | None = None
        self._desired: Desired | None = None
        self._noted: set[tuple[int, str]] = set()  # fetch failures already reported
        self._attempted: set[int] = set()  # versions whose download was reported
        self._base = local.uplink.url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {local.uplink.token.get_secret_value()}"}
        self._backoff = Backoff(local.uplink.backoff_min_s, local.uplink.backoff_max_s)
        self._rng = random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._at_apply = (0, 0)
        self.reverts = 0
        self.polls = 0
        self.last_error: str | None = None
        self.restarting = False
        self._at_start = False

    # -- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._local.uplink.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._http = http
            try:
                if self.state.trial is not None:
                    self._at_start = True
                    await self._soak(self.state.trial)
                while not self.restarting:
                    try:
                        await self.poll_once()
                        self._backoff.reset()
                        delay = self._settings.poll_s * self._rng.uniform(
                            1 - self._settings.poll_jitter, 1 + self._settings.poll_jitter
                        )
                    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                        self.last_error = f"poll: {type(exc).__name__}: {exc}"
                        delay = self._backoff.next_delay()
                        log.warning("updates: %s; next poll in %.1fs", self.last_error, delay)
                    await asyncio.sleep(delay)
            finally:
                self._http = None

    async def poll_once(self) -> None:
        """One poll and whatever it asks for (raises on a failed poll)."""
        await self._deliver_pending()
        headers = dict(self._auth)
        if self._etag is not None:
            headers["If-None-Match"] = self._etag
        assert self._http is not None
        async with self._http.get(self._base + DESIRED_PATH, headers=headers) as resp:
            self.polls += 1
            if resp.status == 304:
                desired = self._desired
            elif resp.status == 200:
                desired = Desired.parse(await resp.json(content_type=None))
                self._etag = resp.headers.get("ETag")
                self._desired = desired
            else:
                raise ValueError(f"GET {DESIRED_PATH}: HTTP {resp.status}")
        self.last_error = None
        if desired is not None:
            await self.act(desired)

    # -- decisions -------------------------------------------------------------------------

    async def act(self, desired: Desired) -> None:
        state = self.state
        soak_s = desired.soak_s if desired.soak_s is not None else self._settings.soak_s
        asked_back = desired.rollback_to is not None
        back = desired.rollback_to or None  # 0: the built-in models
        if asked_back and back != state.version:
            if back == state.previous_version:
                await self.revert(
                    f"the cloud asked for version {back or 'built-in'} (rollback_to)",
                    mark_failed=False,
                )
            elif back is None:
                self.state = replace(state, previous=None, previous_version=None)
                await self.revert(
                    "the cloud asked for the built-in models (rollback_to)", mark_failed=False
                )
            elif (back, "rollback_to") not in self._noted:
                # Not a slot of ours: going "back" would mean fetching some older signed bundle
                # on the word of the unsigned /desired answer. Refused.
                self._noted.add((back, "rollback_to"))
                log.warning(
                    "updates: the cloud asked for version %s (rollback_to), which is neither "
                    "the previous version (%s) nor the built-in models: ignored",
                    back,
                    state.previous_version or "built-in",
                )
            return
        v = desired.version
        if asked_back or v is None or v == state.version or v in state.failed:
            return
        if state.version is not None and v < state.version:
            await self._mark_failed(v)
            await self.report(
                desired.rollout,
                "failed",
                f"version {v} is older than the running {state.version} (only rollback_to "
                "may go back)",
                staged=None,
            )
            return
        await self.install(v, desired.target or target_of(v), desired.rollout, soak_s)

    async def install(self, version: int, target: str, rollout: str | None, soak_s: float) -> None:
        root_file = self._settings.root_file
        if root_file is None:
            raise ValueError("updates.root_file is not set")
        if version not in self._attempted:  # retried each poll after a fetch failure
            self._attempted.add(version)
            await self.report(rollout, "downloading", "", staged=version)
        try:
            archive = await asyncio.to_thread(
                fetch_bundle,
                root_file=root_file,
                slots_dir=self.store.root,
                base_url=self._base,
                target=target,
                version=version,
            )
        except FetchError as exc:
            log.error("updates: version %s: %s", version, exc)
            if exc.transient:  # the network or the cloud: tried again at the next poll, and
                return  # not reported as a failure (one would halt the rollout)
            # Not marked failed: the repository may be repaired (re-signed, re-published).
            if (version, str(exc)) not in self._noted:
                self._noted.add((version, str(exc)))
                await self.report(rollout, "failed", str(exc), staged=None)
            return
        kill_point("downloaded")
        try:
            state, info = await asyncio.to_thread(
                self.store.stage, archive, self._local.inference.models_dir, self.state
            )
            self.state = state
            if info.version != version:
                raise BundleError(f"bundle.json says version {info.version}, expected {version}")
            apply_overlay(self._local, info.overlay)  # refuses what may not change remotely
        except (BundleError, OverlayError, OSError) as exc:
            await self._refuse(version, rollout, f"refused: {exc}")
            return
        kill_point("staged")
        await self.report(rollout, "staged", "", staged=version)
        slot = state.staged
        assert slot is not None
        # Both check the bundles' file hashes (models of some MB): off the event loop.
        new_config = await asyncio.to_thread(
            running_config, self._local, self.store, replace(state, active=slot)
        )
        needs_restart = restart_part(info.overlay) != restart_part(await self._running_overlay())
        runtime = None
        if self._inference is not None and not needs_restart:
            runtime, errors = await self._inference.load(
                new_config.inference, self.store.models_dir(slot)
            )
            if errors:
                await self._refuse(version, rollout, "models failed to load: " + "; ".join(errors))
                return
        trial = Trial(version, rollout, self._clock(), soak_s)
        self.state = replace(
            state,
            active=slot,
            version=version,
            previous=state.active,
            previous_version=state.version,
            staged=None,
            staged_version=None,
            trial=trial,
            rollout=rollout,
        )
        await self._save(self.state)  # from here a restart runs the new version
        kill_point("committed")
        if needs_restart:
            log.info("updates: version %s applied; its overlay needs a restart", version)
            await self.report(rollout, "applied", "", staged=None)
            self._ask_restart()
            return
        if runtime is not None and self._inference is not None:
            await self._inference.swap(runtime)
        kill_point("swapped")
        self._running = new_config
        self._mark_counters()
        log.info("updates: version %s applied (slot %s), soaking %.0fs", version, slot, soak_s)
        await self.report(rollout, "applied", "", staged=None)
        await self._soak(trial)

    async def _running_overlay(self) -> Mapping[str, Any] | None:
        """The active slot's overlay (its bundle's hashes checked in a thread)."""
        if self.state.active is None:
            return None
        try:
            return (await asyncio.to_thread(self.store.bundle, self.state.active)).overlay
        except BundleError:
            return None

    async def _refuse(self, version: int, rollout: str | None, reason: str) -> None:
        log.error("updates: version %s %s", version, reason)
        await self._mark_failed(version)
        self.state = replace(self.state, staged=None, staged_version=None)
        await self._save(self.state)
        await self.report(rollout, "failed", reason, staged=None)

    async def _save(self, state: SlotState) -> None:
        """`state.json` replaced whole (fsync of the file and its directory: tens of ms on an
        SD card), off the event loop."""
        await asyncio.to_thread(self.store.write, state)

    async def _mark_failed(self, version: int) -> None:
        self.state = replace(self.state, failed=tuple(sorted({*self.state.failed, version})))
        await self._save(self.state)

    def _ask_restart(self) -> None:
        self.restarting = True
        self._restart()

    # -- soak and revert -------------------------------------------------------------------

    def _mark_counters(self) -> None:
        st = self._inference.status() if self._inference is not None else None
        self._at_apply = (st.errors, st.dropped) if st is not None else (0, 0)

    def health(self) -> dict[str, Any]:
        """The report's health: since the apply (or this start, after a restart)."""
        st = self._inference.status() if self._inference is not None else None
        gw = self._gateway_health()
        checks = gw.get("checks", {})
        sync = gw.get("sync") or {}
        loaded = st is None or (not st.load_errors and bool(st.models))
        return {
            "models_loaded": loaded,
            # load_model runs a warm-up inference before a model counts as loaded, so a model
            # that loaded has warmed up: the report carries both, as the protocol asks.
            "warmed_up": loaded,
            "inference_errors": (st.errors - self._at_apply[0]) if st is not None else 0,
            "dropped_frames": (st.dropped - self._at_apply[1]) if st is not None else 0,
            "ingest_ok": bool(checks.get("writer", {}).get("ok"))
            and bool(checks.get("mqtt", {}).get("ok")),
            "sync_ok": sync.get("uplink", "disabled") in ("ok", "disabled"),
        }

    @staticmethod
    def verdict(health: Mapping[str, Any]) -> str | None:
        """Why `health` fails the bundle, or None."""
        if not health["models_loaded"]:
            return "a model did not load"  # warmed_up is the same flag: see `health`
        if health["inference_errors"]:
            return f"{health['inference_errors']} inference errors since the apply"
        if health["dropped_frames"]:
            return f"{health['dropped_frames']} frames dropped since the apply"
        if not health["ingest_ok"]:
            return "ingest unhealthy (writer or MQTT down)"
        return None

    async def _soak(self, trial: Trial) -> None:
        if self.state.trial is None or self.state.trial.version != trial.version:
            return
        if self._at_start:
            # Resumed after a restart: the soak starts again with this process's counters.
            trial = replace(trial, since=self._clock())
            self._at_start = False
        end = trial.since + trial.soak_s
        # Ingest (MQTT, writer) may take a moment after a start: it is judged at the end, and
        # given until the report's deadline to come up; the models' faults fail at once.
        grace_end = end + self._settings.report_margin_s
        while True:
            health = self.health()
            reason = self.verdict({**health, "ingest_ok": True})
            now = self._clock()
            if reason is None and now >= end:
                reason = self.verdict(health)
                if reason is None or now >= grace_end:
                    break
                reason = None
            if reason is not None:
                break
            wake = end if now < end else min(grace_end, now + 0.5)
            await asyncio.sleep(max(0.01, min(_CHECK_EVERY_S, wake - now)))
        if reason is not None:
            log.error("updates: version %s failed its soak: %s", trial.version, reason)
            await self.report(trial.rollout, "failed", reason, staged=None)
            await self.revert(reason)
            return
        deadline = end + self._settings.report_margin_s
        confirmed = await self.report(trial.rollout, "healthy", "", staged=None, until=deadline)
        if not confirmed:
            # Not marked failed: the version was healthy, only the cloud was out of reach; it
            # is installed again once the cloud answers and still wants it.
            await self.revert("the healthy report could not be confirmed", mark_failed=False)
            return
        kill_point("reported")
        self.state = replace(self.state, trial=None)
        await self._save(self.state)
        log.info("updates: version %s healthy", trial.version)

    async def revert(self, reason: str, *, mark_failed: bool = True) -> None:
        """Back to the previous slot (or the built-in models), live when its overlay allows;
        the version given up is not tried again unless the cloud asked for the revert."""
        before = await self._running_overlay()
        state = revert_state(self.state, reason, mark_failed=mark_failed)
        self.reverts += 1
        try:
            config = await asyncio.to_thread(running_config, self._local, self.store, state)
        except (BundleError, OverlayError, OSError) as exc:
            state = revert_state(state, f"{reason}; the previous version cannot run: {exc}")
            config = self._local
        # Written with its rolled_back report, which stays there until the cloud has it.
        self.state = state
        await self._save(state)
        log.warning("updates: reverted to version %s: %s", state.version, reason)
        if restart_part(before) != restart_part(await self._running_overlay()):
            self._ask_restart()
            return
        if self._inference is not None:
            runtime, errors = await self._inference.load(
                config.inference, config.inference.models_dir
            )
            if errors:
                log.error("updates: models after the revert: %s", "; ".join(errors))
            await self._inference.swap(runtime)
        self._running = config
        self._mark_counters()
        await self._deliver_pending()

    # -- reports ---------------------------------------------------------------------------

    async def report(
        self,
        rollout: str | None,
        state: str,
        reason: str,
        *,
        staged: int | None,
        until: float | None = None,
    ) -> bool:
        """POST one report; with `until`, retry (backoff) until it is confirmed or that time
        (wall clock) passes. True once the cloud answered 200."""
        body = {
            "rollout": rollout,
            "running_version": self.state.version,
            "staged_version": staged,
            "state": state,
            "reason": reason,
        }
        if until is None:
            return await self._post(body)
        backoff = Backoff(self._local.uplink.backoff_min_s, self._local.uplink.backoff_max_s)
        while True:
            if await self._post(body):
                return True
            left = until - self._clock()
            if left <= 0:
                return False
            await asyncio.sleep(min(backoff.next_delay(), left))

    async def _post(self, body: dict[str, Any]) -> bool:
        if self._http is None:
            return False
        payload = {**body, "health": self.health()}
        try:
            async with self._http.post(
                self._base + REPORT_PATH, json=payload, headers=self._auth
            ) as resp:
                if resp.status == 200:
                    return True
                self.last_error = f"report {body['state']}: HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.last_error = f"report {body['state']}: {type(exc).__name__}: {exc}"
        log.warning("updates: %s", self.last_error)
        return False

    async def _deliver_pending(self) -> None:
        report = self.state.report
        if report is not None and await self._post(report):
            self.state = replace(self.state, report=None)
            await self._save(self.state)

    # -- /healthz --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.state
        return {
            "running_version": s.version,
            "slot": s.active,
            "staged_version": s.staged_version,
            "previous_version": s.previous_version,
            "trial": s.trial.version if s.trial else None,
            "failed_versions": list(s.failed),
            "reverts": self.reverts,
            "polls": self.polls,
            "last_error": self.last_error,
        }
