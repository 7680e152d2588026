"""The figures of the values a snapshot holds as rejected, for its step's metadata and the job
run's metrics: from a fresh fetch (logged), or from a date's stored snapshot reused as it is."""

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.providers.values import RejectedValue

logger = logging.getLogger("scoring_pipeline.snapshots")

# The `missing_reason` of a symbol the provider did not return: missing, but not a rejection.
NOT_RETURNED = "not_returned"
# How many rejected symbols or currencies the metadata and the job run's metrics list by name.
REJECTED_LISTED = 20
# How many a warning line names.
WARNING_LISTED = 5


def first_few(items: list[str], sep: str) -> str:
    """The first `WARNING_LISTED` items, joined with `sep`, and "…" when there are more."""
    shown = sep.join(items[:WARNING_LISTED])
    return f"{shown}{sep}…" if len(items) > WARNING_LISTED else shown


def stored_rejections(
    conn: Connection, table: sa.Table, score_date: dt.date, key: str
) -> dict[str, Any]:
    """The rejection figures of a date's stored snapshot (for a snapshot reused as it is)."""
    column = table.c[key]
    rows = conn.execute(
        sa.select(column, table.c.missing_reason)
        .where(
            table.c.score_date == score_date,
            table.c.missing_reason.is_not(None),
            table.c.missing_reason != NOT_RETURNED,
        )
        .order_by(column)
    ).all()
    return {
        "rejected": len(rows),
        "rejected_values": {str(r[0]).strip(): r[1] for r in rows[:REJECTED_LISTED]},
    }


def fetched_rejections(
    rejected: Mapping[str, RejectedValue], what: str, score_date: dt.date
) -> dict[str, Any]:
    """The figures of the values refused one by one: count and the first few with their reason."""
    listed = {key: rejected[key].reason.value for key in sorted(rejected)[:REJECTED_LISTED]}
    if rejected:
        logger.warning(
            "%s for %s: %d value(s) rejected and stored as missing: %s",
            what,
            score_date,
            len(rejected),
            "; ".join(rejected[key].detail for key in sorted(rejected)[:REJECTED_LISTED]),
        )
    return {"rejected": len(rejected), "rejected_values": listed}
