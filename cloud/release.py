"""Signed releases for the fleet: the TUF repository the gateways update from, and its bundles.

    python -m cloud.release init    --repo DIR --root-keys OFFLINE_DIR
    python -m cloud.release bundle  --repo DIR --version 3 --model sensor_anomaly \
                                    [--overlay overlay.toml] [--description "..."]
    python -m cloud.release refresh --repo DIR          # cron / the cloud's own task
    python -m cloud.release rotate-root --repo DIR --root-keys OFFLINE_DIR [--new-root-keys NEW]

The repository (python-tuf's Metadata API, ed25519 keys through securesystemslib's
CryptoSigner) has the four top-level roles and ``consistent_snapshot = false``, as the cloud
serves it (`cloud.updates`):

    DIR/metadata/1.root.json, root.json, targets.json, snapshot.json, timestamp.json
    DIR/targets/bundles/bundle-<version>.tar.gz
    DIR/keys/targets.pem, snapshot.pem, timestamp.pem      the online keys (the cloud holds)
    OFFLINE_DIR/root.pem                                   the root key (kept offline)

Only the root key can change who may sign: a cloud that leaks its online keys lets an attacker
sign bundles until the operator rotates them with the offline root key (`rotate-root
--rotate-online`). Every write takes an exclusive lock on DIR/.lock, and every file is written
to a temporary name and renamed, so a client never reads half a file, and the CLI and several
cloud workers never interleave their versions.

A bundle (the format is the contract with the gateway, see README "Fleet rollouts") is a gzip
tar of ``bundle.json`` (format, version, created, description, models, overlay, priors) and the
files it names; its TUF target's custom metadata is ``{"version": N}``. A bundle's version must
be above every version the repository holds: a gateway's TUF client would accept an older file
as genuine, so the newest-wins rule lives here, and in the gateway's own version check.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
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

from cloud.fleet.store import bundle_target

BUNDLE_FORMAT = 1
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
# Sections of the gateway config an overlay may touch (the gateway checks the fields with its
# own models and refuses what they refuse; this is the early, clear refusal at build time).
OVERLAY_SECTIONS = frozenset({"inference", "aggregation", "uplink", "privacy"})
# Fields of those sections that are never remote: credentials, where data goes, local paths.
OVERLAY_FORBIDDEN = {
    "uplink": frozenset({"url", "token"}),
    "inference": frozenset({"models_dir", "debug_audio_dir"}),
}
MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
MAX_VERSION = 2**31 - 1  # fits the cloud's Integer columns

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's metadata stays valid after it is signed."""

    root: datetime.timedelta = 365 * DAY
    targets: datetime.timedelta = 90 * DAY
    snapshot: datetime.timedelta = 7 * DAY
    # Short: a gateway that is fed an old timestamp (a freeze attack) notices within a day.
    timestamp: datetime.timedelta = DAY


class ReleaseError(Exception):
    """A release step that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class RepositoryPaths:
    root: Path

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def default_keys(self) -> Path:
        return self.root / "keys"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


# --- keys ----------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key(path: Path) -> CryptoSigner:
    if path.exists():
        raise ReleaseError(f"{path} exists already: refusing to overwrite a key")
    signer = CryptoSigner.generate_ed25519()
    _write_private(path, signer.private_bytes)
    return signer


def load_signer(path: Path) -> CryptoSigner:
    """The ed25519 signer of the PEM (PKCS#8) key at `path`."""
    try:
        private = load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise ReleaseError(f"no key at {path}") from None
    except ValueError as exc:
        raise ReleaseError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ReleaseError(f"{path} is not an ed25519 key")
    return CryptoSigner(private)


def _role_signer(root: Root, role: str, path: Path) -> CryptoSigner:
    signer = load_signer(path)
    if signer.public_key.keyid not in root.roles[role].keyids:
        raise ReleaseError(f"{path} is not a {role} key of this repository's root.json")
    return signer


# --- files ---------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(paths: RepositoryPaths) -> Iterator[None]:
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_SERIALIZER = JSONSerializer(compact=False)
S = TypeVar("S", Root, Timestamp, Snapshot, Targets)


def _load(paths: RepositoryPaths, role: str, kind: type[S]) -> Metadata[S]:
    path = paths.metadata / f"{role}.json"
    try:
        md = Metadata[S].from_bytes(path.read_bytes())
    except FileNotFoundError:
        raise ReleaseError(
            f"no {path}: create the repository first (python -m cloud.release init)"
        ) from None
    if not isinstance(md.signed, kind):
        raise ReleaseError(f"{path} does not hold {role} metadata")
    return md


def _write(
    paths: RepositoryPaths, role: str, md: Metadata[Any], *, versioned: bool = False
) -> None:
    data = md.to_bytes(_SERIALIZER)
    if versioned:
        _atomic_write(paths.metadata / f"{md.signed.version}.{role}.json", data)
    _atomic_write(paths.metadata / f"{role}.json", data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _sign(md: Metadata[Any], lifetime: datetime.timedelta, *signers: CryptoSigner) -> None:
    md.signed.expires = _now() + lifetime
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


# --- the repository -------------------------------------------------------------------------


def init_repository(
    repo_dir: Path,
    root_keys_dir: Path,
    *,
    keys_dir: Path | None = None,
    lifetimes: Lifetimes = Lifetimes(),
) -> Path:
    """Create the repository in `repo_dir`: the root key in `root_keys_dir` (which the operator
    then keeps offline), the online keys in `keys_dir` (default `repo_dir`/keys) and version 1
    of every role. Returns the path of the root.json a gateway is given as its trusted root."""
    paths = RepositoryPaths(Path(repo_dir))
    keys = Path(keys_dir) if keys_dir is not None else paths.default_keys
    if (paths.metadata / "root.json").exists():
        raise ReleaseError(f"{paths.metadata / 'root.json'} exists: the repository is set up")
    with _locked(paths):
        root_signer = _new_key(Path(root_keys_dir) / "root.pem")
        online = {role: _new_key(keys / f"{role}.pem") for role in ONLINE_ROLES}
        root = Root(consistent_snapshot=False)
        root.add_key(root_signer.public_key, "root")
        for role, signer in online.items():
            root.add_key(signer.public_key, role)
        root_md = Metadata(root)
        _sign(root_md, lifetimes.root, root_signer)
        _write(paths, "root", root_md, versioned=True)
        targets_md = Metadata(Targets())
        _sign(targets_md, lifetimes.targets, online["targets"])
        _write(paths, "targets", targets_md)
        _publish(paths, keys, root, lifetimes, snapshot_changed=True)
        (paths.targets / "bundles").mkdir(parents=True, exist_ok=True)
    return paths.metadata / "root.json"


def _publish(
    paths: RepositoryPaths,
    keys: Path,
    root: Root,
    lifetimes: Lifetimes,
    *,
    snapshot_changed: bool,
) -> None:
    """Sign a new snapshot (when targets changed or it ages) and always a new timestamp."""
    targets = _load(paths, "targets", Targets).signed
    snapshot_path = paths.metadata / "snapshot.json"
    if snapshot_path.exists():
        snapshot_md = _load(paths, "snapshot", Snapshot)
        snapshot_md.signed.version += 1
    else:
        snapshot_md = Metadata(Snapshot())
    if snapshot_changed or not snapshot_path.exists():
        snapshot_md.signed.meta["targets.json"] = MetaFile(version=targets.version)
    _sign(snapshot_md, lifetimes.snapshot, _role_signer(root, "snapshot", keys / "snapshot.pem"))
    _write(paths, "snapshot", snapshot_md)
    _timestamp(paths, keys, root, lifetimes.timestamp, snapshot_md.signed.version)


def _timestamp(
    paths: RepositoryPaths,
    keys: Path,
    root: Root,
    lifetime: datetime.timedelta,
    snapshot_version: int,
) -> None:
    path = paths.metadata / "timestamp.json"
    if path.exists():
        md = _load(paths, "timestamp", Timestamp)
        md.signed.version += 1
    else:
        md = Metadata(Timestamp())
    md.signed.snapshot_meta = MetaFile(version=snapshot_version)
    _sign(md, lifetime, _role_signer(root, "timestamp", keys / "timestamp.pem"))
    _write(paths, "timestamp", md)


def publish(
    repo_dir: Path, *, keys_dir: Path | None = None, lifetimes: Lifetimes = Lifetimes()
) -> None:
    """Sign a new snapshot of the current targets.json and a new timestamp, now."""
    paths = RepositoryPaths(Path(repo_dir))
    with _locked(paths):
        root = _load(paths, "root", Root).signed
        _publish(paths, _keys(paths, keys_dir), root, lifetimes, snapshot_changed=True)


def _keys(paths: RepositoryPaths, keys_dir: Path | None) -> Path:
    return Path(keys_dir) if keys_dir is not None else paths.default_keys


def bundle_versions(repo_dir: Path) -> list[int]:
    """The versions of the bundles the repository's targets.json lists, ascending."""
    targets = _load(RepositoryPaths(Path(repo_dir)), "targets", Targets).signed
    return sorted(_target_version(t) for t in targets.targets.values())


def _target_version(target: TargetFile) -> int:
    custom = target.unrecognized_fields.get("custom", {})
    version = custom.get("version") if isinstance(custom, dict) else None
    return version if isinstance(version, int) else 0


def check_overlay(overlay: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`overlay` as a plain dict, or ReleaseError naming what may not be changed remotely."""
    checked: dict[str, dict[str, Any]] = {}
    for section, fields in overlay.items():
        if section not in OVERLAY_SECTIONS:
            allowed = ", ".join(sorted(OVERLAY_SECTIONS))
            raise ReleaseError(
                f"overlay section {section!r} cannot be changed remotely (only {allowed})"
            )
        if not isinstance(fields, Mapping) or not fields:
            raise ReleaseError(f"overlay section {section!r} must be a non-empty table of fields")
        for name in fields:
            if name in OVERLAY_FORBIDDEN.get(section, frozenset()):
                raise ReleaseError(
                    f"overlay field {section}.{name} cannot be changed remotely "
                    "(credentials, destinations and local paths stay the home's own)"
                )
        checked[section] = dict(fields)
    if not checked:
        raise ReleaseError("the overlay is empty")
    return checked


def load_overlay(path: Path) -> dict[str, dict[str, Any]]:
    """An overlay from a TOML or JSON file (by its suffix), checked by `check_overlay`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReleaseError(f"cannot read overlay {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ReleaseError(f"overlay {path} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"overlay {path} must be a table of sections")
    return check_overlay(data)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(mtime)
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def build_bundle(
    version: int,
    *,
    models_dir: Path,
    models: Sequence[str] = (),
    overlay: Mapping[str, Any] | None = None,
    priors: Path | None = None,
    description: str = "",
    created: datetime.datetime | None = None,
) -> bytes:
    """The bundle tarball's bytes (gzip tar: bundle.json and the files it names)."""
    if not 1 <= version <= MAX_VERSION:
        raise ReleaseError(f"version must be 1 to {MAX_VERSION}, got {version}")
    if not models and overlay is None and priors is None:
        raise ReleaseError("a bundle needs at least one model, an overlay or priors")
    created = created or _now()
    files: dict[str, bytes] = {}
    listed: dict[str, dict[str, str]] = {}
    for name in models:
        if not MODEL_NAME.match(name):
            raise ReleaseError(f"model name {name!r} must be lower-case letters, digits and _")
        if name in listed:
            raise ReleaseError(f"model {name!r} named twice")
        onnx_path = Path(models_dir) / f"{name}.onnx"
        manifest_path = Path(models_dir) / f"{name}.json"
        for required in (onnx_path, manifest_path):
            if not required.is_file():
                raise ReleaseError(f"model {name!r}: no {required}")
        onnx = onnx_path.read_bytes()
        entry = {
            "onnx": f"models/{name}.onnx",
            "manifest": f"models/{name}.json",
            "sha256": hashlib.sha256(onnx).hexdigest(),
        }
        files[entry["onnx"]] = onnx
        files[entry["manifest"]] = manifest_path.read_bytes()
        card_path = Path(models_dir) / f"{name}.md"
        if card_path.is_file():
            entry["card"] = f"models/{name}.md"
            files[entry["card"]] = card_path.read_bytes()
        listed[name] = entry
    if priors is not None:
        try:
            files["priors.json"] = Path(priors).read_bytes()
        except OSError as exc:
            raise ReleaseError(f"cannot read priors {priors}: {exc.strerror}") from None
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": version,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": description,
        "models": listed,
        "overlay": check_overlay(overlay) if overlay is not None else None,
        "priors": "priors.json" if priors is not None else None,
    }
    buffer = io.BytesIO()
    mtime = created.timestamp()
    # mtime=0 in the gzip header: the same inputs give the same bytes (and the same hash).
    with (
        _gzip_writer(buffer) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _tar_member(tar, "bundle.json", json.dumps(manifest, indent=1).encode(), mtime)
        for name, data in files.items():
            _tar_member(tar, name, data, mtime)
    return buffer.getvalue()


@contextlib.contextmanager
def _gzip_writer(buffer: io.BytesIO) -> Iterator[Any]:
    import gzip

    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as raw:
        yield raw


def add_bundle(
    repo_dir: Path,
    version: int,
    *,
    models_dir: Path = Path("gateway/models"),
    models: Sequence[str] = (),
    overlay: Mapping[str, Any] | None = None,
    priors: Path | None = None,
    description: str = "",
    keys_dir: Path | None = None,
    lifetimes: Lifetimes = Lifetimes(),
) -> Path:
    """Build bundle `version`, add it as a target and publish (targets, snapshot, timestamp);
    returns the bundle file's path. Refuses a version not above the newest one."""
    paths = RepositoryPaths(Path(repo_dir))
    keys = _keys(paths, keys_dir)
    data = build_bundle(
        version,
        models_dir=models_dir,
        models=models,
        overlay=overlay,
        priors=priors,
        description=description,
    )
    with _locked(paths):
        root = _load(paths, "root", Root).signed
        targets_md = _load(paths, "targets", Targets)
        newest = max((_target_version(t) for t in targets_md.signed.targets.values()), default=0)
        if version <= newest:
            raise ReleaseError(
                f"version {version} is not above the newest bundle ({newest}): a gateway would "
                "not take it; use a higher version"
            )
        target_path = bundle_target(version)
        file_path = paths.targets / target_path
        _atomic_write(file_path, data)
        target = TargetFile.from_data(target_path, data, ["sha256"])
        target.unrecognized_fields["custom"] = {"version": version}
        targets_md.signed.targets[target_path] = target
        targets_md.signed.version += 1
        _sign(
            targets_md,
            lifetimes.targets,
            _role_signer(root, "targets", keys / "targets.pem"),
        )
        _write(paths, "targets", targets_md)
        _publish(paths, keys, root, lifetimes, snapshot_changed=True)
    return file_path


def _remaining(md: Metadata[Any], now: datetime.datetime) -> datetime.timedelta:
    expires: datetime.datetime = md.signed.expires
    return expires - now


def refresh(
    repo_dir: Path,
    *,
    keys_dir: Path | None = None,
    lifetimes: Lifetimes = Lifetimes(),
    force: bool = False,
) -> bool:
    """Re-sign what ages: targets and snapshot when less than half their lifetime is left, the
    timestamp when less than half of its is (or always, with `force`). Returns whether anything
    was signed. Cheap when nothing is due: run it often (cron, or the cloud's own task)."""
    paths = RepositoryPaths(Path(repo_dir))
    keys = _keys(paths, keys_dir)
    with _locked(paths):
        root = _load(paths, "root", Root).signed
        now = _now()
        targets_md = _load(paths, "targets", Targets)
        targets_due = _remaining(targets_md, now) < lifetimes.targets / 2
        if targets_due:
            targets_md.signed.version += 1
            _sign(
                targets_md, lifetimes.targets, _role_signer(root, "targets", keys / "targets.pem")
            )
            _write(paths, "targets", targets_md)
        snapshot_md = _load(paths, "snapshot", Snapshot)
        if targets_due or _remaining(snapshot_md, now) < lifetimes.snapshot / 2:
            _publish(paths, keys, root, lifetimes, snapshot_changed=targets_due)
            return True
        timestamp_md = _load(paths, "timestamp", Timestamp)
        if force or _remaining(timestamp_md, now) < lifetimes.timestamp / 2:
            _timestamp(paths, keys, root, lifetimes.timestamp, snapshot_md.signed.version)
            return True
    return False


def rotate_root(
    repo_dir: Path,
    root_keys_dir: Path,
    *,
    new_root_keys_dir: Path | None = None,
    rotate_online: bool = False,
    keys_dir: Path | None = None,
    lifetimes: Lifetimes = Lifetimes(),
) -> Path:
    """Sign root version N+1 with the current root key: renewed expiry; with
    `new_root_keys_dir`, a new root key (created there; N+1 is signed by old and new, so a
    gateway trusting N can follow); with `rotate_online`, new online keys (the old ones are
    renamed *.pem.old). Writes <N+1>.root.json and root.json and re-signs the other roles.
    Returns the new root.json's path."""
    paths = RepositoryPaths(Path(repo_dir))
    keys = _keys(paths, keys_dir)
    with _locked(paths):
        root_md = _load(paths, "root", Root)
        root = root_md.signed
        old_signer = _role_signer(root, "root", Path(root_keys_dir) / "root.pem")
        signers = [old_signer]
        if new_root_keys_dir is not None:
            new_signer = _new_key(Path(new_root_keys_dir) / "root.pem")
            root.revoke_key(old_signer.public_key.keyid, "root")
            root.add_key(new_signer.public_key, "root")
            signers.append(new_signer)
        if rotate_online:
            for role in ONLINE_ROLES:
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                old = keys / f"{role}.pem"
                if old.exists():
                    os.replace(old, keys / f"{role}.pem.old")
                root.add_key(_new_key(old).public_key, role)
        root.version += 1
        _sign(root_md, lifetimes.root, *signers)
        _write(paths, "root", root_md, versioned=True)
        # New online keys: every role is signed anew by them.
        targets_md = _load(paths, "targets", Targets)
        targets_md.signed.version += 1
        _sign(targets_md, lifetimes.targets, _role_signer(root, "targets", keys / "targets.pem"))
        _write(paths, "targets", targets_md)
        _publish(paths, keys, root, lifetimes, snapshot_changed=True)
    return paths.metadata / "root.json"


# --- command line -----------------------------------------------------------------------------


def _days(text: str) -> datetime.timedelta:
    value = float(text)
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError("days must be above 0 and at most 3650")
    return datetime.timedelta(days=value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cloud.release", description="Build and sign the fleet's TUF repository."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", type=Path, required=True, help="the repository directory")
        p.add_argument(
            "--keys", type=Path, default=None, help="online keys' directory (default REPO/keys)"
        )
        p.add_argument("--root-expires-days", type=_days, default=Lifetimes.root)
        p.add_argument("--targets-expires-days", type=_days, default=Lifetimes.targets)
        p.add_argument("--snapshot-expires-days", type=_days, default=Lifetimes.snapshot)
        p.add_argument("--timestamp-expires-days", type=_days, default=Lifetimes.timestamp)

    p = sub.add_parser("init", help="create the keys and version 1 of every role")
    common(p)
    p.add_argument("--root-keys", type=Path, required=True, help="offline root key directory")

    p = sub.add_parser("bundle", help="build, sign and publish a bundle")
    common(p)
    p.add_argument("--version", type=int, required=True, help="bundle version (above newest)")
    p.add_argument("--models-dir", type=Path, default=Path("gateway/models"))
    p.add_argument("--model", action="append", default=[], help="model name (repeatable)")
    p.add_argument("--overlay", type=Path, default=None, help="overlay file (.toml or .json)")
    p.add_argument("--priors", type=Path, default=None, help="fleet priors JSON file")
    p.add_argument("--description", default="")

    for name, text in (("publish", "re-sign snapshot and timestamp now"), ("refresh", None)):
        p = sub.add_parser(
            name, help=text or "re-sign what ages (cheap when nothing is due; for cron)"
        )
        common(p)

    p = sub.add_parser("rotate-root", help="sign a new root version with the offline key")
    common(p)
    p.add_argument("--root-keys", type=Path, required=True, help="current root key directory")
    p.add_argument("--new-root-keys", type=Path, default=None, help="create a new root key here")
    p.add_argument(
        "--rotate-online", action="store_true", help="new targets/snapshot/timestamp keys"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lifetimes = Lifetimes(
        root=args.root_expires_days,
        targets=args.targets_expires_days,
        snapshot=args.snapshot_expires_days,
        timestamp=args.timestamp_expires_days,
    )
    try:
        if args.command == "init":
            root = init_repository(
                args.repo, args.root_keys, keys_dir=args.keys, lifetimes=lifetimes
            )
            print(f"repository ready; trusted root for the gateways: {root}")
            print(f"move {args.root_keys / 'root.pem'} offline now")
        elif args.command == "bundle":
            overlay = load_overlay(args.overlay) if args.overlay is not None else None
            path = add_bundle(
                args.repo,
                args.version,
                models_dir=args.models_dir,
                models=args.model,
                overlay=overlay,
                priors=args.priors,
                description=args.description,
                keys_dir=args.keys,
                lifetimes=lifetimes,
            )
            print(f"published {path} ({path.stat().st_size} bytes)")
        elif args.command == "publish":
            publish(args.repo, keys_dir=args.keys, lifetimes=lifetimes)
            print("snapshot and timestamp signed")
        elif args.command == "refresh":
            signed = refresh(args.repo, keys_dir=args.keys, lifetimes=lifetimes)
            print("re-signed" if signed else "nothing due")
        else:
            path = rotate_root(
                args.repo,
                args.root_keys,
                new_root_keys_dir=args.new_root_keys,
                rotate_online=args.rotate_online,
                keys_dir=args.keys,
                lifetimes=lifetimes,
            )
            print(f"new root: {path}")
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
