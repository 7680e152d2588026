"""Starting a night: `open_night`, whether a schedule tick may (`tick_skip_reason`, SPEC §6),
and `fail_night` when the night dies before anything is scored."""

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store import tables as t
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    SCORING,
    NightStatus,
    ensure_night,
    find_night,
    group_option,
    job_completed,
    job_started,
    update_night,
)


def open_night(
    conn: Connection,
    score_date: dt.date,
    *,
    market_group: str = ALL_MARKETS,
    markets: Sequence[str] | None = None,
    restart: bool = True,
) -> str:
    """Start the date's scoring night of a market group (the group's snapshots run) and return
    its correlation id. `markets` are the group's markets (None: every market); the night keeps
    them, so its figures count only the users with criteria sets in them.

    An existing night is restarted when `restart`: back to `started`, counters zeroed, JOB_STARTED
    again — a new, deliberate attempt at the night (its frozen snapshots are kept).
    """
    night, created = ensure_night(conn, score_date, SCORING, market_group)
    scope = {"markets": sorted(markets) if markets is not None else None}
    if restart or created:
        # A new attempt at the night: its batches' earlier outcomes no longer count.
        conn.execute(
            t.scoring_batch_results.delete().where(
                t.scoring_batch_results.c.score_date == score_date,
                t.scoring_batch_results.c.market_group == market_group,
            )
        )
    if created:
        update_night(conn, night, metrics=scope)
    if restart and not created:
        update_night(
            conn,
            night,
            status=NightStatus.STARTED.value,
            started_at=sa.func.now(),
            completed_at=None,
            users_processed=0,
            users_failed=0,
            error_details=None,
            metrics=scope,
        )
    if restart or created:
        job_started(conn, night)
    return night.correlation_id


def tick_skip_reason(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> str | None:
    """Why a schedule tick must not start the date's night, or None when it may (SPEC §6).

    A tick starts a night that does not exist yet, or one that `failed` before anything was
    scored (its providers were down, say); any other night is left to the operator.
    """
    night = find_night(conn, score_date, market_group=market_group)
    if night is None:
        return None
    if night.status is NightStatus.FAILED and night.users_processed == 0:
        return None
    since = (night.completed_at or night.started_at).isoformat(timespec="seconds")
    options = f"--date {score_date}" + group_option(market_group)
    hint = (
        "its batches are still running"
        if night.status is NightStatus.STARTED
        else f"re-score it on purpose with `scoring-pipeline score {options}` or retry its "
        f"failed batches with `scoring-pipeline retry-failed {options}`"
    )
    return f"{night.name} is {night.status.value} (since {since}): {hint}"


def fail_night(
    conn: Connection,
    score_date: dt.date,
    *,
    stage: str,
    error: BaseException | str,
    market_group: str = ALL_MARKETS,
) -> bool:
    """The night died before scoring (e.g. no usable snapshot): mark it `failed`.

    Returns False when the date has no night: a snapshot materialised on its own opens none.
    """
    night = find_night(conn, score_date, market_group=market_group, lock=True)
    if night is None:
        return False
    details = {
        "stage": stage,
        "type": type(error).__name__ if isinstance(error, BaseException) else "Error",
        "message": str(error),
    }
    # Several snapshot steps may fail in one night: keep every error, the first one on top.
    previous = night.error_details if night.status is NightStatus.FAILED else None
    errors = [*(previous or {}).get("errors", []), details]
    completed_at = dt.datetime.now(dt.UTC)
    # The night's own time, as a closed night records it: the root span and `status` report it.
    metrics = {
        **night.metrics,
        "total_duration_ms": int((completed_at - night.started_at).total_seconds() * 1000),
    }
    update_night(
        conn,
        night,
        status=NightStatus.FAILED.value,
        completed_at=completed_at,
        error_details={**(previous or details), "errors": errors},
        metrics=metrics,
    )
    job_completed(conn, night, NightStatus.FAILED, {"error": details})
    return True
