"""The `cache_warm` night that follows a group's scoring night: `record_cache_warming` opens it
with JOB_STARTED and closes it with JOB_COMPLETED once every user the group scored is warm."""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

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
    """The group's scored users, batches still waiting for their warming, warm users (as each
    batch's warming counted them: one row per batch, not per user, to read), and the users of
    warmed batches whose dashboard could not be built."""
    return conn.execute(
        sa.text(
            "SELECT coalesce(sum(users_success), 0) AS scored, "
            "count(*) FILTER (WHERE users_success > 0 AND (warmed_seq IS NULL "
            "  OR warmed_seq < outcome_seq)) AS pending, "
            "coalesce(sum(users_warm), 0) AS warm, "
            "coalesce(sum(greatest(users_success - users_warm, 0)) FILTER (WHERE "
            "  warmed_seq >= outcome_seq), 0) AS failed "
            "FROM scoring_batch_results WHERE score_date = :d AND market_group = :g"
        ),
        {"d": score_date, "g": market_group},
    ).one()


def record_cache_warming(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> NightStatus:
    """Track the date's `cache_warm` night of a group: completed once every user the group
    scored is warm; `partial` (or `failed`) when some dashboards could not be built. Its figures
    are those of the batches' latest outcomes, so a re-warm that succeeds clears a failure.

    Like the scoring night it opens with JOB_STARTED and closes with JOB_COMPLETED; a completed
    one that warms again before every re-scored batch is warm (its date re-scored) is re-opened
    the same way: JOB_STARTED again, a new `started_at`, and JOB_COMPLETED once done."""
    night, created = ensure_night(conn, score_date, CACHE_WARM, market_group)
    figures = _warming_figures(conn, score_date, market_group)
    warm = int(figures.warm)
    failed = int(figures.failed)
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
        users_failed=failed,
        completed_at=sa.func.now() if done else None,
        metrics={**night.metrics, "users_warm": warm, "users_scored": int(figures.scored)},
    )
    if done and night.completed_at is None:
        extra = {"jobType": CACHE_WARM.value, "usersWarm": warm, "usersScored": int(figures.scored)}
        job_completed(conn, night, status, extra)
    return status


def close_cache_warming(conn: Connection, score_date: dt.date, market_group: str) -> None:
    """The scoring night just closed: its `cache_warm` night closes too when nothing is left to
    warm. (A night closed by the failure sensor after its last warm run, its last batch failed,
    gets no warm run after: its warming stayed `started`.)"""
    warming = find_night(conn, score_date, job_type=CACHE_WARM, market_group=market_group)
    if warming is not None and warming.status is NightStatus.STARTED:
        record_cache_warming(conn, score_date, market_group=market_group)
