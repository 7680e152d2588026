"""The tables that grow every night, range-partitioned by score date, one partition a month.

`score_history`, `score_metric_values` and `calculation_events` become PostgreSQL declarative
range partitions on `score_date`, so old months are dropped whole (`scoring-pipeline prune`)
instead of deleted row by row. `calculation_events` gains the `score_date` of its calculation (the
`scoreDate` of the calculation's or the night's events; failing that, the day it was written);
its primary key becomes (id, score_date) and `id` keeps its sequence (an identity column cannot
be partitioned before PostgreSQL 17).

Existing rows are copied into the new tables, month partitions created for every month they
cover; the pipeline creates the partitions of later months as nights need them. The breakdown
views are dropped and made again over the new tables. Downgrading copies the rows back into plain
tables.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = {
    "score_history": (
        "user_id uuid NOT NULL, symbol text NOT NULL, score_date date NOT NULL, "
        "criteria_version_id uuid NOT NULL, score numeric(12, 4) NOT NULL, "
        "correlation_id uuid NOT NULL, calculated_at timestamptz NOT NULL, outcomes text, "
        "base_currency char(3)",
        "PRIMARY KEY (user_id, symbol, score_date)",
    ),
    "score_metric_values": (
        "score_date date NOT NULL, symbol text NOT NULL, base_currency char(3) NOT NULL, "
        "metric_values jsonb NOT NULL",
        "PRIMARY KEY (score_date, symbol, base_currency)",
    ),
    "calculation_events": (
        "id bigint NOT NULL DEFAULT nextval('calculation_events_id_seq'), "
        "correlation_id uuid NOT NULL, user_id uuid, event_type text NOT NULL, "
        "payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
        "score_date date NOT NULL",
        "PRIMARY KEY (id, score_date)",
    ),
}
_INDEXES = (
    "CREATE INDEX ix_calculation_events_correlation_id ON calculation_events (correlation_id)",
    "CREATE INDEX ix_calculation_events_user_created ON calculation_events (user_id, created_at)",
)
# Each old event's score date: its calculation's (the `scoreDate` of one of its events), else
# its night's, else the UTC day it was written. The dates are looked up once per correlation id
# and joined: a correlated subquery per event read every payload again for each event (time
# grew with the square of the events: 42.7 s for 3,173).
_EVENT_DATES = (
    "CREATE TEMPORARY TABLE event_dates (correlation_id uuid PRIMARY KEY, score_date date "
    "NOT NULL) ON COMMIT DROP",
    "INSERT INTO event_dates SELECT correlation_id, min(CAST(payload->>'scoreDate' AS date)) "
    "FROM calculation_events_old WHERE payload ? 'scoreDate' GROUP BY correlation_id",
    "INSERT INTO event_dates SELECT correlation_id, min(score_date) FROM overnight_job_runs "
    "GROUP BY correlation_id ON CONFLICT (correlation_id) DO NOTHING",
    "ANALYZE event_dates",
    "UPDATE calculation_events_old o SET score_date = d.score_date FROM event_dates d "
    "WHERE d.correlation_id = o.correlation_id",
    "UPDATE calculation_events_old SET score_date = CAST(created_at AT TIME ZONE 'UTC' AS date) "
    "WHERE score_date IS NULL",
)


def _drop_views() -> None:
    op.execute("DROP VIEW score_history_breakdowns")
    op.execute("DROP VIEW asset_score_breakdowns")


def _make_views() -> None:
    # Migration 0004, for its breakdown views (made again over the new tables) and the tables
    # of the revisions of metric values they read.
    views = context.script.get_revision("0004").module
    views._revision_tables()
    op.execute(views._breakdown_view("asset_score_breakdowns", "asset_scores"))
    op.execute(views._breakdown_view("score_history_breakdowns", "score_history"))


def _month_partitions(table: str) -> None:
    """A partition for every month the table's rows cover."""
    op.execute(
        f"""
DO $$
DECLARE m date;
BEGIN
  FOR m IN SELECT DISTINCT date_trunc('month', score_date)::date FROM {table}_old LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF {table} FOR VALUES FROM (%L) TO (%L)',
                   '{table}_' || to_char(m, 'YYYY_MM'), m, (m + interval '1 month')::date);
  END LOOP;
END $$"""
    )


def _rename_old(table: str) -> None:
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    op.execute(f"ALTER TABLE {table}_old RENAME CONSTRAINT {table}_pkey TO {table}_pkey_old")


def upgrade() -> None:
    _drop_views()
    for table in ("score_history", "score_metric_values", "calculation_events"):
        _rename_old(table)
    op.execute("DROP INDEX ix_calculation_events_correlation_id")
    op.execute("DROP INDEX ix_calculation_events_user_created")
    op.execute("CREATE SEQUENCE calculation_events_id_seq_new")
    for table, (columns, key) in _COLUMNS.items():
        columns = columns.replace("calculation_events_id_seq", "calculation_events_id_seq_new")
        op.execute(
            f"CREATE TABLE {table} ({columns}, CONSTRAINT {table}_pkey {key}) "
            "PARTITION BY RANGE (score_date)"
        )
    op.execute("ALTER TABLE calculation_events_old ADD COLUMN score_date date")
    for statement in _EVENT_DATES:
        op.execute(statement)
    for table in _COLUMNS:
        _month_partitions(table)
    op.execute("INSERT INTO score_history SELECT * FROM score_history_old")
    op.execute("INSERT INTO score_metric_values SELECT * FROM score_metric_values_old")
    op.execute(
        "INSERT INTO calculation_events (id, correlation_id, user_id, event_type, payload, "
        "created_at, score_date) SELECT id, correlation_id, user_id, event_type, payload, "
        "created_at, score_date FROM calculation_events_old"
    )
    op.execute(
        "SELECT setval('calculation_events_id_seq_new', "
        "coalesce((SELECT max(id) FROM calculation_events_old), 0) + 1, false)"
    )
    for table in _COLUMNS:
        op.execute(f"DROP TABLE {table}_old")
    op.execute("ALTER SEQUENCE calculation_events_id_seq_new RENAME TO calculation_events_id_seq")
    op.execute("ALTER SEQUENCE calculation_events_id_seq OWNED BY calculation_events.id")
    for index in _INDEXES:
        op.execute(index)
    _make_views()


def downgrade() -> None:
    _drop_views()
    for table in _COLUMNS:
        _rename_old(table)
    op.execute("DROP INDEX ix_calculation_events_correlation_id")
    op.execute("DROP INDEX ix_calculation_events_user_created")
    op.execute("ALTER SEQUENCE calculation_events_id_seq RENAME TO calculation_events_id_seq_old")
    op.execute(
        "CREATE TABLE score_history (LIKE score_history_old INCLUDING DEFAULTS, "
        "CONSTRAINT score_history_pkey PRIMARY KEY (user_id, symbol, score_date))"
    )
    op.execute(
        "CREATE TABLE score_metric_values (LIKE score_metric_values_old INCLUDING DEFAULTS, "
        "CONSTRAINT score_metric_values_pkey PRIMARY KEY (score_date, symbol, base_currency))"
    )
    op.execute(
        "CREATE TABLE calculation_events (id bigint GENERATED BY DEFAULT AS IDENTITY, "
        "correlation_id uuid NOT NULL, user_id uuid, event_type text NOT NULL, "
        "payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
        "CONSTRAINT calculation_events_pkey PRIMARY KEY (id))"
    )
    op.execute("INSERT INTO score_history SELECT * FROM score_history_old")
    op.execute("INSERT INTO score_metric_values SELECT * FROM score_metric_values_old")
    op.execute(
        "INSERT INTO calculation_events (id, correlation_id, user_id, event_type, payload, "
        "created_at) SELECT id, correlation_id, user_id, event_type, payload, created_at "
        "FROM calculation_events_old"
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('calculation_events', 'id'), "
        "coalesce((SELECT max(id) FROM calculation_events), 0) + 1, false)"
    )
    for table in _COLUMNS:
        op.execute(f"DROP TABLE {table}_old CASCADE")
    op.execute("DROP SEQUENCE IF EXISTS calculation_events_id_seq_old")
    for index in _INDEXES:
        op.execute(index)
    _make_views()
