"""The `exchange_rates` asset: the date's USD-based rates, fetched once and frozen."""

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
    RatesProviderResource,
    ScoringSettingsResource,
)


@dg.asset(
    partitions_def=score_date_partitions,
    deps=[active_users],
    group_name="snapshots",
    kinds={"postgres"},
)
def exchange_rates(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    database: DatabaseResource,
    rates_provider: RatesProviderResource,
    settings: ScoringSettingsResource,
) -> dg.MaterializeResult[None]:
    """USD→X exchange rates of the score date, fetched once from RATES_PROVIDER and frozen."""
    score_date = score_date_of(context)
    started = time.perf_counter()
    traceparent = night_traceparent(context, database.engine(), score_date)
    try:
        with (
            telemetry.step_span("exchange_rates", traceparent, {"score_date": str(score_date)}),
            database.engine().begin() as conn,
        ):
            summary = snapshots.snapshot_rates(
                conn,
                score_date,
                rates_provider.provider(),
                max_age_days=settings.snapshot_max_age_days,
                refresh=config.refresh,
            )
            summary["fetch_rates_ms"] = int((time.perf_counter() - started) * 1000)
            job_runs.merge_metrics(
                conn,
                score_date,
                {"fetch_rates_ms": summary["fetch_rates_ms"], "rates_stale": summary["is_stale"]},
            )
    except SnapshotUnavailableError as exc:
        with database.engine().begin() as conn:
            job_runs.fail_job_run(conn, score_date, stage="exchange_rates", error=exc)
        job_runs.report_closed_night(database.engine(), score_date)
        raise
    if summary["is_stale"]:
        context.log.warning(f"exchange rates for {score_date} are STALE: {summary}")
    return dg.MaterializeResult(metadata=as_metadata(summary))
