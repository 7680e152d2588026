"""Sensors: launch every batch of a date once its snapshots are frozen; warm dashboards."""

import datetime as dt
import hashlib

import dagster as dg

from scoring_pipeline import job_runs, snapshots
from scoring_pipeline.cache_warming import dashboard_cache_job
from scoring_pipeline.dashboard import pending_batches
from scoring_pipeline.jobs import overnight_snapshots_job, scoring_batch_job
from scoring_pipeline.partitions import BATCH_DIMENSION, DATE_DIMENSION, scores_partition_key
from scoring_pipeline.resources import DatabaseResource


def batch_run_requests(
    database: DatabaseResource, score_date: str, origin_run_id: str
) -> list[dg.RunRequest]:
    """One run request per batch of the date (its frozen membership)."""
    with database.engine().connect() as conn:
        keys = snapshots.load_membership(conn, dt.date.fromisoformat(score_date)).batch_keys
    return [
        dg.RunRequest(
            run_key=f"{origin_run_id}:{batch}",
            partition_key=scores_partition_key(score_date, batch),
            tags={"scoring/score_date": score_date, "scoring/origin_run": origin_run_id},
        )
        for batch in keys
    ]


@dg.run_status_sensor(
    name="scoring_batches_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[overnight_snapshots_job],
    request_job=scoring_batch_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
)
def scoring_batches_sensor(
    context: dg.RunStatusSensorContext, database: DatabaseResource
) -> list[dg.RunRequest]:
    """When a date's snapshots run succeeds, launch one scoring run per batch of that date."""
    run = context.dagster_run
    score_date = run.tags.get("dagster/partition")
    if not score_date:
        return []
    return batch_run_requests(database, score_date, run.run_id)


@dg.sensor(
    name="dashboard_cache_sensor",
    job=dashboard_cache_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dashboard_cache_sensor(
    context: dg.SensorEvaluationContext, database: DatabaseResource
) -> dg.SensorResult | dg.SkipReason:
    """As each batch lands (or is re-scored), warm its successful users' dashboards."""
    with database.engine().connect() as conn:
        pending = pending_batches(conn)
    if not pending:
        return dg.SkipReason("no newly scored batch to warm")
    tokens = [p.token for p in pending]
    # The run key names exactly these outcomes: a re-scored batch has a new sequence number.
    run_key = "warm:" + hashlib.sha1("\n".join(tokens).encode()).hexdigest()
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key,
                run_config={"ops": {"warm_dashboard_cache": {"config": {"batches": tokens}}}},
                tags={"scoring/batches": str(len(tokens))},
            )
        ]
    )


def _failure_message(context: dg.RunStatusSensorContext) -> str:
    event = context.dagster_event
    message = event.message if event is not None and event.message else ""
    return f"run {context.dagster_run.run_id} {context.dagster_run.status.value}: {message}"[:2000]


def close_night_after_run_ended(
    context: dg.RunStatusSensorContext, database: DatabaseResource
) -> None:
    """Shared by the failure and cancellation sensors: keep `overnight_job_runs` truthful."""
    run = context.dagster_run
    tags = run.tags
    with database.engine().begin() as conn:
        if run.job_name == scoring_batch_job.name:
            score_date = tags.get(f"dagster/partition/{DATE_DIMENSION}")
            batch = tags.get(f"dagster/partition/{BATCH_DIMENSION}")
            if score_date and batch:
                job_runs.close_after_batch_run_ended(
                    conn,
                    dt.date.fromisoformat(score_date),
                    batch,
                    run.run_id,
                    _failure_message(context),
                )
        elif run.job_name == overnight_snapshots_job.name:
            score_date = tags.get("dagster/partition")
            if score_date:
                job_runs.close_after_snapshot_run_ended(
                    conn, dt.date.fromisoformat(score_date), _failure_message(context)
                )


@dg.run_failure_sensor(
    name="scoring_run_failure_sensor",
    monitored_jobs=[overnight_snapshots_job, scoring_batch_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
)
def scoring_run_failure_sensor(
    context: dg.RunFailureSensorContext, database: DatabaseResource
) -> None:
    """A night's run failed (step error, killed worker): record it so the night closes."""
    close_night_after_run_ended(context, database)


@dg.run_status_sensor(
    name="scoring_run_canceled_sensor",
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[overnight_snapshots_job, scoring_batch_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
)
def scoring_run_canceled_sensor(
    context: dg.RunStatusSensorContext, database: DatabaseResource
) -> None:
    """A night's run was cancelled: record it so the night closes."""
    close_night_after_run_ended(context, database)
