"""Persisting one batch partition: scores, history, events and the batch outcome in one transaction.

The transaction first takes an advisory lock on (score date, market group, batch), so two
materialisations of the same batch serialise instead of interleaving; current scores are replaced
per user and history per (user, date), never duplicated. The night's metric values go first, in
their own short transaction, and the rows name the revision of them they show. `persist_batch`
is the whole write, as the scores IO manager does it.
"""

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from scoring_pipeline.engine.batch import BatchOutput, gc_paused
from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store.batch_rows import (
    EVENT_COLUMNS,
    HISTORY_COLUMNS,
    SCORE_COLUMNS,
    PreparedBatch,
    prepare_batch,
)
from scoring_pipeline.store.copy import copy_text
from scoring_pipeline.store.market_scope import markets_param, symbol_in_group
from scoring_pipeline.store.metric_values import store_metric_values, write_metric_values
from scoring_pipeline.store.month_partitions import month_partition
from scoring_pipeline.store.night.model import BatchOutcome, NightStatus
from scoring_pipeline.store.night.outcomes import record_batch_outcome
from scoring_pipeline.store.night.root_span import emit_root_span
from scoring_pipeline.store.payload_compression import copy_events
from scoring_pipeline.store.planner import by_index
from scoring_pipeline.store.write_timer import WriteTimer


@dataclass(frozen=True, slots=True)
class WrittenRows:
    """What `write_batch` stored, and the statuses it recorded."""

    asset_scores: int
    score_history: int
    calculation_events: int
    batch_status: str
    night_status: NightStatus | None  # None: the batch's date has no night


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """What persisting a batch did, with how long it took (the asset's output metadata)."""

    rows: WrittenRows
    metric_values: int
    write_ms: int  # the serialisation's time is in the batch's timings (`serialize_ms`)


def _lock_batch(conn: Connection, output: BatchOutput) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('scores:' || :k))"),
        {"k": f"{output.score_date.isoformat()}|{output.market_group}|{output.batch_key}"},
    )


# A market group replaces only the scores of its own markets' instruments: groups score disjoint
# markets on the same date, and one group's night must never delete another's rows (SPEC §6).
_OF_GROUP = " AND " + symbol_in_group()


def _replace_current_scores(
    conn: Connection,
    output: BatchOutput,
    prepared: PreparedBatch,
    users: list[str],
    timer: WriteTimer,
) -> int:
    """Make these scores the users' current ones, unless a later date already scored them."""
    with by_index(conn):  # both statements reach the batch's users' rows by their key
        with timer.part("newer"):
            newer = set(
                conn.execute(
                    sa.text(
                        "SELECT DISTINCT user_id::text FROM asset_scores "
                        "WHERE user_id = ANY(CAST(:u AS uuid[])) AND score_date > :d" + _OF_GROUP
                    ),
                    {"u": users, "d": output.score_date, "m": markets_param(output.markets)},
                ).scalars()
            )
        current = [u for u in users if u not in newer]
        if current:
            with timer.part("delete_scores"):
                conn.execute(
                    sa.text(
                        "DELETE FROM asset_scores WHERE user_id = ANY(CAST(:u AS uuid[]))"
                        + _OF_GROUP
                    ),
                    {"u": current, "m": markets_param(output.markets)},
                )
    if not current:
        return 0
    with timer.part("copy_scores"):
        return copy_text(
            conn,
            "asset_scores",
            SCORE_COLUMNS,
            (line for u in current for line in prepared.scores_by_user.get(u, [])),
        )


def _replace_history(
    conn: Connection,
    output: BatchOutput,
    prepared: PreparedBatch,
    users: list[str],
    timer: WriteTimer,
) -> int:
    with timer.part("delete_history"):
        conn.execute(
            sa.text(
                "DELETE FROM score_history WHERE score_date = :d "
                "AND user_id = ANY(CAST(:u AS uuid[]))" + _OF_GROUP
            ),
            {"d": output.score_date, "u": users, "m": markets_param(output.markets)},
        )
    return copy_history(conn, output.score_date, users, prepared.history, timer)


def copy_history(
    conn: Connection,
    score_date: dt.date,
    users: list[str],
    lines: Iterable[str],
    timer: WriteTimer | None = None,
) -> int:
    """COPY `users`' history lines of `score_date` (COPY text, `HISTORY_COLUMNS`), then check
    their (user, date)s hold no symbol twice, in the caller's transaction.

    The lines go into the date's month partition when it is one of ours: through the parent,
    COPY inserts row by row (the key trigger's transition table rules out its multi-row inserts
    on a partitioned table); into the partition, in batches, and the keys are checked after by
    the trigger's own function (migration 0010). Otherwise through the parent and its trigger."""
    timer = timer or WriteTimer()
    with timer.part("copy_history"):
        month = month_partition(conn, "score_history", score_date)
        count = copy_text(conn, month or "score_history", HISTORY_COLUMNS, lines)
    if month is not None:
        with timer.part("check_history"):
            conn.execute(
                sa.text("SELECT score_history_check_keys(CAST(:u AS uuid[]), CAST(:d AS date[]))"),
                {"u": users, "d": [score_date] * len(users)},
            )
    return count


def failed_user_entries(output: BatchOutput) -> list[dict[str, Any]]:
    return [
        {"userId": u.user_id, "stage": u.stage, "error": u.error, "correlationId": u.correlation_id}
        for u in output.failed
    ]


def batch_outcome(output: BatchOutput, run_id: str | None) -> BatchOutcome:
    """The batch's outcome, as the night's lifecycle records it."""
    return BatchOutcome(
        score_date=output.score_date,
        batch_key=output.batch_key,
        users_total=len(output.users) + len(output.users_skipped),
        users_success=len(output.succeeded),
        users_failed=len(output.failed),
        users_skipped=len(output.users_skipped),
        assets_scored=output.assets_scored,
        duration_ms=output.duration_ms,
        failed_users=failed_user_entries(output),
        succeeded_users=[
            {"userId": u.user_id, "correlationId": u.correlation_id} for u in output.succeeded
        ],
        run_id=run_id,
        timings=dict(output.timings),
        market_group=output.market_group,
    )


def write_batch(
    conn: Connection,
    output: BatchOutput,
    *,
    run_id: str | None,
    prepared: PreparedBatch | None = None,
    timer: WriteTimer | None = None,
) -> WrittenRows:
    """Write the batch in the caller's transaction; returns row counts and the statuses.
    `prepared`: the rows as `persist_batch` serialised them after storing the metric values
    they name; without it, the metric values are stored in this transaction first. `timer` gets
    the time of each part (lock, deletes, COPYs, outcome)."""
    if prepared is None:
        prepared = prepare_batch(output, write_metric_values(conn, output).revisions)
    timer = timer or WriteTimer()
    # A batch with no user of the group still records its (empty) outcome: the asset refuses
    # batches of no night before it scores, and the night closes when every batch has one.
    with timer.part("lock"):
        _lock_batch(conn, output)
    users = [u.user_id for u in output.succeeded]
    scores = history = 0
    if users:
        scores = _replace_current_scores(conn, output, prepared, users, timer)
        history = _replace_history(conn, output, prepared, users, timer)
    with timer.part("copy_events"):
        events = copy_events(
            conn,
            "calculation_events",
            EVENT_COLUMNS,
            prepared.captured_events,
            prepared.computed_events,
        )
    outcome = batch_outcome(output, run_id)
    with timer.part("outcome"):
        night = record_batch_outcome(conn, outcome)
    return WrittenRows(scores, history, events, outcome.status, night)


def persist_batch(engine: Engine, output: BatchOutput, *, run_id: str | None) -> BatchWrite:
    """Store the night's metric values, serialise the batch (its rows name the values'
    revisions), write it in one transaction, then record the write's timings; a night this
    batch closed gets its root span after commit."""
    timer = WriteTimer()
    started = time.perf_counter()
    with timer.part("metric_values"):
        metric_values = store_metric_values(engine, output)
    values_s = time.perf_counter() - started
    started = time.perf_counter()
    with gc_paused():
        prepared = prepare_batch(output, metric_values.revisions)
    output.timings["serialize_ms"] = int((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    with engine.connect() as conn:
        with timer.part("begin"):
            transaction = conn.begin()
        raw = conn.connection.driver_connection
        backend_pid = raw.info.backend_pid if raw is not None else None
        try:
            rows = write_batch(conn, output, run_id=run_id, prepared=prepared, timer=timer)
        except BaseException:
            _roll_back(engine, conn, backend_pid, transaction)
            raise
        with timer.part("commit"):
            transaction.commit()
    # The write's time: the metric values and the batch's transaction (not the serialising).
    write_ms = int((values_s + time.perf_counter() - started) * 1000)
    # Known only after the commit, so added to the outcome row in a short transaction of its own.
    with engine.begin() as conn:
        _record_write_time(conn, output, write_ms, timer.timings())
    if rows.night_status not in (None, NightStatus.STARTED):
        emit_root_span(engine, output.score_date, market_group=output.market_group)
    return BatchWrite(rows, metric_values.written, write_ms)


def _roll_back(engine: Engine, conn: Connection, backend_pid: int | None, transaction: Any) -> None:
    """Roll the batch's transaction back. Interrupted in the middle of a statement (a run
    terminated while its write waits on a lock), the connection cannot, and SQLAlchemy drops
    it, but its server session goes on waiting, holding the batch's lock: that statement is
    cancelled on the server (by the session's pid, from another connection), so nothing of the
    batch commits and the lock is let go at once. The caller raises the original error."""
    try:
        transaction.rollback()
        if not conn.invalidated:
            return
    except BaseException:  # mid-statement: "another command is already in progress"
        pass
    if backend_pid is None:
        return
    try:
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": backend_pid})
    except BaseException:  # the server unreachable: the session ends with the connection
        pass
    if not conn.invalidated:
        conn.invalidate()


def _record_write_time(
    conn: Connection, output: BatchOutput, write_ms: int, parts: dict[str, int] | None = None
) -> None:
    """Add the write's duration (commit included) and its parts' to the batch's timings."""
    conn.execute(
        sa.text(
            "UPDATE scoring_batch_results SET timings = timings || "
            "jsonb_build_object('write_ms', CAST(:w AS integer)) || CAST(:p AS jsonb) "
            "WHERE score_date = :d AND market_group = :g AND batch_key = :b"
        ),
        {
            "w": write_ms,
            "p": dumps(parts or {}),
            "d": output.score_date,
            "g": output.market_group,
            "b": output.batch_key,
        },
    )
