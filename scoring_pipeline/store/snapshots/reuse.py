"""Taking a date's snapshot once: the lock its takers share, whether the date already has it,
and the stale reuse of a recent earlier one when every provider failed.

Shared by the rates and prices snapshots (and the membership's lock), whichever table they use.
"""

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.errors import ProviderError, SnapshotUnavailableError
from scoring_pipeline.providers.chain import last_resort
from scoring_pipeline.providers.models import PricesResult, RatesSnapshot

logger = logging.getLogger("scoring_pipeline.snapshots")

_R = TypeVar("_R", RatesSnapshot, PricesResult)


def lock_snapshot(conn: Connection, score_date: dt.date, what: str) -> None:
    """Serialise the takers of one snapshot of a date (market groups' runs may overlap) until
    the transaction ends: the second finds the first's snapshot instead of fetching again."""
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('snapshot:' || :k))"),
        {"k": f"{score_date.isoformat()}|{what}"},
    )


def has_snapshot(conn: Connection, table: sa.Table, score_date: dt.date) -> bool:
    return bool(
        conn.execute(
            sa.select(sa.literal(1)).where(sa.exists().where(table.c.score_date == score_date))
        ).scalar()
    )


def _latest_snapshot_date(
    conn: Connection,
    table: sa.Table,
    score_date: dt.date,
    max_age_days: int,
    symbols: Sequence[str] | None,
) -> dt.date | None:
    """The latest earlier date, at most `max_age_days` before, with rows fetched for it: a
    stale row is a copy of an older date's, and its data is as old as that date. With
    `symbols` (a market group's prices), the date must have a price of one of them."""
    oldest = score_date - dt.timedelta(days=max_age_days)
    query = sa.select(sa.func.max(table.c.score_date)).where(
        table.c.score_date < score_date, table.c.score_date >= oldest, ~table.c.is_stale
    )
    if symbols is not None:
        query = query.where(table.c.symbol.in_(list(symbols)), table.c.close.is_not(None))
    found: dt.date | None = conn.execute(query).scalar()
    return found


def reuse_recent_snapshot(
    conn: Connection,
    table: sa.Table,
    score_date: dt.date,
    max_age_days: int,
    symbols: Sequence[str] | None = None,
    priced: Sequence[str] | None = None,
) -> dt.date | None:
    """Copy the most recent earlier snapshot (≤ max_age_days old, fetched for its date) to the
    date, flagged stale (only `symbols` of a price snapshot when given: a market group's, the
    others' kept). The snapshot must price one of `priced` (default: `symbols`): a group's own
    instruments, not only the held symbols of other markets.

    Returns the date of the snapshot reused, or None when there is none recent enough.
    """
    chosen_by = priced if priced else symbols
    source_date = _latest_snapshot_date(conn, table, score_date, max_age_days, chosen_by)
    if source_date is None:
        return None
    only = " AND symbol = ANY(CAST(:y AS text[]))" if symbols is not None else ""
    params = {"d": score_date, "s": source_date, "y": list(symbols or [])}
    conn.execute(sa.text(f"DELETE FROM {table.name} WHERE score_date = :d{only}"), params)
    columns = [c.name for c in table.columns if c.name not in ("score_date", "is_stale")]
    column_list = ", ".join(columns)
    conn.execute(
        sa.text(
            f"INSERT INTO {table.name} (score_date, is_stale, {column_list}) "
            f"SELECT :d, true, {column_list} FROM {table.name} "
            f"WHERE score_date = :s AND NOT is_stale{only}"
        ),
        params,
    )
    return source_date


def stale_or_raise(
    conn: Connection,
    table: sa.Table,
    score_date: dt.date,
    max_age_days: int,
    error: Exception,
    what: str,
    symbols: Sequence[str] | None = None,
    priced: Sequence[str] | None = None,
    of: str | None = None,
) -> dict[str, Any]:
    """Every provider failed: reuse the latest recent snapshot, flagged stale, and return the
    figures saying so; or fail the snapshot when there is none recent enough (`of`: whose
    prices it must hold, for the message)."""
    reused = reuse_recent_snapshot(conn, table, score_date, max_age_days, symbols, priced)
    if reused is None:
        holding = f" with a price of the {of}" if of else ""
        raise SnapshotUnavailableError(
            f"every {what} provider failed for {score_date} ({error}) and no {what} snapshot "
            f"of the last {max_age_days} days{holding} exists to reuse; nothing can be scored"
        ) from error
    return {
        "fetched": False,
        "reused_existing": False,
        "is_stale": True,
        "stale_from": reused.isoformat(),
        "provider_error": str(error),
    }


def stale_or_last_resort(
    conn: Connection,
    table: sa.Table,
    score_date: dt.date,
    max_age_days: int,
    error: ProviderError,
    what: str,
    kind: type[_R],
    **reuse: Any,
) -> tuple[dict[str, Any], _R | None]:
    """`stale_or_raise`'s figures, and None; but with no recent snapshot to reuse, the
    providers' answer refused only for one rejected value (`chain.last_resort`: a small answer,
    where one value is over PROVIDER_MAX_REJECTED_FRACTION), to be stored as the date's answer
    with that value missing (one bad value never fails a night, SPEC §8), with the figures that
    say so."""
    try:
        return stale_or_raise(conn, table, score_date, max_age_days, error, what, **reuse), None
    except SnapshotUnavailableError:
        answer = last_resort(error, kind)
        if answer is None:
            raise
    logger.warning(
        "every %s provider failed for %s (%s) and no %s snapshot of the last %d days exists to "
        "reuse: %s's answer is used, its one rejected value stored as missing (one bad value "
        "never fails a night)",
        what,
        score_date,
        error,
        what,
        max_age_days,
        answer.source,
    )
    return {"last_resort": True, "provider_error": str(error)}, answer
