"""The night's metric values (`score_metric_values`, SPEC §4 storage form): per score date,
symbol and base currency, the exact metric texts every breakdown of that night shows."""

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.engine.json_text import dumps

# score date -> (symbol, base currency) -> the values text this process stored or found stored.
# Only a shortcut: a pair missing here is sent to the server, which applies the rule below.
_KNOWN: dict[dt.date, dict[tuple[str, str], str]] = {}
KNOWN_DATES_KEPT = 8


def store_metric_values(engine: Engine, output: BatchOutput) -> int:
    """`write_metric_values` in a short transaction of its own, sending only the pairs whose
    values this process has not already seen stored for the date (each batch of a night shows
    mostly the same ~2,400 pairs; sending them all again cost ~30 ms of server time a batch).

    The pairs it would skip are looked up first (their keys only): if any is gone (its month
    was pruned since), what this process knew of the date is forgotten and every pair is sent.
    Returns the number of rows inserted or updated."""
    day = output.score_date
    if day not in _KNOWN and len(_KNOWN) >= KNOWN_DATES_KEPT:
        _KNOWN.clear()
    known = _KNOWN.setdefault(day, {})
    skipped = [pair for pair, values in output.metric_values.items() if known.get(pair) == values]
    with engine.begin() as conn:
        if skipped and _stored_count(conn, day, skipped) < len(skipped):
            known.clear()
            skipped = []
        pending = {
            pair: values
            for pair, values in output.metric_values.items()
            if known.get(pair) != values
        }
        written = write_metric_values(conn, output, pending)
    known.update(pending)  # committed
    return written


def _stored_count(conn: Connection, day: dt.date, pairs: list[tuple[str, str]]) -> int:
    # The pairs as one JSON text: two text[] parameters of ~2,400 items each cost psycopg ~3 ms
    # of Python a batch to build, and the server twice as long as this to read.
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM jsonb_array_elements(CAST(:pairs AS jsonb)) AS k "
                "JOIN score_metric_values m ON m.score_date = :d AND m.symbol = k->>0 "
                "AND m.base_currency = CAST(k->>1 AS char(3))"
            ),
            {"d": day, "pairs": dumps(pairs)},
        ).scalar_one()
    )


def write_metric_values(
    conn: Connection, output: BatchOutput, values: dict[tuple[str, str], str] | None = None
) -> int:
    """Store the night's metric texts the batch's scores show (SPEC §4 storage form), in the
    caller's short transaction before the batch's own: they are facts of the date's frozen
    inputs, the same whichever batch writes them, so batches never wait on each other's write.
    A refreshed snapshot changes them, hence the update of a differing row.

    Every batch of a night shows mostly the same (symbol, base currency) pairs, so the rows
    already stored with the same values are filtered out by a plain read first: an
    `ON CONFLICT DO UPDATE` locks (writes) every conflicting row even when its WHERE leaves it
    unchanged, which made each batch rewrite the night's rows and queue behind the other
    worker's. `values` (default: all the batch's) are the pairs to send. Returns the number of
    rows inserted or updated."""
    values = output.metric_values if values is None else values
    if not values:
        return 0
    # One JSON array of [symbol, base, values] sent as a single text: a text[] parameter of
    # the same ~1 MB (every JSON quote escaped for the array literal) took psycopg 10 times
    # longer to build than the server takes to parse this.
    rows = ",".join(
        f"[{dumps(symbol)},{dumps(base)},{values[(symbol, base)]}]"
        for symbol, base in sorted(values)
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
