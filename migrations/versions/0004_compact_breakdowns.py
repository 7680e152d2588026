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
whose calculation has no such event left takes its user's. A pair's stored breakdowns may
disagree on a value (a batch re-scored by the old code after the fundamentals changed): each
keeps its own, the pair's values that differ from its first becoming revisions 2, 3, … that
wait, until migration 0011 gives `score_metric_values` its revisions, in
`metric_values_revisions`, with the scores that show them in `scores_values_revisions` (the
views read both). Downgrading writes `asset_scores.breakdown` back from the view, and the
canonical breakdowns back into the SCORES_COMPUTED events written in the compact form (where
the old schema keeps a past date's), so that upgrading again keeps the history of the nights
scored in the compact form.

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


# Until migration 0011 gives `score_metric_values` revisions, a (date, symbol, base currency)'s
# values that differ from those it holds wait in `metric_values_revisions`, numbered 2, 3, … as
# 0011 makes them revisions, and the scores (current or past) computed with them are listed in
# `scores_values_revisions`; the views read them. Migration 0004 fills them from the stored
# breakdowns (a batch re-scored after the fundamentals changed), 0011's downgrade from the
# revisions. `IF NOT EXISTS`: a database converted before they existed has none yet.
_REVISION_TABLES = (
    "CREATE TABLE IF NOT EXISTS metric_values_revisions (score_date date NOT NULL, "
    "symbol text NOT NULL, base_currency char(3) NOT NULL, revision smallint NOT NULL, "
    "metric_values jsonb NOT NULL, PRIMARY KEY (score_date, symbol, base_currency, revision))",
    "CREATE TABLE IF NOT EXISTS scores_values_revisions (user_id uuid NOT NULL, "
    "symbol text NOT NULL, score_date date NOT NULL, correlation_id uuid NOT NULL, "
    "revision smallint NOT NULL, PRIMARY KEY (user_id, symbol, score_date, correlation_id))",
)


def _revision_tables() -> None:
    """The tables of the revisions after the first, which the views read before 0011."""
    for statement in _REVISION_TABLES:
        op.execute(statement)


def _breakdown_view(name: str, table: str, revisions: bool = False) -> str:
    """The canonical breakdown of each row of `table` (SPEC §4): one entry per rule in order,
    ruleId, matched, points, then actualValue and skippedReason when not null. With
    `revisions` (migration 0011), each row shows the revision of metric values it names;
    without, the values of `score_metric_values`, or those of the revision listed for the row
    in `scores_values_revisions` (`_revision_tables`, which must exist)."""
    code = "substr(s.outcomes, r.n::int, 1)"
    if revisions:
        values = "v.metric_values"
        joins = " AND v.revision = s.values_revision"
    else:
        values = "(CASE WHEN sr.revision IS NULL THEN v.metric_values ELSE w.metric_values END)"
        joins = """
LEFT JOIN scores_values_revisions sr ON sr.user_id = s.user_id AND sr.symbol = s.symbol
  AND sr.score_date = s.score_date AND sr.correlation_id = s.correlation_id
LEFT JOIN metric_values_revisions w ON w.score_date = s.score_date AND w.symbol = s.symbol
  AND w.base_currency = s.base_currency AND w.revision = sr.revision"""
    return f"""
CREATE VIEW {name} AS
SELECT s.user_id, s.symbol, s.score_date, s.criteria_version_id, s.correlation_id,
  CASE WHEN s.outcomes IS NULL THEN NULL ELSE (
    SELECT coalesce(jsonb_agg(
      jsonb_build_object(
        'ruleId', r.rule->'id',
        'matched', {code} = 'm',
        'points', CASE WHEN {code} = 'm' THEN r.rule->'points' ELSE to_jsonb(0) END)
      || CASE WHEN {values} ? (r.rule->>'metric')
           THEN jsonb_build_object('actualValue', {values}->(r.rule->>'metric'))
           ELSE '{{}}'::jsonb END
      || CASE WHEN {code} = 's'
           THEN '{{"skippedReason":"missing_fundamental"}}'::jsonb
           ELSE '{{}}'::jsonb END
      ORDER BY r.n), '[]'::jsonb)
    FROM jsonb_array_elements(c.rules) WITH ORDINALITY AS r(rule, n)) END AS breakdown
FROM {table} s
JOIN criteria_versions c ON c.id = s.criteria_version_id
LEFT JOIN score_metric_values v ON v.score_date = s.score_date AND v.symbol = s.symbol
  AND v.base_currency = s.base_currency{joins}
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
    _revision_tables()
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
        "SELECT row_number() OVER () AS id, b.* FROM ("
        "SELECT a.user_id, a.symbol, a.score_date, a.criteria_version_id, a.base_currency, "
        "a.correlation_id, a.calculated_at, a.breakdown FROM asset_scores a "
        "UNION ALL "
        "SELECT h.user_id, h.symbol, h.score_date, h.criteria_version_id, "
        "coalesce(cc.base_currency, u.base_currency), h.correlation_id, h.calculated_at, "
        "r->'breakdown' FROM score_history h JOIN users u ON u.id = h.user_id "
        "LEFT JOIN calculation_currencies cc ON cc.correlation_id = h.correlation_id "
        "JOIN calculation_events e ON e.correlation_id = h.correlation_id "
        "AND e.event_type = 'SCORES_COMPUTED' "
        "CROSS JOIN LATERAL jsonb_array_elements(e.payload->'results') r "
        "WHERE r->>'assetId' = h.symbol AND jsonb_typeof(r->'breakdown') = 'array' "
        "AND NOT EXISTS (SELECT 1 FROM asset_scores a WHERE a.user_id = h.user_id "
        "AND a.symbol = h.symbol AND a.correlation_id = h.correlation_id)) b"
    )
    op.execute(
        f"UPDATE score_history h SET base_currency = o.base_currency, outcomes = (SELECT "
        f"coalesce(string_agg({_OUTCOME}, '' ORDER BY n), '') FROM "
        "jsonb_array_elements(o.breakdown) WITH ORDINALITY AS b(e, n)) FROM old_breakdowns o "
        "WHERE o.user_id = h.user_id AND o.symbol = h.symbol AND o.score_date = h.score_date "
        "AND o.correlation_id = h.correlation_id"
    )
    _convert_metric_values()
    op.execute(
        "DROP TABLE old_breakdowns, calculation_currencies, pair_values, differing, "
        "differing_breakdowns, row_signatures, signature_revisions, revision_values"
    )


# An entry `b.e` of a stored breakdown `o.breakdown` and the rule `r.rule` it is for (`_entries`):
# the rule's metric, and the entry's actualValue as `[actualValue]`, or `[]` when it has none.
_METRIC = "r.rule->>'metric'"
_VALUE = (
    "CASE WHEN b.e ? 'actualValue' THEN jsonb_build_array(b.e->'actualValue') ELSE '[]'::jsonb END"
)


def _entries(table: str) -> str:
    """Each entry of the breakdowns of `table` (like old_breakdowns, as `o`) with its rule. Rules
    that are not an array (invalid criteria, stored as the app wrote them) have no scores, but
    the planner may expand every version's rules before the join."""
    return (
        f"FROM {table} o JOIN criteria_versions c ON c.id = o.criteria_version_id "
        "CROSS JOIN LATERAL jsonb_array_elements(o.breakdown) WITH ORDINALITY AS b(e, n) "
        "JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(c.rules) = 'array' "
        "THEN c.rules END) WITH ORDINALITY AS r(rule, n) ON r.n = b.n AND r.rule ? 'metric'"
    )


# The revisions of the pairs whose breakdowns disagree: each distinct signature (a breakdown's
# values of the metrics that differ) goes, in the order the signatures were first computed, to
# the first revision it agrees with (the same value, or none, wherever both have the metric),
# else to a new one. A loop over the distinct signatures of those pairs, not over rows.
_GROUP_SIGNATURES = """
DO $$
DECLARE
  s record;
  merged jsonb[];
  n int;
  i int;
  pair_date date;
  pair_symbol text;
  pair_base char(3);
BEGIN
  FOR s IN
    SELECT score_date, symbol, base_currency, signature FROM row_signatures
    GROUP BY score_date, symbol, base_currency, signature
    ORDER BY score_date, symbol, base_currency, min(calculated_at), count(*) DESC,
      signature::text
  LOOP
    IF pair_date IS DISTINCT FROM s.score_date OR pair_symbol IS DISTINCT FROM s.symbol
        OR pair_base IS DISTINCT FROM s.base_currency THEN
      pair_date := s.score_date;
      pair_symbol := s.symbol;
      pair_base := s.base_currency;
      merged := '{}';
    END IF;
    n := coalesce(array_length(merged, 1), 0);
    i := 1;
    WHILE i <= n AND EXISTS (
        SELECT 1 FROM jsonb_each(s.signature) x JOIN jsonb_each(merged[i]) y ON y.key = x.key
        WHERE y.value <> x.value) LOOP
      i := i + 1;
    END LOOP;
    IF i > n THEN
      merged := array_append(merged, s.signature);
    ELSE
      merged[i] := merged[i] || s.signature;
    END IF;
    INSERT INTO signature_revisions
    VALUES (s.score_date, s.symbol, s.base_currency, s.signature, i);
  END LOOP;
END $$"""


def _convert_metric_values() -> None:
    """Each rule's actualValue under its metric's name, once per (date, symbol, base currency)
    when its breakdowns agree; when they differ (a batch re-scored after the fundamentals
    changed, say), once per revision, each breakdown keeping the values it was computed with."""
    pair = "score_date, symbol, base_currency"

    def same_pair(a: str, b: str) -> str:
        return (
            f"{a}.score_date = {b}.score_date AND {a}.symbol = {b}.symbol "
            f"AND {a}.base_currency = {b}.base_currency"
        )

    # The distinct values of each (date, symbol, base currency, metric), then those that differ.
    op.execute(
        "CREATE TEMPORARY TABLE pair_values ON COMMIT DROP AS SELECT DISTINCT o.score_date, "
        f"o.symbol, o.base_currency, {_METRIC} AS metric, {_VALUE} AS value "
        f"{_entries('old_breakdowns')}"
    )
    op.execute(
        f"CREATE TEMPORARY TABLE differing ON COMMIT DROP AS SELECT {pair}, metric "
        f"FROM pair_values GROUP BY {pair}, metric HAVING count(*) > 1"
    )
    op.execute("ANALYZE differing")
    op.execute(
        "INSERT INTO score_metric_values (score_date, symbol, base_currency, metric_values) "
        f"SELECT {pair}, jsonb_object_agg(metric, value->0) FROM pair_values p "
        "WHERE value <> '[]'::jsonb AND NOT EXISTS (SELECT 1 FROM differing d "
        f"WHERE {same_pair('d', 'p')}) GROUP BY {pair}"
    )
    # The breakdowns of the pairs whose values differ, each with its signature (none: its rules
    # read none of the metrics that differ, and it shows revision 1).
    op.execute(
        "CREATE TEMPORARY TABLE differing_breakdowns ON COMMIT DROP AS SELECT o.* FROM "
        f"old_breakdowns o WHERE EXISTS (SELECT 1 FROM differing d WHERE {same_pair('d', 'o')})"
    )
    op.execute(
        "CREATE TEMPORARY TABLE row_signatures ON COMMIT DROP AS SELECT o.user_id, o.symbol, "
        "o.score_date, o.correlation_id, o.base_currency, o.calculated_at, "
        f"jsonb_object_agg({_METRIC}, {_VALUE}) AS signature {_entries('differing_breakdowns')} "
        f"JOIN differing d ON {same_pair('d', 'o')} AND d.metric = {_METRIC} "
        "GROUP BY o.id, o.user_id, o.symbol, o.score_date, o.correlation_id, o.base_currency, "
        "o.calculated_at"
    )
    op.execute(
        "CREATE TEMPORARY TABLE signature_revisions (score_date date, symbol text, "
        "base_currency char(3), signature jsonb, revision smallint) ON COMMIT DROP"
    )
    op.execute(_GROUP_SIGNATURES)
    # Each revision's values: the pair's values its breakdowns agree on, and the revision's own
    # values of those that differ. (A revision may have none at all: `{}`, so that its rows
    # do not show another's.)
    op.execute(
        "CREATE TEMPORARY TABLE revision_values ON COMMIT DROP AS "
        "WITH own AS (SELECT s.score_date, s.symbol, s.base_currency, s.revision, "
        "jsonb_object_agg(x.key, x.value->0) FILTER (WHERE x.value <> '[]'::jsonb) AS v "
        "FROM signature_revisions s CROSS JOIN LATERAL jsonb_each(s.signature) x "
        f"GROUP BY s.score_date, s.symbol, s.base_currency, s.revision), "
        f"agreed AS (SELECT {pair}, jsonb_object_agg(metric, value->0) AS v FROM pair_values p "
        "WHERE value <> '[]'::jsonb AND EXISTS (SELECT 1 FROM differing d WHERE "
        f"{same_pair('d', 'p')}) AND NOT EXISTS (SELECT 1 FROM differing d WHERE "
        f"{same_pair('d', 'p')} AND d.metric = p.metric) GROUP BY {pair}) "
        "SELECT own.score_date, own.symbol, own.base_currency, own.revision, "
        "coalesce(agreed.v, '{}'::jsonb) || coalesce(own.v, '{}'::jsonb) AS metric_values "
        f"FROM own LEFT JOIN agreed ON {same_pair('agreed', 'own')}"
    )
    op.execute(
        "INSERT INTO score_metric_values (score_date, symbol, base_currency, metric_values) "
        f"SELECT {pair}, metric_values FROM revision_values WHERE revision = 1"
    )
    op.execute(
        f"INSERT INTO metric_values_revisions SELECT {pair}, revision, metric_values "
        "FROM revision_values WHERE revision > 1"
    )
    op.execute(
        "INSERT INTO scores_values_revisions SELECT s.user_id, s.symbol, s.score_date, "
        "s.correlation_id, r.revision FROM row_signatures s JOIN signature_revisions r "
        f"ON {same_pair('r', 's')} AND r.signature = s.signature WHERE r.revision > 1 "
        "ON CONFLICT DO NOTHING"
    )


# The old form of the SCORES_COMPUTED events written in the compact form (under `breakdown`, or
# `outcomes` before 2026-12-04): each result's canonical breakdown, from its calculation's history
# row, in place of its outcomes. The old schema keeps
# a past date's breakdowns there only (and its replay compares them); without them, the
# history of the nights scored in the compact form would be lost below 0004, and upgrading again
# would leave it null. An event is rewritten only when every result still has its history row
# (a calculation re-scored since, or whose rows are gone, keeps its compact event: nothing
# reads it below 0004 but the old replay, which cannot).
_OLD_FORM_EVENTS = """
UPDATE calculation_events e SET payload = jsonb_set(e.payload, '{results}', o.results)
FROM (
  SELECT e.id, jsonb_agg((r.result - 'outcomes') || jsonb_build_object('breakdown', h.breakdown)
    ORDER BY r.n) AS results, count(h.breakdown) = count(*) AS complete
  FROM calculation_events e
  CROSS JOIN LATERAL jsonb_array_elements(e.payload->'results') WITH ORDINALITY AS r(result, n)
  LEFT JOIN score_history_breakdowns h ON h.user_id = e.user_id
    AND h.symbol = r.result->>'assetId' AND h.correlation_id = e.correlation_id
  WHERE e.event_type = 'SCORES_COMPUTED' AND jsonb_typeof(e.payload->'results') = 'array'
    AND (e.payload->'results'->0 ? 'outcomes'
      OR jsonb_typeof(e.payload->'results'->0->'breakdown') = 'string')
  GROUP BY e.id) o
WHERE o.id = e.id AND o.complete"""


def downgrade() -> None:
    op.execute(_OLD_FORM_EVENTS)
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
    op.execute("DROP TABLE scores_values_revisions, metric_values_revisions")
    for table in ("asset_scores", "score_history"):
        op.drop_column(table, "base_currency")
        op.drop_column(table, "outcomes")
    op.drop_table("score_metric_values")
