"""What a night is, and the reads and writes of its row that the lifecycle's modules share.

The vocabulary (`NightStatus`, `JobType`, `Night`, `BatchOutcome`), `find_night`,
`merge_metrics`, and the helpers that create and update a night's row and write its JOB_* events.
Only the modules of `scoring_pipeline.store.night` call the helpers: they are the one writer of
`overnight_job_runs` and of the JOB_* events.
"""

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store import month_partitions
from scoring_pipeline.store import tables as t

ALL_MARKETS = "all"


def group_option(market_group: str | None) -> str:
    """The `--group` option of a command on a night of `market_group` (none for the default
    group, nor when the group is unknown)."""
    return "" if not market_group or market_group == ALL_MARKETS else f" --group {market_group}"


# The night's `metrics` key of how long after its start it first closed (later closes, after
# re-scored batches, move `completed_at` and `total_duration_ms`, not this).
FIRST_CLOSED_AFTER_MS = "first_closed_after_ms"


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

    @property
    def snapshot_run_id(self) -> str | None:
        """The Dagster run whose `active_users` last (re)started the night: its owner until
        another run restarts it."""
        value = (self.metrics or {}).get("dagster_snapshot_run_id")
        return str(value) if value else None

    def markets_or(self, current: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The markets the night was opened with (None: every market): a retry of the night
        scores and checks those, though a market has moved to another group since (whose
        nights then score it); `current`, the group's markets now, for a night recorded before
        nights kept them."""
        if "markets" not in (self.metrics or {}):
            return current
        kept = self.metrics["markets"]
        return tuple(kept) if kept is not None else None


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


def _write_event(
    conn: Connection, night: "Night", event_type: str, payload: dict[str, Any]
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO calculation_events (correlation_id, user_id, event_type, payload, "
            "score_date) VALUES (:c, NULL, :e, CAST(:p AS jsonb), :d)"
        ),
        {"c": night.correlation_id, "e": event_type, "p": dumps(payload), "d": night.score_date},
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


def recent_nights(
    conn: Connection,
    limit: int,
    *,
    score_date: dt.date | None = None,
    market_group: str | None = None,
) -> list[Night]:
    """The latest scoring nights, newest date first: every group's unless `market_group`, only
    `score_date`'s when given."""
    runs = t.overnight_job_runs
    query = sa.select(runs).where(runs.c.job_type == SCORING)
    if score_date is not None:
        query = query.where(runs.c.score_date == score_date)
    if market_group is not None:
        query = query.where(runs.c.market_group == market_group)
    query = query.order_by(runs.c.score_date.desc(), runs.c.market_group).limit(limit)
    return [_night(row) for row in conn.execute(query)]


def has_a_night(conn: Connection, score_date: dt.date) -> bool:
    """Whether any market group's scoring night of the date was ever started."""
    query = sa.select(sa.literal(1)).where(
        t.overnight_job_runs.c.job_type == SCORING,
        t.overnight_job_runs.c.score_date == score_date,
    )
    return conn.execute(query.limit(1)).first() is not None


def ensure_night(
    conn: Connection, score_date: dt.date, job_type: str, group: str
) -> tuple[Night, bool]:
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


def update_night(conn: Connection, night: Night, **values: Any) -> None:
    """Set columns of the night's row (locked by the caller)."""
    conn.execute(
        t.overnight_job_runs.update().where(t.overnight_job_runs.c.id == night.id).values(**values)
    )


def merge_metrics(
    conn: Connection,
    score_date: dt.date,
    metrics: dict[str, Any],
    *,
    job_type: str = SCORING,
    market_group: str = ALL_MARKETS,
    without: Sequence[str] = (),
) -> None:
    """Merge figures (fetch timings, staleness, …) into the night's `metrics` (if it exists),
    the keys `without` removed."""
    conn.execute(
        sa.text(
            "UPDATE overnight_job_runs SET metrics = (coalesce(metrics, '{}'::jsonb) "
            "- CAST(:w AS text[])) || CAST(:m AS jsonb) "
            "WHERE job_type = :jt AND score_date = :d AND market_group = :g"
        ),
        {
            "m": dumps(metrics),
            "w": list(without),
            "jt": job_type,
            "d": score_date,
            "g": market_group,
        },
    )


def job_started(conn: Connection, night: Night) -> None:
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


def job_completed(
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
