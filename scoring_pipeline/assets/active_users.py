"""The `active_users` asset: the date's active users and their frozen batch membership."""

import time

import dagster as dg

from scoring_pipeline import job_runs, snapshots, telemetry
from scoring_pipeline.assets.common import (
    SnapshotConfig,
    as_metadata,
    run_traceparent,
    score_date_of,
)
from scoring_pipeline.partitions import batch_partitions, score_date_partitions
from scoring_pipeline.resources import DatabaseResource, ScoringSettingsResource


@dg.asset(partitions_def=score_date_partitions, group_name="snapshots", kinds={"postgres"})
def active_users(
    context: dg.AssetExecutionContext,
    config: SnapshotConfig,
    database: DatabaseResource,
    settings: ScoringSettingsResource,
) -> dg.MaterializeResult[None]:
    """Active users of the score date in deterministic batches; starts the night."""
    score_date = score_date_of(context)
    started = time.perf_counter()
    # The night's trace: from the launching run's tags, or a new one for a hand-started night.
    traceparent = run_traceparent(context) or telemetry.new_traceparent()
    with (
        telemetry.step_span("active_users", traceparent, {"score_date": str(score_date)}),
        database.engine().begin() as conn,
    ):
        correlation_id = job_runs.ensure_job_run(
            conn, score_date, market_group=settings.market_group, restart=True
        )
        membership = snapshots.load_membership(conn, score_date)
        reused = bool(membership.members) and not config.refresh
        if not reused:
            membership = snapshots.compute_membership(conn, settings.batch_size)
        snapshots.store_membership(conn, score_date, membership)
        job_runs.merge_metrics(
            conn,
            score_date,
            {
                "users_skipped_no_criteria": membership.users_skipped,
                "batches_total": len(membership.batch_keys),
                "score_date": score_date.isoformat(),
                "traceparent": traceparent,
                "dagster_snapshot_run_id": context.run.run_id,
            },
        )
        if not membership.members:
            job_runs.refresh_job_run(conn, score_date)  # nothing to score: the night is done
    job_runs.report_closed_night(database.engine(), score_date)
    existing = set(context.instance.get_dynamic_partitions(batch_partitions.name or ""))
    new_keys = [k for k in membership.batch_keys if k not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(batch_partitions.name or "", new_keys)
    context.log.info(
        f"{len(membership.members)} active users in {len(membership.batch_keys)} batches "
        f"for {score_date} (membership {'reused' if reused else 'computed'})"
    )
    return dg.MaterializeResult(
        metadata=as_metadata(
            {
                "users": len(membership.members),
                "batches": len(membership.batch_keys),
                "batch_keys": membership.batch_keys,
                "users_skipped_no_criteria": membership.users_skipped,
                "membership_reused": reused,
                "job_correlation_id": correlation_id,
                "duration_ms": int((time.perf_counter() - started) * 1000),
            }
        )
    )
