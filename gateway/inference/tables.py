"""The `inferences` table (on `gateway.db.metadata`): one row per model result.

Results also become `readings` rows named ``inference_<what>`` (see `gateway.inference.results`)
so the window aggregator sends counts and shares upstream; this table keeps the detail locally.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, String, Table

from gateway.db import metadata

inferences = Table(
    "inferences",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("home", String(64), nullable=False),
    Column("room", String(64), nullable=False),
    Column("device", String(64), nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_end", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("label", String(64), nullable=False),
    Index("ix_inferences_home_model_end", "home", "model", "window_end"),
)
