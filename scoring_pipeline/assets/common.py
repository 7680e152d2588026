"""Shared pieces of the asset modules: the snapshot config and metadata conversion."""

import datetime as dt
from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine

from scoring_pipeline import job_runs
from scoring_pipeline.telemetry import TRACEPARENT


class SnapshotConfig(dg.Config):
    """`refresh: true` re-fetches a date that already has its snapshot (a deliberate act)."""

    refresh: bool = False


def run_traceparent(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
    """The night's trace context carried in the run's tags (schedule, sensor, CLI)."""
    return context.run.tags.get(TRACEPARENT)


def night_traceparent(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, engine: Engine, score_date: dt.date
) -> str | None:
    """The run's trace context, else the one the date's night recorded when it started (a run
    launched by hand or by a backfill carries none)."""
    tagged = run_traceparent(context)
    if tagged:
        return tagged
    with engine.connect() as conn:
        return job_runs.night_traceparent(conn, score_date)


def score_date_of(context: dg.AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def as_metadata(values: dict[str, Any]) -> dict[str, dg.MetadataValue[Any]]:
    out: dict[str, dg.MetadataValue[Any]] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[key] = dg.MetadataValue.float(value)
        elif isinstance(value, list | dict):
            out[key] = dg.MetadataValue.json(value)
        elif value is not None:
            out[key] = dg.MetadataValue.text(str(value))
    return out
