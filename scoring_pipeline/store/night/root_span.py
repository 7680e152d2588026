"""The night's `overnight-scoring-job` root span: its one emitter, `emit_root_span`, called after
the commit that closed the night; and `night_traceparent`, the trace the night's step spans join.
"""

import datetime as dt
import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store.night.closing import NIGHT_SPAN_FIGURES
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    Night,
    NightStatus,
    find_night,
    merge_metrics,
)


def night_traceparent(
    conn: Connection, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> str | None:
    """The W3C traceparent of the date's night, as recorded when it started."""
    night = find_night(conn, score_date, market_group=market_group)
    value = night.metrics.get("traceparent") if night is not None else None
    return str(value) if value else None


def _span_description(night: Night) -> str:
    if night.status is NightStatus.COMPLETED:
        return "every user scored"
    message = (night.error_details or {}).get("message")
    return (
        f"night {night.status.value}: {night.metrics.get('users_failed', 0)} users and "
        f"{night.metrics.get('batches_failed', 0)} batches failed"
        + (f"; {message}" if message else "")
    )


def emit_root_span(
    engine: sa.Engine, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> bool:
    """Emit the night's `overnight-scoring-job` span once per closing and content (call after
    the commit); False when tracing is off, the night is open, or the span would be the same."""
    from scoring_pipeline import telemetry

    if not telemetry.enabled():
        return False
    with engine.begin() as conn:
        night = find_night(conn, score_date, market_group=market_group, lock=True)
        if night is None or night.status is NightStatus.STARTED or night.completed_at is None:
            return False
        attributes: dict[str, Any] = {k: night.metrics.get(k) for k in NIGHT_SPAN_FIGURES}
        attributes.update(
            score_date=score_date.isoformat(),
            job_status=night.status.value,
            market_group=night.market_group,
            # Scored on an earlier date's snapshot because every provider failed (SPEC §8):
            # what `status` flags "(stale inputs)".
            rates_stale=bool(night.metrics.get("rates_stale")),
            prices_stale=bool(night.metrics.get("prices_stale")),
        )
        # Every figure SPEC §7 names is on the span, 0 when the night did not get that far (a
        # night failed before scoring had no `process_users_ms` nor `batches_failed`).
        for key in NIGHT_SPAN_FIGURES:
            if attributes.get(key) is None:
                attributes[key] = 0
        description = _span_description(night)
        # Emitted once per closing and content: a figure that lands after the night closed
        # (the other snapshot step of a night failed at one) re-emits it with the same ids,
        # which backends keep as the latest.
        emitted_for = (
            f"{night.completed_at.isoformat()} "
            + hashlib.sha256(dumps([attributes, description]).encode()).hexdigest()[:16]
        )
        if night.metrics.get("span_emitted_for") == emitted_for:
            return False
        emitted = telemetry.emit_night_span(
            night.metrics.get("traceparent"),
            start_ns=int(night.started_at.timestamp() * 1e9),
            end_ns=int(night.completed_at.timestamp() * 1e9),
            attributes=attributes,
            ok=night.status is NightStatus.COMPLETED,
            description=description,
        )
        if emitted:
            merge_metrics(
                conn, score_date, {"span_emitted_for": emitted_for}, market_group=market_group
            )
        return emitted
