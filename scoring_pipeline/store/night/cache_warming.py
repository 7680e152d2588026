"""The `cache_warm` night that follows a group's scoring night: `record_cache_warming` opens it
with JOB_STARTED and closes it with JOB_COMPLETED once every user the group scored is warm."""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store import tables as t
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    CACHE_WARM,
    NightStatus,
    ensure_night,
    find_night,
    job_completed,
    job_started,
    update_night,
)


def _warming_figures(conn: Connection, score_date: dt.date, market_group: str) -> sa.Row[Any]:
    """The group's scored users, batches still waiting for their warming, and warm users (as
    each batch's warming counted them: one row per batch, not per user, to read)."""
    return conn.execute(
        sa.text(
            "SELECT coalesce(sum(users_success), 0) AS scored, "
            "count(*) FILTER (WHERE users_success > 0 AND (warmed_seq IS NULL "
            "  OR warmed_seq < outcome_seq)) AS pending, "
            "coalesce(sum(users_warm), 0) AS warm "
            "FROM scoring_batch_results WHERE score_date = :d AND market_group = :g"
        ),
        {"d": score_date, "g": market_group},
    ).one()


def record_cache_warming(
    conn: Connection, score_date: dt.date, failed: int, *, market_group: str = ALL_MARKETS
) -> NightStatus:
    """Track the date's `cache_warm` night of a group: completed once every user the group
    scored is warm.

    Like the scoring night it opens with JOB_STARTED and closes with JOB_COMPLETED; a completed
    one that warms again before every re-scored batch is warm (its date re-scored) is re-opened
    the same way: JOB_STARTED again, a new `started_at`, and JOB_COMPLETED once done."""
    night, created = ensure_night(conn, score_date, CACHE_WARM, market_group)
    figures = _warming_figures(conn, score_date, market_group)
    warm = int(figures.warm)
    scoring = find_night(conn, score_date, market_group=market_group)
    done = (
        figures.pending == 0 and scoring is not None and scoring.status is not NightStatus.STARTED
    )
    reopened = not created and night.completed_at is not None and not done
    if created or reopened:
        job_started(conn, night)
    status = NightStatus.STARTED
    if done:
        status = (
            NightStatus.COMPLETED
            if failed == 0
            else (NightStatus.FAILED if warm == 0 else NightStatus.PARTIAL)
        )
    update_night(
        conn,
        night,
        **({"started_at": sa.func.now()} if reopened else {}),
        status=status.value,
        users_processed=warm,
        users_failed=t.overnight_job_runs.c.users_failed + failed,
        completed_at=sa.func.now() if done else None,
        metrics={**night.metrics, "users_warm": warm, "users_scored": int(figures.scored)},
    )
    if done and night.completed_at is None:
        extra = {"jobType": CACHE_WARM.value, "usersWarm": warm, "usersScored": int(figures.scored)}
        job_completed(conn, night, status, extra)
    return status
