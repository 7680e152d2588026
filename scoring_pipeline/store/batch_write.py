"""Persisting one batch partition: scores, history, events and the batch outcome in one transaction.

Bulk rows go through COPY (SPEC §10: several times faster than executemany). The transaction
first takes an advisory lock on (score date, batch), so two materialisations of the same batch
serialise instead of interleaving; history is replaced per (user, date), never duplicated.
"""

import datetime as dt
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store.batch_scoring import BatchOutput, dumps, plain
from scoring_pipeline.store.night.model import BatchOutcome
from scoring_pipeline.store.night.outcomes import record_batch_outcome


def copy_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """COPY rows into `table` on the connection's own transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None
    count = 0
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)
            count += 1
    return count


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_field(value: Any) -> str:
    """One field in COPY's text format (NULL is \\N; backslash, tab and newlines escaped)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        # Searching is far cheaper than translating, and most text has nothing to escape.
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.translate(_COPY_ESCAPES)
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.date):  # dates and datetimes
        return value.isoformat()
    return str(value)


@dataclass
class WriteTimer:
    """Seconds spent in each part of a batch's write, summed per part: the benchmark shows
    where the write's time goes beyond the COPYs themselves."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

    def timings(self) -> dict[str, int]:
        """`write_<part>_ms` per part, as the batch's timings record them."""
        return {f"write_{name}_ms": round(s * 1000) for name, s in self.seconds.items()}


@dataclass
class PreparedBatch:
    """The batch's COPY text, built before the write transaction opens (no locks held)."""

    scores_by_user: dict[str, list[str]]
    history: list[str]
    events: list[str]
    rows: int


def prepare_batch(output: BatchOutput) -> PreparedBatch:
    """Serialise every row once, in COPY's text format."""
    date = output.score_date.isoformat()
    at = output.calculated_at.isoformat()
    scores_by_user: dict[str, list[str]] = {}
    history: list[str] = []
    for user in output.succeeded:
        lines = scores_by_user[user.user_id] = []
        prefix = f"{user.user_id}\t"
        suffix = f"\t{user.correlation_id}\t{at}\t"
        base = f"\t{user.base_currency}\n"
        for s in user.scores:
            symbol = copy_field(s.symbol)
            score = format(s.score, "f")
            lines.append(
                f"{prefix}{symbol}\t{s.criteria_version_id}\t{score}\t"
                f"{format(s.max_possible_score, 'f')}\t{copy_field(s.percentage)}\t"
                f"{date}{suffix}{s.outcomes}{base}"
            )
            history.append(
                f"{prefix}{symbol}\t{date}\t{s.criteria_version_id}\t{score}{suffix}"
                f"{s.outcomes}{base}"
            )
    events = [
        f"{u.correlation_id}\t{u.user_id}\t{event_type}\t"
        f"{copy_field(payload if isinstance(payload, str) else dumps(payload))}\t{at}\t{date}\n"
        for u in output.users
        for event_type, payload in u.events
    ]
    return PreparedBatch(scores_by_user, history, events, len(history))


def copy_text(conn: Connection, table: str, columns: Sequence[str], lines: Iterable[str]) -> int:
    """COPY pre-formatted text lines into `table`, in 1 MiB chunks, on the open transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None
    count = 0
    chunk: list[str] = []
    size = 0
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for line in lines:
            chunk.append(line)
            size += len(line)
            count += 1
            if size >= 1 << 20:
                cp.write("".join(chunk).encode())
                chunk, size = [], 0
        if chunk:
            cp.write("".join(chunk).encode())
    return count


_SCORE_COLUMNS = (
    "user_id",
    "symbol",
    "criteria_version_id",
    "score",
    "max_possible_score",
    "percentage",
    "score_date",
    "correlation_id",
    "calculated_at",
    "outcomes",
    "base_currency",
)
_HISTORY_COLUMNS = (
    "user_id",
    "symbol",
    "score_date",
    "criteria_version_id",
    "score",
    "correlation_id",
    "calculated_at",
    "outcomes",
    "base_currency",
)
_EVENT_COLUMNS = (
    "correlation_id",
    "user_id",
    "event_type",
    "payload",
    "created_at",
    "score_date",
)


def write_metric_values(conn: Connection, output: BatchOutput) -> int:
    """Store the night's metric texts the batch's scores show (SPEC §4 storage form), in the
    caller's short transaction before the batch's own: they are facts of the date's frozen
    inputs, the same whichever batch writes them, so batches never wait on each other's write.
    A refreshed snapshot changes them, hence the update of a differing row.

    Every batch of a night shows mostly the same (symbol, base currency) pairs, so the rows
    already stored with the same values are filtered out by a plain read first: an
    `ON CONFLICT DO UPDATE` locks (writes) every conflicting row even when its WHERE leaves it
    unchanged, which made each batch rewrite the night's rows and queue behind the other
    worker's. Returns the number of rows inserted or updated."""
    if not output.metric_values:
        return 0
    # One JSON array of [symbol, base, values] sent as a single text: a text[] parameter of
    # the same ~1 MB (every JSON quote escaped for the array literal) took psycopg 10 times
    # longer to build than the server takes to parse this.
    rows = ",".join(
        f"[{dumps(symbol)},{dumps(base)},{output.metric_values[(symbol, base)]}]"
        for symbol, base in sorted(output.metric_values)
    )
    written = conn.execute(
        sa.text(
            "INSERT INTO score_metric_values (score_date, symbol, base_currency, metric_values) "
            "SELECT :d, k.s, k.b, k.v FROM (SELECT e->>0 AS s, CAST(e->>1 AS char(3)) AS b, "
            "e->2 AS v FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e) AS k "
            "WHERE NOT EXISTS (SELECT 1 FROM score_metric_values m "
            "WHERE m.score_date = :d AND m.symbol = k.s AND m.base_currency = k.b "
            "AND m.metric_values = k.v) "
            "ON CONFLICT (score_date, symbol, base_currency) DO UPDATE "
            "SET metric_values = EXCLUDED.metric_values "
            "WHERE score_metric_values.metric_values <> EXCLUDED.metric_values"
        ),
        {"d": output.score_date, "rows": f"[{rows}]"},
    )
    return int(written.rowcount)


def _lock_batch(conn: Connection, output: BatchOutput) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('scores:' || :k))"),
        {"k": f"{output.score_date.isoformat()}|{output.market_group}|{output.batch_key}"},
    )


# A market group replaces only the scores of its own markets' instruments: groups score disjoint
# markets on the same date, and one group's night must never delete another's rows (SPEC §6).
_OF_GROUP = (
    " AND (CAST(:m AS text[]) IS NULL OR symbol IN (SELECT i.symbol FROM instruments i "
    "WHERE i.market = ANY(CAST(:m AS text[]))))"
)


def _markets(output: BatchOutput) -> list[str] | None:
    return list(output.markets) if output.markets is not None else None


def _replace_current_scores(
    conn: Connection,
    output: BatchOutput,
    prepared: PreparedBatch,
    users: list[str],
    timer: WriteTimer,
) -> int:
    """Make these scores the users' current ones, unless a later date already scored them."""
    with timer.part("newer"):
        newer = set(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT user_id::text FROM asset_scores "
                    "WHERE user_id = ANY(CAST(:u AS uuid[])) AND score_date > :d" + _OF_GROUP
                ),
                {"u": users, "d": output.score_date, "m": _markets(output)},
            ).scalars()
        )
    current = [u for u in users if u not in newer]
    if not current:
        return 0
    with timer.part("delete_scores"):
        conn.execute(
            sa.text("DELETE FROM asset_scores WHERE user_id = ANY(CAST(:u AS uuid[]))" + _OF_GROUP),
            {"u": current, "m": _markets(output)},
        )
    with timer.part("copy_scores"):
        return copy_text(
            conn,
            "asset_scores",
            _SCORE_COLUMNS,
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
            {"d": output.score_date, "u": users, "m": _markets(output)},
        )
    with timer.part("copy_history"):
        return copy_text(conn, "score_history", _HISTORY_COLUMNS, prepared.history)


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
) -> dict[str, Any]:
    """Write the batch in the caller's transaction; returns row counts and the statuses.
    `timer` gets the time of each part (lock, deletes, COPYs, outcome)."""
    prepared = prepared or prepare_batch(output)
    timer = timer or WriteTimer()
    # A batch with no user of the group still records its (empty) outcome: the asset refuses
    # batches of no night before it scores, and the night closes when every batch has one.
    with timer.part("lock"):
        _lock_batch(conn, output)
    users = [u.user_id for u in output.succeeded]
    counts: dict[str, Any] = {"asset_scores": 0, "score_history": 0}
    if users:
        counts["asset_scores"] = _replace_current_scores(conn, output, prepared, users, timer)
        counts["score_history"] = _replace_history(conn, output, prepared, users, timer)
    with timer.part("copy_events"):
        counts["calculation_events"] = copy_text(
            conn, "calculation_events", _EVENT_COLUMNS, prepared.events
        )
    outcome = batch_outcome(output, run_id)
    counts["batch_status"] = outcome.status
    with timer.part("outcome"):
        counts["job_status"] = record_batch_outcome(conn, outcome)
    return counts


def record_write_time(
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


__all__ = ["dumps", "copy_rows", "write_batch", "failed_user_entries", "plain"]
