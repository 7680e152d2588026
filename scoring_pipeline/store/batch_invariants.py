"""The SPEC §5 invariants of one batch of a night, as SQL over the app database.

For the calculations of the batch's latest outcome (`scoring_batch_results`; a batch with none
violates `events`):
- `events`: each calculation has exactly one complete event set in order — CALC_STARTED,
  INPUTS_CAPTURED, SCORES_COMPUTED, CALC_COMPLETED `success` — or a failed one — CALC_STARTED,
  INPUTS_CAPTURED when captured, CALC_COMPLETED `failed` — matching the outcome; the batch's
  members' other calculations of the date (earlier scorings) are complete sets too;
- `history`: `score_history` holds exactly one row per (user, symbol, date), equal to the
  user's successful calculation (symbol, criteria version, score, correlation id, outcomes);
- `current`: the current scores of users not scored on a later date since are exactly that
  calculation's results (symbol, criteria version, score, max possible score, percentage,
  outcomes).

Each returns the violations (at most `limit`), empty when the invariant holds.
"""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store.market_scope import markets_param, symbol_in_group
from scoring_pipeline.store.planner import by_index

SUCCESS_EVENTS = ["CALC_STARTED", "INPUTS_CAPTURED", "SCORES_COMPUTED", "CALC_COMPLETED"]
FAILED_EVENTS = (
    ["CALC_STARTED", "INPUTS_CAPTURED", "CALC_COMPLETED"],
    ["CALC_STARTED", "CALC_COMPLETED"],
)


# The calculations of the batch's latest outcome: (user, correlation id, expected status).
_CALCS = """
WITH calcs AS (
    SELECT CAST(u->>'userId' AS uuid) AS user_id,
           CAST(u->>'correlationId' AS uuid) AS correlation_id, 'success' AS expected
    FROM scoring_batch_results r, jsonb_array_elements(r.succeeded_users) u
    WHERE r.score_date = :d AND r.market_group = :g AND r.batch_key = :b
    UNION ALL
    SELECT CAST(u->>'userId' AS uuid), CAST(u->>'correlationId' AS uuid), 'failed'
    FROM scoring_batch_results r, jsonb_array_elements(r.failed_users) u
    WHERE r.score_date = :d AND r.market_group = :g AND r.batch_key = :b
      AND u->>'correlationId' IS NOT NULL
)"""

# The results of each successful calculation, from its SCORES_COMPUTED event.
_EXPECTED = """,
expected AS (
    SELECT c.user_id, c.correlation_id, x->>'assetId' AS symbol,
           CAST(x->>'criteriaVersionId' AS uuid) AS cv, CAST(x->>'score' AS numeric) AS score,
           CAST(x->>'maxPossibleScore' AS numeric) AS max_score,
           CAST(x->>'percentage' AS numeric) AS percentage,
           -- the compact breakdown (SPEC §5); under `outcomes` in events before 2026-12-04
           CASE WHEN jsonb_typeof(x->'breakdown') = 'string' THEN x->>'breakdown'
                ELSE x->>'outcomes' END AS outcomes
    FROM calcs c
    JOIN calculation_events e ON e.correlation_id = c.correlation_id
        AND e.event_type = 'SCORES_COMPUTED'
    CROSS JOIN LATERAL jsonb_array_elements(e.payload->'results') x
    WHERE c.expected = 'success'
)"""

_EVENTS = (
    _CALCS
    + """
SELECT c.user_id::text AS user_id, c.correlation_id::text AS correlation_id, c.expected,
       coalesce(array_agg(e.event_type ORDER BY e.id)
                FILTER (WHERE e.id IS NOT NULL), '{}') AS events,
       array_agg(e.payload->>'status' ORDER BY e.id)
           FILTER (WHERE e.event_type = 'CALC_COMPLETED') AS statuses,
       count(DISTINCT e.user_id) FILTER (WHERE e.user_id <> c.user_id) AS foreign_users
FROM calcs c LEFT JOIN calculation_events e ON e.correlation_id = c.correlation_id
GROUP BY c.user_id, c.correlation_id, c.expected
ORDER BY 1"""
)

# The batch members' other calculations of the date (earlier scorings of the batch, other
# groups'): each must be a complete event set too (a partial one is damage: writes are atomic).
_OTHER_CALCULATIONS = (
    _CALCS
    + """
SELECT e.user_id::text AS user_id, e.correlation_id::text AS correlation_id,
       array_agg(e.event_type ORDER BY e.id) AS events,
       array_agg(e.payload->>'status' ORDER BY e.id)
           FILTER (WHERE e.event_type = 'CALC_COMPLETED') AS statuses
FROM calculation_events e
WHERE e.score_date = :d
  AND e.user_id IN (SELECT user_id FROM scoring_batches WHERE score_date = :d AND batch_key = :b)
  AND e.correlation_id NOT IN (SELECT correlation_id FROM calcs)
GROUP BY e.user_id, e.correlation_id
ORDER BY 1, 2"""
)

_HAS_OUTCOME = (
    "SELECT EXISTS (SELECT 1 FROM scoring_batch_results WHERE score_date = :d "
    "AND market_group = :g AND batch_key = :b)"
)

# `history` and `current` in one statement: both compare stored rows with the calculations'
# SCORES_COMPUTED results, which are decompressed and expanded once (`expected`, referenced
# twice, is materialised) instead of once per invariant. Each invariant's violations keep their
# own order and limit; a row names its invariant, and the columns of the other are null.
_HISTORY_AND_CURRENT = (
    _CALCS
    + _EXPECTED
    + """,
history_rows AS (
    SELECT h.user_id, h.correlation_id, h.symbol, h.criteria_version_id AS cv, h.score,
           h.outcomes
    FROM score_history h
    WHERE h.score_date = :d AND """
    + symbol_in_group("h.symbol")
    + """
      AND h.user_id IN (SELECT user_id FROM calcs WHERE expected = 'success')
),
history AS (
    SELECT CAST(coalesce(e.user_id, a.user_id) AS text) AS user_id,
           coalesce(e.symbol, a.symbol) AS symbol,
           count(e.symbol) AS expected_rows, count(a.symbol) AS stored_rows,
           bool_and((e.cv, e.score, e.correlation_id, e.outcomes)
                    IS NOT DISTINCT FROM (a.cv, a.score, a.correlation_id, a.outcomes)) AS equal
    FROM expected e FULL JOIN history_rows a ON a.user_id = e.user_id AND a.symbol = e.symbol
    -- Grouped by the uuid, not its text: sorting ~10,000 rows by text was a quarter of it.
    GROUP BY coalesce(e.user_id, a.user_id), coalesce(e.symbol, a.symbol)
    HAVING count(e.symbol) <> 1 OR count(a.symbol) <> 1
        OR NOT bool_and((e.cv, e.score, e.correlation_id, e.outcomes)
                        IS NOT DISTINCT FROM (a.cv, a.score, a.correlation_id, a.outcomes))
    ORDER BY 1, 2 LIMIT :n
),
users AS (
    SELECT user_id FROM calcs c WHERE expected = 'success' AND NOT EXISTS (
        SELECT 1 FROM asset_scores a WHERE a.user_id = c.user_id AND a.score_date > :d
        AND """
    + symbol_in_group("a.symbol")
    + """)
),
current_rows AS (
    SELECT a.user_id, a.correlation_id, a.symbol, a.criteria_version_id AS cv, a.score,
           a.max_possible_score AS max_score, a.percentage, a.outcomes
    FROM asset_scores a WHERE a.user_id IN (SELECT user_id FROM users) AND """
    + symbol_in_group("a.symbol")
    + """
),
current AS (
    SELECT coalesce(e.user_id, a.user_id)::text AS user_id,
           coalesce(e.symbol, a.symbol) AS symbol,
           e.score AS expected_score, a.score AS stored_score
    FROM (SELECT * FROM expected WHERE user_id IN (SELECT user_id FROM users)) e
    FULL JOIN current_rows a ON a.user_id = e.user_id AND a.symbol = e.symbol
    WHERE e.symbol IS NULL OR a.symbol IS NULL
       OR (e.cv, e.score, e.max_score, e.correlation_id, e.outcomes)
          IS DISTINCT FROM (a.cv, a.score, a.max_score, a.correlation_id, a.outcomes)
       OR e.percentage IS DISTINCT FROM a.percentage
    ORDER BY 1, 2 LIMIT :n
)
SELECT 'history' AS invariant, user_id, symbol, expected_rows, stored_rows, equal,
       NULL::numeric AS expected_score, NULL::numeric AS stored_score
FROM history
UNION ALL
SELECT 'current', user_id, symbol, NULL, NULL, NULL, expected_score, stored_score
FROM current"""
)

# The columns of each invariant's violations in `_HISTORY_AND_CURRENT`.
_COLUMNS = {
    "history": ("user_id", "symbol", "expected_rows", "stored_rows", "equal"),
    "current": ("user_id", "symbol", "expected_score", "stored_score"),
}


@dataclass(frozen=True, slots=True)
class InvariantReport:
    """One invariant over one batch: how many calculations it looked at, what was wrong."""

    name: str
    calculations: int
    violations: list[dict[str, Any]]

    @property
    def holds(self) -> bool:
        return not self.violations


def _event_violations(conn: Connection, params: dict[str, Any]) -> tuple[int, list[Any]]:
    if not conn.execute(sa.text(_HAS_OUTCOME), params).scalar_one():
        # The check runs after the batch's write, which records an outcome even for a batch
        # with no user of the group: with none, nothing of the batch can be checked.
        return 0, [{"batch": params["b"], "error": "no outcome recorded for the batch"}]
    rows = conn.execute(sa.text(_EVENTS), params).all()
    wrong: list[dict[str, Any]] = []
    for r in rows:
        events = list(r.events)
        expected = [SUCCESS_EVENTS] if r.expected == "success" else list(FAILED_EVENTS)
        if events not in expected or r.statuses != [r.expected] or r.foreign_users:
            wrong.append(_event_violation(r, r.expected, events))
    for r in conn.execute(sa.text(_OTHER_CALCULATIONS), params):
        events = list(r.events)
        shape = "success" if events == SUCCESS_EVENTS else "failed"
        if events not in [SUCCESS_EVENTS, *FAILED_EVENTS] or r.statuses != [shape]:
            wrong.append(_event_violation(r, "a complete set (not in the outcome)", events))
    return len(rows), wrong


def _event_violation(row: Any, expected: str, events: list[str]) -> dict[str, Any]:
    return {
        "userId": row.user_id,
        "correlationId": row.correlation_id,
        "expected": expected,
        "events": events,
        "statuses": row.statuses,
    }


def _plain(row: Any, columns: Sequence[str]) -> dict[str, Any]:
    """A violation as JSON-ready values (numbers as their exact text)."""
    values = row._mapping
    return {
        name: format(value, "f") if isinstance(value, Decimal) else value
        for name in columns
        for value in (values[name],)
    }


def check_batch(
    conn: Connection,
    score_date: dt.date,
    batch: str,
    *,
    limit: int = 20,
    market_group: str = "all",
    markets: Sequence[str] | None = None,
) -> list[InvariantReport]:
    """The three invariants of the batch's latest outcome in a market group (`events`,
    `history`, `current`), over the group's markets' scores."""
    params = {
        "d": score_date,
        "b": batch,
        "n": limit,
        "g": market_group,
        "m": markets_param(markets),
    }
    with by_index(conn):  # a batch's rows of tables with millions (see store.planner)
        calculations, events = _event_violations(conn, params)
        found: dict[str, list[dict[str, Any]]] = {"history": [], "current": []}
        for r in conn.execute(sa.text(_HISTORY_AND_CURRENT), params):
            found[r.invariant].append(_plain(r, _COLUMNS[r.invariant]))
        history, current = found["history"], found["current"]
    return [
        InvariantReport("events", calculations, events[:limit]),
        InvariantReport("history", calculations, history),
        InvariantReport("current", calculations, current),
    ]
