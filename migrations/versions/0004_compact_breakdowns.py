"""Compact storage of breakdowns (SPEC §4 "Storage form", revised 2026-11-30).

A breakdown entry's `actualValue` depends only on (score date, symbol, metric, base currency), so
it is stored once per night in `score_metric_values` (one JSON object of metric texts per score
date, symbol and base currency); each score keeps only its rules' outcomes, one character per
rule in the criteria version's order (`m` matched, `u` not matched, `s` skipped for a missing
fundamental), and the base currency it was scored in. `asset_scores.breakdown` goes; the views
`asset_score_breakdowns` (current scores) and `score_history_breakdowns` (any past date) give the
canonical breakdown back, entry for entry.

An existing database is converted: outcomes and metric values are read from the stored
breakdowns of `asset_scores` and, for history rows, from their calculation's SCORES_COMPUTED
event (history rows whose event is gone keep a null `outcomes`, and no breakdown). A row's base
currency is its calculation's, which its INPUTS_CAPTURED event recorded (the user's may have
changed since: the breakdown's converted values are in the currency it was computed in); a row
whose calculation has no such event left takes its user's. Downgrading writes
`asset_scores.breakdown` back from the view.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# One breakdown entry (jsonb `e`) as its outcome character.
_OUTCOME = (
    "CASE WHEN e ? 'skippedReason' THEN 's' WHEN (e->>'matched')::boolean THEN 'm' ELSE 'u' END"
)


def _breakdown_view(name: str, table: str, revisions: bool = False) -> str:
    """The canonical breakdown of each row of `table` (SPEC §4): one entry per rule in order,
    ruleId, matched, points, then actualValue and skippedReason when not null. With
    `revisions` (migration 0011), each row shows the revision of metric values it names."""
    code = "substr(s.outcomes, r.n::int, 1)"
    revision = " AND v.revision = s.values_revision" if revisions else ""
    return f"""
CREATE VIEW {name} AS
SELECT s.user_id, s.symbol, s.score_date, s.criteria_version_id, s.correlation_id,
  CASE WHEN s.outcomes IS NULL THEN NULL ELSE (
    SELECT coalesce(jsonb_agg(
      jsonb_build_object(
        'ruleId', r.rule->'id',
        'matched', {code} = 'm',
        'points', CASE WHEN {code} = 'm' THEN r.rule->'points' ELSE to_jsonb(0) END)
      || CASE WHEN v.metric_values ? (r.rule->>'metric')
           THEN jsonb_build_object('actualValue', v.metric_values->(r.rule->>'metric'))
           ELSE '{{}}'::jsonb END
      || CASE WHEN {code} = 's'
           THEN '{{"skippedReason":"missing_fundamental"}}'::jsonb
           ELSE '{{}}'::jsonb END
      ORDER BY r.n), '[]'::jsonb)
    FROM jsonb_array_elements(c.rules) WITH ORDINALITY AS r(rule, n)) END AS breakdown
FROM {table} s
JOIN criteria_versions c ON c.id = s.criteria_version_id
LEFT JOIN score_metric_values v ON v.score_date = s.score_date AND v.symbol = s.symbol
  AND v.base_currency = s.base_currency{revision}
"""


def upgrade() -> None:
    op.create_table(
        "score_metric_values",
        sa.Column("score_date", sa.Date, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("base_currency", sa.CHAR(3), primary_key=True),
        sa.Column("metric_values", pg.JSONB, nullable=False),
    )
    for table in ("asset_scores", "score_history"):
        op.add_column(table, sa.Column("outcomes", sa.Text, nullable=True))
        op.add_column(table, sa.Column("base_currency", sa.CHAR(3), nullable=True))
    _convert()
    op.drop_column("asset_scores", "breakdown")
    op.alter_column("asset_scores", "outcomes", nullable=False)
    op.alter_column("asset_scores", "base_currency", nullable=False)
    op.execute("ALTER TABLE asset_scores RESET (toast_tuple_target)")
    op.execute(_breakdown_view("asset_score_breakdowns", "asset_scores"))
    op.execute(_breakdown_view("score_history_breakdowns", "score_history"))


def _convert() -> None:
    """Outcomes and metric values of the rows already stored, from their breakdowns."""
    # The base currency each calculation was computed in, from its INPUTS_CAPTURED event: the
    # user's may have changed since, and a breakdown's values are in the calculation's currency.
    # (The subquery computes each payload's value once: its event is read whole from TOAST.)
    op.execute(
        "CREATE TEMPORARY TABLE calculation_currencies (correlation_id uuid PRIMARY KEY, "
        "base_currency char(3) NOT NULL) ON COMMIT DROP"
    )
    op.execute(
        "INSERT INTO calculation_currencies SELECT correlation_id, base_currency FROM ("
        "SELECT correlation_id, payload->>'baseCurrency' AS base_currency "
        "FROM calculation_events WHERE event_type = 'INPUTS_CAPTURED' OFFSET 0) e "
        "WHERE base_currency ~ '^[A-Z]{3}$' ON CONFLICT (correlation_id) DO NOTHING"
    )
    op.execute("ANALYZE calculation_currencies")
    # A score whose calculation has no such event left takes its user's currency.
    op.execute(
        "UPDATE asset_scores a SET base_currency = u.base_currency FROM users u "
        "WHERE u.id = a.user_id"
    )
    op.execute(
        "UPDATE asset_scores a SET base_currency = c.base_currency FROM calculation_currencies c "
        "WHERE c.correlation_id = a.correlation_id AND c.base_currency <> a.base_currency"
    )
    op.execute(
        f"UPDATE asset_scores a SET outcomes = (SELECT coalesce(string_agg({_OUTCOME}, '' "
        "ORDER BY n), '') FROM jsonb_array_elements(a.breakdown) WITH ORDINALITY AS b(e, n))"
    )
    # Every stored breakdown, current or past, with the rows it belongs to.
    op.execute(
        "CREATE TEMPORARY TABLE old_breakdowns ON COMMIT DROP AS "
        "SELECT a.user_id, a.symbol, a.score_date, a.criteria_version_id, a.base_currency, "
        "a.correlation_id, a.breakdown FROM asset_scores a "
        "UNION ALL "
        "SELECT h.user_id, h.symbol, h.score_date, h.criteria_version_id, "
        "coalesce(cc.base_currency, u.base_currency), h.correlation_id, r->'breakdown' "
        "FROM score_history h JOIN users u ON u.id = h.user_id "
        "LEFT JOIN calculation_currencies cc ON cc.correlation_id = h.correlation_id "
        "JOIN calculation_events e ON e.correlation_id = h.correlation_id "
        "AND e.event_type = 'SCORES_COMPUTED' "
        "CROSS JOIN LATERAL jsonb_array_elements(e.payload->'results') r "
        "WHERE r->>'assetId' = h.symbol AND r ? 'breakdown' "
        "AND NOT EXISTS (SELECT 1 FROM asset_scores a WHERE a.user_id = h.user_id "
        "AND a.symbol = h.symbol AND a.correlation_id = h.correlation_id)"
    )
    op.execute(
        f"UPDATE score_history h SET base_currency = o.base_currency, outcomes = (SELECT "
        f"coalesce(string_agg({_OUTCOME}, '' ORDER BY n), '') FROM "
        "jsonb_array_elements(o.breakdown) WITH ORDINALITY AS b(e, n)) FROM old_breakdowns o "
        "WHERE o.user_id = h.user_id AND o.symbol = h.symbol AND o.score_date = h.score_date "
        "AND o.correlation_id = h.correlation_id"
    )
    # Each rule's actualValue under its metric's name, once per (date, symbol, base currency).
    # Rules that are not an array (invalid criteria, stored as the app wrote them) have no
    # scores, but the planner may expand every version's rules before the join.
    op.execute(
        "INSERT INTO score_metric_values (score_date, symbol, base_currency, metric_values) "
        "SELECT o.score_date, o.symbol, o.base_currency, "
        "jsonb_object_agg(r.rule->>'metric', b.e->'actualValue') "
        "FROM old_breakdowns o JOIN criteria_versions c ON c.id = o.criteria_version_id "
        "CROSS JOIN LATERAL jsonb_array_elements(o.breakdown) WITH ORDINALITY AS b(e, n) "
        "JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(c.rules) = 'array' "
        "THEN c.rules END) WITH ORDINALITY AS r(rule, n) ON r.n = b.n "
        "WHERE b.e ? 'actualValue' "
        "GROUP BY o.score_date, o.symbol, o.base_currency"
    )


def downgrade() -> None:
    op.add_column("asset_scores", sa.Column("breakdown", pg.JSONB, nullable=True))
    op.execute(
        "UPDATE asset_scores a SET breakdown = v.breakdown FROM asset_score_breakdowns v "
        "WHERE v.user_id = a.user_id AND v.symbol = a.symbol"
    )
    op.execute("UPDATE asset_scores SET breakdown = '[]'::jsonb WHERE breakdown IS NULL")
    op.alter_column("asset_scores", "breakdown", nullable=False)
    op.execute("ALTER TABLE asset_scores SET (toast_tuple_target = 128)")
    op.execute("DROP VIEW score_history_breakdowns")
    op.execute("DROP VIEW asset_score_breakdowns")
    for table in ("asset_scores", "score_history"):
        op.drop_column(table, "base_currency")
        op.drop_column(table, "outcomes")
    op.drop_table("score_metric_values")
