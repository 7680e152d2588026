"""What the night's work costs without the pipeline around it, measured after the night on its
output: a raw PostgreSQL COPY of the same output rows (the floor of the write), and the scoring
engine alone on one batch's inputs.
"""

import datetime as dt
import io
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

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


def _copy_out(raw: Any, query: sql.Composable) -> bytes:
    """The rows of `query` in COPY's text format, on the driver connection `raw`."""
    buffer = io.BytesIO()
    with raw.cursor() as cur, cur.copy(sql.SQL("COPY ({q}) TO STDOUT").format(q=query)) as cp:
        for chunk in cp:
            buffer.write(chunk)
    return buffer.getvalue()


def _copy_in(raw: Any, table: str, data: bytes) -> int:
    """COPY `data` (COPY text) into `table` in 1 MiB writes on the open transaction of `raw`;
    the rows COPYed."""
    with raw.cursor() as cur:
        with cur.copy(f"COPY {table} FROM STDIN") as cp:
            for start in range(0, len(data), 1 << 20):
                cp.write(data[start : start + (1 << 20)])
        return int(cur.rowcount)


def _create_look_alike(conn: Connection, table: str) -> None:
    """An empty plain table `bench_copy_<table>` with the table's columns, indexes and
    constraints (a partitioned table's look-alike is not partitioned)."""
    conn.execute(sa.text(f"CREATE TABLE bench_copy_{table} (LIKE {table} INCLUDING ALL)"))


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
                parts.append((_copy_out(raw, sql.SQL(query)), method))
            _create_look_alike(conn, table)
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
                _copy_in(raw, f"bench_copy_{table}", data)
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


# The batches the concurrency figure COPYs: their rows are held in memory (~7 MB a batch of
# 50 users with the bench's universe), so it is a sample at the larger sizes.
CONCURRENCY_SAMPLE = 40


@dataclass(frozen=True, slots=True)
class ConcurrentCopy:
    """The same batches' rows COPYed batch by batch (one transaction each, as the write does),
    first by one connection, then spread over `connections` connections at once."""

    batches: int
    connections: int
    rows: int  # COPYed by each pass
    one_s: float  # summed over the batches
    together_s: float  # summed over the batches, as the write stage is

    @property
    def factor(self) -> float:
        return self.together_s / max(self.one_s, 1e-9)


def _batch_queries(
    score_date: dt.date, batch: str, captured_method: str
) -> list[tuple[str, sql.Composable, str | None]]:
    """(table, rows query, payload compression or None) of one batch's output, in the write's
    order: the write sets the compression for its events only."""
    users = sql.SQL(
        "user_id IN (SELECT user_id FROM scoring_batches "
        "WHERE score_date = {d} AND batch_key = {b})"
    ).format(d=sql.Literal(score_date), b=sql.Literal(batch))
    of_date = sql.SQL("score_date = {d} AND ").format(d=sql.Literal(score_date))
    captured = sql.SQL(", ").join(sql.Literal(t) for t in CAPTURED_EVENTS)
    events = sql.SQL(
        "SELECT * FROM calculation_events WHERE {w}{u} AND event_type {op} ({c}) ORDER BY id"
    )
    return [
        (
            "asset_scores",
            sql.SQL("SELECT * FROM asset_scores WHERE {w}{u}").format(w=of_date, u=users),
            None,
        ),
        (
            "score_history",
            sql.SQL("SELECT * FROM score_history WHERE {w}{u}").format(w=of_date, u=users),
            None,
        ),
        (
            "calculation_events",
            events.format(w=of_date, u=users, op=sql.SQL("IN"), c=captured),
            captured_method,
        ),
        (
            "calculation_events",
            events.format(w=of_date, u=users, op=sql.SQL("NOT IN"), c=captured),
            DEFAULT_METHOD,
        ),
    ]


def _dump_batches(
    engine: Engine, score_date: dt.date, batches: list[str]
) -> list[list[tuple[str, bytes, str | None]]]:
    out = []
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        captured_method = inputs_method(conn)
        for batch in batches:
            parts = []
            for table, query, method in _batch_queries(score_date, batch, captured_method):
                parts.append((table, _copy_out(raw, query), method))
            out.append(parts)
    return out


def _copy_batches(
    engine: Engine, batches: list[list[tuple[str, bytes, str | None]]], start: threading.Barrier
) -> tuple[float, int]:
    """COPY each batch's rows into the look-alike tables in a transaction of its own; the
    seconds summed over the batches (begin to commit), and the rows COPYed."""
    seconds = 0.0
    rows = 0
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        start.wait()
        for parts in batches:
            started = time.perf_counter()
            for table, data, method in parts:
                if method is not None:
                    compress_with(conn, method)
                rows += _copy_in(raw, f"bench_copy_{table}", data)
            raw.commit()  # the driver's: SQLAlchemy's may not know of a transaction yet
            conn.commit()
            seconds += time.perf_counter() - started
    return seconds, rows


def _look_alikes(engine: Engine, create: bool) -> None:
    with engine.begin() as conn:
        for table in ("asset_scores", "score_history", "calculation_events"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS bench_copy_{table}"))
            if create:
                _create_look_alike(conn, table)


def _together(
    engine: Engine, shares: list[list[list[tuple[str, bytes, str | None]]]]
) -> tuple[float, int]:
    """The shares COPYed at once, one connection each; the seconds summed over all batches,
    and the rows COPYed."""
    start = threading.Barrier(len(shares))
    done = [(0.0, 0)] * len(shares)
    errors: list[BaseException] = []

    def copy_share(i: int) -> None:
        try:
            done[i] = _copy_batches(engine, shares[i], start)
        except BaseException as error:  # reported by the caller's thread
            errors.append(error)  # before the others' BrokenBarrierError: the cause comes first
            start.abort()

    threads = [threading.Thread(target=copy_share, args=(i,)) for i in range(len(shares))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(s for s, _ in done), sum(r for _, r in done)


def concurrent_copy(engine: Engine, score_date: dt.date, connections: int) -> ConcurrentCopy | None:
    """What writing at once costs on this machine and server: up to `CONCURRENCY_SAMPLE` of the
    night's batches COPYed batch by batch by one connection, then the same batches spread over
    `connections` connections at once (as the night's run workers write), into fresh
    look-alike tables each time. The night's metric values are left out (a few rows a night).
    None when nothing was written at once: one connection, or fewer than two batches."""
    if connections < 2:
        return None
    with engine.connect() as conn:
        keys = list(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT batch_key FROM scoring_batches WHERE score_date = :d "
                    "ORDER BY batch_key LIMIT :n"
                ),
                {"d": score_date, "n": CONCURRENCY_SAMPLE},
            ).scalars()
        )
    if len(keys) < 2:
        return None
    batches = _dump_batches(engine, score_date, keys)
    connections = min(connections, len(batches))
    try:
        _look_alikes(engine, create=True)
        one, rows = _together(engine, [batches])
        _look_alikes(engine, create=True)
        together, rows_together = _together(
            engine, [batches[i::connections] for i in range(connections)]
        )
    finally:
        _look_alikes(engine, create=False)
    if rows_together != rows:
        raise RuntimeError(f"COPYed {rows_together:,} rows at once against {rows:,} alone")
    return ConcurrentCopy(len(batches), connections, rows, one, together)


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
