"""Test helpers for gateway updates: a real TUF repository (python-tuf's Metadata API, ed25519
keys), bundles in the contract's format, and a small HTTP server speaking the cloud's side of
the rollout protocol (desired with ETag/304, reports, metadata and targets), so the gateway's
real TUF client and poller are tested over real HTTP without the cloud package."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

MODELS = Path(__file__).resolve().parents[1] / "gateway" / "models"
ROLES = ("root", "targets", "snapshot", "timestamp")


def _expiry(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


class TufRepo:
    """A TUF repository on disk: ``metadata/`` (plain names, consistent_snapshot off, plus
    ``<N>.root.json``) and ``targets/``."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.metadata_dir = root / "metadata"
        self.targets_dir = root / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir(parents=True)
        self.signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        root_md = Metadata(Root(expires=_expiry(365), consistent_snapshot=False))
        for role in ROLES:
            root_md.signed.add_key(self.signers[role].public_key, role)
        self.root = root_md
        self.targets = Metadata(Targets(expires=_expiry(30)))
        self.snapshot = Metadata(Snapshot(expires=_expiry(7)))
        self.timestamp = Metadata(Timestamp(expires=_expiry(1)))
        self._write("root", self.root)
        self._write_file("1.root.json", self.root)
        self.publish(bump=False)

    @property
    def root_json(self) -> bytes:
        return (self.metadata_dir / "root.json").read_bytes()

    def _write_file(self, name: str, md: Metadata[Any]) -> None:
        (self.metadata_dir / name).write_bytes(md.to_bytes(JSONSerializer(compact=False)))

    def _write(self, role: str, md: Metadata[Any]) -> None:
        md.signatures.clear()
        md.sign(self.signers[role], append=True)
        self._write_file(f"{role}.json", md)

    def add_target(self, path: str, data: bytes, custom: dict[str, Any]) -> None:
        dest = self.targets_dir / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[path] = target

    def publish(self, *, bump: bool = True, timestamp_days: float = 1.0) -> None:
        """Sign targets, snapshot and timestamp anew (new versions)."""
        if bump:
            self.targets.signed.version += 1
            self.snapshot.signed.version += 1
            self.timestamp.signed.version += 1
        self._write("targets", self.targets)
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        self._write("snapshot", self.snapshot)
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.signed.expires = _expiry(timestamp_days)
        self._write("timestamp", self.timestamp)

    def snapshot_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.metadata_dir.iterdir()}

    def restore_files(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (self.metadata_dir / name).write_bytes(data)


def model_files(
    name: str, *, version: str, source: str | None = None, **manifest: Any
) -> tuple[dict[str, Any], bytes]:
    """A model for a bundle: the built-in `source` model's ONNX under `name` with a manifest
    of `version` (and fields overridden by `manifest`)."""
    source = source or name
    base = json.loads((MODELS / f"{source}.json").read_text())
    onnx = (MODELS / base["file"]).read_bytes()
    base.update(name=name, version=version, file=f"{name}.onnx", **manifest)
    return base, onnx


def make_bundle(
    version: int,
    models: dict[str, tuple[dict[str, Any], bytes]] | None = None,
    overlay: dict[str, Any] | None = None,
    *,
    extra_members: list[tarfile.TarInfo] | None = None,
) -> bytes:
    """A bundle in the contract's format (tar.gz bytes)."""
    members: dict[str, bytes] = {}
    listed: dict[str, Any] = {}
    for name, (manifest, onnx) in (models or {}).items():
        members[f"models/{name}.onnx"] = onnx
        members[f"models/{name}.json"] = json.dumps(manifest).encode()
        listed[name] = {
            "onnx": f"models/{name}.onnx",
            "manifest": f"models/{name}.json",
            "sha256": hashlib.sha256(onnx).hexdigest(),
        }
    info = {
        "format": 1,
        "version": version,
        "created": datetime.now(UTC).isoformat(),
        "description": f"test bundle {version}",
        "models": listed,
        "overlay": overlay,
        "priors": None,
    }
    members = {"bundle.json": json.dumps(info).encode(), **members}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for ti in extra_members or []:
            tar.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isreg() else None)
    return buf.getvalue()


@dataclass
class RepoDirs:
    """A repository built elsewhere (e.g. by ``cloud.release``), served as it is on disk."""

    metadata_dir: Path
    targets_dir: Path

    @property
    def root_json(self) -> bytes:
        return (self.metadata_dir / "root.json").read_bytes()


@dataclass
class FakeCloud:
    """The cloud's side of the protocol (contract of issue 15) over a `TufRepo`."""

    repo: TufRepo | RepoDirs
    token: str = "gw-token"
    desired: dict[str, Any] = field(
        default_factory=lambda: {
            "version": None, "target": None, "rollout": None, "soak_s": 1.0, "rollback_to": None
        }
    )  # fmt: skip
    reports: list[dict[str, Any]] = field(default_factory=list)
    refuse_reports: set[str] = field(default_factory=set)  # states answered with 503
    polls: int = 0
    not_modified: int = 0
    down: bool = False
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(
        self, version: int, bundle: bytes, *, soak_s: float = 1.0, timestamp_days: float = 1.0
    ) -> None:
        target = f"bundles/bundle-{version}.tar.gz"
        assert isinstance(self.repo, TufRepo)
        self.repo.add_target(target, bundle, {"version": version})
        self.repo.publish(timestamp_days=timestamp_days)
        self.desired = {
            "version": version,
            "target": target,
            "rollout": f"r-{version}",
            "soak_s": soak_s,
            "rollback_to": None,
        }

    def states(self, version: int | None = None) -> list[str]:
        return [
            r["state"] for r in self.reports if version is None or r["rollout"] == f"r-{version}"
        ]

    def _authorized(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized()
        if self.down:
            raise web.HTTPServiceUnavailable()

    async def _desired(self, request: web.Request) -> web.StreamResponse:
        self._authorized(request)
        self.polls += 1
        etag = (
            '"'
            + hashlib.sha256(json.dumps(self.desired, sort_keys=True).encode()).hexdigest()[:16]
            + '"'
        )
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response(self.desired, headers={"ETag": etag})

    async def _report(self, request: web.Request) -> web.Response:
        self._authorized(request)
        body = await request.json()
        if body.get("state") in self.refuse_reports:
            return web.json_response({"error": "busy"}, status=503)
        self.reports.append(body)
        return web.json_response({"ok": True})

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        path = self.repo.metadata_dir / request.match_info["name"]
        if "/" in request.match_info["name"] or not path.is_file():
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=path.read_bytes(), content_type="application/json")

    async def _target(self, request: web.Request) -> web.StreamResponse:
        path = (self.repo.targets_dir / request.match_info["path"]).resolve()
        if not path.is_relative_to(self.repo.targets_dir.resolve()) or not path.is_file():
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/gateway/desired", self._desired)
        app.router.add_post("/api/v1/gateway/report", self._report)
        app.router.add_get("/api/v1/updates/metadata/{name}", self._metadata)
        app.router.add_get("/api/v1/updates/targets/{path:.+}", self._target)
        app.router.add_post("/api/v1/batches", self._batches)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def _batches(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": True})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def copy_models(dest: Path) -> Path:
    shutil.copytree(MODELS, dest)
    return dest
