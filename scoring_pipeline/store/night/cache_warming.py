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


def _warming_figures(
    conn: Connection, score_date: dt.date, market_group: str
) -> tuple[sa.Row[Any], int]:
    """The group's scored users and batches still waiting for their warming (one row), and how
    many of the users it scored have a dashboard cache row."""
    figures = conn.execute(
        sa.text(
            "SELECT coalesce(sum(users_success), 0) AS scored, "
            "count(*) FILTER (WHERE users_success > 0 AND (warmed_seq IS NULL "
            "  OR warmed_seq < outcome_seq)) AS pending "
            "FROM scoring_batch_results WHERE score_date = :d AND market_group = :g"
        ),
        {"d": score_date, "g": market_group},
    ).one()
    warm = int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM dashboard_cache dc WHERE dc.score_date = :d AND EXISTS ("
                "SELECT 1 FROM scoring_batch_results r, "
                "jsonb_array_elements(r.succeeded_users) u WHERE r.score_date = :d "
                "AND r.market_group = :g AND u->>'userId' = dc.user_id::text)"
            ),
            {"d": score_date, "g": market_group},
        ).scalar_one()
    )
    return figures, warm


def record_cache_warming(
    conn: Connection, score_date: dt.date, failed: int, *, market_group: str = ALL_MARKETS
) -> NightStatus:
    """Track the date's `cache_warm` night of a group: completed once every user the group
    scored is warm.

    Like the scoring night it opens with JOB_STARTED and closes with JOB_COMPLETED (again if it
    was re-opened: warmed while a re-scored batch still waited for its warming)."""
    night, created = ensure_night(conn, score_date, CACHE_WARM, market_group)
    if created:
        job_started(conn, night)
    figures, warm = _warming_figures(conn, score_date, market_group)
    scoring = find_night(conn, score_date, market_group=market_group)
    done = (
        figures.pending == 0 and scoring is not None and scoring.status is not NightStatus.STARTED
    )
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
