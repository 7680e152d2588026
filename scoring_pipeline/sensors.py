"""Sensors: launch every batch of a date once its snapshots are frozen."""

import datetime as dt

import dagster as dg

from scoring_pipeline import snapshots
from scoring_pipeline.jobs import overnight_snapshots_job, scoring_batch_job
from scoring_pipeline.partitions import scores_partition_key
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
