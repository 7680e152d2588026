"""The nightly schedule: cron and timezone from the environment, ticks map to a score date.

Ticks are idempotent per night (SPEC §6): a tick starts the date's night only when it has none,
or when it `failed` before anything was scored; otherwise it is skipped with a reason naming the
night. A snapshots run of the date that is still queued or running also skips the tick, so a cron
firing every minute (or the daemon catching up missed ticks) never launches a second night.
"""

import datetime as dt

import dagster as dg

from scoring_pipeline import night_lifecycle
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.jobs import overnight_snapshots_job
from scoring_pipeline.resources import DatabaseResource, ScoringSettingsResource
from scoring_pipeline.telemetry import TRACEPARENT, new_traceparent

SCORE_DATE_TAG = "scoring/score_date"
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def score_date_for_tick(scheduled: dt.datetime) -> str:
    """The score date a tick starts: the tick's calendar day in the schedule's timezone."""
    return scheduled.date().isoformat()


def build_overnight_schedule(cron: str, timezone: str) -> dg.ScheduleDefinition:
    """A plain schedule (a time-partitioned job refuses a custom cron, STYLE §8)."""
    try:
        return _build(cron, timezone)
    except dg.DagsterInvalidDefinitionError as exc:
        raise ConfigurationError(
            f"OVERNIGHT_JOB_CRON={cron!r} / OVERNIGHT_JOB_TIMEZONE={timezone!r} is invalid: {exc}"
        ) from exc


def _snapshots_run_in_flight(instance: dg.DagsterInstance, score_date: str) -> str | None:
    runs = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=overnight_snapshots_job.name,
            tags={"dagster/partition": score_date},
            statuses=_IN_FLIGHT,
        ),
        limit=1,
    )
    return runs[0].dagster_run.run_id if runs else None


def _build(cron: str, timezone: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="overnight_scoring_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=overnight_snapshots_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Starts the night: freezes the score date's snapshots; "
            "scoring_batches_sensor then launches every batch. A date whose night exists is "
            "skipped (unless it failed before anything was scored)."
        ),
    )
    def overnight_scoring_schedule(
        context: dg.ScheduleEvaluationContext,
        database: DatabaseResource,
        settings: ScoringSettingsResource,
    ) -> dg.RunRequest | dg.SkipReason:
        scheduled = context.scheduled_execution_time
        assert scheduled is not None
        score_date = score_date_for_tick(scheduled)
        in_flight = _snapshots_run_in_flight(context.instance, score_date)
        if in_flight:
            return dg.SkipReason(
                f"the snapshots run {in_flight} of {score_date} is still queued or running"
            )
        with database.engine().connect() as conn:
            reason = night_lifecycle.tick_skip_reason(
                conn, dt.date.fromisoformat(score_date), market_group=settings.market_group
            )
        if reason:
            return dg.SkipReason(reason)
        return dg.RunRequest(
            run_key=f"night-{score_date}",
            partition_key=score_date,
            tags={
                SCORE_DATE_TAG: score_date,
                "scoring/trigger": "schedule",
                TRACEPARENT: new_traceparent(),
            },
        )

    return overnight_scoring_schedule
