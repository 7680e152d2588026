"""Metric values by revision: a stored score shows the values it was computed with.

`score_metric_values` held one row per (score date, symbol, base currency), and a batch whose
values differed (a `--refresh`, fundamentals changed before a retry) overwrote it in place: the
rows that were not re-scored then showed, through `asset_score_breakdowns` and
`score_history_breakdowns`, `actualValue`s their calculation never used, next to outcomes
computed on the old ones. Values rows are now immutable: a pair's differing values are a new
`revision` (1, 2, …), and `asset_scores` and `score_history` name theirs in `values_revision`
(a smallint, in what was alignment padding of most rows). The views join on it.

Rows stored before this migration keep revision 1: the values their pair held last, as before.
Downgrading keeps each pair's latest revision.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_VIEWS = (("asset_score_breakdowns", "asset_scores"), ("score_history_breakdowns", "score_history"))


def _views(revisions: bool) -> None:
    for name, _ in _VIEWS:
        op.execute(f"DROP VIEW {name}")
    # Migration 0004, whose `_breakdown_view` makes the views, as Alembic loaded it.
    breakdowns = context.script.get_revision("0004").module
    for name, table in _VIEWS:
        op.execute(breakdowns._breakdown_view(name, table, revisions=revisions))


def upgrade() -> None:
    op.execute("ALTER TABLE score_metric_values ADD COLUMN revision smallint NOT NULL DEFAULT 1")
    op.execute("ALTER TABLE score_metric_values DROP CONSTRAINT score_metric_values_pkey")
    op.execute(
        "ALTER TABLE score_metric_values ADD CONSTRAINT score_metric_values_pkey "
        "PRIMARY KEY (score_date, symbol, base_currency, revision)"
    )
    for _, table in _VIEWS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN values_revision smallint NOT NULL DEFAULT 1")
    _views(revisions=True)


def downgrade() -> None:
    _views(revisions=False)
    for _, table in _VIEWS:
        op.execute(f"ALTER TABLE {table} DROP COLUMN values_revision")
    op.execute(
        "DELETE FROM score_metric_values v USING score_metric_values w "
        "WHERE w.score_date = v.score_date AND w.symbol = v.symbol "
        "AND w.base_currency = v.base_currency AND w.revision > v.revision"
    )
    op.execute("ALTER TABLE score_metric_values DROP CONSTRAINT score_metric_values_pkey")
    op.execute("ALTER TABLE score_metric_values DROP COLUMN revision")
    op.execute(
        "ALTER TABLE score_metric_values ADD CONSTRAINT score_metric_values_pkey "
        "PRIMARY KEY (score_date, symbol, base_currency)"
    )
