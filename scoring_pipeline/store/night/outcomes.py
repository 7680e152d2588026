"""What the night's runs left: a batch's outcome, a batch or snapshots run that died without
writing one, and the batches still to retry. Recording an outcome closes the night when it was
the last (`closing.close_night`), so a night never stays `started` once its runs have ended.
"""

import datetime as dt
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store import tables as t
from scoring_pipeline.store.market_scope import member_in_group
from scoring_pipeline.store.night.closing import close_night
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    BatchOutcome,
    Night,
    NightStatus,
    find_night,
)
from scoring_pipeline.store.night.opening import fail_night


def _upsert_outcome(conn: Connection, outcome: BatchOutcome) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO scoring_batch_results (score_date, market_group, batch_key, status, "
            "users_total, users_success, users_failed, users_skipped, assets_scored, "
            "duration_ms, failed_users, succeeded_users, dagster_run_id, timings, updated_at) "
            "VALUES (:d, :g, :b, :s, :t, :ok, :f, :sk, :a, :ms, CAST(:fu AS jsonb), "
            "CAST(:su AS jsonb), :r, CAST(:tm AS jsonb), now()) "
            "ON CONFLICT (score_date, market_group, batch_key) DO "
            "UPDATE SET status = EXCLUDED.status, users_total = EXCLUDED.users_total, "
            "users_success = EXCLUDED.users_success, users_failed = EXCLUDED.users_failed, "
            "users_skipped = EXCLUDED.users_skipped, assets_scored = EXCLUDED.assets_scored, "
            "duration_ms = EXCLUDED.duration_ms, failed_users = EXCLUDED.failed_users, "
            "succeeded_users = EXCLUDED.succeeded_users, timings = EXCLUDED.timings, "
            "dagster_run_id = EXCLUDED.dagster_run_id, updated_at = now(), "
            "outcome_seq = nextval('scoring_batch_outcome_seq')"
        ),
        {
            "d": outcome.score_date,
            "g": outcome.market_group,
            "b": outcome.batch_key,
            "s": outcome.status,
            "t": outcome.users_total,
            "ok": outcome.users_success,
            "f": outcome.users_failed,
            "sk": outcome.users_skipped,
            "a": outcome.assets_scored,
            "ms": outcome.duration_ms,
            "fu": dumps(outcome.failed_users),
            "su": dumps(outcome.succeeded_users),
            "r": outcome.run_id,
            "tm": dumps(outcome.timings),
        },
    )


def record_batch_outcome(conn: Connection, outcome: BatchOutcome) -> NightStatus | None:
    """Record a batch's outcome in its write transaction and close the night if it was the last.

    Returns the night's status after it, or None when the date has no night."""
    _upsert_outcome(conn, outcome)
    return close_night(conn, outcome.score_date, market_group=outcome.market_group)


def _markets(night: Night) -> list[str] | None:
    """The markets the group's night scores (None: every market), as the night recorded them."""
    markets = night.metrics.get("markets")
    return list(markets) if markets is not None else None


def _batch_members(
    conn: Connection, score_date: dt.date, batch: str, markets: list[str] | None
) -> list[str]:
    """The batch's users the group scores: those with an active criteria set in its markets."""
    rows = conn.execute(
        sa.text(
            f"SELECT b.user_id FROM scoring_batches b WHERE b.score_date = :d "
            f"AND b.batch_key = :b AND {member_in_group()} ORDER BY b.user_id"
        ),
        {"d": score_date, "b": batch, "m": markets},
    ).scalars()
    return [str(u) for u in rows]


def batches_landed_by_run(
    conn: Connection,
    score_date: dt.date,
    batches: list[str],
    run_id: str,
    *,
    market_group: str = ALL_MARKETS,
) -> dict[str, dict[str, int]]:
    """Of `batches`, those whose current outcome the run wrote with every user scored: their
    users and assets, by batch key."""
    landed = batches_landed_by_runs(conn, score_date, batches, [run_id], market_group=market_group)
    return {
        key: {"users_success": row.users_success, "assets_scored": row.assets_scored}
        for key, row in landed.items()
    }


class LandedOutcome(NamedTuple):
    """A batch's stored outcome, every user scored: its figures and the run that wrote it."""

    users_total: int
    users_success: int
    users_skipped: int
    assets_scored: int
    duration_ms: int
    run_id: str


def batches_landed_by_runs(
    conn: Connection,
    score_date: dt.date,
    batches: list[str],
    run_ids: list[str] | None,
    *,
    market_group: str = ALL_MARKETS,
) -> dict[str, LandedOutcome]:
    """Of `batches`, those whose current outcome one of `run_ids` (None: any run) wrote with
    every user scored, by batch key."""
    c = t.scoring_batch_results.c
    by_run = c.dagster_run_id.in_(run_ids) if run_ids is not None else c.dagster_run_id.isnot(None)
    rows = conn.execute(
        sa.select(
            c.batch_key,
            c.users_total,
            c.users_success,
            c.users_skipped,
            c.assets_scored,
            c.duration_ms,
            c.dagster_run_id,
        ).where(
            c.score_date == score_date,
            c.market_group == market_group,
            c.batch_key.in_(batches),
            by_run,
            c.status == "success",
        )
    )
    return {
        str(r.batch_key): LandedOutcome(
            r.users_total,
            r.users_success,
            r.users_skipped,
            r.assets_scored,
            r.duration_ms,
            str(r.dagster_run_id),
        )
        for r in rows
    }


def failed_before_scoring(night: Night) -> bool:
    """The night failed before any user was scored (its snapshots could not be frozen)."""
    return night.status is NightStatus.FAILED and night.users_processed == 0


# The stage of each member of a batch whose run ended without writing it (a worker died, a run
# was cancelled); a write that landed records each failed user's own stage.
RUN_DIED_STAGE = "batch"


def _landed_failures(failed_users: list[dict[str, Any]] | None) -> bool:
    """Whether an outcome's failed users were recorded by a write that landed: each failed at
    a stage of its own, never `RUN_DIED_STAGE`."""
    if not failed_users:
        return False
    return all(u.get("stage") != RUN_DIED_STAGE for u in failed_users)


def record_batch_run_died(
    conn: Connection,
    score_date: dt.date,
    batch: str,
    run_id: str,
    message: str,
    *,
    market_group: str = ALL_MARKETS,
    run_created: dt.datetime | None = None,
) -> NightStatus | None:
    """A batch run ended without success: unless that run wrote the batch's outcome (failed
    users), every member of the batch counts as failed; then the night closes if it was last.
    Nothing is recorded for a date with no night of the group.

    A success, a partial outcome, or a failed one whose users failed at their own stages, that
    another run wrote stays (this run's write of the batch, if any, was rolled back: its users
    keep those scores, its failed users their errors). So does
    any outcome another run wrote after this run was created (`run_created`), newer than
    anything this run could tell: two runs of the same batch at once (two backfills of a
    night's failed batches, launched from two tabs) both write, one after the other, and the
    one whose outcome was replaced must not turn the batch's real errors into "run failed"."""
    night = find_night(conn, score_date, market_group=market_group)
    if night is None:
        # A batch of no night (a retry of a group whose night has not started): its run was
        # refused before it scored, and an outcome would show a night that does not exist.
        return None
    if failed_before_scoring(night):
        # Its inputs could not be frozen (every provider down): a batch run cannot score
        # without them. Counting every member failed would replace the night's own error with
        # "run failed" and make it look scored, so that no schedule tick would start it again.
        # (A night with outcomes of failed users has users_processed > 0: close_night counts
        # them from the outcomes on every one.)
        return night.status
    current = conn.execute(
        sa.select(
            t.scoring_batch_results.c.dagster_run_id,
            t.scoring_batch_results.c.updated_at,
            t.scoring_batch_results.c.status,
            t.scoring_batch_results.c.failed_users,
        ).where(
            t.scoring_batch_results.c.score_date == score_date,
            t.scoring_batch_results.c.market_group == market_group,
            t.scoring_batch_results.c.batch_key == batch,
        )
    ).one_or_none()
    written = current.dagster_run_id if current is not None else None
    newer = (
        current is not None
        and written != run_id
        and (
            (run_created is not None and current.updated_at >= run_created)
            # A re-score of a batch that had landed: the dead run's write was rolled back, so
            # its users keep the scores of that outcome, and its failed users their errors (an
            # operator review: terminating an optional re-score counted them failed, and the
            # completed night went `partial`; a UI review: a cancelled "Failed and missing"
            # backfill counted every member of a batch with one failed user failed, at stage
            # `batch`, the real error gone). A `failed` outcome too, when its users failed at
            # their own stages (the batch landed, every user failing): one at stage `batch` is
            # an earlier dead run's, and this run's failure is as good as it.
            or current.status in ("success", "partial")
            or (current.status == "failed" and _landed_failures(current.failed_users))
        )
    )
    members = _batch_members(conn, score_date, batch, _markets(night))
    if written != run_id and members and not newer:
        error = {"type": "StepFailed", "message": message}
        _upsert_outcome(
            conn,
            BatchOutcome(
                score_date=score_date,
                batch_key=batch,
                users_total=len(members),
                users_success=0,
                users_failed=len(members),
                users_skipped=0,
                assets_scored=0,
                duration_ms=0,
                failed_users=[
                    {"userId": u, "stage": RUN_DIED_STAGE, "error": error} for u in members
                ],
                run_id=run_id,
                market_group=market_group,
            ),
        )
    return close_night(conn, score_date, market_group=market_group)


def record_snapshots_run_died(
    conn: Connection,
    score_date: dt.date,
    message: str,
    *,
    run_id: str,
    market_group: str = ALL_MARKETS,
) -> bool:
    """The snapshots run `run_id` failed or was cancelled: the night it (re)started, still
    `started`, is `failed`. A run that did not start the night leaves it alone: one refused
    because another run was starting or scoring that night, one cancelled while queued, one
    whose `active_users` failed first. Returns whether the night was failed."""
    night = find_night(conn, score_date, market_group=market_group, lock=True)
    if night is None or night.status is not NightStatus.STARTED:
        return False
    if night.snapshot_run_id != run_id:
        return False
    return fail_night(conn, score_date, stage="snapshots", error=message, market_group=market_group)


def lock_retries(conn: Connection, score_date: dt.date, market_group: str) -> None:
    """Serialise the retries of one group's night until the transaction ends (`retry-failed`
    run twice at once): the second finds the first's backfill instead of launching its own."""
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('retry-failed:' || :k))"),
        {"k": f"{score_date.isoformat()}|{market_group}"},
    )


def batches_to_retry(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> list[str]:
    """The date's batches whose outcome in the group is not `success`, or that have none."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT b.batch_key FROM scoring_batches b "
            "LEFT JOIN scoring_batch_results r ON r.score_date = b.score_date "
            "AND r.batch_key = b.batch_key AND r.market_group = :g WHERE b.score_date = :d "
            "AND (r.status IS NULL OR r.status <> 'success') ORDER BY b.batch_key"
        ),
        {"d": score_date, "g": market_group},
    ).scalars()
    return list(rows)
