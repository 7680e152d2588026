"""Replay of a stored calculation (SPEC §5): its events read from `calculation_events`, then
recomputed and compared by the engine (`engine.replay`)."""

import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.replay import ReplayResult, replay_events
from scoring_pipeline.errors import ReplayError
from scoring_pipeline.store.month_partitions import coverage


def replay(conn: Connection, correlation_id: str) -> ReplayResult:
    """Recompute the calculation `correlation_id` from its INPUTS_CAPTURED event and compare it
    with its SCORES_COMPUTED event and with the breakdowns stored for it, as the views rebuild
    them: its current scores (unless a later night replaced them) and its history rows (unless
    their month was pruned)."""
    events = _events(conn, correlation_id)
    if not events:
        _refuse_pruned(conn, correlation_id)
    result = replay_events(correlation_id, events)
    score_date = (events.get("CALC_STARTED") or {}).get("scoreDate")
    if result.user_id is None or score_date is None:
        return result
    differences: list[str] = []
    compared = 0
    for view in STORED_BREAKDOWNS:
        stored = conn.execute(
            sa.text(
                f"SELECT symbol, breakdown FROM {view} WHERE user_id = CAST(:u AS uuid) "
                "AND score_date = CAST(:d AS date) AND correlation_id = CAST(:c AS uuid) "
                "AND breakdown IS NOT NULL"  # null: a history row older than the compact form
            ),
            {"u": result.user_id, "d": score_date, "c": correlation_id},
        ).all()
        for row in stored:
            compared += 1
            recomputed = result.breakdowns.get(row.symbol)
            if row.breakdown != recomputed:
                differences.append(
                    f"{row.symbol}: {view} shows {row.breakdown} != recomputed {recomputed}"
                )
    everything = result.differences + differences
    return replace(
        result, differences=everything, reproduced=not everything, stored_breakdowns=compared
    )


def _refuse_pruned(conn: Connection, correlation_id: str) -> None:
    """A calculation with no event left whose current scores still show it: its month was
    pruned (only a clear error for an id an operator read off `asset_scores`)."""
    shown = conn.execute(
        sa.text(
            "SELECT user_id::text AS u, score_date, count(*) AS n FROM asset_scores "
            "WHERE correlation_id = CAST(:c AS uuid) GROUP BY 1, 2 LIMIT 1"
        ),
        {"c": correlation_id},
    ).first()
    months = coverage(conn)
    if shown is None:
        # No current score shows it: it may still be one of a pruned night's, which nothing
        # records per calculation any more; say that such nights exist, not only "no such id".
        dates = conn.execute(
            sa.text(
                "SELECT DISTINCT score_date FROM overnight_job_runs WHERE job_type = 'scoring' "
                "ORDER BY score_date"
            )
        ).scalars()
        gone = [d for d in dates if months.dropped(d, ("calculation_events",))]
        if gone:
            nights = (
                f"{gone[0]}" if len(gone) == 1 else f"{len(gone)} nights, {gone[0]} … {gone[-1]}"
            )
            raise ReplayError(
                f"no calculation with correlation id {correlation_id}: none is left, and the "
                f"events of the pruned nights ({nights}) are gone with their months "
                "(`scoring-pipeline prune`); a calculation of theirs can no longer be replayed"
            )
        return
    if not months.dropped(shown.score_date, ("calculation_events",)):
        return
    raise ReplayError(
        f"the events of calculation {correlation_id} (user {shown.u}, {shown.score_date}) were "
        f"pruned with their month (`scoring-pipeline prune`): it can no longer be replayed; its "
        f"{shown.n} current scores still show"
    )


# The views that rebuild a stored score's canonical breakdown (SPEC §4).
STORED_BREAKDOWNS = ("asset_score_breakdowns", "score_history_breakdowns")


def _events(conn: Connection, correlation_id: str) -> dict[str, dict[str, Any]]:
    try:
        rows = conn.execute(
            sa.text(
                "SELECT event_type, user_id, payload::text AS payload FROM calculation_events "
                "WHERE correlation_id = CAST(:c AS uuid) ORDER BY id"
            ),
            {"c": correlation_id},
        ).all()
    except sa.exc.DataError as exc:
        raise ReplayError(f"{correlation_id!r} is not a correlation id (a UUID)") from exc
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        payload = json.loads(row.payload, parse_float=Decimal)
        payload["_userId"] = str(row.user_id) if row.user_id else None
        out[row.event_type] = payload
    return out
