"""Closing a night: its figures from the batches' outcomes, and `completed`, `partial` or
`failed` with JOB_COMPLETED once every batch of its membership has an outcome.

`close_night` runs in the caller's transaction; the root span follows after the commit
(`root_span.emit_root_span`).
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store.market_scope import member_in_group
from scoring_pipeline.store.membership import MEMBERSHIP_COUNTS
from scoring_pipeline.store.night.cache_warming import close_cache_warming
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    FIRST_CLOSED_AFTER_MS,
    Night,
    NightStatus,
    find_night,
    job_completed,
    update_night,
)

# The figures a closed night reports, in JOB_COMPLETED and on its root span.
NIGHT_SPAN_FIGURES = (
    "score_date",
    "fetch_rates_ms",
    "fetch_prices_ms",
    "process_users_ms",
    "total_duration_ms",
    "users_total",
    "users_success",
    "users_failed",
    "users_skipped",
    "assets_scored",
    "batches_total",
    "batches_failed",
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _expected(conn: Connection, score_date: dt.date, night: Night) -> dict[str, int]:
    """The batches and the users (of the night's markets) of the date's membership: counted at
    the night's first batch outcome and kept in its metrics, since they count a membership of
    up to 100,000 rows and every batch outcome closes the night again (`store_membership`, the
    only writer of a membership, drops them)."""
    kept = night.metrics.get(MEMBERSHIP_COUNTS)
    if isinstance(kept, dict) and {"batches", "users"} <= kept.keys():
        return {"batches": int(kept["batches"]), "users": int(kept["users"])}
    row = conn.execute(
        sa.text(
            "SELECT (SELECT count(DISTINCT batch_key) FROM scoring_batches "
            "WHERE score_date = :d) AS batches, "
            "(SELECT count(*) FROM scoring_batches b "
            f"WHERE b.score_date = :d AND {member_in_group()}) AS users"
        ),
        {"d": score_date, "m": night.metrics.get("markets")},
    ).one()
    return {"batches": int(row.batches), "users": int(row.users)}


def _aggregate(conn: Connection, score_date: dt.date, night: Night) -> dict[str, Any]:
    expected = _expected(conn, score_date, night)
    done = conn.execute(
        sa.text(
            "SELECT count(*) AS batches, "
            "count(*) FILTER (WHERE status <> 'success') AS batches_failed, "
            "coalesce(sum(users_success), 0) AS users_success, "
            "coalesce(sum(users_failed), 0) AS users_failed, "
            "coalesce(sum(users_skipped), 0) AS users_skipped, "
            "coalesce(sum(assets_scored), 0) AS assets_scored, "
            "coalesce(sum(duration_ms), 0) AS process_users_ms "
            "FROM scoring_batch_results r WHERE score_date = :d AND market_group = :g "
            "AND EXISTS (SELECT 1 FROM scoring_batches b WHERE b.score_date = r.score_date "
            "AND b.batch_key = r.batch_key)"
        ),
        {"d": score_date, "g": night.market_group},
    ).one()
    return {
        "batches_total": expected["batches"],
        "batches_done": int(done.batches),
        "batches_failed": int(done.batches_failed),
        "users_total": expected["users"],
        "users_success": int(done.users_success),
        "users_failed": int(done.users_failed),
        "users_skipped": int(done.users_skipped),
        "assets_scored": int(done.assets_scored),
        "process_users_ms": int(done.process_users_ms),
    }


def failed_users(
    conn: Connection, score_date: dt.date, limit: int = 100, *, market_group: str = ALL_MARKETS
) -> list[dict[str, Any]]:
    """The failed users of the date's batches (user id, stage, error), at most `limit`."""
    rows = conn.execute(
        sa.text(
            "SELECT batch_key, failed_users FROM scoring_batch_results "
            "WHERE score_date = :d AND market_group = :g "
            "AND jsonb_array_length(failed_users) > 0 ORDER BY batch_key"
        ),
        {"d": score_date, "g": market_group},
    ).all()
    out = [{"batch": row.batch_key, **item} for row in rows for item in row.failed_users]
    return out[:limit]


def _batch_run_ids(conn: Connection, score_date: dt.date, market_group: str) -> dict[str, str]:
    rows = conn.execute(
        sa.text(
            "SELECT batch_key, dagster_run_id FROM scoring_batch_results "
            "WHERE score_date = :d AND market_group = :g AND dagster_run_id IS NOT NULL "
            "ORDER BY batch_key"
        ),
        {"d": score_date, "g": market_group},
    ).all()
    return {str(r.batch_key): str(r.dagster_run_id) for r in rows}


def _closing_status(figures: dict[str, Any]) -> NightStatus:
    if figures["users_failed"] == 0 and figures["batches_failed"] == 0:
        return NightStatus.COMPLETED
    if figures["users_success"] == 0 and figures["users_total"] > 0:
        return NightStatus.FAILED
    return NightStatus.PARTIAL


# Figures of a night's batches that say nothing of its outcome.
_NOT_OUTCOME = frozenset({"batches_done", "process_users_ms"})


def close_night(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> NightStatus | None:
    """Update the night's counters; close it when every batch has an outcome.

    Returns the new status, or None when the date has no night."""
    night = find_night(conn, score_date, market_group=market_group, lock=True)
    if night is None:
        return None
    figures = _aggregate(conn, score_date, night)
    metrics = dict(night.metrics)
    metrics.update({k: v for k, v in figures.items() if k != "batches_done"})
    metrics[MEMBERSHIP_COUNTS] = {
        "batches": figures["batches_total"],
        "users": figures["users_total"],
    }
    all_done = figures["batches_done"] >= figures["batches_total"]
    if all_done:
        # Links from the night to Dagster: the run that wrote each batch's latest outcome. Once
        # every batch has one (rewritten on every outcome, the map was a 100,000-user night's
        # 2,000 batches writing 2,000 entries each).
        metrics["dagster_batch_run_ids"] = _batch_run_ids(conn, score_date, market_group)
    values: dict[str, Any] = {
        "users_processed": figures["users_success"] + figures["users_failed"],
        "users_failed": figures["users_failed"],
    }
    status = night.status
    # Closed with the same outcome (a batch re-scored with the same results): not closed
    # again. Timings are no outcome: every re-score has new ones.
    unchanged = (
        night.completed_at is not None
        and night.status is _closing_status(figures)
        and all(night.metrics.get(k) == v for k, v in figures.items() if k not in _NOT_OUTCOME)
    )
    if all_done and not unchanged:
        # Closing (again, when a re-scored batch changed the outcome): JOB_COMPLETED follows.
        status = _closing_status(figures)
        completed_at = dt.datetime.now(dt.UTC)
        metrics["total_duration_ms"] = int((completed_at - night.started_at).total_seconds() * 1000)
        # The night's own time: a retry hours later closes it again, and `status` says both.
        metrics.setdefault(FIRST_CLOSED_AFTER_MS, metrics["total_duration_ms"])
        values.update(status=status.value, completed_at=completed_at)
        values["error_details"] = (
            None
            if status is NightStatus.COMPLETED
            else {"failedUsers": failed_users(conn, score_date, market_group=market_group)}
        )
    values["metrics"] = metrics
    update_night(conn, night, **values)
    if "completed_at" in values:
        # The night's figures, as its root span reports them, in camelCase (SPEC §5).
        figures = {_camel(k): metrics.get(k) for k in NIGHT_SPAN_FIGURES if k != "score_date"}
        job_completed(conn, night, status, figures)
        close_cache_warming(conn, score_date, market_group)
    return status
