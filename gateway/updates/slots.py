"""A/B slots on disk and the state file that says which one runs.

Layout under ``[updates] slots_dir``::

    state.json      which slot runs (and its version), the previous one, the staged one, the
                    bundle on trial, versions that failed here, a report still to deliver
    a/, b/          a slot: bundle/ (the unpacked bundle) and models/ (the full model set the
                    gateway loads: its local models with the bundle's over them)
    tuf/            TUF's metadata cache (`gateway.updates.fetch`)
    downloads/      bundles as TUF downloaded them

`state.json` is the only thing that decides what runs, and it is replaced atomically (written
to a temporary file, fsynced, renamed over, the directory fsynced): a SIGKILL at any step
leaves either the old or the new state, never a mix. A slot is filled under a temporary name
and renamed into place before the state names it, and the slot being filled is never one the
state names (the previous slot is forgotten first), so every slot the state names is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gateway.inference.manifest import discover, read_manifest
from gateway.updates.bundle import BundleInfo, check, unpack

SlotName = Literal["a", "b"]
STATE_FORMAT = 1
# Crash tests (tests/test_updates_crash.py): SIGKILL this process at the named step.
KILL_AT_ENV = "HOMEEDGE_GATEWAY_TEST_KILL_AT"
log = logging.getLogger(__name__)


def kill_point(step: str) -> None:
    """SIGKILL this process at `step` when the test variable names it (a no-op otherwise)."""
    if os.environ.get(KILL_AT_ENV) == step:
        log.warning("updates: %s=%s: killing the gateway", KILL_AT_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Trial:
    """A bundle applied but not yet confirmed healthy."""

    version: int
    rollout: str | None
    since: float  # wall clock of the apply
    soak_s: float
    boots: int = 0  # gateway starts seen on trial


@dataclass(frozen=True)
class SlotState:
    active: SlotName | None = None  # None: the built-in models and the local config alone
    version: int | None = None
    previous: SlotName | None = None
    previous_version: int | None = None
    staged: SlotName | None = None
    staged_version: int | None = None
    trial: Trial | None = None
    failed: tuple[int, ...] = ()  # versions that failed here: not tried again
    report: dict[str, Any] | None = None  # the last report, until the cloud confirmed it
    rollout: str | None = None  # the rollout of the running version

    def inactive(self) -> SlotName:
        return "b" if self.active == "a" else "a"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["failed"] = list(self.failed)
        body["format"] = STATE_FORMAT
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SlotState:
        if body.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {body.get('format')!r}, expected {STATE_FORMAT}")
        body = dict(body)
        body.pop("format")
        trial = body.pop("trial", None)
        known = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        known["failed"] = tuple(known.get("failed", ()))
        try:
            return cls(**known, trial=Trial(**trial) if trial else None)
        except TypeError as exc:  # a trial with other fields (another gateway version's)
            raise ValueError(f"state: {exc}") from None


class SlotStore:
    """The slots directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "state.json"

    def slot(self, name: SlotName) -> Path:
        return self.root / name

    def models_dir(self, name: SlotName) -> Path:
        return self.root / name / "models"

    def bundle(self, name: SlotName) -> BundleInfo:
        return check(self.root / name / "bundle")

    def read(self) -> SlotState:
        try:
            body = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return SlotState()
        if not isinstance(body, dict):
            raise ValueError("state: expected a JSON object")
        return SlotState.from_json(body)

    def read_or_set_aside(self) -> SlotState:
        """`read`, or, when the state file cannot be read (another format, a damaged disk),
        the built-in state after moving the file aside to ``state.json.unreadable`` (logged):
        the gateway then starts on its local config instead of not at all."""
        try:
            return self.read()
        except (OSError, ValueError) as exc:
            aside = self.state_path.with_name("state.json.unreadable")
            log.error(
                "updates: slot state %s unreadable (%s): moved to %s, starting on the local config",
                self.state_path,
                exc,
                aside.name,
            )
            with contextlib.suppress(OSError):
                self.state_path.replace(aside)
            return SlotState()

    def write(self, state: SlotState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(".state.json.tmp")
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.state_path)
        _fsync_dir(self.root)

    def stage(
        self, archive: Path, local_models: Path, state: SlotState
    ) -> tuple[SlotState, BundleInfo]:
        """Unpack `archive` into the inactive slot (with the local models under the bundle's)
        and return the state naming it staged (already written)."""
        name = state.inactive()
        # The slot about to be overwritten may be the previous one: forget it first.
        state = replace(
            state,
            previous=None if state.previous == name else state.previous,
            previous_version=None if state.previous == name else state.previous_version,
            staged=None,
            staged_version=None,
        )
        self.write(state)
        final = self.slot(name)
        tmp = self.root / f".{name}.tmp"
        for path in (tmp, final):
            if path.exists():
                shutil.rmtree(path)
        tmp.mkdir(parents=True)
        info = unpack(archive, tmp / "bundle")
        models = tmp / "models"
        models.mkdir()
        for manifest_path in discover(local_models):
            if manifest_path.stem in info.models:
                continue
            manifest = read_manifest(manifest_path)
            for path in (manifest_path, manifest_path.parent / manifest.file):
                shutil.copy2(path, models / path.name)
        for model_name, model in info.models.items():
            shutil.copy2(tmp / "bundle" / model.manifest, models / f"{model_name}.json")
            onnx = Path(model.onnx).name
            shutil.copy2(tmp / "bundle" / model.onnx, models / onnx)
        _fsync_tree(tmp)
        kill_point("unpacked")
        tmp.rename(final)
        _fsync_dir(self.root)
        state = replace(state, staged=name, staged_version=info.version)
        self.write(state)
        return state, info


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))
