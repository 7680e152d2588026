"""Metric values by revision: a stored score shows the values it was computed with.

`score_metric_values` held one row per (score date, symbol, base currency), and a batch whose
values differed (a `--refresh`, fundamentals changed before a retry) overwrote it in place: the
rows that were not re-scored then showed, through `asset_score_breakdowns` and
`score_history_breakdowns`, `actualValue`s their calculation never used, next to outcomes
computed on the old ones. Values rows are now immutable: a pair's differing values are a new
`revision` (1, 2, …), and `asset_scores` and `score_history` name theirs in `values_revision`
(a smallint, in what was alignment padding of most rows). The views join on it.

Rows stored before this migration keep revision 1, the values their pair holds, except those
listed in `scores_values_revisions`: the breakdowns migration 0004 converted whose values
differed from their pair's (a batch re-scored by the old code after the fundamentals changed)
take the revision it numbered for them, whose values `metric_values_revisions` held; both
tables go. (A database converted before 0004 kept them has neither: its rows keep revision 1.)
Downgrading keeps revision 1 in `score_metric_values` and moves the later revisions, and the
scores that name them, back to those two tables, which the views before 0011 read: every score
still shows its own values.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_VIEWS = (("asset_score_breakdowns", "asset_scores"), ("score_history_breakdowns", "score_history"))
# A row of `scores_values_revisions` (`r`) and the score (`s`) it lists.
_LISTED = (
    "r.user_id = s.user_id AND r.symbol = s.symbol AND r.score_date = s.score_date "
    "AND r.correlation_id = s.correlation_id"
)


def _views(revisions: bool) -> None:
    for name, _ in _VIEWS:
        op.execute(f"DROP VIEW {name}")
    # Migration 0004, whose `_breakdown_view` makes the views, as Alembic loaded it.
    breakdowns = context.script.get_revision("0004").module
    if not revisions:
        breakdowns._revision_tables()
    for name, table in _VIEWS:
        op.execute(breakdowns._breakdown_view(name, table, revisions=revisions))


def _has_revision_tables() -> bool:
    return bool(
        op.get_bind()
        .execute(sa.text("SELECT to_regclass('scores_values_revisions') IS NOT NULL"))
        .scalar()
    )


def upgrade() -> None:
    op.execute("ALTER TABLE score_metric_values ADD COLUMN revision smallint NOT NULL DEFAULT 1")
    op.execute("ALTER TABLE score_metric_values DROP CONSTRAINT score_metric_values_pkey")
    op.execute(
        "ALTER TABLE score_metric_values ADD CONSTRAINT score_metric_values_pkey "
        "PRIMARY KEY (score_date, symbol, base_currency, revision)"
    )
    for _, table in _VIEWS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN values_revision smallint NOT NULL DEFAULT 1")
    if _has_revision_tables():
        # The later revisions of the pairs still stored (a month pruned since has none).
        op.execute(
            "INSERT INTO score_metric_values (score_date, symbol, base_currency, revision, "
            "metric_values) SELECT w.score_date, w.symbol, w.base_currency, w.revision, "
            "w.metric_values FROM metric_values_revisions w WHERE EXISTS (SELECT 1 FROM "
            "score_metric_values v WHERE v.score_date = w.score_date AND v.symbol = w.symbol "
            "AND v.base_currency = w.base_currency)"
        )
        for _, table in _VIEWS:
            op.execute(
                f"UPDATE {table} s SET values_revision = r.revision "
                f"FROM scores_values_revisions r WHERE {_LISTED}"
            )
    _views(revisions=True)
    op.execute("DROP TABLE IF EXISTS scores_values_revisions, metric_values_revisions")


def downgrade() -> None:
    _views(revisions=False)  # makes the tables of the later revisions
    op.execute(
        "INSERT INTO metric_values_revisions SELECT score_date, symbol, base_currency, "
        "revision, metric_values FROM score_metric_values WHERE revision > 1 "
        "ON CONFLICT DO NOTHING"
    )
    for _, table in _VIEWS:
        op.execute(
            "INSERT INTO scores_values_revisions SELECT user_id, symbol, score_date, "
            f"correlation_id, values_revision FROM {table} WHERE values_revision > 1 "
            "ON CONFLICT DO NOTHING"
        )
    for _, table in _VIEWS:
        op.execute(f"ALTER TABLE {table} DROP COLUMN values_revision")
    op.execute("DELETE FROM score_metric_values WHERE revision > 1")
    op.execute("ALTER TABLE score_metric_values DROP CONSTRAINT score_metric_values_pkey")
    op.execute("ALTER TABLE score_metric_values DROP COLUMN revision")
    op.execute(
        "ALTER TABLE score_metric_values ADD CONSTRAINT score_metric_values_pkey "
        "PRIMARY KEY (score_date, symbol, base_currency)"
    )
