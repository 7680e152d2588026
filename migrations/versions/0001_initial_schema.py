"""Initial schema: the app's input tables and the pipeline's output tables (SPEC §2).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UUID = pg.UUID(as_uuid=False)
TZ = sa.DateTime(timezone=True)
SCORE = sa.Numeric(12, 4)
FUNDAMENTALS = (
    "eps",
    "book_value_per_share",
    "dividends_per_share",
    "shares_outstanding",
    "revenue",
    "earnings",
    "surplus_years",
    "roe",
    "roa",
    "debt_to_equity",
    "current_ratio",
    "gross_margin",
    "net_margin",
    "payout_ratio",
    "ev_ebitda",
)


def _now() -> sa.TextClause:
    return sa.text("now()")


def _input_tables() -> None:
    op.create_table(
        "users",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column("base_currency", sa.CHAR(3), nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=_now()),
        sa.Column("deleted_at", TZ, nullable=True),
    )
    op.create_table(
        "markets",
        sa.Column("code", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("opens_at", sa.Time, nullable=False),
    )
    op.create_table(
        "instruments",
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("market", sa.Text, sa.ForeignKey("markets.code"), nullable=False),
        sa.Column("asset_type", sa.Text, nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
    )
    op.create_index("ix_instruments_market_asset_type", "instruments", ["market", "asset_type"])
    op.create_table(
        "instrument_fundamentals",
        sa.Column("symbol", sa.Text, sa.ForeignKey("instruments.symbol"), primary_key=True),
        sa.Column("data_date", sa.Date, primary_key=True),
        *(sa.Column(name, sa.Numeric, nullable=True) for name in FUNDAMENTALS),
    )
    op.create_table(
        "portfolios",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.create_index("ix_portfolios_user_id", "portfolios", ["user_id"])
    op.create_table(
        "portfolio_assets",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("portfolio_id", UUID, sa.ForeignKey("portfolios.id"), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("is_ignored", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("portfolio_id", "symbol", name="uq_portfolio_assets_portfolio_symbol"),
    )
    op.create_table(
        "criteria_versions",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("user_id", UUID, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("target_market", sa.Text, nullable=False),
        sa.Column("asset_type", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("rules", pg.JSONB, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=_now()),
    )
    op.create_index(
        "ix_criteria_versions_user_active", "criteria_versions", ["user_id", "is_active"]
    )


def _snapshot_tables() -> None:
    op.create_table(
        "exchange_rate_snapshots",
        sa.Column("score_date", sa.Date, primary_key=True),
        sa.Column("base_currency", sa.CHAR(3), primary_key=True),
        sa.Column("quote_currency", sa.CHAR(3), primary_key=True),
        sa.Column("rate", sa.Numeric, nullable=False),
        sa.Column("rate_date", sa.Date, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("fetched_at", TZ, nullable=False),
        sa.Column("is_stale", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "price_snapshots",
        sa.Column("score_date", sa.Date, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("close", sa.Numeric, nullable=True),
        sa.Column("currency", sa.CHAR(3), nullable=True),
        sa.Column("price_date", sa.Date, nullable=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("fetched_at", TZ, nullable=False),
        sa.Column("is_stale", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "scoring_batches",
        sa.Column("score_date", sa.Date, primary_key=True),
        sa.Column("user_id", UUID, primary_key=True),
        sa.Column("batch_key", sa.Text, nullable=False),
    )
    op.create_index("ix_scoring_batches_date_batch", "scoring_batches", ["score_date", "batch_key"])


def _output_tables() -> None:
    op.execute("CREATE SEQUENCE scoring_batch_outcome_seq")
    op.create_table(
        "scoring_batch_results",
        sa.Column("score_date", sa.Date, primary_key=True),
        sa.Column("batch_key", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("users_total", sa.Integer, nullable=False),
        sa.Column("users_success", sa.Integer, nullable=False),
        sa.Column("users_failed", sa.Integer, nullable=False),
        sa.Column("users_skipped", sa.Integer, nullable=False),
        sa.Column("assets_scored", sa.Integer, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("failed_users", pg.JSONB, nullable=False),
        sa.Column("succeeded_users", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("dagster_run_id", sa.Text, nullable=True),
        sa.Column("timings", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column(
            "outcome_seq",
            sa.BigInteger,
            nullable=False,
            server_default=sa.text("nextval('scoring_batch_outcome_seq')"),
        ),
        sa.Column("warmed_seq", sa.BigInteger, nullable=True),
        sa.Column("updated_at", TZ, nullable=False, server_default=_now()),
        sa.CheckConstraint(
            "status IN ('success', 'partial', 'failed')", name="ck_scoring_batch_results_status"
        ),
    )
    op.create_table(
        "asset_scores",
        sa.Column("user_id", UUID, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("criteria_version_id", UUID, nullable=False),
        sa.Column("score", SCORE, nullable=False),
        sa.Column("max_possible_score", SCORE, nullable=False),
        sa.Column("percentage", SCORE, nullable=True),
        sa.Column("breakdown", pg.JSONB, nullable=False),
        sa.Column("score_date", sa.Date, nullable=False),
        sa.Column("correlation_id", UUID, nullable=False),
        sa.Column("calculated_at", TZ, nullable=False),
    )
    op.create_table(
        "score_history",
        sa.Column("user_id", UUID, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("score_date", sa.Date, primary_key=True),
        sa.Column("criteria_version_id", UUID, nullable=False),
        sa.Column("score", SCORE, nullable=False),
        sa.Column("correlation_id", UUID, nullable=False),
        sa.Column("calculated_at", TZ, nullable=False),
    )
    op.create_table(
        "calculation_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("correlation_id", UUID, nullable=False),
        sa.Column("user_id", UUID, nullable=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=_now()),
    )
    op.create_index(
        "ix_calculation_events_correlation_id", "calculation_events", ["correlation_id"]
    )
    op.create_index(
        "ix_calculation_events_user_created", "calculation_events", ["user_id", "created_at"]
    )
    op.create_table(
        "overnight_job_runs",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("job_type", sa.Text, nullable=False),
        sa.Column("score_date", sa.Date, nullable=False),
        sa.Column("market_group", sa.Text, nullable=False, server_default="all"),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("completed_at", TZ, nullable=True),
        sa.Column("users_processed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("users_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("correlation_id", UUID, nullable=False),
        sa.Column("error_details", pg.JSONB, nullable=True),
        sa.Column("metrics", pg.JSONB, nullable=True),
        sa.UniqueConstraint(
            "job_type", "score_date", "market_group", name="uq_overnight_job_runs_type_date_group"
        ),
        sa.CheckConstraint(
            "job_type IN ('scoring', 'cache_warm')", name="ck_overnight_job_runs_type"
        ),
        sa.CheckConstraint(
            "status IN ('started', 'completed', 'partial', 'failed')",
            name="ck_overnight_job_runs_status",
        ),
    )
    op.create_table(
        "dashboard_cache",
        sa.Column("user_id", UUID, primary_key=True),
        sa.Column("score_date", sa.Date, nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
        sa.Column("correlation_id", UUID, nullable=False),
        sa.Column("warmed_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
    )


def upgrade() -> None:
    _input_tables()
    _snapshot_tables()
    _output_tables()


def downgrade() -> None:
    for table in (
        "dashboard_cache",
        "overnight_job_runs",
        "calculation_events",
        "score_history",
        "asset_scores",
        "scoring_batch_results",
        "scoring_batches",
        "price_snapshots",
        "exchange_rate_snapshots",
        "criteria_versions",
        "portfolio_assets",
        "portfolios",
        "instrument_fundamentals",
        "instruments",
        "markets",
        "users",
    ):
        op.drop_table(table)
    op.execute("DROP SEQUENCE IF EXISTS scoring_batch_outcome_seq")
