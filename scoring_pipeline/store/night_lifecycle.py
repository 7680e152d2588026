"""The lifecycle of a night — the one owner of `overnight_job_runs`, its JOB_* events and its span.

A night is one row per (job type, score date, market group)::

    (none) --open_night--> started --close_night--> completed | partial | failed
                              ^                                    |
                              +--- open_night(restart) (a deliberate re-run of the date's
                                   snapshots, or a tick after a night that failed unscored)

- `open_night`: the snapshots run starts (or deliberately restarts) the night: JOB_STARTED.
- `record_batch_outcome`: a batch's result, in the batch's write transaction; the night closes
  when every batch of its membership has an outcome: `completed` (no failure), `partial` (some
  users or batches failed) or `failed` (nothing succeeded). JOB_COMPLETED carries the figures.
- `record_batch_run_died` / `record_snapshots_run_died` / `fail_night`: runs that ended without
  writing an outcome, so a night never stays `started` once its runs have ended.
- `emit_root_span`: the `overnight-scoring-job` span, once per closing, after the commit.
- `record_cache_warming`: the `cache_warm` night that follows the scoring night.
- `tick_skip_reason`: whether a schedule tick may start the date's night (SPEC §6).

Re-scoring a batch updates its outcome and closes the night again, so a retried `partial` night
becomes `completed`. Every change runs under the night's row lock: concurrent batches serialise.
Nothing here opens a night except `open_night`: a partition that belongs to no night finds none.
"""

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store import month_partitions
from scoring_pipeline.store import tables as t

ALL_MARKETS = "all"


class NightStatus(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


class JobType(StrEnum):
    SCORING = "scoring"
    CACHE_WARM = "cache_warm"


SCORING = JobType.SCORING
CACHE_WARM = JobType.CACHE_WARM


@dataclass(frozen=True, slots=True)
class Night:
    """One row of `overnight_job_runs`, as read under its lock."""

    id: str
    job_type: str
    score_date: dt.date
    market_group: str
    status: NightStatus
    correlation_id: str
    started_at: dt.datetime
    completed_at: dt.datetime | None
    users_processed: int
    error_details: dict[str, Any] | None
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.job_type} night {self.score_date} ({self.market_group})"


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one batch run of a night produced; the night's bookkeeping input."""

    score_date: dt.date
    batch_key: str
    users_total: int
    users_success: int
    users_failed: int
    users_skipped: int
    assets_scored: int
    duration_ms: int
    failed_users: list[dict[str, Any]]
    succeeded_users: list[dict[str, str]] = field(default_factory=list)
    run_id: str | None = None
    timings: dict[str, int] = field(default_factory=dict)
    market_group: str = ALL_MARKETS

    @property
    def status(self) -> str:
        if not self.users_failed:
            return "success"
        return "partial" if self.users_success else "failed"


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _write_event(
    conn: Connection, night: "Night", event_type: str, payload: dict[str, Any]
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO calculation_events (correlation_id, user_id, event_type, payload, "
            "score_date) VALUES (:c, NULL, :e, CAST(:p AS jsonb), :d)"
        ),
        {"c": night.correlation_id, "e": event_type, "p": _json(payload), "d": night.score_date},
    )


def _night(row: Any) -> Night:
    return Night(
        id=str(row.id),
        job_type=str(row.job_type),
        score_date=row.score_date,
        market_group=str(row.market_group),
        status=NightStatus(row.status),
        correlation_id=str(row.correlation_id),
        started_at=row.started_at,
        completed_at=row.completed_at,
        users_processed=int(row.users_processed or 0),
        error_details=row.error_details,
        metrics=dict(row.metrics or {}),
    )


def find_night(
    conn: Connection,
    score_date: dt.date,
    *,
    job_type: str = SCORING,
    market_group: str = ALL_MARKETS,
    lock: bool = False,
) -> Night | None:
    """The night of (job type, date, group), locked for update when `lock`; None if not started."""
    query = sa.select(t.overnight_job_runs).where(
        t.overnight_job_runs.c.job_type == job_type,
        t.overnight_job_runs.c.score_date == score_date,
        t.overnight_job_runs.c.market_group == market_group,
    )
    row = conn.execute(query.with_for_update() if lock else query).first()
    return _night(row) if row is not None else None


def _ensure(conn: Connection, score_date: dt.date, job_type: str, group: str) -> tuple[Night, bool]:
    """The night's row, created `started` when missing; True when this call created it. The
    month partitions its events, history and metric values go to are made first."""
    month_partitions.ensure_partitions(conn, score_date)
    inserted = conn.execute(
        sa.text(
            "INSERT INTO overnight_job_runs (id, job_type, score_date, market_group, status, "
            "started_at, correlation_id, metrics) VALUES (:id, :jt, :d, :g, 'started', now(), "
            ":c, '{}'::jsonb) ON CONFLICT (job_type, score_date, market_group) DO NOTHING "
            "RETURNING id"
        ),
        {
            "id": str(uuid.uuid4()),
            "jt": job_type,
            "d": score_date,
            "g": group,
            "c": str(uuid.uuid4()),
        },
    ).first()
    night = find_night(conn, score_date, job_type=job_type, market_group=group, lock=True)
    assert night is not None
    return night, inserted is not None


def _update(conn: Connection, night: Night, **values: Any) -> None:
    """Set columns of the night's row (locked by the caller)."""
    conn.execute(
        t.overnight_job_runs.update().where(t.overnight_job_runs.c.id == night.id).values(**values)
    )


def _job_started(conn: Connection, night: Night) -> None:
    _write_event(
        conn,
        night,
        "JOB_STARTED",
        {
            "correlationId": night.correlation_id,
            "jobType": night.job_type,
            "scoreDate": night.score_date.isoformat(),
            "marketGroup": night.market_group,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        },
    )


def _job_completed(
    conn: Connection, night: Night, status: NightStatus, extra: dict[str, Any]
) -> None:
    _write_event(
        conn,
        night,
        "JOB_COMPLETED",
        {
            "correlationId": night.correlation_id,
            "scoreDate": night.score_date.isoformat(),
            "status": status.value,
            **extra,
        },
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
    night, created = _ensure(conn, score_date, SCORING, market_group)
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
        _update(conn, night, metrics=scope)
    if restart and not created:
        _update(
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
        _job_started(conn, night)
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
    hint = (
        "its batches are still running"
        if night.status is NightStatus.STARTED
        else "re-score it on purpose with `scoring-pipeline score --date` or retry its failed "
        "batches with `scoring-pipeline retry-failed`"
    )
    return f"{night.name} is {night.status.value} (since {since}): {hint}"


def merge_metrics(
    conn: Connection,
    score_date: dt.date,
    metrics: dict[str, Any],
    *,
    job_type: str = SCORING,
    market_group: str = ALL_MARKETS,
) -> None:
    """Merge figures (fetch timings, staleness, …) into the night's `metrics` (if it exists)."""
    conn.execute(
        sa.text(
            "UPDATE overnight_job_runs SET metrics = coalesce(metrics, '{}'::jsonb) || "
            "CAST(:m AS jsonb) WHERE job_type = :jt AND score_date = :d AND market_group = :g"
        ),
        {"m": _json(metrics), "jt": job_type, "d": score_date, "g": market_group},
    )


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
    _update(
        conn,
        night,
        status=NightStatus.FAILED.value,
        completed_at=sa.func.now(),
        error_details={**(previous or details), "errors": errors},
    )
    _job_completed(conn, night, NightStatus.FAILED, {"error": details})
    return True


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
            "fu": _json(outcome.failed_users),
            "su": _json(outcome.succeeded_users),
            "r": outcome.run_id,
            "tm": _json(outcome.timings),
        },
    )


def record_batch_outcome(conn: Connection, outcome: BatchOutcome) -> NightStatus | None:
    """Record a batch's outcome in its write transaction and close the night if it was the last.

    Returns the night's status after it, or None when the date has no night."""
    _upsert_outcome(conn, outcome)
    return close_night(conn, outcome.score_date, market_group=outcome.market_group)


_IN_GROUP = (
    "(CAST(:m AS text[]) IS NULL OR EXISTS (SELECT 1 FROM criteria_versions c "
    "WHERE c.user_id = b.user_id AND c.is_active AND c.target_market = ANY(CAST(:m AS text[]))))"
)


def _markets(conn: Connection, score_date: dt.date, market_group: str) -> list[str] | None:
    """The markets the group's night scores (None: every market), as its night recorded them."""
    night = find_night(conn, score_date, market_group=market_group)
    markets = night.metrics.get("markets") if night is not None else None
    return list(markets) if markets is not None else None


def _batch_members(
    conn: Connection, score_date: dt.date, batch: str, markets: list[str] | None
) -> list[str]:
    """The batch's users the group scores: those with an active criteria set in its markets."""
    rows = conn.execute(
        sa.text(
            f"SELECT b.user_id FROM scoring_batches b WHERE b.score_date = :d "
            f"AND b.batch_key = :b AND {_IN_GROUP} ORDER BY b.user_id"
        ),
        {"d": score_date, "b": batch, "m": markets},
    ).scalars()
    return [str(u) for u in rows]


def record_batch_run_died(
    conn: Connection,
    score_date: dt.date,
    batch: str,
    run_id: str,
    message: str,
    *,
    market_group: str = ALL_MARKETS,
) -> NightStatus | None:
    """A batch run ended without success: unless that run wrote the batch's outcome (failed
    users), every member of the batch counts as failed; then the night closes if it was last."""
    written = conn.execute(
        sa.select(t.scoring_batch_results.c.dagster_run_id).where(
            t.scoring_batch_results.c.score_date == score_date,
            t.scoring_batch_results.c.market_group == market_group,
            t.scoring_batch_results.c.batch_key == batch,
        )
    ).scalar()
    members = _batch_members(conn, score_date, batch, _markets(conn, score_date, market_group))
    if written != run_id and members:
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
                failed_users=[{"userId": u, "stage": "batch", "error": error} for u in members],
                run_id=run_id,
                market_group=market_group,
            ),
        )
    return close_night(conn, score_date, market_group=market_group)


def record_snapshots_run_died(
    conn: Connection, score_date: dt.date, message: str, *, market_group: str = ALL_MARKETS
) -> None:
    """The snapshots run failed or was cancelled: a night still `started` is `failed`."""
    night = find_night(conn, score_date, market_group=market_group, lock=True)
    if night is not None and night.status is NightStatus.STARTED:
        fail_night(conn, score_date, stage="snapshots", error=message, market_group=market_group)


def _aggregate(conn: Connection, score_date: dt.date, night: Night) -> dict[str, Any]:
    markets = night.metrics.get("markets")
    expected = conn.execute(
        sa.text(
            "SELECT (SELECT count(DISTINCT batch_key) FROM scoring_batches "
            "WHERE score_date = :d) AS batches, "
            f"(SELECT count(*) FROM scoring_batches b WHERE b.score_date = :d AND {_IN_GROUP}) "
            "AS users"
        ),
        {"d": score_date, "m": markets},
    ).one()
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
        "batches_total": int(expected.batches),
        "batches_done": int(done.batches),
        "batches_failed": int(done.batches_failed),
        "users_total": int(expected.users),
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


def _closing_status(figures: dict[str, Any]) -> NightStatus:
    if figures["users_failed"] == 0 and figures["batches_failed"] == 0:
        return NightStatus.COMPLETED
    if figures["users_success"] == 0 and figures["users_total"] > 0:
        return NightStatus.FAILED
    return NightStatus.PARTIAL


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
    # Links from the night to Dagster: the run that wrote each batch's latest outcome.
    metrics["dagster_batch_run_ids"] = dict(
        conn.execute(
            sa.text(
                "SELECT batch_key, dagster_run_id FROM scoring_batch_results "
                "WHERE score_date = :d AND market_group = :g AND dagster_run_id IS NOT NULL "
                "ORDER BY batch_key"
            ),
            {"d": score_date, "g": market_group},
        ).all()
    )
    values: dict[str, Any] = {
        "users_processed": figures["users_success"] + figures["users_failed"],
        "users_failed": figures["users_failed"],
    }
    status = night.status
    unchanged = night.completed_at is not None and all(
        night.metrics.get(k) == v for k, v in figures.items() if k != "batches_done"
    )
    if figures["batches_done"] >= figures["batches_total"] and not unchanged:
        # Closing (again, when a re-scored batch changed the outcome): JOB_COMPLETED follows.
        status = _closing_status(figures)
        completed_at = dt.datetime.now(dt.UTC)
        metrics["total_duration_ms"] = int((completed_at - night.started_at).total_seconds() * 1000)
        values.update(status=status.value, completed_at=completed_at)
        values["error_details"] = (
            None
            if status is NightStatus.COMPLETED
            else {"failedUsers": failed_users(conn, score_date, market_group=market_group)}
        )
    values["metrics"] = metrics
    _update(conn, night, **values)
    if "completed_at" in values:
        # The night's figures, as its root span reports them, in camelCase (SPEC §5).
        figures = {_camel(k): metrics.get(k) for k in NIGHT_SPAN_FIGURES if k != "score_date"}
        _job_completed(conn, night, status, figures)
    return status


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


def record_cache_warming(
    conn: Connection, score_date: dt.date, failed: int, *, market_group: str = ALL_MARKETS
) -> NightStatus:
    """Track the date's `cache_warm` night of a group: completed once every user the group
    scored is warm.

    Like the scoring night it opens with JOB_STARTED and closes with JOB_COMPLETED (again if it
    was re-opened: warmed while a re-scored batch still waited for its warming)."""
    night, created = _ensure(conn, score_date, CACHE_WARM, market_group)
    if created:
        _job_started(conn, night)
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
    _update(
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
        _job_completed(conn, night, status, extra)
    return status


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


def night_traceparent(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> str | None:
    """The W3C traceparent of the date's night, as recorded when it started."""
    night = find_night(conn, score_date, market_group=market_group)
    value = night.metrics.get("traceparent") if night is not None else None
    return str(value) if value else None


def _span_description(night: Night) -> str:
    if night.status is NightStatus.COMPLETED:
        return "every user scored"
    message = (night.error_details or {}).get("message")
    return (
        f"night {night.status.value}: {night.metrics.get('users_failed', 0)} users and "
        f"{night.metrics.get('batches_failed', 0)} batches failed"
        + (f"; {message}" if message else "")
    )


def emit_root_span(
    engine: sa.Engine, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> bool:
    """Emit the night's `overnight-scoring-job` span once per closing (call after the commit)."""
    from scoring_pipeline import telemetry

    if not telemetry.enabled():
        return False
    with engine.begin() as conn:
        night = find_night(conn, score_date, market_group=market_group, lock=True)
        if night is None or night.status is NightStatus.STARTED or night.completed_at is None:
            return False
        closed = night.completed_at.isoformat()
        if night.metrics.get("span_emitted_for") == closed:
            return False
        attributes = {k: night.metrics.get(k) for k in NIGHT_SPAN_FIGURES}
        attributes.update(
            score_date=score_date.isoformat(),
            job_status=night.status.value,
            market_group=night.market_group,
        )
        for key in (
            "users_total",
            "users_success",
            "users_failed",
            "assets_scored",
            "fetch_rates_ms",
            "total_duration_ms",
        ):
            if attributes.get(key) is None:
                attributes[key] = 0
        emitted = telemetry.emit_night_span(
            night.metrics.get("traceparent"),
            start_ns=int(night.started_at.timestamp() * 1e9),
            end_ns=int(night.completed_at.timestamp() * 1e9),
            attributes=attributes,
            ok=night.status is NightStatus.COMPLETED,
            description=_span_description(night),
        )
        if emitted:
            merge_metrics(conn, score_date, {"span_emitted_for": closed}, market_group=market_group)
        return emitted
