"""What the night's work costs without the pipeline around it, measured after the night on its
output: a raw PostgreSQL COPY of the same output rows (the floor of the write), and the scoring
engine alone on one batch's inputs.
"""

import datetime as dt
import io
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

COPY_TABLES = ("asset_scores", "score_history", "score_metric_values", "calculation_events")


def raw_copy_seconds(engine: Engine, wal: dict[str, int] | None = None) -> dict[str, float]:
    """COPY the night's output rows into empty look-alike tables; the floor of the write.
    `wal` gets the WAL bytes those COPYs wrote, by table."""
    seconds: dict[str, float] = {}
    for table in COPY_TABLES:
        buffer = io.BytesIO()
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            query = f"COPY (SELECT * FROM {table}) TO STDOUT"  # partitioned tables too
            with raw.cursor() as cur, cur.copy(query) as copy:
                for chunk in copy:
                    buffer.write(chunk)
            conn.execute(sa.text(f"CREATE TABLE bench_copy_{table} (LIKE {table} INCLUDING ALL)"))
            conn.commit()
        data = buffer.getvalue()
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            lsn = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')"
            lsn_before = conn.execute(sa.text(lsn)).scalar_one()
            conn.commit()
            started = time.perf_counter()
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
