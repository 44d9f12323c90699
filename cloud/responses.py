"""The JSON bodies the cloud API answers with; the handlers encode these and the OpenAPI
document is generated from them, so the two cannot drift apart."""

from __future__ import annotations

from typing import Literal

import msgspec

from cloud.queries import GatewayStatus, Series


class StoreResult(msgspec.Struct, frozen=True):
    """201 for a batch stored now, 200 for a batch id stored before (nothing stored twice)."""

    status: Literal["stored", "duplicate"]
    batch_id: str


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    # A batch refused for a rule of `schemas.batch_rules`: the index of the first aggregate
    # that breaks it (absent for the other errors and for rules of the batch itself).
    aggregate: int | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class SeriesResponse(msgspec.Struct, frozen=True):
    """Series ready to plot: one per group key, points in time order."""

    metric: str
    bucket: Literal["raw", "hour", "day"]
    group_by: list[str]
    filters: dict[str, str]
    start: float | None
    end: float | None
    series: list[Series]


class GatewaysResponse(msgspec.Struct, frozen=True):
    now: float
    gateways: list[GatewayStatus]


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]
    database: Literal["ok"]
    pid: int
