"""The signed update repository: `cloud.release` builds it, the running cloud serves it, and a
real `tuf.ngclient.Updater` over HTTP takes what is genuine and refuses the rest (a tampered
bundle, an older timestamp, expired metadata, metadata signed by a key the root does not name).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from cloud import release
from cloud.release import Lifetimes, ReleaseError, add_bundle, init_repository, refresh
from cloud.server import start
from tests.test_cloud_api import make_config

MODELS_DIR = Path(__file__).resolve().parent.parent / "gateway" / "models"


class Repo:
    """A repository in tmp_path, served by a running cloud."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.dir = tmp_path / "repo"
        self.offline = tmp_path / "offline"
        self.base = f"http://127.0.0.1:{port}/api/v1/updates"
        self.tmp = tmp_path
        self._clients = 0

    def updater(self, client_dir: Path | None = None) -> Updater:
        """A gateway's TUF client: a new one trusting the repository's first root, or the one
        whose metadata (what it trusts by now) is in `client_dir`."""
        if client_dir is None:
            self._clients += 1
            client_dir = self.tmp / f"client-{self._clients}"
            (client_dir / "metadata").mkdir(parents=True)
            (client_dir / "targets").mkdir()
            shutil.copy(
                self.dir / "metadata" / "1.root.json", client_dir / "metadata" / "root.json"
            )
        client = client_dir
        return Updater(
            metadata_dir=str(client / "metadata"),
            metadata_base_url=f"{self.base}/metadata/",
            target_dir=str(client / "targets"),
            target_base_url=f"{self.base}/targets/",
            bootstrap=None,
        )


ServeRepo = Callable[..., Awaitable[Repo]]


@pytest.fixture
async def serve_repo(tmp_path: Path) -> AsyncIterator[ServeRepo]:
    runners = []

    async def serve(*, init: bool = True, **updates: Any) -> Repo:
        repo_dir = tmp_path / "repo"
        if init:
            init_repository(repo_dir, tmp_path / "offline")
        config = make_config(
            f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
            analytics_interval_s=0,
            updates={"repository_dir": str(repo_dir), **updates},
        )
        runner, port = await start(config)
        runners.append(runner)
        return Repo(tmp_path, port)

    yield serve
    for runner in runners:
        await runner.cleanup()


def _download(updater: Updater, target: str) -> tuple[bytes, dict[str, Any]]:
    updater.refresh()
    info = updater.get_targetinfo(target)
    assert info is not None, f"{target} is not a target"
    path = updater.download_target(info)
    return Path(path).read_bytes(), dict(info.unrecognized_fields)


def _bundle_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for member in tar.getmembers():
            assert member.isfile() and not member.name.startswith(("/", ".."))
            extracted = tar.extractfile(member)
            assert extracted is not None
            out[member.name] = extracted.read()
        return out


async def test_a_gateway_client_downloads_a_genuine_bundle_as_the_contract_says(
    serve_repo: ServeRepo,
) -> None:
    repo = await serve_repo()
    overlay = {"inference": {"sensor_window_s": 600.0}}
    path = add_bundle(
        repo.dir, 3, models_dir=MODELS_DIR, models=["sensor_anomaly"], overlay=overlay
    )
    data, custom = await asyncio.to_thread(_download, repo.updater(), "bundles/bundle-3.tar.gz")
    assert data == path.read_bytes()
    assert custom == {"custom": {"version": 3}}
    members = _bundle_members(data)
    manifest = json.loads(members["bundle.json"])
    onnx = (MODELS_DIR / "sensor_anomaly.onnx").read_bytes()
    assert manifest["format"] == 1 and manifest["version"] == 3
    assert manifest["overlay"] == overlay and manifest["priors"] is None
    assert manifest["models"] == {
        "sensor_anomaly": {
            "onnx": "models/sensor_anomaly.onnx",
            "manifest": "models/sensor_anomaly.json",
            "card": "models/sensor_anomaly.md",
            "sha256": hashlib.sha256(onnx).hexdigest(),
        }
    }
    assert members["models/sensor_anomaly.onnx"] == onnx
    assert set(members) == {"bundle.json", *manifest["models"]["sensor_anomaly"].values()} - {
        hashlib.sha256(onnx).hexdigest()
    }
    datetime.datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ")


async def test_a_tampered_bundle_is_refused(serve_repo: ServeRepo) -> None:
    repo = await serve_repo()
    path = add_bundle(repo.dir, 1, models_dir=MODELS_DIR, models=["vad"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        await asyncio.to_thread(_download, repo.updater(), "bundles/bundle-1.tar.gz")


async def test_an_older_version_is_refused_by_the_release_tool_and_by_the_client(
    serve_repo: ServeRepo,
) -> None:
    repo = await serve_repo()
    add_bundle(repo.dir, 5, models_dir=MODELS_DIR, models=["vad"])
    for older in (5, 4):
        with pytest.raises(ReleaseError, match="not above the newest bundle"):
            add_bundle(repo.dir, older, models_dir=MODELS_DIR, models=["vad"])
    # A rollback attack: the client has seen timestamp N; an attacker (or a stale mirror)
    # serves the genuine, still valid timestamp N-1.
    metadata = repo.dir / "metadata"
    old_timestamp = (metadata / "timestamp.json").read_bytes()
    add_bundle(repo.dir, 6, models_dir=MODELS_DIR, models=["vad"])
    await asyncio.to_thread(repo.updater().refresh)
    (metadata / "timestamp.json").write_bytes(old_timestamp)
    # The same gateway polling again, with what it trusts by now on its disk.
    with pytest.raises(tuf_errors.BadVersionNumberError):
        await asyncio.to_thread(repo.updater(repo.tmp / "client-1").refresh)
    assert release.bundle_versions(repo.dir) == [5, 6]


async def test_expired_metadata_is_refused_and_a_refresh_fixes_it(serve_repo: ServeRepo) -> None:
    repo = await serve_repo()
    add_bundle(repo.dir, 1, models_dir=MODELS_DIR, models=["vad"])
    expired = Lifetimes(timestamp=datetime.timedelta(seconds=-60))
    refresh(repo.dir, lifetimes=expired, force=True)
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        await asyncio.to_thread(repo.updater().refresh)
    # A normal refresh sees the timestamp due and signs a fresh one.
    assert refresh(repo.dir)
    assert not refresh(repo.dir)  # nothing due any more
    data, _ = await asyncio.to_thread(_download, repo.updater(), "bundles/bundle-1.tar.gz")
    assert data.startswith(b"\x1f\x8b")


async def test_metadata_signed_by_a_key_the_root_does_not_name_is_refused(
    serve_repo: ServeRepo,
) -> None:
    repo = await serve_repo()
    add_bundle(repo.dir, 1, models_dir=MODELS_DIR, models=["vad"])
    targets_path = repo.dir / "metadata" / "targets.json"
    md = Metadata[Targets].from_bytes(targets_path.read_bytes())
    md.signed.version += 1
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())
    targets_path.write_bytes(md.to_bytes(JSONSerializer()))
    release.publish(repo.dir)  # snapshot and timestamp by the genuine keys
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        await asyncio.to_thread(repo.updater().refresh)


async def test_a_client_follows_a_root_rotation_to_new_online_keys(serve_repo: ServeRepo) -> None:
    repo = await serve_repo()
    add_bundle(repo.dir, 1, models_dir=MODELS_DIR, models=["vad"])
    old_targets_key = (repo.dir / "keys" / "targets.pem").read_bytes()
    release.rotate_root(
        repo.dir, repo.offline, new_root_keys_dir=repo.tmp / "offline-2", rotate_online=True
    )
    assert (repo.dir / "keys" / "targets.pem").read_bytes() != old_targets_key
    add_bundle(repo.dir, 2, models_dir=MODELS_DIR, models=["vad"])
    updater = repo.updater()  # trusts 1.root.json only
    _, custom = await asyncio.to_thread(_download, updater, "bundles/bundle-2.tar.gz")
    assert custom == {"custom": {"version": 2}}
    # The old root key can no longer sign a root the client would take.
    with pytest.raises(ReleaseError, match="not a root key"):
        release.rotate_root(repo.dir, repo.offline)


async def test_the_repository_endpoints_serve_files_only_from_it(serve_repo: ServeRepo) -> None:
    repo = await serve_repo()
    add_bundle(repo.dir, 1, models_dir=MODELS_DIR, models=["vad"])
    (repo.dir / "targets" / "bundles" / "link.tar.gz").symlink_to(repo.dir / "keys" / "targets.pem")
    async with aiohttp.ClientSession() as http:

        async def get(path: str, **headers: str) -> tuple[int, CIMultiDictProxy[str], bytes]:
            async with http.get(f"{repo.base}/{path}", headers=headers) as r:
                return r.status, r.headers, await r.read()

        status, headers, body = await get("metadata/timestamp.json")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-cache"
        assert body == (repo.dir / "metadata" / "timestamp.json").read_bytes()
        status, _, _ = await get("metadata/timestamp.json", **{"If-None-Match": headers["ETag"]})
        assert status == 304
        status, headers, _ = await get("metadata/1.root.json")
        assert status == 200 and "max-age" in headers["Cache-Control"]
        status, headers, body = await get("targets/bundles/bundle-1.tar.gz")
        assert status == 200 and headers["Content-Type"] == "application/gzip"
        assert "Content-Encoding" not in headers  # the client hashes the bytes as stored
        assert body == (repo.dir / "targets" / "bundles" / "bundle-1.tar.gz").read_bytes()
        for path, expected in (
            ("metadata/2.root.json", {404}),
            ("metadata/keys.json", {404}),
            ("metadata/..%2Fkeys%2Ftargets.pem", {404}),
            ("targets/bundles/bundle-9.tar.gz", {404}),
            ("targets/..%2Fkeys%2Ftargets.pem", {400}),
            # 404 when the URL's dot segments are resolved before routing, else 400.
            ("targets/bundles/%2E%2E/%2E%2E/keys/targets.pem", {400, 404}),
            ("targets/bundles//bundle-1.tar.gz", {400}),
            ("targets/bundles/link.tar.gz", {404}),  # a link out of the directory
        ):
            status, headers, body = await get(path)
            assert status in expected, path
            assert headers["Content-Type"].startswith("application/json"), path
            assert b"PRIVATE KEY" not in body and "error" in json.loads(body), path


async def test_without_a_repository_the_endpoints_answer_404_json(serve_repo: ServeRepo) -> None:
    repo = await serve_repo(init=False)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{repo.base}/metadata/root.json") as r,
    ):
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("overlay", "named"),
    [
        ({"mqtt": {"host": "evil.example"}}, "section 'mqtt'"),
        ({"storage": {"path": "/tmp/x"}}, "section 'storage'"),
        ({"uplink": {"token": "x"}}, "uplink.token"),
        ({"uplink": {"url": "http://elsewhere"}}, "uplink.url"),
        ({"inference": {}}, "non-empty table"),
    ],
)
def test_an_overlay_outside_what_may_change_remotely_is_refused(
    tmp_path: Path, overlay: dict[str, Any], named: str
) -> None:
    init_repository(tmp_path / "repo", tmp_path / "offline")
    with pytest.raises(ReleaseError, match=named.replace(".", r"\.")):
        add_bundle(tmp_path / "repo", 1, overlay=overlay)
    assert release.bundle_versions(tmp_path / "repo") == []


def test_the_command_line_builds_a_repository_step_by_step(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloud.release", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    repo, offline = str(tmp_path / "repo"), str(tmp_path / "offline")
    assert run("init", "--repo", repo, "--root-keys", offline).returncode == 0
    assert (tmp_path / "offline" / "root.pem").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "repo" / "keys" / "root.pem").exists()
    again = run("init", "--repo", repo, "--root-keys", offline)
    assert again.returncode == 2 and "exists" in again.stderr
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("[aggregation]\nwindow_s = 600\n", encoding="utf-8")
    made = run(
        "bundle", "--repo", repo, "--version", "2", "--models-dir", str(MODELS_DIR),
        "--model", "vad", "--overlay", str(overlay), "--description", "longer windows",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert release.bundle_versions(Path(repo)) == [2]
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nhost = 'x'\n", encoding="utf-8")
    refused = run("bundle", "--repo", repo, "--version", "3", "--overlay", str(bad))
    assert refused.returncode == 2 and "section 'mqtt'" in refused.stderr
    for command in ("publish", "refresh"):
        assert run(command, "--repo", repo).returncode == 0
