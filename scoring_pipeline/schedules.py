"""The nightly schedule: cron and timezone from the environment, ticks map to a score date."""

import datetime as dt

import dagster as dg

from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.jobs import overnight_snapshots_job
from scoring_pipeline.telemetry import TRACEPARENT, new_traceparent


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


def _build(cron: str, timezone: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="overnight_scoring_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=overnight_snapshots_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Starts the night: freezes the score date's snapshots; "
            "scoring_batches_sensor then launches every batch."
        ),
    )
    def overnight_scoring_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        scheduled = context.scheduled_execution_time
        assert scheduled is not None
        score_date = score_date_for_tick(scheduled)
        return dg.RunRequest(
            run_key=f"night-{score_date}",
            partition_key=score_date,
            tags={
                "scoring/score_date": score_date,
                "scoring/trigger": "schedule",
                TRACEPARENT: new_traceparent(),
            },
        )

    return overnight_scoring_schedule
