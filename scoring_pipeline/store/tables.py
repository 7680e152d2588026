"""SQLAlchemy Core tables mirroring the Alembic migrations (a test checks that they agree).

Input tables are written by the app and only read here; output tables are written by the pipeline.
"""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from scoring_pipeline.engine.criteria import FUNDAMENTAL_FIELDS

metadata = sa.MetaData()

# Scores have room for ±99999 (50 rules × 100 points) with 4 places; percentages likewise.
SCORE = sa.Numeric(12, 4)
MONEY = sa.Numeric  # unconstrained NUMERIC: prices, rates and fundamentals keep the provider's text

_TZ = sa.DateTime(timezone=True)


def _now() -> sa.TextClause:
    return sa.text("now()")


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("email", sa.Text, nullable=False, unique=True),
    sa.Column("base_currency", sa.CHAR(3), nullable=False),
    sa.Column("created_at", _TZ, nullable=False, server_default=_now()),
    sa.Column("deleted_at", _TZ, nullable=True),
)

markets = sa.Table(
    "markets",
    metadata,
    sa.Column("code", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("opens_at", sa.Time, nullable=False),
)

instruments = sa.Table(
    "instruments",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("market", sa.Text, sa.ForeignKey("markets.code"), nullable=False),
    sa.Column("asset_type", sa.Text, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Index("ix_instruments_market_asset_type", "market", "asset_type"),
)

instrument_fundamentals = sa.Table(
    "instrument_fundamentals",
    metadata,
    sa.Column("symbol", sa.Text, sa.ForeignKey("instruments.symbol"), primary_key=True),
    sa.Column("data_date", sa.Date, primary_key=True),
    *(sa.Column(name, MONEY, nullable=True) for name in FUNDAMENTAL_FIELDS),
)

portfolios = sa.Table(
    "portfolios",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("user_id", pg.UUID(as_uuid=False), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Index("ix_portfolios_user_id", "user_id"),
)

portfolio_assets = sa.Table(
    "portfolio_assets",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column(
        "portfolio_id", pg.UUID(as_uuid=False), sa.ForeignKey("portfolios.id"), nullable=False
    ),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("quantity", MONEY, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("is_ignored", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("portfolio_id", "symbol", name="uq_portfolio_assets_portfolio_symbol"),
)

criteria_versions = sa.Table(
    "criteria_versions",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("user_id", pg.UUID(as_uuid=False), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("target_market", sa.Text, nullable=False),
    sa.Column("asset_type", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("rules", pg.JSONB, nullable=False),
    sa.Column("created_at", _TZ, nullable=False, server_default=_now()),
    sa.Index("ix_criteria_versions_user_active", "user_id", "is_active"),
)

exchange_rate_snapshots = sa.Table(
    "exchange_rate_snapshots",
    metadata,
    sa.Column("score_date", sa.Date, primary_key=True),
    sa.Column("base_currency", sa.CHAR(3), primary_key=True),
    sa.Column("quote_currency", sa.CHAR(3), primary_key=True),
    # rate is null when the provider's value was rejected; missing_reason says why (SPEC §8).
    sa.Column("rate", MONEY, nullable=True),
    sa.Column("rate_date", sa.Date, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("fetched_at", _TZ, nullable=False),
    sa.Column("is_stale", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("missing_reason", sa.Text, nullable=True),
)

price_snapshots = sa.Table(
    "price_snapshots",
    metadata,
    sa.Column("score_date", sa.Date, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    # close is null when the provider did not return the symbol or its value was rejected
    # (stored as missing, SPEC §8); missing_reason says which.
    sa.Column("close", MONEY, nullable=True),
    sa.Column("currency", sa.CHAR(3), nullable=True),
    sa.Column("price_date", sa.Date, nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("fetched_at", _TZ, nullable=False),
    sa.Column("is_stale", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("missing_reason", sa.Text, nullable=True),
)

scoring_batches = sa.Table(
    "scoring_batches",
    metadata,
    sa.Column("score_date", sa.Date, primary_key=True),
    sa.Column("user_id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("batch_key", sa.Text, nullable=False),
    sa.Index("ix_scoring_batches_date_batch", "score_date", "batch_key"),
)

# One row per batch partition materialisation outcome: what the job run aggregates from.
scoring_batch_results = sa.Table(
    "scoring_batch_results",
    metadata,
    sa.Column("score_date", sa.Date, primary_key=True),
    # One outcome per market group: each group scores the batch for its own markets (SPEC §6).
    sa.Column("market_group", sa.Text, primary_key=True, server_default="all"),
    sa.Column("batch_key", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("users_total", sa.Integer, nullable=False),
    sa.Column("users_success", sa.Integer, nullable=False),
    sa.Column("users_failed", sa.Integer, nullable=False),
    sa.Column("users_skipped", sa.Integer, nullable=False),
    sa.Column("assets_scored", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("failed_users", pg.JSONB, nullable=False),
    # [{userId, correlationId}] of the users scored successfully: what cache warming reads.
    sa.Column("succeeded_users", pg.JSONB, nullable=False, server_default="[]"),
    sa.Column("dagster_run_id", sa.Text, nullable=True),
    # Where the batch's time went: load_ms, engine_ms (rule evaluation), build_ms, write_ms.
    sa.Column("timings", pg.JSONB, nullable=False, server_default="{}"),
    # Bumped on every write; cache warming records the value it warmed (a cursor per batch).
    sa.Column(
        "outcome_seq",
        sa.BigInteger,
        nullable=False,
        server_default=sa.text("nextval('scoring_batch_outcome_seq')"),
    ),
    sa.Column("warmed_seq", sa.BigInteger, nullable=True),
    # How many of its successful users' dashboards showed the score date once it was warmed.
    sa.Column("users_warm", sa.Integer, nullable=True),
    sa.Column("updated_at", _TZ, nullable=False, server_default=_now()),
    sa.CheckConstraint(
        "status IN ('success', 'partial', 'failed')", name="ck_scoring_batch_results_status"
    ),
)

asset_scores = sa.Table(
    "asset_scores",
    metadata,
    sa.Column("user_id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("criteria_version_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("score", SCORE, nullable=False),
    sa.Column("max_possible_score", SCORE, nullable=False),
    sa.Column("percentage", SCORE, nullable=True),
    sa.Column("score_date", sa.Date, nullable=False),
    sa.Column("correlation_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("calculated_at", _TZ, nullable=False),
    # The compact breakdown (SPEC §4): one outcome character per rule, and the base currency
    # whose metric values (`score_metric_values`) it shows. Readers use asset_score_breakdowns.
    sa.Column("outcomes", sa.Text, nullable=False),
    sa.Column("base_currency", sa.CHAR(3), nullable=False),
    # The revision of those metric values the score was computed with (migration 0011).
    sa.Column("values_revision", sa.SmallInteger, nullable=False, server_default="1"),
)

# Keyed by (user_id, symbol, score_date) through the trigger `score_history_unique_key`
# (migration 0008), not a unique index: the two deduplicated indexes cost a few bytes a row
# where the primary key cost ~60 (docs/design.md, "What a later night adds on disk").
score_history = sa.Table(
    "score_history",
    metadata,
    sa.Column("user_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("score_date", sa.Date, nullable=False),
    sa.Column("criteria_version_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("score", SCORE, nullable=False),
    sa.Column("correlation_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("calculated_at", _TZ, nullable=False),
    sa.Column("outcomes", sa.Text, nullable=True),  # null only for rows older than the form
    sa.Column("base_currency", sa.CHAR(3), nullable=True),
    sa.Column("values_revision", sa.SmallInteger, nullable=False, server_default="1"),
    sa.Index("ix_score_history_user_date", "user_id", "score_date"),
    sa.Index("ix_score_history_user_symbol", "user_id", "symbol"),
    # Month partitions (month_partitions.py), created ahead by the nights, dropped by `prune`.
    postgresql_partition_by="RANGE (score_date)",
)

# Per night: each instrument's metric texts for users of one base currency (the breakdowns'
# `actualValue`, stored once instead of per user, asset and rule). Rows are never changed:
# differing values of a pair (a refreshed snapshot, fundamentals changed before a retry) are its
# next revision, and each score names the revision it was computed with (migration 0011).
score_metric_values = sa.Table(
    "score_metric_values",
    metadata,
    sa.Column("score_date", sa.Date, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("base_currency", sa.CHAR(3), primary_key=True),
    sa.Column("metric_values", pg.JSONB, nullable=False),
    sa.Column("revision", sa.SmallInteger, primary_key=True, server_default="1"),
    postgresql_partition_by="RANGE (score_date)",
)

calculation_events = sa.Table(
    "calculation_events",
    metadata,
    # A sequence, not an identity column: PostgreSQL < 17 cannot partition identity columns.
    sa.Column(
        "id",
        sa.BigInteger,
        primary_key=True,
        server_default=sa.text("nextval('calculation_events_id_seq')"),
    ),
    sa.Column("correlation_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("user_id", pg.UUID(as_uuid=False), nullable=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("created_at", _TZ, nullable=False, server_default=_now()),
    # The calculation's (or the night's) score date: the partition key.
    sa.Column("score_date", sa.Date, primary_key=True),
    sa.Index("ix_calculation_events_correlation_id", "correlation_id"),
    sa.Index("ix_calculation_events_user_created", "user_id", "created_at"),
    postgresql_partition_by="RANGE (score_date)",
)

overnight_job_runs = sa.Table(
    "overnight_job_runs",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("job_type", sa.Text, nullable=False),
    sa.Column("score_date", sa.Date, nullable=False),
    sa.Column("market_group", sa.Text, nullable=False, server_default="all"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", _TZ, nullable=False),
    sa.Column("completed_at", _TZ, nullable=True),
    sa.Column("users_processed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("users_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("correlation_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("error_details", pg.JSONB, nullable=True),
    sa.Column("metrics", pg.JSONB, nullable=True),
    sa.UniqueConstraint(
        "job_type", "score_date", "market_group", name="uq_overnight_job_runs_type_date_group"
    ),
    sa.CheckConstraint("job_type IN ('scoring', 'cache_warm')", name="ck_overnight_job_runs_type"),
    sa.CheckConstraint(
        "status IN ('started', 'completed', 'partial', 'failed')",
        name="ck_overnight_job_runs_status",
    ),
)

dashboard_cache = sa.Table(
    "dashboard_cache",
    metadata,
    sa.Column("user_id", pg.UUID(as_uuid=False), primary_key=True),
    sa.Column("score_date", sa.Date, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("correlation_id", pg.UUID(as_uuid=False), nullable=False),
    sa.Column("warmed_at", _TZ, nullable=False),
    sa.Column("expires_at", _TZ, nullable=False),
)
