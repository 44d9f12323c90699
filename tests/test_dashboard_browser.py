"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
log in with the read token, read the plotted series out of plotly's graph div and compare them
with the seeded fleet, change the bucket and range pickers, watch a live update arrive; the
anomaly table (flagged rows, their last 24 h, a count that holds between refreshes, no
placeholder values), the favicon and the CSP, a 390 px wide screen; a noised series with its
noise band, one-point, sparse and day-bucket axes, and gaps kept as gaps. Screenshots go to
test-artifacts/ (dashboard.png, dashboard-390.png, dashboard-noised.png,
dashboard-noised-390.png)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from cloud.app import create_app
from schemas.batch import Batch, WindowAggregate
from tests.conftest import need
from tests.test_analytics_api import ANOMALOUS_HOME, HOME, HOURS, _window, seed_fleet
from tests.test_cloud_api import (
    READ,
    READ_TOKEN,
    T0,
    AiohttpClient,
    home_id,
    make_config,
    post,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MODELS_DIR = Path(__file__).resolve().parent.parent / "gateway" / "models"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The mean traces (not the noise bands), without the nulls that mark gaps.
# Page functions are arrow functions, never bare expressions: Playwright evaluates an expression
# with eval(), which the dashboard's CSP (no 'unsafe-eval') refuses.
SERIES_JS = """() => document.getElementById('chart-series').data
    .filter(t => !(t.meta && t.meta.band))
    .map(t => {
      const keep = Array.from(t.y).map(y => y !== null);
      return {name: t.name, x: Array.from(t.x).filter((_, i) => keep[i]),
              y: Array.from(t.y).filter((_, i) => keep[i])};
    })"""
# Every trace as plotted, gaps and bands included.
TRACES_JS = """(id) => document.getElementById(id).data.map(t => ({name: t.name,
    x: Array.from(t.x), y: Array.from(t.y), band: t.meta && t.meta.band ? t.meta.band : null,
    fill: t.fill || null}))"""
REFRESHES_JS = "() => Number(document.body.dataset.refreshes || 0)"
XTICKS_JS = """(id) => Array.from(document.querySelectorAll(`#${id} .xaxislayer-above .xtick text`))
    .map(t => t.textContent)"""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def expected_means(windows: list[Any], width: int, start: float, end: float) -> dict[str, Any]:
    """home -> (x, y) of the count-weighted mean temperature per bucket in [start, end)."""
    cells: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for a in windows:
        if a.metric == "temperature" and start <= a.window_start < end:
            cell = cells[(a.home, math.floor(a.window_start / width) * width)]
            cell[0] += a.count * a.mean
            cell[1] += a.count
    out: dict[str, tuple[list[str], list[float]]] = defaultdict(lambda: ([], []))
    for (home, t), (weighted, n) in sorted(cells.items()):
        out[home][0].append(iso(t))
        out[home][1].append(weighted / n)
    return dict(out)


def assert_plotted(traces: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    plotted = {t["name"]: t for t in traces}
    assert plotted.keys() == expected.keys()
    for home, (xs, ys) in expected.items():
        assert plotted[home]["x"] == xs, home
        assert plotted[home]["y"] == pytest.approx(ys, rel=1e-9), home


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        need("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


async def test_the_dashboard_draws_the_seeded_fleet_and_follows_the_pickers(
    aiohttp_client: AiohttpClient, tmp_path: Path, chromium: Path
) -> None:
    from playwright.async_api import async_playwright

    config = make_config(
        f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
        analytics_interval_s=0,
        dashboard_poll_s=0.5,
    )
    client = await aiohttp_client(create_app(config))
    seeded = await seed_fleet(client)
    assert (await client.post("/api/v1/analytics/run", headers=READ)).status == 200
    url = str(client.make_url("/"))
    ARTIFACTS.mkdir(exist_ok=True)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1200})
            blocked: list[str] = []
            page.on(
                "console",
                lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
            )
            login = await page.goto(url)
            assert login is not None
            assert "script-src 'self'" in login.headers["content-security-policy"]
            await page.fill("#token", "not-the-token-0000")
            await page.click("button[type=submit]")
            assert "not the read token" in await page.inner_text(".error")
            await page.fill("#token", READ_TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_function(
                "() => document.body && Number(document.body.dataset.refreshes || 0) >= 1"
            )

            # Default view: temperature, hourly means per home over the last 24 h of data.
            assert await page.input_value("#metric") == "temperature"
            end = T0 + 3600 * HOURS
            assert_plotted(
                await page.evaluate(SERIES_JS),
                expected_means(seeded.windows, 3600, end - 86400, end),
            )
            assert await page.inner_text("#card-online") == "2 / 2"
            assert await page.inner_text("#card-homes") == "9"
            clusters = await page.evaluate(
                "() => document.getElementById('chart-clusters').data.length"
            )
            assert clusters == 3
            first_anomaly = await page.inner_text("#anomalies tbody tr:first-child")
            assert ANOMALOUS_HOME in first_anomaly and "temperature" in first_anomaly
            await check_anomaly_table(page)
            await check_favicon(page)

            # The bucket picker: daily means of the last day; the range picker: every day.
            async def pick(selector: str, value: str) -> list[dict[str, Any]]:
                await page.select_option(selector, value)
                await page.wait_for_function("() => document.body.dataset.seriesReady === '1'")
                traces: list[dict[str, Any]] = await page.evaluate(SERIES_JS)
                return traces

            assert_plotted(
                await pick("#bucket", "day"),
                expected_means(seeded.windows, 86400, end - 86400, end),
            )
            day_all = expected_means(seeded.windows, 86400, 0, math.inf)
            assert_plotted(await pick("#range", "all"), day_all)
            assert all(len(xs) == 2 for xs, _ in day_all.values())

            # Live: a new hour arrives and the chart picks it up on its own.
            await pick("#bucket", "hour")
            fresh = _window(HOME[1], end, "temperature", 23.5, unit="°C")
            batch = Batch(
                batch_id="f" * 32, gateway="gw-1", seq=99, created_at=end, aggregates=[fresh]
            )
            assert (await post(client, batch))[0] == 201
            await page.wait_for_function(
                "([x, home]) => document.getElementById('chart-series').data"
                ".some(t => t.name === home && Array.from(t.x).includes(x))",
                arg=[iso(end), HOME[1]],
                timeout=15_000,
            )
            traces = await page.evaluate(SERIES_JS)
            home1 = next(t for t in traces if t["name"] == HOME[1])
            assert home1["y"][home1["x"].index(iso(end))] == 23.5

            await page.select_option("#range", "86400")
            await page.wait_for_function("() => document.body.dataset.seriesReady === '1'")
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            await check_phone_width(page, "dashboard-390.png")
            assert blocked == []  # nothing the page needs is refused by its CSP
        finally:
            await browser.close()


async def wait_refreshes(page: Any, n: int) -> None:
    await page.wait_for_function(
        f"() => document.body && Number(document.body.dataset.refreshes || 0) >= {n}",
        timeout=30_000,  # a loaded 2-core machine; a refresh takes well under a second alone
    )


async def check_anomaly_table(page: Any) -> None:
    """Flagged rows only, each with its last 24 h; no placeholder values; the card's count is
    the table's and holds from one refresh to the next (the data does not change)."""
    counts = []
    for _ in range(2):
        done = int(await page.evaluate(REFRESHES_JS))
        await wait_refreshes(page, done + 1)
        rows = await page.eval_on_selector_all(
            "#anomalies tbody tr", "rs => rs.map(r => [r.className, r.innerText])"
        )
        assert rows and all(cls == "flagged" for cls, _ in rows)
        table = await page.inner_text("#anomalies")
        assert "99.00" not in table and "99.0" not in table
        card = await page.inner_text("#card-anomalies")
        assert card == str(len(rows))
        counts.append(card)
    assert counts[0] == counts[1]
    # The planted jump's row: a line over the 23 hours before it, the flagged hour as a dot.
    spark = await page.eval_on_selector(
        "#anomalies tbody tr:first-child svg.spark",
        "s => ({points: s.querySelector('polyline').getAttribute('points').split(' ').length,"
        " dot: s.querySelectorAll('circle.spark-dot').length})",
    )
    assert spark == {"points": 24, "dot": 1}


async def check_favicon(page: Any) -> None:
    href = await page.get_attribute("link[rel=icon]", "href")
    assert href == "/assets/favicon.svg"
    resp = await page.request.get(urljoin(page.url, href))
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("image/svg+xml")
    assert (await resp.body()).lstrip().startswith(b"<svg")


async def check_phone_width(page: Any, shot: str) -> None:
    """At 390 px wide nothing is wider than the screen: wide tables scroll in their panel."""
    await page.set_viewport_size({"width": 390, "height": 844})
    done = int(await page.evaluate(REFRESHES_JS))
    await wait_refreshes(page, done + 1)
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390
    await page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    await page.set_viewport_size({"width": 1400, "height": 1200})


async def test_the_api_docs_page_lists_every_operation_in_a_browser(
    aiohttp_client: AiohttpClient, tmp_path: Path, chromium: Path
) -> None:
    from playwright.async_api import async_playwright

    from cloud.openapi import build_openapi

    client = await aiohttp_client(
        create_app(make_config(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"))
    )
    doc = build_openapi()
    expected = sorted(
        f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item
    )
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            # A phone-sized screen: nothing may be wider than it.
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            await page.goto(str(client.make_url("/api/v1/docs")))
            await page.wait_for_function("document.body.dataset.ready === 'true'")
            headings = await page.eval_on_selector_all(
                ".operation h2", "hs => hs.map(h => h.textContent.replace(/\\s+/g, ' ').trim())"
            )
            assert sorted(headings) == expected
            upload = await page.inner_text("#uploadBatch")
            assert "gatewayToken" in upload and "422" in upload
            # /metrics: open unless metrics_token is set.
            assert "Credential: none or metricsToken" in await page.inner_text("#metrics")
            schemas = await page.eval_on_selector_all("#schemas details", "ds => ds.length")
            assert schemas == len(doc["components"]["schemas"])
            width = await page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 390
            await page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)
        finally:
            await browser.close()


NOISED_HOMES = [home_id(f"noised-{i}") for i in range(4)]
EPSILON = 1.0
PULSE_JUMP = 25.0  # bpm: 2 noise s.d. of an hour's mean here, 7 MADs of the exact history


def _pulse(home: str, hour: int) -> WindowAggregate:
    """A noised hour of heart rate as a gateway releases it: count, sum and mean, an epsilon,
    no order statistics."""
    mean = 70.0 + 0.5 * ((hour * 7 + NOISED_HOMES.index(home) * 3) % 5 - 2)
    if home == NOISED_HOMES[0] and hour == 11:
        mean += PULSE_JUMP
    fields = {"min": None, "max": None, "std": None, "epsilon": EPSILON, "unit": "bpm"}
    return _window(
        home,
        T0 + 3600 * hour,
        "heart_rate",
        mean,
        policy="noised",
        device_class="wearable",
        **fields,
    )


def _temperature(home: str, hour: int) -> WindowAggregate:
    return _window(home, T0 + 3600 * hour, "temperature", 21.0 + 0.1 * hour, unit="°C")


SUBSECOND = re.compile(r"\d:\d\d:\d\d|\.\d")  # seconds or fractions in a tick label


async def test_noised_sparse_and_single_point_series_read_right(
    aiohttp_client: AiohttpClient, tmp_path: Path, chromium: Path
) -> None:
    from playwright.async_api import async_playwright

    config = make_config(
        f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
        analytics_interval_s=0,
        dashboard_poll_s=0.5,
    )
    client = await aiohttp_client(create_app(config))
    seq = 0

    async def upload(windows: list[WindowAggregate]) -> None:
        nonlocal seq
        seq += 1
        batch = Batch(
            batch_id=f"{seq:032x}", gateway="gw-1", seq=seq, created_at=T0, aggregates=windows
        )
        status, body = await post(client, batch)
        assert status == 201, body

    # Phase 1: the whole fleet is one hour of one home.
    await upload([_temperature(NOISED_HOMES[1], 11)])
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1200})
            await page.goto(str(client.make_url("/")))
            await page.fill("#token", READ_TOKEN)
            await page.click("button[type=submit]")
            await wait_refreshes(page, 1)

            async def pick(selector: str, value: str) -> None:
                await page.evaluate("() => { document.body.dataset.seriesReady = '0'; }")
                await page.select_option(selector, value)
                await page.wait_for_function("() => document.body.dataset.seriesReady === '1'")

            async def ticks() -> list[str]:
                labels: list[str] = await page.evaluate(XTICKS_JS, "chart-series")
                return labels

            # One point, hour buckets: whole hours on the axis, nothing finer.
            assert await page.input_value("#metric") == "temperature"
            for rng in ("86400", "all"):
                await pick("#range", rng)
                labels = await ticks()
                assert labels and not any(SUBSECOND.search(t) for t in labels), labels
                assert all(re.match(r"^\d\d:00", t) for t in labels), labels
            assert "11:00" in "".join(await ticks())
            # One point, day buckets: dates, no time of day.
            await pick("#bucket", "day")
            labels = await ticks()
            assert labels and all(re.fullmatch(r"[A-Z][a-z]{2} \d{1,2}", t) for t in labels)
            assert "Nov 29" in labels
            await pick("#bucket", "hour")
            await pick("#range", "86400")

            # Phase 2: a sparse home (hours 0-2 and 9-11) and four homes' noised heart rate.
            sparse = [_temperature(NOISED_HOMES[0], h) for h in (0, 1, 2, 9, 10, 11)]
            pulses = [_pulse(home, h) for home in NOISED_HOMES for h in range(12)]
            # Power of two homes over hours 0-11 UTC only: their profile has no hours 12-23.
            power = [
                _window(home, T0 + 3600 * h, "power", 100.0 + 20 * h, unit="W", device_class="plug")
                for home in NOISED_HOMES[:2]
                for h in range(12)
            ]
            # Motion that never moved in three homes, then 30 % of an hour in one: a deviation
            # from a constant zero, which the old ranking showed as a capped 99.00.
            still = [
                _window(
                    home,
                    T0 + 3600 * h,
                    "motion",
                    0.3 if (home, h) == (NOISED_HOMES[0], 11) else 0.0,
                    device_class="motion",
                    min=0.0,
                    max=1.0,
                    std=0.0,
                )
                for home in NOISED_HOMES[:3]
                for h in range(12)
            ]
            await upload(sparse + pulses + power + still)
            assert (await client.post("/api/v1/analytics/run", headers=READ)).status == 200
            await page.wait_for_function(
                "(home) => document.getElementById('chart-series').data.some(t => t.name === home)",
                arg=NOISED_HOMES[0],
                timeout=15_000,
            )
            await page.wait_for_function(
                "() => document.getElementById('chart-clusters').data.length > 0",
                timeout=15_000,
            )
            assert await page.input_value("#family") == "power"
            profiles = await page.evaluate(TRACES_JS, "chart-clusters")
            # Nothing drawn for hours without data (a cluster of homes without power: nothing).
            assert all(set(p["x"]) <= set(range(12)) for p in profiles)
            assert any(p["x"] == list(range(12)) for p in profiles)
            assert all(y is not None for p in profiles for y in p["y"])
            # The page stays on temperature (exact) though a noised metric has come.
            assert await page.input_value("#metric") == "temperature"
            assert await page.is_hidden("#noised-marker")
            traces = await page.evaluate(TRACES_JS, "chart-series")
            gappy = next(t for t in traces if t["name"] == NOISED_HOMES[0])
            # Hours 3-8 have no data: one null after hour 2 breaks the line, nothing invented.
            assert gappy["x"] == [iso(T0 + 3600 * h) for h in (0, 1, 2, 3, 9, 10, 11)]
            assert gappy["y"][3] is None
            assert all(y is not None for i, y in enumerate(gappy["y"]) if i != 3)
            assert not any(SUBSECOND.search(t) for t in await ticks())

            # The noised metric: marked in the picker and on the chart, drawn with its band.
            option = await page.inner_text("#metric option[value=heart_rate]")
            assert option == "heart_rate (noised)"
            await pick("#metric", "heart_rate")
            assert await page.is_visible("#noised-marker")
            assert "noised" in await page.inner_text("#noised-marker")
            traces = await page.evaluate(TRACES_JS, "chart-series")
            home = NOISED_HOMES[0]
            line = next(t for t in traces if t["name"] == home)
            band = next(t for t in traces if t["name"] == f"{home} noise band")
            # One closed shape over the hours (no gap here): the upper edge left to right, the
            # lower edge back.
            assert band["band"] == "noise" and band["fill"] == "toself"
            n = len(line["x"])
            assert band["x"] == line["x"] + line["x"][::-1]
            upper, lower = band["y"][:n], band["y"][n:][::-1]
            for lo, hi, mean in zip(lower, upper, line["y"], strict=True):
                # Independent of cloud.noise: Laplace(2/eps) on the count and (2*250/eps) on
                # the sum of 60 readings, to first order.
                sd = math.sqrt(2 * (2 / EPSILON) ** 2 * (250**2 + mean**2)) / 60
                assert hi - mean == pytest.approx(2 * sd, rel=1e-6)
                assert mean - lo == pytest.approx(2 * sd, rel=1e-6)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-noised.png"), full_page=True)
            await check_phone_width(page, "dashboard-noised-390.png")

            # The 25 bpm jump is within what the noise explains: listed by the API with its
            # noise, not flagged, so not in the table (which is empty: nothing is flagged).
            resp = await client.get("/api/v1/analytics/anomalies", headers=READ)
            ranked = (await resp.json())["anomalies"]
            jump = next(a for a in ranked if a["home"] == home and a["metric"] == "heart_rate")
            threshold = (await resp.json())["threshold"]
            assert jump["noise_sd"] == pytest.approx(
                math.sqrt(8 * (250**2 + jump["value"] ** 2)) / 60
            )
            assert not jump["flagged"] and jump["score"] < threshold
            # Without its noise in the scale it would have been flagged (5 % of the median).
            assert PULSE_JUMP / (0.05 * jump["history_median"]) > threshold
            # What is flagged is the motion, with its real z (a twentieth of motion's 0..1 range
            # as the scale of a constant sample: 0.3 is 6 of them), not a placeholder.
            await wait_refreshes(page, int(await page.evaluate(REFRESHES_JS)) + 1)
            assert await page.inner_text("#card-anomalies") == "1"
            (row,) = await page.eval_on_selector_all(
                "#anomalies tbody tr", "rs => rs.map(r => r.innerText)"
            )
            assert home in row and "motion" in row and "heart_rate" not in row
            assert "6.0" in row and "99" not in row
        finally:
            await browser.close()


async def test_the_fleet_panel_shows_running_versions_and_a_halted_rollout(
    aiohttp_client: AiohttpClient, tmp_path: Path, chromium: Path
) -> None:
    from playwright.async_api import async_playwright

    from cloud.fleet.scheduler import run_once
    from cloud.release import add_bundle, init_repository
    from cloud.web import ENGINE_KEY
    from tests.fleet_sim import HEALTH_OK
    from tests.test_cloud_api import GW1_TOKEN, GW2_TOKEN

    repo = tmp_path / "repo"
    init_repository(repo, tmp_path / "offline")
    add_bundle(repo, 4, models_dir=MODELS_DIR, models=["vad"])
    operator = {"Authorization": "Bearer operator-token-0123456789abcdef"}
    config = make_config(
        f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
        analytics_interval_s=0,
        dashboard_poll_s=0.5,
        updates={
            "repository_dir": str(repo),
            "operator_token": operator["Authorization"].split()[1],
            "scheduler_interval_s": 0,
        },
    )
    client = await aiohttp_client(create_app(config))
    tags = await client.put("/api/v1/gateways/gw-1/tags", json={"tags": ["beta"]}, headers=operator)
    assert tags.status == 200
    created = await client.post(
        "/api/v1/rollouts", json={"version": 4, "gateways": ["gw-1", "gw-2"], "canary_count": 2},
        headers=operator,
    )  # fmt: skip
    assert created.status == 201
    rollout = (await created.json())["id"]
    for token, running, state in ((GW1_TOKEN, 4, "healthy"), (GW2_TOKEN, None, "failed")):
        report = {
            "rollout": rollout,
            "running_version": running,
            "staged_version": None,
            "state": state,
            "reason": "" if state == "healthy" else "a model did not load",
            "health": HEALTH_OK,
        }
        answer = await client.post(
            "/api/v1/gateway/report", json=report, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status == 200
    assert await run_once(client.server.app[ENGINE_KEY], grace_s=60) == [  # type: ignore[index]
        f"{rollout}: halted (wave 0: 1 of 2 gateways failed)"
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1200})
            await page.goto(str(client.make_url("/")))
            await page.fill("#token", READ_TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_function(
                "() => document.body && Number(document.body.dataset.refreshes || 0) >= 1"
            )
            row = await page.inner_text("#rollouts tbody tr:first-child")
            assert rollout[:8] in row and "v4" in row and "halted" in row
            assert "0: 1/2 failed" in row and "gw-2" in row
            assert "gw-1 \u2192 built-in" in row  # asked back: it ran the built-in models
            versions = await page.inner_text("#fleet-versions tbody")
            lines = {line.split("\t")[0]: line.split("\t") for line in versions.splitlines()}
            assert lines["gw-1"][1:4] == ["beta", "v4", "-"]
            assert lines["gw-2"][2] == "built-in"
            assert "failed: a model did not load" in lines["gw-2"][5]
            assert "Running:" in await page.inner_text("#fleet-note")

            # The operator starts a rollout from the page, then pauses it.
            await page.fill("#op-token", "not-the-operator-token")
            await page.fill("#op-version", "4")
            await page.fill("#op-gateways", "gw-1")
            await page.click("#rollout-form button[type=submit]")
            await page.wait_for_function(
                "() => document.getElementById('op-result').textContent.includes('refused')"
            )
            assert "invalid operator token" in await page.inner_text("#op-result")
            await page.fill("#op-token", operator["Authorization"].split()[1])
            await page.click("#rollout-form button[type=submit]")
            await page.wait_for_function(
                "() => document.getElementById('op-result').textContent.includes('started')"
            )
            first = "#rollouts tbody tr:first-child"
            await page.wait_for_function(
                "(sel) => document.querySelector(sel).textContent.includes('running')", arg=first
            )
            await page.click(f"{first} button[data-action=pause]")
            await page.wait_for_function(
                "(sel) => document.querySelector(sel).textContent.includes('paused')", arg=first
            )
            listed = await (await client.get("/api/v1/rollouts", headers=READ)).json()
            assert [r["state"] for r in listed["rollouts"]] == ["paused", "halted"]
        finally:
            await browser.close()
