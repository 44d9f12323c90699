"""The `inferences` table: one row per model result; defined with the rest of the gateway's
schema in `gateway.schema` (created or migrated by `gateway.db.make_engine`), re-exported here.

Results also become `readings` rows named ``inference_<what>`` (see `gateway.inference.engine`)
so the window aggregator sends counts and shares upstream; this table keeps the detail locally.
"""

from __future__ import annotations

from gateway.schema import inferences, sensor_baselines

__all__ = ["inferences", "sensor_baselines"]
