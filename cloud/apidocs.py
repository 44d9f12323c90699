"""The cloud API describes itself: its OpenAPI document and a page to browse it.

- ``GET /api/v1/openapi.json``  the checked-in document (`schemas/openapi.json`, which
                                ``python -m cloud.openapi --check`` keeps equal to the code)
- ``GET /api/v1/docs``          a self-contained page that lists every operation, its
                                parameters, credentials and answers, and the schemas

Neither needs a credential: the document describes the API and holds no data or secret.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from functools import cache

from aiohttp import web

from cloud.web import Handler

OPENAPI_RESOURCE = importlib.resources.files("schemas") / "openapi.json"
DOCS_PAGE = importlib.resources.files("cloud.dashboard") / "static" / "api.html"


@cache
def _document() -> tuple[bytes, str]:
    body = OPENAPI_RESOURCE.read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


async def get_openapi(request: web.Request) -> web.Response:
    body, etag = _document()
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    response = web.Response(body=body, content_type="application/json", charset="utf-8")
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "max-age=300"
    # Tools on other origins (an API client, a code generator) may read it.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@cache
def _docs_page() -> str:
    return DOCS_PAGE.read_text(encoding="utf-8")  # once per process, not on the loop per request


async def get_docs(request: web.Request) -> web.Response:
    response = web.Response(text=_docs_page(), content_type="text/html", charset="utf-8")
    response.headers["X-Frame-Options"] = "DENY"
    # Only our own script and style, no inline code: what the page renders stays text.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


APIDOCS_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/v1/openapi.json", get_openapi),
    ("GET", "/api/v1/docs", get_docs),
)


def setup_apidocs(app: web.Application) -> None:
    for method, path, handler in APIDOCS_ROUTES:
        app.router.add_route(method, path, handler)
