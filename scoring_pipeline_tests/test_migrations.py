"""Alembic migrations on real PostgreSQL: upgrade, downgrade, upgrade again, and agreement
between the migrated database and the SQLAlchemy table definitions in `tables.py`."""

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from scoring_pipeline import db
from scoring_pipeline.tables import metadata

pytestmark = pytest.mark.db

SPEC_TABLES = {
    "users",
    "markets",
    "instruments",
    "instrument_fundamentals",
    "portfolios",
    "portfolio_assets",
    "criteria_versions",
    "exchange_rate_snapshots",
    "price_snapshots",
    "scoring_batches",
    "asset_scores",
    "score_history",
    "calculation_events",
    "overnight_job_runs",
    "dashboard_cache",
}


def _type(t: sa.types.TypeEngine) -> str:  # type: ignore[type-arg]
    return t.compile(dialect=postgresql.dialect()).replace("VARCHAR", "TEXT")


@pytest.fixture
def fresh_engine(databases):
    engine = db.create_engine_for(databases.create())
    yield engine
    engine.dispose()


def test_upgrade_creates_every_spec_table(fresh_engine):
    db.migrate(fresh_engine)
    names = set(sa.inspect(fresh_engine).get_table_names())
    assert SPEC_TABLES <= names
    assert db.current_revision(fresh_engine) == "0003"


def test_tables_match_migrated_schema(fresh_engine):
    db.migrate(fresh_engine)
    inspector = sa.inspect(fresh_engine)
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            live = columns[column.name]
            assert live["nullable"] == column.nullable, f"{table.name}.{column.name}"
            assert _type(live["type"]) == _type(column.type), f"{table.name}.{column.name}"
        pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name
        live_uniques = {
            tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)
        }
        model_uniques = {
            tuple(c.name for c in con.columns)
            for con in table.constraints
            if isinstance(con, sa.UniqueConstraint) and not isinstance(con, sa.PrimaryKeyConstraint)
        } | {(c.name,) for c in table.columns if c.unique}
        assert live_uniques == model_uniques, table.name
        live_indexes = {
            i["name"]: tuple(i["column_names"])
            for i in inspector.get_indexes(table.name)
            if not i.get("duplicates_constraint")
        }
        model_indexes = {i.name: tuple(c.name for c in i.columns) for i in table.indexes}
        assert live_indexes == model_indexes, table.name


def test_spec_keys_and_indexes(fresh_engine):
    db.migrate(fresh_engine)
    inspector = sa.inspect(fresh_engine)
    assert inspector.get_pk_constraint("asset_scores")["constrained_columns"] == [
        "user_id",
        "symbol",
    ]
    assert inspector.get_pk_constraint("score_history")["constrained_columns"] == [
        "user_id",
        "symbol",
        "score_date",
    ]
    uniques = {
        tuple(u["column_names"]) for u in inspector.get_unique_constraints("overnight_job_runs")
    }
    assert ("job_type", "score_date", "market_group") in uniques
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("calculation_events")}
    assert ("correlation_id",) in indexed and ("user_id", "created_at") in indexed
    score = {c["name"]: c for c in inspector.get_columns("asset_scores")}["score"]["type"]
    assert (score.precision, score.scale) == (12, 4)  # room for ±99999.9999


def test_downgrade_to_base_and_upgrade_again(fresh_engine):
    db.migrate(fresh_engine)
    with fresh_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO markets VALUES ('M', 'M', 'UTC', '09:00')"))
    db.downgrade(fresh_engine, "base")
    assert not (SPEC_TABLES & set(sa.inspect(fresh_engine).get_table_names()))
    assert db.current_revision(fresh_engine) is None
    db.migrate(fresh_engine)
    assert SPEC_TABLES <= set(sa.inspect(fresh_engine).get_table_names())


def test_migrate_is_idempotent_on_a_database_with_data(fresh_engine):
    db.migrate(fresh_engine)
    with fresh_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO markets VALUES ('M', 'M', 'UTC', '09:00')"))
    db.migrate(fresh_engine)
    with fresh_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM markets")).scalar_one() == 1
