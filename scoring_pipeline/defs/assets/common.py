"""Shared pieces of the asset modules: the snapshot config and metadata conversion."""

import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg
from sqlalchemy.engine import Connection, Engine

from scoring_pipeline import telemetry
from scoring_pipeline.defs.market_groups.group import MarketGroup, group_of_run
from scoring_pipeline.errors import SnapshotUnavailableError
from scoring_pipeline.store import night_lifecycle
from scoring_pipeline.telemetry import TRACEPARENT

# Set by a schedule's run request: when the tick was due, how many seconds late it launched.
SCHEDULED_FOR_TAG = "scoring/scheduled_for"
LATE_TAG = "scoring/launched_late_s"

if TYPE_CHECKING:
    from scoring_pipeline.defs.resources import DatabaseResource


class SnapshotConfig(dg.Config):
    """`refresh: true` re-fetches a date that already has its snapshot (a deliberate act)."""

    refresh: bool = False


def run_traceparent(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
    """The night's trace context carried in the run's tags (schedule, sensor, CLI)."""
    return context.run.tags.get(TRACEPARENT)


def run_group(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, groups: dict[str, MarketGroup]
) -> MarketGroup | None:
    """The market group whose night the run belongs to (`group_of_run`), or None."""
    return group_of_run(context.run.tags, groups)


def night_traceparent(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    engine: Engine,
    score_date: dt.date,
    market_group: str = night_lifecycle.ALL_MARKETS,
) -> str | None:
    """The run's trace context, else the one the date's night recorded when it started (a run
    launched by hand or by a backfill carries none)."""
    tagged = run_traceparent(context)
    if tagged:
        return tagged
    with engine.connect() as conn:
        return night_lifecycle.night_traceparent(conn, score_date, market_group=market_group)


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


def materialize_snapshot(
    context: dg.AssetExecutionContext,
    database: "DatabaseResource",
    *,
    step: str,
    figure: str,
    take: Callable[[Connection], dict[str, Any]],
    group: MarketGroup | None,
) -> dg.MaterializeResult[None]:
    """The body shared by the rates and prices assets: take the date's snapshot in one
    transaction, record the fetch time and staleness on the group's night, or fail that night
    clearly (with no group, the snapshot is taken and no night is touched)."""
    score_date = score_date_of(context)
    started = time.perf_counter()
    name = group.name if group is not None else night_lifecycle.ALL_MARKETS
    traceparent = night_traceparent(context, database.engine(), score_date, name)
    timing = f"fetch_{figure}_ms"
    try:
        with (
            telemetry.step_span(step, traceparent, {"score_date": str(score_date)}),
            database.engine().begin() as conn,
        ):
            summary = take(conn)
            summary[timing] = int((time.perf_counter() - started) * 1000)
            if group is not None:
                _merge_figures(conn, score_date, group.name, figure, summary)
    except SnapshotUnavailableError as exc:
        if group is not None:
            with database.engine().begin() as conn:
                night_lifecycle.fail_night(
                    conn, score_date, stage=step, error=exc, market_group=group.name
                )
            night_lifecycle.emit_root_span(database.engine(), score_date, market_group=group.name)
        raise
    if summary["is_stale"]:
        context.log.warning(f"{step} for {score_date} are STALE: {summary}")
    return dg.MaterializeResult(metadata=as_metadata(summary))


def _merge_figures(
    conn: Connection, score_date: dt.date, group: str, figure: str, summary: dict[str, Any]
) -> None:
    timing = f"fetch_{figure}_ms"
    night_lifecycle.merge_metrics(
        conn,
        score_date,
        {
            timing: summary[timing],
            f"{figure}_stale": summary["is_stale"],
            # Values rejected one by one (SPEC §8): how many, and the first by name.
            f"{figure}_rejected": summary.get("rejected", 0),
            f"{figure}_rejected_values": summary.get("rejected_values", {}),
        },
        market_group=group,
    )
