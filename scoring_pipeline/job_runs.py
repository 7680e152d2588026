"""`overnight_job_runs` bookkeeping: one row per job type, score date and market group.

A scoring night is `started` when its membership is computed, and is closed once every batch of
the date has an outcome in `scoring_batch_results`: `completed` (no failure), `partial` (some
users or batches failed) or `failed` (nothing succeeded, or the night died before scoring).
Re-scoring a batch updates its outcome and closes the night again, so a retried `partial` night
becomes `completed`. Every change runs under a row lock, so concurrent batches serialise here.
"""

import datetime as dt
import json
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline import tables as t

SCORING = "scoring"
CACHE_WARM = "cache_warm"
ALL_MARKETS = "all"


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def write_job_event(
    conn: Connection, *, correlation_id: str, event_type: str, payload: dict[str, Any]
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO calculation_events (correlation_id, user_id, event_type, payload) "
            "VALUES (:c, NULL, :e, CAST(:p AS jsonb))"
        ),
        {"c": correlation_id, "e": event_type, "p": _json(payload)},
    )


def _lock(conn: Connection, job_type: str, score_date: dt.date, group: str) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(t.overnight_job_runs)
        .where(
            t.overnight_job_runs.c.job_type == job_type,
            t.overnight_job_runs.c.score_date == score_date,
            t.overnight_job_runs.c.market_group == group,
        )
        .with_for_update()
    ).first()


def ensure_job_run(
    conn: Connection,
    score_date: dt.date,
    *,
    job_type: str = SCORING,
    market_group: str = ALL_MARKETS,
    restart: bool = False,
) -> str:
    """Create the date's job run if missing (or restart it) and return its correlation id.

    Restarting sets it back to `started` and writes JOB_STARTED again: a new attempt at the night.
    """
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
            "g": market_group,
            "c": str(uuid.uuid4()),
        },
    ).first()
    row = _lock(conn, job_type, score_date, market_group)
    assert row is not None
    if restart and inserted is None:
        conn.execute(
            t.overnight_job_runs.update()
            .where(t.overnight_job_runs.c.id == row.id)
            .values(
                status="started",
                started_at=sa.func.now(),
                completed_at=None,
                users_processed=0,
                users_failed=0,
                error_details=None,
                metrics={},
            )
        )
    if restart or inserted is not None:
        write_job_event(
            conn,
            correlation_id=row.correlation_id,
            event_type="JOB_STARTED",
            payload={
                "correlationId": row.correlation_id,
                "jobType": job_type,
                "scoreDate": score_date.isoformat(),
                "marketGroup": market_group,
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            },
        )
    return str(row.correlation_id)


def merge_metrics(
    conn: Connection,
    score_date: dt.date,
    metrics: dict[str, Any],
    *,
    job_type: str = SCORING,
    market_group: str = ALL_MARKETS,
) -> None:
    """Merge figures (fetch timings, staleness, …) into the job run's `metrics`."""
    conn.execute(
        sa.text(
            "UPDATE overnight_job_runs SET metrics = coalesce(metrics, '{}'::jsonb) || "
            "CAST(:m AS jsonb) WHERE job_type = :jt AND score_date = :d AND market_group = :g"
        ),
        {"m": _json(metrics), "jt": job_type, "d": score_date, "g": market_group},
    )


def fail_job_run(
    conn: Connection,
    score_date: dt.date,
    *,
    stage: str,
    error: BaseException | str,
    job_type: str = SCORING,
    market_group: str = ALL_MARKETS,
) -> None:
    """The night died before scoring (e.g. no usable snapshot): mark it `failed`."""
    correlation_id = ensure_job_run(conn, score_date, job_type=job_type, market_group=market_group)
    details = {
        "stage": stage,
        "type": type(error).__name__ if isinstance(error, BaseException) else "Error",
        "message": str(error),
    }
    row = _lock(conn, job_type, score_date, market_group)
    assert row is not None
    # Several snapshot steps may fail in one night: keep every error, the first one on top.
    previous = row.error_details if row.status == "failed" and row.error_details else None
    errors = [*(previous or {}).get("errors", []), details]
    conn.execute(
        t.overnight_job_runs.update()
        .where(t.overnight_job_runs.c.id == row.id)
        .values(
            status="failed",
            completed_at=sa.func.now(),
            error_details={**(previous or details), "errors": errors},
        )
    )
    write_job_event(
        conn,
        correlation_id=correlation_id,
        event_type="JOB_COMPLETED",
        payload={
            "correlationId": correlation_id,
            "scoreDate": score_date.isoformat(),
            "status": "failed",
            "error": details,
        },
    )


def record_missing_batches_failed(
    conn: Connection, score_date: dt.date, errors: dict[str, str]
) -> None:
    """Batches whose run ended without writing an outcome (the step died) count as failed."""
    for batch, message in errors.items():
        members = (
            conn.execute(
                sa.select(t.scoring_batches.c.user_id).where(
                    t.scoring_batches.c.score_date == score_date,
                    t.scoring_batches.c.batch_key == batch,
                )
            )
            .scalars()
            .all()
        )
        failed = [
            {
                "userId": str(u),
                "stage": "batch",
                "error": {"type": "StepFailed", "message": message},
            }
            for u in members
        ]
        conn.execute(
            sa.text(
                "INSERT INTO scoring_batch_results (score_date, batch_key, status, users_total, "
                "users_success, users_failed, users_skipped, assets_scored, duration_ms, "
                "failed_users, updated_at) VALUES (:d, :b, 'failed', :n, 0, :n, 0, 0, 0, "
                "CAST(:f AS jsonb), now()) ON CONFLICT (score_date, batch_key) DO UPDATE SET "
                "status = 'failed', users_total = :n, users_success = 0, users_failed = :n, "
                "users_skipped = 0, assets_scored = 0, failed_users = EXCLUDED.failed_users, "
                "succeeded_users = '[]'::jsonb, "
                "outcome_seq = nextval('scoring_batch_outcome_seq'), "
                "updated_at = now()"
            ),
            {"d": score_date, "b": batch, "n": len(members), "f": _json(failed)},
        )


def _aggregate(conn: Connection, score_date: dt.date) -> dict[str, Any]:
    expected = conn.execute(
        sa.text(
            "SELECT count(DISTINCT batch_key) AS batches, count(*) AS users "
            "FROM scoring_batches WHERE score_date = :d"
        ),
        {"d": score_date},
    ).one()
    done = conn.execute(
        sa.text(
            "SELECT count(*) AS batches, "
            "count(*) FILTER (WHERE status <> 'success') AS batches_failed, "
            "coalesce(sum(users_total), 0) AS users_total, "
            "coalesce(sum(users_success), 0) AS users_success, "
            "coalesce(sum(users_failed), 0) AS users_failed, "
            "coalesce(sum(users_skipped), 0) AS users_skipped, "
            "coalesce(sum(assets_scored), 0) AS assets_scored, "
            "coalesce(sum(duration_ms), 0) AS process_users_ms "
            "FROM scoring_batch_results r WHERE score_date = :d AND EXISTS ("
            "SELECT 1 FROM scoring_batches b WHERE b.score_date = r.score_date "
            "AND b.batch_key = r.batch_key)"
        ),
        {"d": score_date},
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


def failed_users(conn: Connection, score_date: dt.date, limit: int = 100) -> list[dict[str, Any]]:
    """The failed users of the date's batches (user id, stage, error), at most `limit`."""
    rows = conn.execute(
        sa.text(
            "SELECT batch_key, failed_users FROM scoring_batch_results "
            "WHERE score_date = :d AND jsonb_array_length(failed_users) > 0 ORDER BY batch_key"
        ),
        {"d": score_date},
    ).all()
    out: list[dict[str, Any]] = []
    for row in rows:
        for item in row.failed_users:
            out.append({"batch": row.batch_key, **item})
    return out[:limit]


def refresh_job_run(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> str | None:
    """Update the night's counters; close it when every batch has an outcome.

    Returns the new status, or None when the date has no job run yet.
    """
    row = _lock(conn, SCORING, score_date, market_group)
    if row is None:
        return None
    figures = _aggregate(conn, score_date)
    metrics = dict(row.metrics or {})
    metrics.update({k: v for k, v in figures.items() if k != "batches_done"})
    # Links from the job run to Dagster: the run that wrote each batch's latest outcome.
    metrics["dagster_batch_run_ids"] = dict(
        conn.execute(
            sa.text(
                "SELECT batch_key, dagster_run_id FROM scoring_batch_results "
                "WHERE score_date = :d AND dagster_run_id IS NOT NULL ORDER BY batch_key"
            ),
            {"d": score_date},
        ).all()
    )
    values: dict[str, Any] = {
        "users_processed": figures["users_success"] + figures["users_failed"],
        "users_failed": figures["users_failed"],
    }
    status = str(row.status)
    previous = dict(row.metrics or {})
    unchanged = row.completed_at is not None and all(
        previous.get(k) == v for k, v in figures.items() if k != "batches_done"
    )
    if figures["batches_done"] >= figures["batches_total"] and not unchanged:
        # Closing (again, when a re-scored batch changed the outcome): JOB_COMPLETED follows.
        if figures["users_failed"] == 0 and figures["batches_failed"] == 0:
            status = "completed"
        elif figures["users_success"] == 0 and figures["users_total"] > 0:
            status = "failed"
        else:
            status = "partial"
        completed_at = dt.datetime.now(dt.UTC)
        started_at = row.started_at
        metrics["total_duration_ms"] = int((completed_at - started_at).total_seconds() * 1000)
        values.update(status=status, completed_at=completed_at)
        if status == "completed":
            values["error_details"] = None
        else:
            values["error_details"] = {"failedUsers": failed_users(conn, score_date)}
    values["metrics"] = metrics
    conn.execute(
        t.overnight_job_runs.update().where(t.overnight_job_runs.c.id == row.id).values(**values)
    )
    if "completed_at" in values:
        write_job_event(
            conn,
            correlation_id=row.correlation_id,
            event_type="JOB_COMPLETED",
            payload={
                "correlationId": row.correlation_id,
                "scoreDate": score_date.isoformat(),
                "status": status,
                # The night's figures, as its root span reports them, in camelCase (SPEC §5).
                **{_camel(k): metrics.get(k) for k in NIGHT_SPAN_FIGURES if k != "score_date"},
            },
        )
    return status


def close_after_batch_run_ended(
    conn: Connection, score_date: dt.date, batch: str, run_id: str, message: str
) -> str | None:
    """A batch run ended without success: unless that run wrote the batch's outcome (failed
    users), record the batch as failed, then close the night if it was the last one."""
    written = conn.execute(
        sa.select(t.scoring_batch_results.c.dagster_run_id).where(
            t.scoring_batch_results.c.score_date == score_date,
            t.scoring_batch_results.c.batch_key == batch,
        )
    ).scalar()
    if written != run_id:
        record_missing_batches_failed(conn, score_date, {batch: message})
    return refresh_job_run(conn, score_date)


def close_after_snapshot_run_ended(conn: Connection, score_date: dt.date, message: str) -> None:
    """The snapshots run failed or was cancelled: a night still `started` is `failed`."""
    row = _lock(conn, SCORING, score_date, ALL_MARKETS)
    if row is not None and row.status == "started":
        fail_job_run(conn, score_date, stage="snapshots", error=message)


def batches_to_retry(conn: Connection, score_date: dt.date) -> list[str]:
    """The date's batches whose outcome is not `success`, or that have no outcome at all."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT b.batch_key FROM scoring_batches b "
            "LEFT JOIN scoring_batch_results r ON r.score_date = b.score_date "
            "AND r.batch_key = b.batch_key WHERE b.score_date = :d "
            "AND (r.status IS NULL OR r.status <> 'success') ORDER BY b.batch_key"
        ),
        {"d": score_date},
    ).scalars()
    return list(rows)


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


def night_traceparent(conn: Connection, score_date: dt.date) -> str | None:
    """The W3C traceparent of the date's night, as recorded when it started."""
    value = conn.execute(
        sa.text(
            "SELECT metrics->>'traceparent' FROM overnight_job_runs WHERE job_type = 'scoring' "
            "AND score_date = :d AND market_group = 'all'"
        ),
        {"d": score_date},
    ).scalar()
    return str(value) if value else None


def report_closed_night(engine: sa.Engine, score_date: dt.date) -> bool:
    """Emit the night's `overnight-scoring-job` span once per closing (after the commit)."""
    from scoring_pipeline import telemetry

    if not telemetry.enabled():
        return False
    with engine.begin() as conn:
        row = _lock(conn, SCORING, score_date, ALL_MARKETS)
        if row is None or row.status == "started" or row.completed_at is None:
            return False
        metrics = dict(row.metrics or {})
        closed = row.completed_at.isoformat()
        if metrics.get("span_emitted_for") == closed:
            return False
        attributes = {k: metrics.get(k) for k in NIGHT_SPAN_FIGURES}
        attributes.update(
            score_date=score_date.isoformat(), job_status=row.status, market_group=row.market_group
        )
        for key in (
            "users_total",
            "users_success",
            "users_failed",
            "assets_scored",
            "fetch_rates_ms",
            "total_duration_ms",
        ):
            attributes.setdefault(key, 0)
            if attributes[key] is None:
                attributes[key] = 0
        ok = row.status == "completed"
        description = (
            "every user scored"
            if ok
            else f"night {row.status}: {metrics.get('users_failed', 0)} users and "
            f"{metrics.get('batches_failed', 0)} batches failed"
            + (
                f"; {row.error_details.get('message')}"
                if row.error_details and row.error_details.get("message")
                else ""
            )
        )
        emitted = telemetry.emit_night_span(
            metrics.get("traceparent"),
            start_ns=int(row.started_at.timestamp() * 1e9),
            end_ns=int(row.completed_at.timestamp() * 1e9),
            attributes=attributes,
            ok=ok,
            description=description,
        )
        if emitted:
            conn.execute(
                sa.text(
                    "UPDATE overnight_job_runs SET metrics = metrics || "
                    "jsonb_build_object('span_emitted_for', CAST(:c AS text)) WHERE id = :i"
                ),
                {"c": closed, "i": row.id},
            )
        return emitted
