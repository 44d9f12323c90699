"""The checked-in OpenAPI document matches the code, and documents exactly the app's routes."""

from __future__ import annotations

import json
from pathlib import Path

from cloud.app import create_app
from cloud.openapi import OPENAPI_PATH, build_openapi, render_openapi
from tests.test_cloud_api import AiohttpClient, make_config


def test_checked_in_openapi_matches_the_code() -> None:
    assert OPENAPI_PATH.read_text(encoding="utf-8") == render_openapi(), (
        f"{OPENAPI_PATH} drifted: run python -m cloud.openapi"
    )


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(make_config(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"))
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method, path) for path, item in build_openapi()["paths"].items() for method in item
    }
    assert routes == documented
    assert ("post", "/api/v1/batches") in routes


def test_the_upload_body_schema_is_the_batch_model() -> None:
    doc = json.loads(render_openapi())
    body = doc["paths"]["/api/v1/batches"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Batch"}
    batch = doc["components"]["schemas"]["Batch"]
    assert set(batch["required"]) >= {"batch_id", "gateway", "seq", "created_at", "aggregates"}
    # Every reference resolves inside the document.
    refs = {
        part.split('"')[0] for part in json.dumps(doc).split('"$ref": "#/components/schemas/')[1:]
    }
    assert refs <= doc["components"]["schemas"].keys()


async def test_the_document_is_served_without_a_credential(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(make_config(f"sqlite+aiosqlite:///{tmp_path}/c.db")))
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.text() == OPENAPI_PATH.read_text(encoding="utf-8")
    etag = response.headers["ETag"]
    again = await client.get("/api/v1/openapi.json", headers={"If-None-Match": etag})
    assert again.status == 304
    page = await client.get("/api/v1/docs")
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="/assets/api-docs.js"></script>' in await page.text()
    script = await client.get("/assets/api-docs.js")
    assert script.status == 200 and "openapi.json" in await script.text()
