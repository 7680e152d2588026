"""Symbols come in their code points' order (Python's) whatever the database's collation: a
universe's instruments, and the ties of a dashboard's top assets. A server created with ICU or
a language's locale (`en_US.UTF-8`) would otherwise order `^IDX` before `AAPL`."""

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.store import db
from scoring_pipeline.store.batch_inputs import load_batch_inputs
from scoring_pipeline.store.dashboard_cache import _top_assets
from scoring_pipeline_tests import factories as f

pytestmark = pytest.mark.db

DATE = dt.date(2026, 11, 27)
SYMBOLS = ["^IDX", "PETR4.SA", "BRL=X", "AAPL", "PETR4"]


@pytest.fixture
def icu_engine(server_url: str) -> Iterator[Engine]:
    """A migrated database whose default collation is ICU's root locale."""
    try:
        url = db.create_database(
            server_url,
            "scoring_icu",
            "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C.UTF-8'",
        )
    except sa.exc.DBAPIError as exc:  # the embedded server's build has no ICU
        if "ICU is not supported" not in str(exc):
            raise
        pytest.skip("this PostgreSQL build has no ICU, so no collation but code points")
    engine = db.create_engine_for(url)
    try:
        db.migrate(engine)
        with engine.connect() as conn:  # the premise: this database's own order is not Python's
            order = conn.execute(
                sa.text("SELECT s FROM unnest(CAST(:s AS text[])) AS s ORDER BY s"), {"s": SYMBOLS}
            ).scalars()
            assert list(order) != sorted(SYMBOLS)
        yield engine
    finally:
        engine.dispose()
        db.drop_database(url)


def test_a_universe_is_read_in_code_point_order(icu_engine):
    f.market(icu_engine, "US_TECH")
    for symbol in SYMBOLS:
        f.instrument(icu_engine, symbol, market="US_TECH", currency="USD", roe="1")
    user = f.user(icu_engine, criteria=[("US_TECH", "stock", [f.rule("roe", "gte", "1", 10)])])
    with icu_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO scoring_batches (score_date, batch_key, user_id) "
                "VALUES (:d, 'b0000', :u)"
            ),
            {"d": DATE, "u": user},
        )
        inputs = load_batch_inputs(conn, DATE, "b0000")
    assert [i.symbol for i in inputs.universes[("US_TECH", "stock")]] == sorted(SYMBOLS)


def test_top_assets_break_ties_in_code_point_order(icu_engine):
    f.market(icu_engine, "US_TECH")
    user = f.user(icu_engine, criteria=[("US_TECH", "stock", [f.rule("roe", "gte", "1", 10)])])
    with icu_engine.begin() as conn:
        cv = conn.execute(
            sa.text("SELECT id::text FROM criteria_versions WHERE user_id = :u"), {"u": user}
        ).scalar_one()
        for symbol in SYMBOLS:  # every score tied
            conn.execute(
                sa.text(
                    "INSERT INTO asset_scores (user_id, symbol, criteria_version_id, score, "
                    "max_possible_score, percentage, score_date, correlation_id, calculated_at, "
                    "outcomes, base_currency) VALUES (:u, :s, :cv, 10, 10, 100, :d, "
                    "gen_random_uuid(), now(), 'M', 'USD')"
                ),
                {"u": user, "s": symbol, "cv": cv, "d": DATE},
            )
        top = _top_assets(conn, [user])
    assert [a["symbol"] for a in top[user][cv]] == sorted(SYMBOLS)
