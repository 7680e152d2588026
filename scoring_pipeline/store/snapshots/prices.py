"""The date's price snapshot: a close for every symbol the night needs, fetched once from the
prices provider (in batched requests) and frozen in `price_snapshots`; a market group adds its
own symbols to the date's snapshot."""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.errors import ProviderError
from scoring_pipeline.providers.base import PricesSource
from scoring_pipeline.providers.models import PricesResult, RequiredSymbols
from scoring_pipeline.store import tables as t
from scoring_pipeline.store.market_scope import markets_param, member_in_group
from scoring_pipeline.store.snapshots.rejections import (
    NOT_RETURNED,
    fetched_rejections,
    first_few,
    logger,
    stored_rejections,
)
from scoring_pipeline.store.snapshots.reuse import has_snapshot, stale_or_last_resort


@dataclass(frozen=True, slots=True)
class PriceRow:
    symbol: str
    close: Decimal | None
    currency: str | None
    price_date: dt.date | None
    source: str
    is_stale: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def needed_symbols(
    conn: Connection, score_date: dt.date, markets: Sequence[str] | None = None
) -> list[str]:
    """Every instrument of every market targeted by the date's active users, plus held symbols.

    For a market group (`markets`): the instruments of its markets its users target, plus the
    held symbols of its users (those with an active criteria set in its markets)."""
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
            f"  WHERE NOT a.is_ignored AND {member_in_group()}"
        ),
        {"d": score_date, "m": markets_param(markets)},
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
    return {
        "symbols": len(rows),
        "priced": priced,
        "missing": len(rows) - priced,
        "dated_after_score_date": _dated_after(score_date, result, priced),
    }


def _dated_after(score_date: dt.date, result: PricesResult, priced: int) -> int:
    """How many quotes are dated after the score date, with a warning when any is: the
    provider gives its latest closes, so a date scored for the first time days later (a past
    date's `score --date`) freezes later closes as its own."""
    later = [q.price_date for q in result.quotes.values() if q.price_date > score_date]
    if later:
        logger.warning(
            "prices for %s: %d of %d quotes are dated after it (up to %s): the provider's "
            "latest closes, not those of %s",
            score_date,
            len(later),
            priced,
            max(later),
            score_date,
        )
    return len(later)


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
            **_unpriced(conn, score_date),
            **stored_rejections(conn, table, score_date, "symbol"),
        }
    symbols = needed_symbols(conn, score_date)
    if not symbols:
        conn.execute(table.delete().where(table.c.score_date == score_date))
        return {
            "fetched": False,
            "reused_existing": False,
            "is_stale": False,
            "symbols": 0,
            **_unpriced(conn, score_date),  # none: the date's rows are deleted
        }
    resort: dict[str, Any] = {}
    try:
        result = provider.fetch_prices(
            symbols=symbols, currencies=instrument_currencies(conn, symbols), as_of=score_date
        )
    except ProviderError as exc:
        figures, answer = stale_or_last_resort(
            conn, table, score_date, max_age_days, exc, "prices", PricesResult
        )
        if answer is None:
            reused = conn.execute(
                sa.select(sa.func.count()).where(table.c.score_date == score_date)
            ).scalar_one()
            return {
                **figures,
                "symbols": reused,  # status: "N of <symbols> needed symbols without a price"
                **_unpriced(conn, score_date),
                **stored_rejections(conn, table, score_date, "symbol"),
            }
        result, resort = answer, figures
    counts = store_prices(conn, score_date, symbols, result, fetched_at=_now())
    _warn_not_returned(score_date, result, len(symbols))
    return {
        "fetched": True,
        "reused_existing": False,
        "is_stale": False,
        "source": result.source,
        "missing_symbols": result.missing[:50],
        **counts,
        **_unpriced(conn, score_date),
        **fetched_rejections(result.rejected, "prices", score_date),
        **resort,
    }


def _warn_not_returned(score_date: dt.date, result: PricesResult, asked: int) -> None:
    """Symbols the provider did not return are stored as missing (SPEC §8): said, with a few."""
    if result.missing:
        logger.warning(
            "prices for %s: %d of %d symbols not returned by %s, stored as missing: %s",
            score_date,
            len(result.missing),
            asked,
            result.source,
            first_few(result.missing, ", "),
        )


def _snapshot_group_prices(
    conn: Connection,
    score_date: dt.date,
    provider: PricesSource,
    max_age_days: int,
    refresh: bool,
    markets: Sequence[str],
) -> dict[str, Any]:
    symbols = needed_symbols(conn, score_date, markets)
    known = _stored_of_group(conn, score_date, symbols, markets)
    stored = {s: k.is_stale for s, k in known.items() if k.stored}
    wanted = [s for s in symbols if _ask(known[s], refresh)]
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
            **_unpriced(conn, score_date, symbols),
            **stored_rejections(conn, t.price_snapshots, score_date, "symbol"),
        }
    asking = set(wanted)
    # An answer that would leave the group's whole market unpriced is not usable (the next
    # provider is asked), though it may price its users' held symbols of other markets: when
    # none of its own instruments keeps a price of the date, the answer must price one.
    own = frozenset(s for s in wanted if known[s].own)
    kept_own = any(
        k.own and k.stored and not k.unpriced for s, k in known.items() if s not in asking
    )
    required = (
        RequiredSymbols(symbols=own, what=f"instruments of {', '.join(markets)}")
        if own and not kept_own
        else None
    )
    try:
        result = provider.fetch_prices(
            symbols=wanted,
            currencies=instrument_currencies(conn, wanted),
            required=required,
            # When the group's market keeps prices of the date, the few symbols it still lacks
            # (stored unpriced by an earlier night, or held symbols no provider knows) may all
            # be missing: an empty answer is then no failure.
            expect_some=not kept_own,
            as_of=score_date,
        )
    except ProviderError as exc:
        reuse, answer = stale_or_last_resort(
            conn,
            t.price_snapshots,
            score_date,
            max_age_days,
            exc,
            "prices",
            PricesResult,
            symbols=wanted,
            priced=sorted(own),
            of=f"instruments of {', '.join(markets)}" if own else None,
        )
        if answer is None:
            return {**reuse, **figures, **_unpriced(conn, score_date, symbols)}
        result, figures = answer, {**figures, **reuse}
    counts = store_prices(conn, score_date, wanted, result, fetched_at=_now(), only_these=True)
    _warn_not_returned(score_date, result, len(wanted))
    return {
        "fetched": True,
        "reused_existing": False,
        "is_stale": any(stale for s, stale in stored.items() if s not in asking),
        "source": result.source,
        "missing_symbols": result.missing[:50],
        **counts,
        **figures,
        **_unpriced(conn, score_date, symbols),
        **fetched_rejections(result.rejected, "prices", score_date),
    }


def _ask(known: "_Known", refresh: bool) -> bool:
    """Whether a group's night asks the provider for one of its symbols: one the date has no
    row of; one of its own instruments another group's night stored unpriced (its users hold it,
    and the provider left it out then: reused, this night would score its market without its
    price); on `refresh`, its own instruments and any symbol still unpriced. The price of another
    market's symbol the date has is kept: that market's group night scored with it."""
    if not known.stored:
        return True
    if refresh:
        return known.own or known.unpriced
    return known.own and known.unpriced


@dataclass(frozen=True, slots=True)
class _Known:
    """What the date's snapshot holds of one of a group's symbols, and whether it is one of the
    group's own instruments (not a held symbol of another market)."""

    stored: bool
    is_stale: bool
    unpriced: bool
    own: bool


def _stored_of_group(
    conn: Connection, score_date: dt.date, symbols: list[str], markets: Sequence[str]
) -> dict[str, _Known]:
    found = conn.execute(
        sa.text(
            "SELECT s.symbol, p.symbol IS NOT NULL AS stored, "
            "  coalesce(p.is_stale, false) AS is_stale, p.close IS NULL AS unpriced, "
            "  coalesce(i.market = ANY(CAST(:m AS text[])), false) AS own "
            "FROM unnest(CAST(:s AS text[])) AS s(symbol) "
            "LEFT JOIN price_snapshots p ON p.score_date = :d AND p.symbol = s.symbol "
            "LEFT JOIN instruments i ON i.symbol = s.symbol"
        ),
        {"d": score_date, "s": symbols, "m": list(markets)},
    ).all()
    return {r.symbol: _Known(r.stored, r.is_stale, r.unpriced, r.own) for r in found}


def _unpriced(
    conn: Connection, score_date: dt.date, symbols: Sequence[str] | None = None
) -> dict[str, Any]:
    """How many of the date's needed symbols (`symbols`; None: the whole snapshot) are stored
    with no price, and the first few: their assets are skipped, and `status` says so."""
    table = t.price_snapshots
    query = (
        sa.select(table.c.symbol, table.c.missing_reason)
        .where(table.c.score_date == score_date, table.c.close.is_(None))
        .order_by(table.c.symbol)
    )
    if symbols is not None:
        query = query.where(table.c.symbol.in_(symbols))
    found = conn.execute(query).all()
    return {
        "unpriced": len(found),
        "unpriced_symbols": [r.symbol for r in found[:_NAMED]],
        # Of those, the ones whose value the provider gave and that were refused (SPEC §8).
        "unpriced_rejected": sum(1 for r in found if r.missing_reason not in (None, NOT_RETURNED)),
    }


_NAMED = 5  # unpriced symbols named in the figures (all are in `price_snapshots`)
