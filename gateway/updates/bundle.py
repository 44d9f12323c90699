"""Bundles: the tar.gz a release holds (`bundle.json`, models, priors), checked and unpacked.

The format is the cloud's (`cloud/release.py`; the contract in the README, "Updates on the
gateway"): ``bundle.json`` names the version, the models (``onnx``, ``manifest``, optional
``card``, the ONNX file's ``sha256``), an optional config overlay and an optional
``priors.json``. TUF has verified the archive's hash and length by the time it gets here; this
module still refuses what the archive itself could do to the gateway's disk: absolute paths,
``..``, links, devices, members past a size cap, and any file named in ``bundle.json`` that is
missing or whose sha256 differs.

Fleet priors (``priors.json``, optional): their format is the gateway's, documented in
`gateway.inference.priors`; a bundle's priors start new sensors' baselines
(``inference.priors_file`` points into the slot), and a bundle whose priors do not parse is
refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.inference.manifest import ManifestError, read_manifest

MAX_MEMBER_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 1000


class BundleError(ValueError):
    """A bundle the gateway refuses; the message says what is wrong with it."""


class BundleModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    onnx: str
    manifest: str
    card: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class BundleInfo(BaseModel):
    """``bundle.json`` (unknown keys are ignored: a newer cloud may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: int = Field(ge=1, le=1)
    version: int = Field(ge=1)
    created: str = ""
    description: str = ""
    models: dict[str, BundleModel] = Field(default_factory=dict)
    overlay: dict[str, Any] | None = None
    priors: str | None = None


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise BundleError(f"bundle member {name!r}: absolute path")
    if any(part == ".." for part in path.parts) or "\\" in name:
        raise BundleError(f"bundle member {name!r}: path leaves the bundle")
    return path


def unpack(archive: Path, dest: Path) -> BundleInfo:
    """Unpack `archive` into `dest` (created; must not exist) after checking every member;
    check bundle.json and the models' hashes; return bundle.json."""
    dest.mkdir(parents=True)
    total = 0
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115  # closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"not a gzip tar: {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"not a gzip tar: {exc}") from None
        if len(members) > MAX_MEMBERS:
            raise BundleError(f"{len(members)} members, more than {MAX_MEMBERS}")
        for m in members:
            rel = _safe_name(m.name)
            if m.isdir():
                (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            if not m.isreg():
                raise BundleError(f"bundle member {m.name!r}: not a regular file (links refused)")
            if m.size > MAX_MEMBER_BYTES:
                raise BundleError(f"bundle member {m.name!r}: {m.size} bytes, over the cap")
            total += m.size
            if total > MAX_TOTAL_BYTES:
                raise BundleError("bundle larger than its cap when unpacked")
            src = tar.extractfile(m)
            if src is None:
                raise BundleError(f"bundle member {m.name!r}: cannot be read")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with src, out.open("xb") as fh:
                shutil.copyfileobj(src, fh)
    return check(dest)


def check(root: Path) -> BundleInfo:
    """bundle.json of the unpacked bundle at `root`, with every file it names checked."""
    try:
        info = BundleInfo.model_validate(json.loads((root / "bundle.json").read_bytes()))
    except FileNotFoundError:
        raise BundleError("bundle.json is missing") from None
    except (ValueError, ValidationError) as exc:
        raise BundleError(f"bundle.json: {exc}") from None
    for name, model in info.models.items():
        onnx = _member(root, model.onnx, f"models.{name}.onnx")
        manifest_path = _member(root, model.manifest, f"models.{name}.manifest")
        if model.card is not None:
            _member(root, model.card, f"models.{name}.card")
        digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
        if digest != model.sha256:
            raise BundleError(f"models.{name}: sha256 of {model.onnx} is {digest}, not as listed")
        try:
            manifest = read_manifest(manifest_path)
        except ManifestError as exc:
            raise BundleError(f"models.{name}: {exc}") from None
        if manifest.name != name or manifest_path.stem != name:
            raise BundleError(f"models.{name}: its manifest names model {manifest.name!r}")
        if manifest_path.parent / manifest.file != onnx:
            raise BundleError(
                f"models.{name}: the manifest's file {manifest.file!r} is not {model.onnx!r}"
            )
    if info.priors is not None:
        # Imported here: the priors code reads numpy, which `python -m gateway` does not load
        # at start unless inference runs.
        from gateway.inference.priors import FleetPriors, PriorsError

        try:
            FleetPriors.load(_member(root, info.priors, "priors"))
        except PriorsError as exc:
            raise BundleError(str(exc)) from None
    return info


def _member(root: Path, name: str, field: str) -> Path:
    path = root / _safe_name(name)
    if not path.is_file():
        raise BundleError(f"{field}: {name!r} is not in the bundle")
    return path
