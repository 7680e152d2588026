"""The night's `overnight-scoring-job` root span: its one emitter, `emit_root_span`, called after
the commit that closed the night; `send_pending_root_spans`, which sends again the ones the
collector did not take; and `night_traceparent`, the trace the night's step spans join.
"""

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store.night.closing import NIGHT_SPAN_FIGURES
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    SCORING,
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


class Report(StrEnum):
    """What emitting a night's root span did."""

    SENT = "sent"  # the collector took it
    NOT_TAKEN = "not taken"  # the collector did not: kept pending, sent again later
    UNCHANGED = "unchanged"  # the collector has it as it is
    NONE = "none"  # tracing off, the night open, or no night


# The night's metrics keys: the closing and content of the root span the collector took, and
# of one it did not take (the night's report still to send).
EMITTED_FOR = "span_emitted_for"
PENDING = "span_pending"
# How far back nights' reports the collector did not take are sent again.
PENDING_KEPT = dt.timedelta(days=7)


def emit_root_span(
    engine: sa.Engine, score_date: dt.date, *, market_group: str = ALL_MARKETS
) -> bool:
    """Emit the night's `overnight-scoring-job` span once per closing and content (call after
    the commit); True when the collector took it. One it did not take (down, refusing, silent)
    is kept pending in the night's metrics, and `send_pending_root_spans` sends it again."""
    return _emit(engine, score_date, market_group) is Report.SENT


def _emit(engine: sa.Engine, score_date: dt.date, market_group: str) -> Report:
    from scoring_pipeline import telemetry

    if not telemetry.enabled():
        return Report.NONE
    with engine.begin() as conn:
        night = find_night(conn, score_date, market_group=market_group, lock=True)
        if night is None or night.status is NightStatus.STARTED or night.completed_at is None:
            return Report.NONE
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
        if night.metrics.get(EMITTED_FOR) == emitted_for:
            if night.metrics.get(PENDING) is not None:  # a later content's, now gone again
                merge_metrics(conn, score_date, {}, market_group=market_group, without=[PENDING])
            return Report.UNCHANGED
        taken = telemetry.emit_night_span(
            night.metrics.get("traceparent"),
            start_ns=int(night.started_at.timestamp() * 1e9),
            end_ns=int(night.completed_at.timestamp() * 1e9),
            attributes=attributes,
            ok=night.status is NightStatus.COMPLETED,
            description=description,
        )
        if taken is None:
            return Report.NONE
        if taken:
            merge_metrics(
                conn,
                score_date,
                {EMITTED_FOR: emitted_for},
                market_group=market_group,
                without=[PENDING],
            )
            return Report.SENT
        merge_metrics(conn, score_date, {PENDING: emitted_for}, market_group=market_group)
        return Report.NOT_TAKEN


@dataclass(frozen=True, slots=True)
class PendingReports:
    """What `send_pending_root_spans` did: the nights whose report it sent, and those still
    pending (the collector did not take the first it tried; the rest wait for the next try)."""

    sent: list[tuple[dt.date, str]]
    pending: list[tuple[dt.date, str]]


def reports_of(nights: list[tuple[dt.date, str]]) -> str:
    """The nights' reports named, as messages say: the report of the night of D (group), or
    the reports of the nights of D (group), D' (group'), …"""
    named = ", ".join(f"{day} ({group})" for day, group in nights)
    if len(nights) > 1:
        return f"the reports of the nights of {named}"
    return f"the report of the night of {named}"


def pending_root_spans(conn: Connection, since: dt.datetime) -> list[tuple[dt.date, str]]:
    """(score date, market group) of the closed nights since `since` whose root span the
    collector did not take, oldest closing first."""
    rows = conn.execute(
        sa.text(
            "SELECT score_date, market_group FROM overnight_job_runs "
            "WHERE job_type = :jt AND metrics ->> :p IS NOT NULL AND completed_at >= :since "
            "ORDER BY completed_at, score_date, market_group"
        ),
        {"jt": SCORING, "p": PENDING, "since": since},
    ).all()
    return [(r.score_date, r.market_group) for r in rows]


def send_pending_root_spans(engine: sa.Engine) -> PendingReports:
    """Send again the root spans of the nights closed within `PENDING_KEPT` that the
    collector did not take when they closed, until it refuses one (the rest then wait for
    the next call). Nothing when tracing is off."""
    from scoring_pipeline import telemetry

    if not telemetry.enabled():
        return PendingReports([], [])
    since = dt.datetime.now(dt.UTC) - PENDING_KEPT
    with engine.connect() as conn:
        pending = pending_root_spans(conn, since)
    sent: list[tuple[dt.date, str]] = []
    for index, (score_date, group) in enumerate(pending):
        report = _emit(engine, score_date, group)
        if report is Report.NOT_TAKEN:
            return PendingReports(sent, pending[index:])
        if report is Report.SENT:
            sent.append((score_date, group))
    return PendingReports(sent, [])
