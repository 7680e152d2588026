"""Shared pieces of the asset modules: the snapshot config and metadata conversion."""

import datetime as dt
from typing import Any

import dagster as dg


class SnapshotConfig(dg.Config):
    """`refresh: true` re-fetches a date that already has its snapshot (a deliberate act)."""

    refresh: bool = False


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
