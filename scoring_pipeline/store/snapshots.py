"""The frozen market data of a score date: exchange rates and prices.

Each snapshot is written once per date (delete the date's rows, insert, one transaction) and
read by every batch of that date. When every provider fails, the most recent earlier snapshot
no older than `SNAPSHOT_MAX_AGE_DAYS` is copied to the date, flagged `is_stale`.

A value the provider gave but the checks rejected (SPEC §8: per value) is stored as missing —
`rate` or `close` NULL — with its reason in `missing_reason` (a `Rejection` value, or
`not_returned` for a symbol the provider did not return); readers see it as absent.
"""

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.errors import ProviderError, SnapshotUnavailableError
from scoring_pipeline.providers import (
    PricesResult,
    PricesSource,
    RatesSnapshot,
    RatesSource,
    RejectedValue,
)
from scoring_pipeline.store import tables as t

logger = logging.getLogger("scoring_pipeline.snapshots")

USD = "USD"
NOT_RETURNED = "not_returned"
# How many rejected symbols or currencies the metadata and the job run's metrics list by name.
REJECTED_LISTED = 20


@dataclass(frozen=True, slots=True)
class RateRow:
    quote_currency: str
    rate: Decimal
    rate_date: dt.date
    source: str
    is_stale: bool


@dataclass(frozen=True, slots=True)
class PriceRow:
    symbol: str
    close: Decimal | None
    currency: str | None
    price_date: dt.date | None
    source: str
    is_stale: bool


def needed_currencies(conn: Connection) -> list[str]:
    """Every currency a conversion of the night may need: base, instrument and holding ones."""
    rows = conn.execute(
        sa.text(
            "SELECT base_currency FROM users WHERE deleted_at IS NULL "
            "UNION SELECT currency FROM instruments "
            "UNION SELECT currency FROM portfolio_assets"
        )
    ).scalars()
    return sorted({str(c).strip().upper() for c in rows if c} - {USD})


def store_rates(
    conn: Connection, score_date: dt.date, snapshot: RatesSnapshot, *, fetched_at: dt.datetime
) -> int:
    conn.execute(
        t.exchange_rate_snapshots.delete().where(
            t.exchange_rate_snapshots.c.score_date == score_date
        )
    )
    rows = [
        {
            "score_date": score_date,
            "base_currency": USD,
            "quote_currency": currency,
            "rate": rate,
            "missing_reason": None,
            "rate_date": snapshot.rate_date,
            "source": snapshot.source,
            "fetched_at": fetched_at,
            "is_stale": False,
        }
        for currency, rate in sorted(snapshot.rates.items())
    ]
    rows += [
        {
            "score_date": score_date,
            "base_currency": USD,
            "quote_currency": currency,
            "rate": None,
            "missing_reason": rejected.reason.value,
            "rate_date": snapshot.rate_date,
            "source": snapshot.source,
            "fetched_at": fetched_at,
            "is_stale": False,
        }
        for currency, rejected in sorted(snapshot.rejected.items())
    ]
    if rows:
        conn.execute(t.exchange_rate_snapshots.insert(), rows)
    return len(snapshot.rates)


def load_rates(conn: Connection, score_date: dt.date) -> dict[str, RateRow]:
    """The date's USD→X rates by quote currency (USD→USD is always present); a rejected rate
    is absent, so a conversion needing it fails naming the pair (SPEC §4)."""
    table = t.exchange_rate_snapshots
    rows = conn.execute(
        sa.select(table).where(
            table.c.score_date == score_date,
            table.c.base_currency == USD,
            table.c.rate.is_not(None),
        )
    ).all()
    out = {
        r.quote_currency.strip(): RateRow(
            r.quote_currency.strip(), r.rate, r.rate_date, r.source, r.is_stale
        )
        for r in rows
    }
    if out and USD not in out:
        any_row = next(iter(out.values()))
        out[USD] = RateRow(USD, Decimal(1), any_row.rate_date, any_row.source, any_row.is_stale)
    return out


def _latest_snapshot_date(
    conn: Connection, table: sa.Table, score_date: dt.date, max_age_days: int
) -> dt.date | None:
    oldest = score_date - dt.timedelta(days=max_age_days)
    found = conn.execute(
        sa.select(sa.func.max(table.c.score_date)).where(
            table.c.score_date < score_date, table.c.score_date >= oldest
        )
    ).scalar()
    return found


def reuse_recent_snapshot(
    conn: Connection,
    table: sa.Table,
    score_date: dt.date,
    max_age_days: int,
    symbols: Sequence[str] | None = None,
) -> dt.date | None:
    """Copy the most recent earlier snapshot (≤ max_age_days old) to the date, flagged stale
    (only `symbols` of a price snapshot when given: a market group's, the others' kept).

    Returns the date of the snapshot reused, or None when there is none recent enough.
    """
    source_date = _latest_snapshot_date(conn, table, score_date, max_age_days)
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
            f"SELECT :d, true, {column_list} FROM {table.name} WHERE score_date = :s{only}"
        ),
        params,
    )
    return source_date


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


def needed_symbols(
    conn: Connection, score_date: dt.date, markets: Sequence[str] | None = None
) -> list[str]:
    """Every instrument of every market targeted by the date's active users, plus held symbols.

    For a market group (`markets`): the instruments of its markets its users target, plus the
    held symbols of its users (those with an active criteria set in its markets)."""
    in_group = (
        "(CAST(:m AS text[]) IS NULL OR EXISTS (SELECT 1 FROM criteria_versions g "
        "WHERE g.user_id = b.user_id AND g.is_active "
        "AND g.target_market = ANY(CAST(:m AS text[]))))"
    )
    rows = conn.execute(
        sa.text(
            "SELECT i.symbol FROM instruments i WHERE EXISTS ("
            "  SELECT 1 FROM criteria_versions c JOIN scoring_batches b "
            "    ON b.user_id = c.user_id AND b.score_date = :d "
            "  WHERE c.is_active AND c.target_market = i.market AND c.asset_type = i.asset_type) "
            "AND (CAST(:m AS text[]) IS NULL OR i.market = ANY(CAST(:m AS text[]))) "
            "UNION SELECT a.symbol FROM portfolio_assets a "
            "  JOIN portfolios p ON p.id = a.portfolio_id "
            "  JOIN scoring_batches b ON b.user_id = p.user_id AND b.score_date = :d "
            f"  WHERE NOT a.is_ignored AND {in_group}"
        ),
        {"d": score_date, "m": list(markets) if markets is not None else None},
    ).scalars()
    return sorted(set(rows))


def instrument_currencies(conn: Connection, symbols: list[str]) -> dict[str, str]:
    """The currency each of ``symbols`` that is an instrument trades in (quotes must match)."""
    rows = conn.execute(
        sa.select(t.instruments.c.symbol, t.instruments.c.currency).where(
            t.instruments.c.symbol.in_(symbols)
        )
    ).all()
    return {r.symbol: str(r.currency).strip().upper() for r in rows if r.currency}


def _missing_reason(symbol: str, result: PricesResult) -> str | None:
    if symbol in result.quotes:
        return None
    rejected = result.rejected.get(symbol)
    return rejected.reason.value if rejected is not None else NOT_RETURNED


def store_prices(
    conn: Connection,
    score_date: dt.date,
    symbols: list[str],
    result: PricesResult,
    *,
    fetched_at: dt.datetime,
    only_these: bool = False,
) -> dict[str, int]:
    """Store the date's prices of `symbols`: replacing the date's whole snapshot, or only these
    symbols' rows (`only_these`: a market group adds its own to the date's snapshot)."""
    replaced = t.price_snapshots.delete().where(t.price_snapshots.c.score_date == score_date)
    if only_these:
        replaced = replaced.where(t.price_snapshots.c.symbol.in_(symbols))
    conn.execute(replaced)
    rows: list[dict[str, Any]] = []
    for symbol in symbols:
        quote = result.quotes.get(symbol)
        rows.append(
            {
                "score_date": score_date,
                "symbol": symbol,
                "close": quote.close if quote else None,
                "currency": quote.currency if quote else None,
                "price_date": quote.price_date if quote else None,
                "source": quote.source if quote else result.source,
                "fetched_at": fetched_at,
                "is_stale": False,
                "missing_reason": _missing_reason(symbol, result),
            }
        )
    if rows:
        conn.execute(t.price_snapshots.insert(), rows)
    priced = sum(1 for r in rows if r["close"] is not None)
    return {"symbols": len(rows), "priced": priced, "missing": len(rows) - priced}


def _stored_rejections(
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


def _rejections(
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


def load_prices(conn: Connection, score_date: dt.date, symbols: list[str]) -> dict[str, PriceRow]:
    table = t.price_snapshots
    rows = conn.execute(
        sa.select(table).where(table.c.score_date == score_date, table.c.symbol.in_(symbols))
    ).all()
    return {
        r.symbol: PriceRow(
            r.symbol,
            r.close,
            r.currency.strip() if r.currency else None,
            r.price_date,
            r.source,
            r.is_stale,
        )
        for r in rows
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stale_or_raise(
    conn: Connection,
    table: sa.Table,
    score_date: dt.date,
    max_age_days: int,
    error: Exception,
    what: str,
    symbols: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every provider failed: reuse the latest recent snapshot, flagged stale, and return the
    figures saying so; or fail the snapshot when there is none recent enough."""
    reused = reuse_recent_snapshot(conn, table, score_date, max_age_days, symbols)
    if reused is None:
        raise SnapshotUnavailableError(
            f"every {what} provider failed for {score_date} ({error}) and no {what} snapshot "
            f"of the last {max_age_days} days exists to reuse; nothing can be scored"
        ) from error
    return {
        "fetched": False,
        "reused_existing": False,
        "is_stale": True,
        "stale_from": reused.isoformat(),
        "provider_error": str(error),
    }


def snapshot_rates(
    conn: Connection,
    score_date: dt.date,
    provider: RatesSource,
    *,
    max_age_days: int,
    refresh: bool,
) -> dict[str, Any]:
    """Freeze the date's rates (fetch once; reuse an existing snapshot unless `refresh`)."""
    table = t.exchange_rate_snapshots
    if not refresh and has_snapshot(conn, table, score_date):
        rates = load_rates(conn, score_date)
        return {
            "fetched": False,
            "reused_existing": True,
            "currencies": len(rates),
            "is_stale": any(r.is_stale for r in rates.values()),
            **_stored_rejections(conn, table, score_date, "quote_currency"),
        }
    currencies = needed_currencies(conn)
    try:
        snapshot = provider.fetch_usd_rates(currencies=currencies)
    except ProviderError as exc:
        return {
            **_stale_or_raise(conn, table, score_date, max_age_days, exc, "rates"),
            "currencies": len(load_rates(conn, score_date)),
            **_stored_rejections(conn, table, score_date, "quote_currency"),
        }
    count = store_rates(conn, score_date, snapshot, fetched_at=_now())
    missing = sorted(set(currencies) - set(snapshot.rates) - set(snapshot.rejected))
    return {
        "fetched": True,
        "reused_existing": False,
        "is_stale": False,
        "currencies": count,
        "source": snapshot.source,
        "rate_date": snapshot.rate_date.isoformat(),
        "missing_currencies": missing,
        **_rejections(snapshot.rejected, "rates", score_date),
    }


def snapshot_prices(
    conn: Connection,
    score_date: dt.date,
    provider: PricesSource,
    *,
    max_age_days: int,
    refresh: bool,
    markets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Freeze the date's prices for every needed symbol (batched requests by the provider);
    for a market group (`markets`), for the group's symbols the date has no price of yet."""
    table = t.price_snapshots
    if markets is not None:
        return _snapshot_group_prices(conn, score_date, provider, max_age_days, refresh, markets)
    if not refresh and has_snapshot(conn, table, score_date):
        stale = conn.execute(
            sa.select(sa.func.count()).where(table.c.score_date == score_date, table.c.is_stale)
        ).scalar_one()
        total = conn.execute(
            sa.select(sa.func.count()).where(table.c.score_date == score_date)
        ).scalar_one()
        return {
            "fetched": False,
            "reused_existing": True,
            "symbols": total,
            "is_stale": bool(stale),
            **_stored_rejections(conn, table, score_date, "symbol"),
        }
    symbols = needed_symbols(conn, score_date)
    if not symbols:
        conn.execute(table.delete().where(table.c.score_date == score_date))
        return {"fetched": False, "reused_existing": False, "is_stale": False, "symbols": 0}
    try:
        result = provider.fetch_prices(
            symbols=symbols, currencies=instrument_currencies(conn, symbols)
        )
    except ProviderError as exc:
        return {
            **_stale_or_raise(conn, table, score_date, max_age_days, exc, "prices"),
            **_stored_rejections(conn, table, score_date, "symbol"),
        }
    counts = store_prices(conn, score_date, symbols, result, fetched_at=_now())
    return {
        "fetched": True,
        "reused_existing": False,
        "is_stale": False,
        "source": result.source,
        "missing_symbols": result.missing[:50],
        **counts,
        **_rejections(result.rejected, "prices", score_date),
    }


def _snapshot_group_prices(
    conn: Connection,
    score_date: dt.date,
    provider: PricesSource,
    max_age_days: int,
    refresh: bool,
    markets: Sequence[str],
) -> dict[str, Any]:
    table = t.price_snapshots
    symbols = needed_symbols(conn, score_date, markets)
    stored = dict(
        conn.execute(
            sa.select(table.c.symbol, table.c.is_stale).where(
                table.c.score_date == score_date, table.c.symbol.in_(symbols)
            )
        ).all()
    )
    wanted = symbols if refresh else [s for s in symbols if s not in stored]
    figures: dict[str, Any] = {
        "symbols": len(symbols),
        "reused_symbols": len(symbols) - len(wanted),
    }
    if not wanted:
        return {
            "fetched": False,
            "reused_existing": True,
            "is_stale": any(stored.values()),
            **figures,
            **_stored_rejections(conn, table, score_date, "symbol"),
        }
    try:
        result = provider.fetch_prices(
            symbols=wanted, currencies=instrument_currencies(conn, wanted)
        )
    except ProviderError as exc:
        stale = _stale_or_raise(conn, table, score_date, max_age_days, exc, "prices", wanted)
        return {**stale, **figures}
    counts = store_prices(conn, score_date, wanted, result, fetched_at=_now(), only_these=True)
    return {
        "fetched": True,
        "reused_existing": False,
        "is_stale": any(stored.values()) and not refresh,
        "source": result.source,
        "missing_symbols": result.missing[:50],
        **counts,
        **figures,
        **_rejections(result.rejected, "prices", score_date),
    }
