"""The `prices` asset: the date's closing prices of every needed symbol, fetched once and frozen."""

import time

import dagster as dg

from scoring_pipeline import job_runs, snapshots, telemetry
from scoring_pipeline.assets.active_users import active_users
from scoring_pipeline.assets.common import (
    SnapshotConfig,
    as_metadata,
    night_traceparent,
    score_date_of,
)
from scoring_pipeline.errors import SnapshotUnavailableError
from scoring_pipeline.partitions import score_date_partitions
from scoring_pipeline.resources import (
    DatabaseResource,
    PricesProviderResource,
    ScoringSettingsResource,
)


@dg.asset(
    partitions_def=score_date_partitions,
    deps=[active_users],
    group_name="snapshots",
    kinds={"postgres"},
)
def prices(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    database: DatabaseResource,
    prices_provider: PricesProviderResource,
    settings: ScoringSettingsResource,
) -> dg.MaterializeResult[None]:
    """Closing prices of every targeted instrument and held symbol, fetched once and frozen."""
    score_date = score_date_of(context)
    started = time.perf_counter()
    traceparent = night_traceparent(context, database.engine(), score_date)
    try:
        with (
            telemetry.step_span("prices", traceparent, {"score_date": str(score_date)}),
            database.engine().begin() as conn,
        ):
            summary = snapshots.snapshot_prices(
                conn,
                score_date,
                prices_provider.provider(),
                max_age_days=settings.snapshot_max_age_days,
                refresh=config.refresh,
            )
            summary["fetch_prices_ms"] = int((time.perf_counter() - started) * 1000)
            job_runs.merge_metrics(
                conn,
                score_date,
                {
                    "fetch_prices_ms": summary["fetch_prices_ms"],
                    "prices_stale": summary["is_stale"],
                },
            )
    except SnapshotUnavailableError as exc:
        with database.engine().begin() as conn:
            job_runs.fail_job_run(conn, score_date, stage="prices", error=exc)
        job_runs.report_closed_night(database.engine(), score_date)
        raise
    if summary["is_stale"]:
        context.log.warning(f"prices for {score_date} are STALE: {summary}")
    return dg.MaterializeResult(metadata=as_metadata(summary))
