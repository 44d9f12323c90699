"""Fleet priors from real ingested batches (SQLite and PostgreSQL), into a signed bundle."""

from __future__ import annotations

import asyncio
import io
import json
import math
import tarfile
from pathlib import Path

from cloud.app import create_app
from cloud.fleet.priors import fleet_priors, main
from cloud.release import add_bundle, init_repository
from cloud.web import ENGINE_KEY
from tests.test_cloud_api import (
    T0,
    AiohttpClient,
    db_url,
    home_id,
    make_aggregate,
    make_batch,
    make_config,
    post,
)

__all__ = ["db_url"]  # the fixture, imported for pytest


async def test_priors_pool_the_homes_readings_and_skip_what_too_few_homes_show(
    db_url: str, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    # No storage upkeep: on PostgreSQL its first run creates partitions for these old windows
    # while they are uploaded, which this test is not about.
    config = make_config(db_url, analytics_interval_s=0, retention={"interval_s": 0})
    client = await aiohttp_client(create_app(config))
    aggs = []
    for i, level in enumerate((20.0, 21.0, 22.0)):
        home = home_id(f"home-{i}")
        for w in range(3):
            aggs.append(make_aggregate(T0 + 60 * w, home=home, mean=level, sum=6 * level))
        if i < 2:  # humidity in two homes only: no prior
            aggs.append(make_aggregate(T0, home=home, metric="humidity", unit="%", mean=50.0))
    # Noised windows carry privacy noise: never part of a prior.
    noised = {"min": None, "max": None, "std": None, "p50": None, "p95": None, "epsilon": 1.0}
    aggs.append(make_aggregate(T0, policy="noised", mean=90.0, sum=540.0, **noised))
    status, body = await post(client, make_batch(aggs=aggs))
    assert status == 201, body
    priors = await fleet_priors(client.server.app[ENGINE_KEY])  # type: ignore[union-attr]
    assert priors["format"] == 1
    assert set(priors["metrics"]) == {"temperature"}
    # Each window: 6 readings, std 0.5; pooled variance = 0.25 + the means' spread (2/3).
    temperature = priors["metrics"]["temperature"]
    assert temperature["mean"] == 21.0
    assert math.isclose(temperature["std"], math.sqrt(0.25 + 2 / 3), rel_tol=1e-5)

    out = tmp_path / "priors.json"
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'database_url = "{db_url}"\nread_token = "read-token-0123456789abcdef"\n', encoding="utf-8"
    )
    args = ["--config", str(config), "--out", str(out), "--min-homes", "2"]
    assert await asyncio.to_thread(main, args) == 0  # the command line runs its own loop
    written = json.loads(out.read_text(encoding="utf-8"))
    assert set(written["metrics"]) == {"temperature", "humidity"}
    repo = tmp_path / "repo"
    init_repository(repo, tmp_path / "offline")
    bundle = add_bundle(repo, 1, priors=out)
    with tarfile.open(fileobj=io.BytesIO(bundle.read_bytes()), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile("bundle.json"))  # type: ignore[arg-type]
        assert manifest["priors"] == "priors.json" and manifest["models"] == {}
        assert json.load(tar.extractfile("priors.json")) == written  # type: ignore[arg-type]
