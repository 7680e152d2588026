"""The date's exchange-rate snapshot: USD→X for every currency a conversion of the night may
need, fetched once from the rates provider and frozen in `exchange_rate_snapshots`."""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.errors import ProviderError
from scoring_pipeline.providers.base import RatesSource
from scoring_pipeline.providers.models import RatesSnapshot
from scoring_pipeline.store import tables as t
from scoring_pipeline.store.snapshots.rejections import (
    fetched_rejections,
    logger,
    stored_rejections,
)
from scoring_pipeline.store.snapshots.reuse import has_snapshot, stale_or_last_resort

USD = "USD"


@dataclass(frozen=True, slots=True)
class RateRow:
    quote_currency: str
    rate: Decimal
    rate_date: dt.date
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
            **stored_rejections(conn, table, score_date, "quote_currency"),
        }
    currencies = needed_currencies(conn)
    resort: dict[str, Any] = {}
    try:
        snapshot = provider.fetch_usd_rates(currencies=currencies, as_of=score_date)
    except ProviderError as exc:
        figures, answer = stale_or_last_resort(
            conn, table, score_date, max_age_days, exc, "rates", RatesSnapshot
        )
        if answer is None:
            return {
                **figures,
                "currencies": len(load_rates(conn, score_date)),
                **stored_rejections(conn, table, score_date, "quote_currency"),
            }
        snapshot, resort = answer, figures
    count = store_rates(conn, score_date, snapshot, fetched_at=_now())
    missing = sorted(set(currencies) - set(snapshot.rates) - set(snapshot.rejected))
    if missing:
        them = "it" if len(missing) == 1 else "them"
        logger.warning(
            "rates for %s: %s not returned by %s: the users who need %s fail at scoring; once "
            "the provider has %s, re-materialise exchange_rates with refresh: true",
            score_date,
            ", ".join(missing),
            snapshot.source,
            them,
            them,
        )
    return {
        "fetched": True,
        "reused_existing": False,
        "is_stale": False,
        "currencies": count,
        "source": snapshot.source,
        "rate_date": snapshot.rate_date.isoformat(),
        "missing_currencies": missing,
        **fetched_rejections(snapshot.rejected, "rates", score_date),
        **resort,
    }
