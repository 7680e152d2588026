"""`by_index`: a batch's statements on a large, never-analyzed table read it through its
primary key (PostgreSQL 15 scanned the whole table instead, per batch), and the transaction's
planner settings are back as they were afterwards."""

import uuid

import pytest
import sqlalchemy as sa

from scoring_pipeline.store.planner import by_index

pytestmark = pytest.mark.db

USERS = 50


def _plan(conn, users):
    return "\n".join(
        conn.execute(
            sa.text(
                "EXPLAIN SELECT DISTINCT user_id FROM grown WHERE user_id = ANY(CAST(:u AS uuid[]))"
                " AND score_date > current_date"
            ),
            {"u": users},
        ).scalars()
    )


def _settings(conn):
    return conn.execute(
        sa.text(
            "SELECT current_setting('enable_seqscan'), current_setting('jit'), "
            "current_setting('max_parallel_workers_per_gather')"
        )
    ).one()


def test_a_batch_reads_a_grown_table_through_its_key(engine):
    with engine.connect() as conn, conn.begin():
        # A table grown from empty within the transaction, never analyzed: as a first night's
        # asset_scores is before autovacuum reaches it.
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE grown (user_id uuid, symbol text, score_date date, "
                "PRIMARY KEY (user_id, symbol)) ON COMMIT DROP"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO grown SELECT md5('u' || u)::uuid, 'S' || s, current_date "
                "FROM generate_series(1, 2000) u, generate_series(1, 100) s"
            )
        )
        users = [str(uuid.uuid4()) for _ in range(USERS)]
        # How far from the table's real size the planner's guess is depends on the server and
        # the table; here it is made to prefer the scan outright, as PostgreSQL 15 did mid-night.
        conn.execute(sa.text("SET LOCAL random_page_cost = 10000"))
        assert "Seq Scan on grown" in _plan(conn, users)
        before = _settings(conn)
        with by_index(conn):
            plan = _plan(conn, users)
            assert "grown_pkey" in plan and "Seq Scan" not in plan, plan
            assert _settings(conn) == ("off", "off", "0")
        assert _settings(conn) == before
