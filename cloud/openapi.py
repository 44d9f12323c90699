"""The OpenAPI 3.1 document of the cloud API, built from the same models the code uses.

python -m cloud.openapi          # rewrite schemas/openapi.json
python -m cloud.openapi --check  # exit 1 when the checked-in file drifts from the code

The request body schema is `msgspec.json.schema` of `schemas.batch.Batch`; the response schemas
come from `cloud.responses`. A test checks the checked-in file and that every route of the app
is documented (and nothing else).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from cloud.analytics.models import (
    AnomaliesResponse,
    BandwidthReport,
    ClustersResponse,
    EventsResponse,
    FleetReport,
    Overview,
    RollupsReport,
    RunResult,
)
from cloud.dashboard import ASSETS, MAX_LOGIN_BODY_BYTES
from cloud.fleet.models import (
    CreateRollout,
    Desired,
    FleetVersions,
    Ok,
    Report,
    RolloutDetail,
    RolloutsResponse,
    TagsBody,
)
from cloud.queries import FILTER_COLUMNS, GROUP_COLUMNS, Bucket
from cloud.responses import ErrorBody, GatewaysResponse, Health, SeriesResponse, StoreResult
from schemas.batch import MAX_AGGREGATES_PER_BATCH, Batch
from schemas.batch_rules import Rule
from schemas.generate import clean_descriptions

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"
API_VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "malformed request (invalid JSON, undecodable gzip, bad query parameter)",
        401: "missing or unknown bearer token",
        403: "the batch names another gateway than the token's",
        404: "no such asset",
        408: "the body did not arrive within http.body_timeout_s",
        409: "the batch id is already stored for another gateway (code conflict) or with "
        "another body (code content_conflict); a resend of the same body is a 200",
        413: "body larger than max_body_bytes, as received or after decompression",
        415: "Content-Type is not application/json, or Content-Encoding is not gzip/identity",
        422: "valid JSON that does not follow the batch schema (code validation), or a batch "
        "that breaks a rule of the batch contract: the code names the rule ("
        + ", ".join(Rule)
        + ") and `aggregate` the index of the first aggregate that breaks it",
        503: "the database does not answer (code database_unavailable) or is behind "
        "(database_busy: no free connection within database.pool_timeout_s, or a statement "
        "timeout), or this worker holds ingest.max_in_flight uploads already (overloaded); "
        "retry after the Retry-After header's seconds: nothing was lost, and a resend of a "
        "batch that was stored after all is a 200",
    }
    answers = {str(s): _json("ErrorBody", meaning[s]) for s in statuses}
    if 503 in statuses:
        answers["503"]["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying (ingest.retry_after_s)",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return answers


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _operations() -> dict[str, dict[str, Any]]:
    gateway_auth: list[dict[str, list[str]]] = [{"gatewayToken": []}]
    read_auth: list[dict[str, list[str]]] = [{"readToken": []}, {"readSession": []}]
    filters = [
        _query(name, f"only aggregates whose {name} equals this", {"type": "string"})
        for name in FILTER_COLUMNS
    ]
    return {
        "/api/v1/batches": {
            "post": {
                "operationId": "uploadBatch",
                "summary": "Upload one batch of window aggregates (idempotent on batch_id)",
                "security": gateway_auth,
                "parameters": [
                    {
                        "name": "Content-Encoding",
                        "in": "header",
                        "required": False,
                        "description": "gzip (recommended) or absent for plain JSON",
                        "schema": {"type": "string", "enum": ["gzip"]},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "description": f"a batch of at most {MAX_AGGREGATES_PER_BATCH} aggregates",
                    "content": {"application/json": {"schema": _ref("Batch")}},
                },
                "responses": {
                    "201": _json("StoreResult", "stored now"),
                    "200": _json("StoreResult", "already stored before; nothing stored twice"),
                    **_errors(400, 401, 403, 408, 409, 413, 415, 422, 503),
                },
            }
        },
        "/api/v1/aggregates": {
            "get": {
                "operationId": "queryAggregates",
                "summary": "Time series of one metric, raw windows or hour/day roll-ups",
                "security": read_auth,
                "parameters": [
                    _query(
                        "metric",
                        "metric name",
                        {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                        required=True,
                    ),
                    _query(
                        "bucket",
                        "raw: one point per window start; hour/day: windows combined by start",
                        {"type": "string", "enum": [b.value for b in Bucket], "default": "raw"},
                    ),
                    _query(
                        "group_by",
                        "comma-separated series key from "
                        + ", ".join(GROUP_COLUMNS)
                        + " (unit is always part of it); empty: one series per unit",
                        {"type": "string", "default": "gateway,home,room_class,device_class"},
                    ),
                    *filters,
                    _query("start", "window_start >= start (unix seconds)", {"type": "number"}),
                    _query("end", "window_start < end (unix seconds)", {"type": "number"}),
                ],
                "responses": {
                    "200": _json("SeriesResponse", "series ready to plot"),
                    **_errors(400, 401),
                },
            }
        },
        "/api/v1/gateways": {
            "get": {
                "operationId": "listGateways",
                "summary": "Per gateway: batches, last seq, sequence gaps, lag",
                "security": read_auth,
                "responses": {
                    "200": _json("GatewaysResponse", "configured and seen gateways"),
                    **_errors(401),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and database check (no credential)",
                "security": [],
                "responses": {"200": _json("Health", "serving"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this worker process (the metrics token when "
                "one is configured, else no credential)",
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _json("ErrorBody", "metrics_token is set and was not presented"),
                },
            }
        },
    }


def _analytics_operations() -> dict[str, dict[str, Any]]:
    read_auth: list[dict[str, list[str]]] = [{"readToken": []}, {"readSession": []}]
    text = {"type": "string"}

    def get(op_id: str, summary: str, schema: str, *params: Any) -> dict[str, Any]:
        return {
            "get": {
                "operationId": op_id,
                "summary": summary,
                "security": read_auth,
                "parameters": list(params),
                "responses": {"200": _json(schema, summary), **_errors(400, 401)},
            }
        }

    base = "/api/v1/analytics"
    return {
        f"{base}/rollups": get(
            "analyticsRollups",
            "Per metric over the analytics look-back: days held by the rollups, homes, windows",
            "RollupsReport",
        ),
        f"{base}/fleet": get(
            "analyticsFleet",
            "Fleet p10/p50/p90 of homes' daily means per metric and device class, and each "
            "home's value and percentile rank",
            "FleetReport",
            _query("metric", "only this metric", text),
            _query("device_class", "only this device class", text),
            _query("home", "only this home's standings", text),
        ),
        f"{base}/clusters": get(
            "analyticsClusters",
            "Clusters of homes by normalized 24-hour profiles: sizes, members, centroids",
            "ClustersResponse",
        ),
        f"{base}/anomalies": get(
            "analyticsAnomalies",
            "Homes and metrics ranked by robust z-score against own history and peers",
            "AnomaliesResponse",
            _query("home", "only this home", text),
            _query("metric", "only this metric", text),
            _query(
                "flagged",
                "true: only scores at or above the threshold",
                {"type": "string", "enum": ["true", "false"], "default": "false"},
            ),
        ),
        f"{base}/events": get(
            "analyticsEvents",
            "Edge inference results: alarms per home and day, speech share, alarm timeline",
            "EventsResponse",
            _query("home", "only this home", text),
        ),
        f"{base}/bandwidth": get(
            "analyticsBandwidth",
            "Bytes ingested at the edge vs bytes uplinked, per gateway and fleet-wide",
            "BandwidthReport",
        ),
        f"{base}/overview": get(
            "analyticsOverview",
            "Dashboard headline: gateways online, lag, batches/s, bandwidth saved",
            "Overview",
        ),
        f"{base}/run": {
            "post": {
                "operationId": "analyticsRun",
                "summary": "Run the analytics now (they also run every analytics_interval_s)",
                "security": read_auth,
                "responses": {"200": _json("RunResult", "stored snapshot"), **_errors(401)},
            }
        },
    }


def _dashboard_operations() -> dict[str, dict[str, Any]]:
    html = {"text/html": {"schema": {"type": "string"}}}
    json_error = {"application/json": {"schema": _ref("ErrorBody")}}
    see_other = {"description": "redirect to the dashboard", "headers": {"Location": {}}}
    return {
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The dashboard for a reader; the login form otherwise",
                "security": [],
                "responses": {"200": {"description": "HTML page", "content": html}},
            }
        },
        "/login": {
            "post": {
                "operationId": "login",
                "summary": "Trade the read token for an HttpOnly, SameSite=Strict session cookie",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"token": {"type": "string"}},
                                "required": ["token"],
                            }
                        }
                    },
                },
                "responses": {
                    "303": see_other,
                    "400": {
                        "description": "no token given (the form again, HTML), or a form that "
                        "is not valid UTF-8 or has too many fields (JSON)",
                        "content": {**html, **json_error},
                    },
                    "401": {"description": "not the read token", "content": html},
                    "408": _json("ErrorBody", "the form did not arrive within body_timeout_s"),
                    "413": _json("ErrorBody", f"form larger than {MAX_LOGIN_BODY_BYTES} bytes"),
                    "415": _json(
                        "ErrorBody",
                        "not application/x-www-form-urlencoded, not UTF-8, or an encoding "
                        "other than gzip/identity",
                    ),
                },
            }
        },
        "/logout": {
            "post": {
                "operationId": "logout",
                "summary": "End the session (in every worker process) and clear its cookie",
                "security": [],
                "responses": {"303": see_other, **_errors(503)},
            }
        },
        "/assets/{name}": {
            "get": {
                "operationId": "dashboardAsset",
                "summary": "The dashboard's script and style, and plotly.js from its package",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(ASSETS)},
                    }
                ],
                "responses": {
                    "200": {"description": "the file"},
                    "304": {"description": "unchanged (If-None-Match)"},
                    **_errors(404),
                },
            }
        },
    }


def _updates_operations() -> dict[str, dict[str, Any]]:
    """The signed update repository (`cloud.updates`): no credential, the files are signed."""
    missing = _json("ErrorBody", "no such file, or no update repository configured")
    return {
        "/api/v1/updates/metadata/{name}": {
            "get": {
                "operationId": "updateMetadata",
                "summary": "TUF metadata of the update repository (python-tuf's Updater reads "
                "it; consistent_snapshot is false)",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "pattern": "^((root|timestamp|snapshot|targets)|[1-9][0-9]*\\.root)"
                            "\\.json$",
                        },
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the signed metadata (Cache-Control no-cache for the "
                        "unversioned names, with an ETag)",
                        "content": {"application/json": {}},
                    },
                    "304": {"description": "unchanged (If-None-Match)"},
                    "404": missing,
                },
            }
        },
        "/api/v1/updates/targets/{path}": {
            "get": {
                "operationId": "updateTarget",
                "summary": "A target file of the update repository (bundles/bundle-<v>.tar.gz)",
                "security": [],
                "parameters": [
                    {
                        "name": "path",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._/-]+$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file, as signed (never re-encoded)",
                        "content": {"application/gzip": {}},
                    },
                    "304": {"description": "unchanged (If-None-Match)"},
                    "400": _json("ErrorBody", "a path that is not plain segments (.., //)"),
                    "404": missing,
                },
            }
        },
    }


def _fleet_operations() -> dict[str, dict[str, Any]]:
    """Rollouts (`cloud.fleet.handlers`): operator writes, reads with the read token too, and
    the gateways' desired state and reports."""
    operator: list[dict[str, list[str]]] = [{"operatorToken": []}]
    reader: list[dict[str, list[str]]] = [
        {"operatorToken": []},
        {"readToken": []},
        {"readSession": []},
    ]
    gateway: list[dict[str, list[str]]] = [{"gatewayToken": []}]
    rollout_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    def bad(what: str) -> dict[str, Any]:
        return _json("ErrorBody", f"{what}; the message names the field")

    no_token = _json("ErrorBody", "missing or wrong bearer token")
    off = _json("ErrorBody", "no updates.operator_token configured: rollouts are off")
    missing = _json("ErrorBody", "no such rollout")
    conflict = _json("ErrorBody", "the rollout is not in a state the action applies to")

    def action(op_id: str, summary: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op_id,
                "summary": summary,
                "security": operator,
                "parameters": [rollout_id],
                "responses": {
                    "200": _json("RolloutDetail", "the rollout after the action"),
                    "401": no_token,
                    "403": off,
                    "404": missing,
                    "409": conflict,
                },
            }
        }

    return {
        "/api/v1/rollouts": {
            "post": {
                "operationId": "createRollout",
                "summary": "Create a rollout of a bundle version to gateways by id or tag; its "
                "canary wave starts at once",
                "security": operator,
                "requestBody": body("CreateRollout"),
                "responses": {
                    "201": _json("RolloutDetail", "created, canary wave running"),
                    "400": bad("a body that does not follow CreateRollout"),
                    "401": no_token,
                    "403": off,
                    "409": _json(
                        "ErrorBody", "another rollout is running or paused, or no repository"
                    ),
                    "422": _json(
                        "ErrorBody",
                        "the version is not a bundle of the repository (unknown_bundle), or "
                        "no gateway has the tags (no_gateways)",
                    ),
                },
            },
            "get": {
                "operationId": "listRollouts",
                "summary": "The newest 100 rollouts, newest first",
                "security": reader,
                "responses": {"200": _json("RolloutsResponse", "rollouts"), "401": no_token},
            },
        },
        "/api/v1/rollouts/{id}": {
            "get": {
                "operationId": "getRollout",
                "summary": "A rollout: progress per wave, each gateway's state, failures and "
                "rollbacks",
                "security": reader,
                "parameters": [rollout_id],
                "responses": {
                    "200": _json("RolloutDetail", "the rollout"),
                    "401": no_token,
                    "404": missing,
                },
            }
        },
        "/api/v1/rollouts/{id}/pause": action(
            "pauseRollout", "Pause: no next wave starts (the wave in flight keeps its version)"
        ),
        "/api/v1/rollouts/{id}/resume": action(
            "resumeRollout", "Resume a paused rollout (its wave's deadline is moved by the pause)"
        ),
        "/api/v1/rollouts/{id}/abort": action(
            "abortRollout",
            "Abort: the wave in flight is asked back (rollback_to), later waves are skipped",
        ),
        "/api/v1/gateways/{id}/tags": {
            "put": {
                "operationId": "setGatewayTags",
                "summary": "Replace a configured gateway's tags (rollouts select by them)",
                "security": operator,
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": body("TagsBody"),
                "responses": {
                    "200": {
                        "description": "the gateway's tags",
                        "content": {"application/json": {}},
                    },
                    "400": bad("not a list of tags"),
                    "401": no_token,
                    "403": off,
                    "404": _json("ErrorBody", "no configured gateway of that id"),
                },
            }
        },
        "/api/v1/fleet/versions": {
            "get": {
                "operationId": "fleetVersions",
                "summary": "Each gateway's running and staged version, last report, desired "
                "version",
                "security": reader,
                "responses": {"200": _json("FleetVersions", "the fleet"), "401": no_token},
            }
        },
        "/api/v1/gateway/desired": {
            "get": {
                "operationId": "gatewayDesired",
                "summary": "What this gateway should run (version null: stay)",
                "security": gateway,
                "parameters": [
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "description": "the ETag of the last answer: 304 when unchanged",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json("Desired", "the desired state, with an ETag"),
                    "304": {"description": "unchanged since the If-None-Match ETag"},
                    "401": no_token,
                },
            }
        },
        "/api/v1/gateway/report": {
            "post": {
                "operationId": "gatewayReport",
                "summary": "Where this gateway is with a rollout, and its health",
                "security": gateway,
                "requestBody": body("Report"),
                "responses": {
                    "200": _json("Ok", "stored"),
                    "400": bad("a body that does not follow Report"),
                    "401": no_token,
                    **_errors(413, 415),
                },
            }
        },
    }


def _self_operations() -> dict[str, dict[str, Any]]:
    return {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapiDocument",
                "summary": "This document (OpenAPI 3.1)",
                "security": [],
                "responses": {
                    "200": {"description": "the document", "content": {"application/json": {}}},
                    "304": {"description": "unchanged (If-None-Match)"},
                },
            }
        },
        "/api/v1/docs": {
            "get": {
                "operationId": "apiDocsPage",
                "summary": "A page that lists this document's operations and schemas",
                "security": [],
                "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
            }
        },
    }


def build_openapi() -> dict[str, Any]:
    """The document as a JSON-ready dict."""
    _, components = msgspec.json.schema_components(
        [
            Batch,
            StoreResult,
            ErrorBody,
            SeriesResponse,
            GatewaysResponse,
            Health,
            RollupsReport,
            FleetReport,
            ClustersResponse,
            AnomaliesResponse,
            EventsResponse,
            BandwidthReport,
            Overview,
            RunResult,
            CreateRollout,
            TagsBody,
            Report,
            Desired,
            Ok,
            RolloutDetail,
            RolloutsResponse,
            FleetVersions,
        ],
        ref_template="#/components/schemas/{name}",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "homeedge cloud API",
            "version": API_VERSION,
            "description": (
                "Gateways upload privacy-filtered window aggregates; the dashboard reads series "
                "and gateway health. Every 4xx/5xx body is "
                '{"error": {"code": ..., "message": ...}} (the login form\'s own two answers '
                "aside). Any route may answer 400 to a request that cannot be parsed (bad "
                "chunking, a header past the size limit) and 415 to a Content-Encoding other "
                "than gzip or identity; a connection that does not complete a request's head "
                "within http.header_timeout_s is closed."
            ),
        },
        "paths": {
            **_operations(),
            **_analytics_operations(),
            **_dashboard_operations(),
            **_updates_operations(),
            **_fleet_operations(),
            **_self_operations(),
        },
        "components": {
            # Same docstring dedent whatever the msgspec version (schemas.generate explains).
            "schemas": clean_descriptions(components),
            "securitySchemes": {
                "gatewayToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the uploading gateway's token (config: gateways.<id>)",
                },
                "readToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "dashboard and query credential (config: read_token)",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the Prometheus scraper's token (config: metrics_token)",
                },
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the fleet operator's token (config: updates.operator_token)",
                },
                "readSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "homeedge_session",
                    "description": "the dashboard's session cookie, set by POST /login",
                },
            },
        },
    }


def render_openapi() -> str:
    return json.dumps(build_openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the file differs")
    args = parser.parse_args(argv)
    text = render_openapi()
    current = OPENAPI_PATH.read_text(encoding="utf-8") if OPENAPI_PATH.exists() else None
    if current == text:
        return 0
    if args.check:
        print(f"out of date: {OPENAPI_PATH} (run python -m cloud.openapi)", file=sys.stderr)
        return 1
    OPENAPI_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
