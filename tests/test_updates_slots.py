"""Bundle archives and A/B slots on disk (`gateway.updates.bundle`, `.slots`, `.boot`): unsafe
archives are refused, the state file is replaced whole, a bundle that keeps the gateway from
starting is reverted at boot."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.updates.boot import boot_config
from gateway.updates.bundle import BundleError, unpack
from gateway.updates.slots import SlotState, SlotStore, Trial
from tests.updates_cloud import MODELS, make_bundle, model_files


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(data)
    return path


def member(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return ti


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (member("/etc/evil"), "absolute path"),
        (member("models/../../evil"), "leaves the bundle"),
        (member("models/link", tarfile.SYMTYPE, link="/etc/passwd"), "links refused"),
        (member("models/hard", tarfile.LNKTYPE, link="bundle.json"), "links refused"),
        (member("dev", tarfile.CHRTYPE), "not a regular file"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, extra: tarfile.TarInfo, words: str) -> None:
    archive = write(tmp_path, make_bundle(1, extra_members=[extra]))
    with pytest.raises(BundleError, match=words):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_a_model_whose_hash_differs_from_bundle_json_is_refused(tmp_path: Path) -> None:
    manifest, onnx = model_files("sensor_anomaly", version="x")
    good = make_bundle(1, {"sensor_anomaly": (manifest, onnx)})
    # the same bundle.json, another ONNX file under the name it lists
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(good), mode="r:gz") as src,
        tarfile.open(fileobj=buf, mode="w:gz") as dst,
    ):
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith(".onnx"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(BundleError, match=r"sha256 of models/sensor_anomaly\.onnx"):
        unpack(write(tmp_path, buf.getvalue()), tmp_path / "out")
    info = unpack(write(tmp_path, good), tmp_path / "ok")
    assert info.version == 1 and set(info.models) == {"sensor_anomaly"}


def test_not_a_bundle_and_a_bad_bundle_json_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a gzip tar"):
        unpack(write(tmp_path, b"plain bytes"), tmp_path / "a")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = json.dumps({"format": 2, "version": 1}).encode()
        ti = tarfile.TarInfo("bundle.json")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    with pytest.raises(BundleError, match=r"bundle\.json"):
        unpack(write(tmp_path, buf.getvalue()), tmp_path / "b")


def test_staging_fills_the_inactive_slot_with_the_local_models_under_the_bundles(
    tmp_path: Path,
) -> None:
    store = SlotStore(tmp_path / "slots")
    archive = write(tmp_path, make_bundle(4, {"vad": model_files("vad", version="v4")}))
    state, info = store.stage(archive, MODELS, SlotState(active="a", version=3))
    assert (state.staged, state.staged_version, info.version) == ("b", 4, 4)
    models = store.models_dir("b")
    assert json.loads((models / "vad.json").read_text())["version"] == "v4"
    assert (models / "sensor_anomaly.onnx").read_bytes() == (
        MODELS / "sensor_anomaly.onnx"
    ).read_bytes()
    assert store.read() == state  # written, and read back the same
    assert not list(store.root.glob(".*.tmp")) and not list(store.root.glob(".b.tmp"))


def test_staging_over_the_previous_slot_forgets_it_first(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "slots")
    archive = write(tmp_path, make_bundle(5))
    start = SlotState(active="a", version=4, previous="b", previous_version=3)
    state, _ = store.stage(archive, MODELS, start)
    assert (state.previous, state.previous_version, state.staged) == (None, None, "b")


def config(tmp_path: Path, **updates: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": "gw",
            "storage": {"path": str(tmp_path / "gw.db")},
            "updates": {"enabled": True, "slots_dir": str(tmp_path / "slots"), **updates},
        }
    )


def test_boot_runs_the_active_slot_and_reverts_a_bundle_that_keeps_crashing(
    tmp_path: Path,
) -> None:
    local = config(tmp_path, max_trial_boots=2)
    store = SlotStore(tmp_path / "slots")
    archive = write(
        tmp_path,
        make_bundle(
            2,
            {"vad": model_files("vad", version="v2")},
            {"aggregation": {"window_s": 300}},
        ),
    )
    state, _ = store.stage(archive, MODELS, SlotState())
    state = replace(
        state, active="a", version=2, staged=None, staged_version=None,
        trial=Trial(2, "r-2", 0.0, 60.0),
    )  # fmt: skip
    store.write(state)
    for boots in (1, 2):  # two starts on trial: still the bundle
        running = boot_config(local)
        assert running.aggregation.window_s == 300
        assert running.inference.models_dir == store.models_dir("a")
        assert store.read().trial == replace(state.trial, boots=boots)  # type: ignore[arg-type]
    running = boot_config(local)  # the third: reverted before anything runs
    after = store.read()
    assert running == local and after.version is None and after.trial is None
    assert after.failed == (2,)
    assert after.report is not None and after.report["state"] == "rolled_back"
    assert after.report["rollout"] == "r-2"


def test_boot_reverts_an_overlay_the_edited_local_config_no_longer_allows(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "slots")
    archive = write(tmp_path, make_bundle(2, overlay={"privacy": {"epsilon": 0.4}}))
    state, _ = store.stage(archive, MODELS, SlotState())
    store.write(replace(state, active="a", version=2, staged=None, staged_version=None))
    assert boot_config(config(tmp_path)).privacy.epsilon == 0.4
    stricter_home = config(tmp_path).model_copy(
        update={"privacy": config(tmp_path).privacy.model_copy(update={"epsilon": 0.1})}
    )
    assert boot_config(stricter_home).privacy.epsilon == 0.1
    assert store.read().version is None and "privacy.epsilon" in store.read().report["reason"]  # type: ignore[index]


def test_the_state_file_is_replaced_whole(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "slots")
    store.write(SlotState(active="a", version=1))
    store.write(SlotState(active="b", version=2, previous="a", previous_version=1))
    assert [p.name for p in store.root.iterdir()] == ["state.json"]
    assert store.read().version == 2
    store.state_path.write_text('{"format": 9}')
    with pytest.raises(ValueError, match="state format"):
        store.read()


@pytest.mark.parametrize(
    "body",
    [
        '{"format": 9}',
        "{not json",
        "[1]",
        '{"format": 1, "trial": {"version": 2, "rollout": null, "since": 0, "soak_s": 1, "x": 1}}',
    ],
)
def test_an_unreadable_state_file_is_set_aside_and_the_gateway_starts_on_its_local_config(
    tmp_path: Path, body: str
) -> None:
    from gateway.updates.manager import UpdateManager

    local = config(tmp_path)
    store = SlotStore(tmp_path / "slots")
    store.root.mkdir(parents=True)
    store.state_path.write_text(body)
    assert boot_config(local) == local
    assert (store.root / "state.json.unreadable").read_text() == body
    store.state_path.write_text(body)  # the manager too, should it read it first
    manager = UpdateManager(
        local=local, running=local, inference=None, gateway_health=dict, restart=lambda: None
    )
    assert manager.state == SlotState() and not store.state_path.exists()


def test_a_revert_whose_previous_slot_is_gone_still_reports_the_rollout(tmp_path: Path) -> None:
    local = config(tmp_path, max_trial_boots=1)
    store = SlotStore(tmp_path / "slots")
    archive = write(tmp_path, make_bundle(2, overlay={"aggregation": {"window_s": 300}}))
    state, _ = store.stage(archive, MODELS, SlotState())
    # Version 2 in slot a on trial (seen by one start already); version 1's slot b is gone.
    store.write(
        replace(
            state, active="a", version=2, previous="b", previous_version=1, staged=None,
            staged_version=None, trial=Trial(2, "r-2", 0.0, 60.0, boots=1),
        )
    )  # fmt: skip
    assert boot_config(local) == local
    after = store.read()
    assert after.version is None and after.active is None
    assert after.report is not None and after.report["state"] == "rolled_back"
    assert after.report["rollout"] == "r-2"


def test_an_unreachable_cloud_is_a_transient_fetch_error(tmp_path: Path) -> None:
    from cloud.release import init_repository
    from gateway.updates.fetch import FetchError, fetch_bundle

    root = init_repository(tmp_path / "repo", tmp_path / "offline")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as caught:
        fetch_bundle(
            root_file=root,
            slots_dir=tmp_path / "slots",
            base_url=f"http://127.0.0.1:{port}",
            target="bundles/bundle-1.tar.gz",
            version=1,
        )
    # Tried again at the next poll, never reported as the bundle's failure.
    assert caught.value.transient, caught.value
