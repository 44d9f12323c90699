"""Bundles fetched through TUF (python-tuf's `tuf.ngclient.Updater`).

Trust starts from the operator's root.json (``[updates] root_file``, given as the bootstrap
root on every fetch; later roots come from the repository, each verified by the one before and
cached under ``tuf/``). ``refresh`` walks root -> timestamp -> snapshot -> targets with their
signatures, versions (never older than the cached ones: rollback attacks) and expiry (freeze
attacks); the target file is then downloaded and checked against its length and hashes. Any of
those failing is a `FetchError` naming TUF's reason. The repository is the cloud's (no auth:
metadata is signed and bundles hold no secrets): ``<uplink.url>/api/v1/updates/metadata/`` and
``.../targets/``. Blocking: run it in a thread.
"""

from __future__ import annotations

from pathlib import Path

from tuf.api import exceptions
from tuf.ngclient import Updater

METADATA_PATH = "/api/v1/updates/metadata/"
TARGETS_PATH = "/api/v1/updates/targets/"


class FetchError(RuntimeError):
    """A bundle TUF refused or could not download; the message says why. `transient`: a
    download that failed on the way (network, HTTP error, a local I/O error), worth trying again
    at the next poll, as opposed to what TUF refused (tampered, expired, wrong keys, too long)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def fetch_bundle(
    *, root_file: Path, slots_dir: Path, base_url: str, target: str, version: int
) -> Path:
    """The verified bundle `target` of `version` (downloaded, or the cached copy TUF checked)."""
    metadata_dir = slots_dir / "tuf"
    downloads = slots_dir / "downloads"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    downloads.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    try:
        root = root_file.read_bytes()
    except OSError as exc:
        raise FetchError(f"updates.root_file {root_file}: {exc}") from None
    try:
        updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=base + METADATA_PATH,
            target_dir=str(downloads),
            target_base_url=base + TARGETS_PATH,
            bootstrap=root,
        )
        updater.refresh()
        info = updater.get_targetinfo(target)
        if info is None:
            raise FetchError(f"{target}: not a signed target of the repository")
        custom = info.unrecognized_fields.get("custom")
        signed_version = custom.get("version") if isinstance(custom, dict) else None
        if signed_version != version:
            raise FetchError(
                f"{target}: its signed version is {signed_version!r}, the cloud asked for {version}"
            )
        path = updater.find_cached_target(info) or updater.download_target(info)
    except exceptions.RepositoryError as exc:
        raise FetchError(f"TUF refused the update: {type(exc).__name__}: {exc}") from None
    except exceptions.DownloadLengthMismatchError as exc:  # longer than signed: refused
        raise FetchError(f"TUF refused the download: {type(exc).__name__}: {exc}") from None
    except exceptions.DownloadError as exc:
        raise FetchError(
            f"TUF download failed: {type(exc).__name__}: {exc}", transient=True
        ) from None
    except OSError as exc:
        raise FetchError(f"TUF: {type(exc).__name__}: {exc}", transient=True) from None
    except ValueError as exc:
        raise FetchError(f"TUF: {type(exc).__name__}: {exc}") from None
    return Path(path)
