"""Fleet priors from the aggregates the cloud holds: each metric's typical level across homes, for
a bundle's ``priors.json`` (a new home's sensor baseline may start from it before its own
warm-up ends).

    python -m cloud.fleet.priors --config cloud.toml --out priors.json [--days 14]
    python -m cloud.release bundle --repo DIR --version N --priors priors.json

The format is the gateway's (`gateway/inference/priors.py` documents it):
``{"format": 1, "metrics": {<metric>: {"mean": <float>, "std": <float> > 0}}}``.

Read from the hour rollups of the last `days` days of data (counted back from the newest
rollup, so an idle fleet still has priors), policy ``aggregate`` only: noised means carry
privacy noise, and ``local`` metrics never reach the cloud. The mean is over every reading;
the std is the pooled one (within windows and between them) where every window had a std,
else the spread of the hourly means. A metric seen in fewer than `min_homes` homes gets no
prior: one home's habits are not the fleet's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.config import ConfigError, load_config
from cloud.db import dispose, make_engine, rollups

PRIORS_FORMAT = 1
HOUR_S = 3600
DAY_S = 86400


async def fleet_priors(
    engine: AsyncEngine, *, days: int = 14, min_homes: int = 3
) -> dict[str, Any]:
    """The priors document (see the module docstring) from the database behind `engine`."""
    r = rollups
    hourly = (r.c.bucket_s == HOUR_S, r.c.policy == "aggregate")
    async with engine.connect() as conn:
        end = await conn.scalar(select(func.max(r.c.bucket_start)).where(*hourly))
        if end is None:
            return {"format": PRIORS_FORMAT, "metrics": {}}
        rows = await conn.execute(
            select(
                r.c.metric,
                func.sum(r.c.count).label("readings"),
                func.sum(r.c.weighted).label("weighted"),
                func.sum(r.c.sumsq).label("sumsq"),
                func.sum(r.c.without_std).label("without_std"),
                func.sum(r.c.weighted * r.c.weighted / r.c.count).label("mean_sq"),
                func.count(func.distinct(r.c.home)).label("homes"),
            )
            .where(*hourly, r.c.bucket_start > end - days * DAY_S, r.c.count > 0)
            .group_by(r.c.metric)
            .order_by(r.c.metric)
        )
        metrics: dict[str, dict[str, float]] = {}
        for row in rows:
            if row.homes < min_homes or not row.readings:
                continue
            mean = row.weighted / row.readings
            second = row.sumsq if not row.without_std else row.mean_sq
            std = math.sqrt(max(second / row.readings - mean * mean, 0.0))
            if std > 0 and math.isfinite(mean) and math.isfinite(std):
                metrics[row.metric] = {"mean": round(mean, 6), "std": round(std, 6)}
    return {"format": PRIORS_FORMAT, "metrics": metrics}


async def _compute(url: str, days: int, min_homes: int) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        return await fleet_priors(engine, days=days, min_homes=min_homes)
    finally:
        await dispose(engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud.fleet.priors", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="the cloud's TOML config")
    parser.add_argument("--out", type=Path, required=True, help="priors.json to write")
    parser.add_argument("--days", type=int, default=14, help="days of data (default 14)")
    parser.add_argument("--min-homes", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    priors = asyncio.run(_compute(config.database_url, args.days, args.min_homes))
    args.out.write_text(json.dumps(priors, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: priors for {', '.join(priors['metrics']) or 'no metric'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
