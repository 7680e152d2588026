"""What the night's work costs without the pipeline around it, measured after the night on its
output: a raw PostgreSQL COPY of the same output rows (the floor of the write), and the scoring
engine alone on one batch's inputs.
"""

import datetime as dt
import io
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.store.payload_compression import (
    CAPTURED_EVENTS,
    DEFAULT_METHOD,
    compress_with,
    inputs_method,
)

COPY_TABLES = ("asset_scores", "score_history", "score_metric_values", "calculation_events")


def _copy_parts(table: str, captured_method: str) -> list[tuple[str, str | None]]:
    """What to COPY of a table and with which payload compression (None: the session's), as
    the write stores it: the events' CALC_STARTED and INPUTS_CAPTURED with the inputs' method,
    the rest with pglz (`store/payload_compression`)."""
    if table != "calculation_events":
        return [(f"SELECT * FROM {table}", None)]  # a query: partitioned tables too
    captured = ", ".join(f"'{t}'" for t in CAPTURED_EVENTS)
    return [
        (f"SELECT * FROM {table} WHERE event_type IN ({captured}) ORDER BY id", captured_method),
        (
            f"SELECT * FROM {table} WHERE event_type NOT IN ({captured}) ORDER BY id",
            DEFAULT_METHOD,
        ),
    ]


def raw_copy_seconds(engine: Engine, wal: dict[str, int] | None = None) -> dict[str, float]:
    """COPY the night's output rows into empty look-alike tables; the floor of the write.
    `wal` gets the WAL bytes those COPYs wrote, by table."""
    seconds: dict[str, float] = {}
    for table in COPY_TABLES:
        parts: list[tuple[bytes, str | None]] = []
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            for query, method in _copy_parts(table, inputs_method(conn)):
                buffer = io.BytesIO()
                with raw.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT") as copy:
                    for chunk in copy:
                        buffer.write(chunk)
                parts.append((buffer.getvalue(), method))
            conn.execute(sa.text(f"CREATE TABLE bench_copy_{table} (LIKE {table} INCLUDING ALL)"))
            conn.commit()
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            lsn = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')"
            lsn_before = conn.execute(sa.text(lsn)).scalar_one()
            conn.commit()
            started = time.perf_counter()
            for data, method in parts:
                if method is not None:
                    compress_with(conn, method)
                with raw.cursor() as cur, cur.copy(f"COPY bench_copy_{table} FROM STDIN") as copy:
                    for start in range(0, len(data), 1 << 20):
                        copy.write(data[start : start + (1 << 20)])
            # The driver's own commit: the COPY went around SQLAlchemy, whose commit() would be
            # a no-op here (the floor then left its commit, the WAL flush, out of its time).
            raw.commit()
            seconds[table] = time.perf_counter() - started
            if wal is not None:
                wal[table] = int(conn.execute(sa.text(lsn)).scalar_one() - lsn_before)
                conn.commit()
            conn.execute(sa.text(f"DROP TABLE bench_copy_{table}"))
            conn.commit()
    return seconds


def engine_alone(engine: Engine, score_date: dt.date, batch: str = "b0000") -> float:
    """Rule evaluations per second of the engine on one batch's inputs, nothing else running:
    best of 5, each with a fresh batch cache (as a batch run starts)."""
    from scoring_pipeline.engine.columns import MetricsCache
    from scoring_pipeline.engine.payloads import universe_key
    from scoring_pipeline.engine.scoring import score_criteria_set
    from scoring_pipeline.store.batch_inputs import load_batch_inputs

    with engine.connect() as conn:
        inputs = load_batch_inputs(conn, score_date, batch)
    usd_rates = inputs.usd_rates
    work = []
    for user in inputs.users:
        for c in inputs.criteria.get(user.user_id, []):
            cs = c.parse()
            work.append((cs, inputs.universes.get(universe_key(cs), []), user.base_currency))
    evaluations = sum(len(cs.rules) * len(universe) for cs, universe, _ in work)
    best = float("inf")
    for _ in range(5):
        cache = MetricsCache()
        started = time.perf_counter()
        for cs, universe, base in work:
            score_criteria_set(
                cs, universe, base_currency=base, usd_rates=usd_rates, metrics_cache=cache
            )
        best = min(best, time.perf_counter() - started)
    return evaluations / best if best > 0 else 0.0
