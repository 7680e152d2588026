"""The night's metric values (`score_metric_values`, SPEC §4 storage form): per score date,
symbol and base currency, the exact metric texts every breakdown of that night shows, in
revisions that are never changed (a score names the one it was computed with)."""

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store.month_partitions import month_partition_storage

Pair = tuple[str, str]  # (symbol, base currency)


@dataclass(frozen=True, slots=True)
class StoredValues:
    """What storing a batch's metric values did: the rows it inserted, and the revision whose
    values each of the batch's pairs shows (what its scores' `values_revision` names)."""

    written: int
    revisions: dict[Pair, int]


# (database, score date) -> the storage (filenode) of the date's month partition of
# score_metric_values when this process last looked, and (symbol, base currency) -> the values
# text this process stored or found stored there, and their revision. Only a shortcut: a pair
# missing here is sent to the server, which finds or adds its revision.
_KNOWN: dict[tuple[str, dt.date], tuple[int, dict[Pair, tuple[str, int]]]] = {}
KNOWN_DATES_KEPT = 8


def store_metric_values(engine: Engine, output: BatchOutput) -> StoredValues:
    """`write_metric_values` in a short transaction of its own, sending only the pairs whose
    values this process has not already seen stored for the date (each batch of a night shows
    mostly the same ~2,400 pairs; sending them all again cost ~30 ms of server time a batch).

    Stored rows are only ever removed with their whole month partition (`prune`, a truncation),
    which gives the month new storage: what this process knew of a date holds while the month
    partition's filenode is the one it saw (looking that up costs a catalog read, where checking
    every pair it would skip took ~7 ms of a batch's write). A date outside the month partitions
    (a schema made by hand) is never remembered: every pair is sent."""
    day = output.score_date
    key = (engine.url.render_as_string(hide_password=True), day)
    with engine.begin() as conn:
        storage = month_partition_storage(conn, "score_metric_values", day)
        seen = _KNOWN.get(key)
        if storage is not None and seen is not None and seen[0] == storage:
            known = seen[1]
        else:  # new to this process, its month made anew, or no month partition to watch
            known = {}
            if storage is not None:
                if key not in _KNOWN and len(_KNOWN) >= KNOWN_DATES_KEPT:
                    _KNOWN.clear()
                _KNOWN[key] = (storage, known)
        revisions = {
            pair: found[1]
            for pair, values in output.metric_values.items()
            if (found := known.get(pair)) is not None and found[0] == values
        }
        pending = {
            pair: values for pair, values in output.metric_values.items() if pair not in revisions
        }
        stored = write_metric_values(conn, output, pending)
    known.update((pair, (pending[pair], r)) for pair, r in stored.revisions.items())  # committed
    return StoredValues(stored.written, {**revisions, **stored.revisions})


def write_metric_values(
    conn: Connection, output: BatchOutput, values: dict[Pair, str] | None = None
) -> StoredValues:
    """Store the night's metric texts the batch's scores show (SPEC §4 storage form), in the
    caller's transaction, before the batch's rows are written (they name the revisions).

    Stored rows are never changed: a pair whose values equal a stored revision's (as JSON, key
    order aside) takes that revision; a pair with no revision, or with differing values (a
    refreshed snapshot, fundamentals changed before a retry), gets its next one. So a score
    that is not re-scored keeps showing the values it was computed with. Writers of a date take
    turns on an advisory lock so two of them never number the same revision twice; the lock is
    taken only when there is something to send, which after a process's first batch of a night
    is seldom. `values` (default: all the batch's) are the pairs to send."""
    values = output.metric_values if values is None else values
    if not values:
        return StoredValues(0, {})
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('score_metric_values:' || :d))"),
        {"d": output.score_date.isoformat()},
    )
    # One JSON array of [symbol, base, values] sent as a single text: a text[] parameter of
    # the same ~1 MB (every JSON quote escaped for the array literal) took psycopg 10 times
    # longer to build than the server takes to parse this.
    rows = ",".join(
        f"[{dumps(symbol)},{dumps(base)},{values[(symbol, base)]}]"
        for symbol, base in sorted(values)
    )
    result = conn.execute(
        sa.text(
            "WITH k AS (SELECT e->>0 AS s, CAST(e->>1 AS char(3)) AS b, e->2 AS v "
            "FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e), "
            "found AS (SELECT k.s, k.b, max(m.revision) AS r FROM k JOIN score_metric_values m "
            "ON m.score_date = :d AND m.symbol = k.s AND m.base_currency = k.b "
            "AND m.metric_values = k.v GROUP BY k.s, k.b), "
            "added AS (INSERT INTO score_metric_values "
            "(score_date, symbol, base_currency, revision, metric_values) "
            "SELECT :d, k.s, k.b, 1 + coalesce((SELECT max(m.revision) FROM score_metric_values m "
            "WHERE m.score_date = :d AND m.symbol = k.s AND m.base_currency = k.b), 0), k.v "
            "FROM k WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.s = k.s AND f.b = k.b) "
            "RETURNING symbol, base_currency, revision) "
            "SELECT s, b, r, false AS added FROM found "
            "UNION ALL SELECT symbol, base_currency, revision, true FROM added"
        ),
        {"d": output.score_date, "rows": f"[{rows}]"},
    ).all()
    return StoredValues(
        sum(1 for r in result if r.added), {(r.s, r.b.strip()): int(r.r) for r in result}
    )
