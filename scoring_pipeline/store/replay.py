"""Replay of a stored calculation (SPEC §5): its events read from `calculation_events`, then
recomputed and compared by the engine (`engine.replay`)."""

import json
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.replay import ReplayResult, replay_events
from scoring_pipeline.errors import ReplayError


def replay(conn: Connection, correlation_id: str) -> ReplayResult:
    """Recompute the calculation `correlation_id` from its INPUTS_CAPTURED event."""
    return replay_events(correlation_id, _events(conn, correlation_id))


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
