"""The nightly schedules, one per market group; each tick maps to a score date of its group.

The default group's `overnight_scoring_schedule` runs on `OVERNIGHT_JOB_CRON` in
`OVERNIGHT_JOB_TIMEZONE`. A configured group's `<group>_overnight_scoring_schedule` runs in its
exchange's timezone, `lead` before the open, on the calendar's weekdays; a day the exchange is
closed (a holiday) is skipped with a reason naming the calendar.

Ticks are idempotent per night (SPEC §6): a tick starts the date's night only when it has none,
or when it `failed` before anything was scored; otherwise it is skipped with a reason naming the
night. A snapshots run of the date that is still queued or running also skips the tick, so a cron
firing every minute (or the daemon catching up missed ticks) never launches a second night.
"""

import datetime as dt
from typing import Any

import dagster as dg

from scoring_pipeline.defs.jobs import overnight_snapshots_job
from scoring_pipeline.defs.market_groups.group import GROUP_TAG, MarketGroup, default_group
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.defs.run_tags import (
    LATE_TAG,
    PARTITION_TAG,
    SCHEDULED_FOR_TAG,
    run_in_flight,
)
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.store.night.opening import tick_skip_reason
from scoring_pipeline.telemetry import TRACEPARENT, new_traceparent

SCORE_DATE_TAG = "scoring/score_date"
# How far ahead of this process's clock a tick may be and still be due (another machine's).
_CLOCK_SKEW = dt.timedelta(minutes=5)


def build_overnight_schedule(
    cron: str, timezone: str, job: Any = overnight_snapshots_job
) -> dg.ScheduleDefinition:
    """The default group's schedule (a time-partitioned job refuses a custom cron, STYLE §8)."""
    return build_group_schedule(default_group(cron, timezone), job)


def build_group_schedule(group: MarketGroup, job: Any) -> dg.ScheduleDefinition:
    """A group's schedule, starting its snapshots `job`; a bad cron or zone is a config error."""
    try:
        return _build(group, job)
    except dg.DagsterInvalidDefinitionError as exc:
        where = (
            "OVERNIGHT_JOB_CRON / OVERNIGHT_JOB_TIMEZONE"
            if group.is_default
            else "MARKET_GROUPS_FILE"
        )
        raise ConfigurationError(
            f"{where}: the schedule of group {group.name} (cron {group.cron!r} in "
            f"{group.timezone!r}) is invalid: {exc}"
        ) from exc


def _description(group: MarketGroup) -> str:
    when = (
        f"{group.lead_minutes} min before the {group.opens_at:%H:%M} open in {group.timezone}"
        if group.opens_at is not None
        else f"cron {group.cron} in {group.timezone}"
    )
    closed = (
        ""
        if group.run_on_closed_days
        else f"; days {group.calendar or 'weekdays'} is closed are skipped"
    )
    return (
        f"Starts the night of group {group.name} ({when}{closed}): freezes the score date's "
        "snapshots; scoring_batches_sensor then launches every batch. A date whose night exists "
        "is skipped (unless it failed before anything was scored)."
    )


def _build(group: MarketGroup, job: Any) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=group.qualified("overnight_scoring_schedule"),
        cron_schedule=group.cron,
        execution_timezone=group.timezone,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=_description(group),
    )
    def overnight_scoring_schedule(
        context: dg.ScheduleEvaluationContext, database: DatabaseResource
    ) -> dg.RunRequest | dg.SkipReason:
        scheduled = context.scheduled_execution_time
        assert scheduled is not None
        day = group.score_date_of_tick(scheduled)
        closed = group.closed_reason(day)
        if closed:
            return dg.SkipReason(closed)
        score_date = day.isoformat()
        ahead = scheduled - dt.datetime.now(dt.UTC)
        if ahead > _CLOCK_SKEW:
            # The daemon evaluates a tick once its time has come: only the UI's "Preview tick
            # result" evaluates one ahead, and its "Launch all" started that night early (a
            # future date on today's prices), after which the real tick found it and skipped.
            return dg.SkipReason(
                f"this tick ({scheduled.isoformat()}, night {score_date} of {group.name}) has "
                "not come yet: it starts the night at its time, not from a preview; to start "
                f"{score_date} now on purpose, launch {job.name} for it"
            )
        in_flight = run_in_flight(context.instance, job.name, {PARTITION_TAG: score_date})
        if in_flight:
            return dg.SkipReason(
                f"the snapshots run {in_flight} of {score_date} ({group.name}) is still queued "
                "or running"
            )
        with database.engine().connect() as conn:
            reason = tick_skip_reason(conn, day, market_group=group.name)
        if reason:
            return dg.SkipReason(reason)
        # After daemon downtime a missed tick launches late (up to max_catchup_runs): a late
        # night still helps, and the night records how late it started.
        late = max(0, int((dt.datetime.now(dt.UTC) - scheduled).total_seconds()))
        return dg.RunRequest(
            run_key=f"night-{score_date}",
            partition_key=score_date,
            tags={
                SCORE_DATE_TAG: score_date,
                GROUP_TAG: group.name,
                "scoring/trigger": "schedule",
                SCHEDULED_FOR_TAG: scheduled.isoformat(),
                LATE_TAG: str(late),
                TRACEPARENT: new_traceparent(),
            },
        )

    return overnight_scoring_schedule
