"""The dashboard: a static page plus our own script, drawing the query API with plotly.js.

- ``GET /``            the dashboard for a reader (session cookie or Bearer), else the login form
- ``POST /login``      form field ``token`` = the read token (``application/x-www-form-urlencoded``,
                       UTF-8); opens a session (`cloud.sessions`) and sets its HttpOnly,
                       SameSite=Strict cookie (random, never derived from the token)
- ``POST /logout``     ends the session in the database and clears the cookie
- ``GET /assets/{name}``  dashboard.js, dashboard.css, api-docs.js (the page of
                       `cloud.apidocs`), favicon.svg (our own drawing), and plotly.min.js
                       served from the installed plotly package (nothing is fetched from a CDN)

The pages carry a Content-Security-Policy: scripts, styles, images and requests from this
origin only (the favicon is an asset here, not a data: URL or a CDN file). Styles also allow
'unsafe-inline', because plotly.js sets style attributes on the SVG it draws; no inline script
is ever allowed, so what the API returns can only be shown as text.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import urllib.parse
from functools import cache

from aiohttp import web

from cloud.auth import SESSION_KEY, is_read_token, require_reader
from cloud.bodies import read_body
from cloud.sessions import SESSION_COOKIE, SESSION_MAX_AGE_S, close_session, open_session
from cloud.web import ENGINE_KEY, ApiError, Handler

STATIC = importlib.resources.files(__package__) / "static"
FORM = "application/x-www-form-urlencoded"
# The login form holds one token: a body past this is no login.
MAX_LOGIN_BODY_BYTES = 4096
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_UTF8 = ("utf-8", "utf8", "us-ascii", "ascii")
# name -> (package, path inside it, content type); a fixed list, so no path ever reaches disk.
ASSETS: dict[str, tuple[str, str, str]] = {
    "dashboard.js": (__package__, "static/dashboard.js", "text/javascript"),
    "dashboard.css": (__package__, "static/dashboard.css", "text/css"),
    "api-docs.js": (__package__, "static/api-docs.js", "text/javascript"),
    "favicon.svg": (__package__, "static/favicon.svg", "image/svg+xml"),
    "plotly.min.js": ("plotly", "package_data/plotly.min.js", "text/javascript"),
}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """The asset's bytes and ETag, read once per process."""
    package, path, _ = ASSETS[name]
    body = (importlib.resources.files(package) / path).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _see_other() -> web.Response:
    return web.Response(status=303, headers={"Location": "/"})


def _page(name: str, status: int = 200, message: str = "") -> web.Response:
    html = (STATIC / name).read_text(encoding="utf-8").replace("{{message}}", message)
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    # The page holds no secret, but keep it out of shared caches and frames.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def _is_reader(request: web.Request) -> bool:
    try:
        require_reader(request)
    except ApiError:
        return False
    return True


async def get_index(request: web.Request) -> web.Response:
    if _is_reader(request):
        return _page("index.html")
    return _page("login.html")


def _form_token(body: bytes, charset: str | None) -> str:
    """The form's token field; a malformed form is a 4xx ApiError (the browser's own form is
    always urlencoded UTF-8, so only other clients meet these)."""
    if charset is not None and charset.lower() not in _UTF8:
        raise ApiError(415, "unsupported_charset", "the form must be UTF-8")
    try:
        fields = urllib.parse.parse_qs(
            body.decode("utf-8"), encoding="utf-8", errors="strict", max_num_fields=8
        )
    except UnicodeDecodeError:
        raise ApiError(400, "bad_form", "the form is not valid UTF-8") from None
    except ValueError:  # more fields than max_num_fields
        raise ApiError(400, "bad_form", "the form has too many fields") from None
    return fields.get("token", [""])[0]


async def post_login(request: web.Request) -> web.Response:
    body = await read_body(request, media_types=(FORM,), limit=MAX_LOGIN_BODY_BYTES)
    token = _form_token(body.data, request.charset).strip()
    if not token:
        return _page("login.html", 400, "Enter the read token.")
    if not is_read_token(request.app, token):
        return _page("login.html", 401, "That token is not the read token.")
    response = _see_other()
    response.set_cookie(
        SESSION_COOKIE,
        await open_session(request.app[ENGINE_KEY], request.app[SESSION_KEY]),
        max_age=SESSION_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def post_logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        await close_session(request.app[ENGINE_KEY], request.app[SESSION_KEY], cookie)
    response = _see_other()
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def get_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    body, etag = _asset(name)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304)
    response = web.Response(body=body, content_type=ASSETS[name][2])
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "max-age=300"
    return response


DASHBOARD_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/", get_index),
    ("POST", "/login", post_login),
    ("POST", "/logout", post_logout),
    ("GET", "/assets/{name}", get_asset),
)


def setup_dashboard(app: web.Application) -> None:
    for method, path, handler in DASHBOARD_ROUTES:
        app.router.add_route(method, path, handler)
