"""A batch's inputs read from the date's frozen snapshots and membership: its users (of the
market group's markets), their criteria sets, the universes with prices and fundamentals, rates."""

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.batch_inputs import BatchInputs, CriteriaRow, UserRow
from scoring_pipeline.engine.columns import MetricsCache
from scoring_pipeline.engine.criteria import FUNDAMENTAL_FIELDS
from scoring_pipeline.engine.metrics import InstrumentData
from scoring_pipeline.store.market_scope import CRITERIA_IN_GROUP, markets_param, member_in_group
from scoring_pipeline.store.snapshots.prices import load_prices
from scoring_pipeline.store.snapshots.rates import load_rates
from scoring_pipeline.store.snapshots.rejections import first_few

logger = logging.getLogger("scoring_pipeline.inputs")


def _load_users(
    conn: Connection, score_date: dt.date, batch: str, markets: Sequence[str] | None
) -> list[UserRow]:
    """The batch's members; for a market group, those with an active criteria set in it.

    A member whose user row is gone since the membership was frozen (deleted, or `demo-data`
    run during the night) has no base currency and no criteria: it is counted skipped, as a
    member whose criteria were deactivated since, so the night's figures still add up."""
    rows = conn.execute(
        sa.text(
            "SELECT b.user_id, coalesce(u.base_currency, '') AS base_currency "
            "FROM scoring_batches b LEFT JOIN users u ON u.id = b.user_id "
            f"WHERE b.score_date = :d AND b.batch_key = :b AND {member_in_group()} "
            "ORDER BY b.user_id"
        ),
        {"d": score_date, "b": batch, "m": markets_param(markets)},
    ).all()
    return [UserRow(str(r.user_id), str(r.base_currency).strip().upper()) for r in rows]


def _load_criteria(
    conn: Connection, user_ids: list[str], markets: Sequence[str] | None
) -> dict[str, list[CriteriaRow]]:
    """The highest active version of each (user, market, asset type) criteria set (of the
    group's markets only, for a market group)."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (user_id, target_market, asset_type) id, user_id, "
            "target_market, asset_type, version, rules::text AS rules_text "
            "FROM criteria_versions WHERE is_active AND user_id = ANY(CAST(:u AS uuid[])) "
            f"AND {CRITERIA_IN_GROUP} "
            "ORDER BY user_id, target_market, asset_type, version DESC, created_at DESC"
        ),
        {"u": user_ids, "m": markets_param(markets)},
    ).all()
    out: dict[str, list[CriteriaRow]] = defaultdict(list)
    for r in rows:
        out[str(r.user_id)].append(
            CriteriaRow(
                str(r.id), str(r.user_id), r.target_market, r.asset_type, r.version, r.rules_text
            )
        )
    return out


def _load_universes(
    conn: Connection, score_date: dt.date, keys: Iterable[tuple[str, str]]
) -> tuple[dict[tuple[str, str], list[InstrumentData]], dict[str, dt.date], dict[str, Any]]:
    keys = sorted(set(keys))
    if not keys:
        return {}, {}, {}
    markets = [k[0] for k in keys]
    types = [k[1] for k in keys]
    # A universe in its symbols' code point order, whatever the database's collation: the
    # order of its scores in SCORES_COMPUTED and of its prices in INPUTS_CAPTURED.
    instruments = conn.execute(
        sa.text(
            "SELECT i.symbol, i.market, i.asset_type, i.currency FROM instruments i "
            "JOIN unnest(CAST(:m AS text[]), CAST(:t AS text[])) AS k(market, asset_type) "
            'ON k.market = i.market AND k.asset_type = i.asset_type ORDER BY i.symbol COLLATE "C"'
        ),
        {"m": markets, "t": types},
    ).all()
    symbols = [r.symbol for r in instruments]
    columns = ", ".join(FUNDAMENTAL_FIELDS)
    fundamentals = conn.execute(
        sa.text(
            f"SELECT DISTINCT ON (symbol) symbol, data_date, {columns} "
            "FROM instrument_fundamentals WHERE symbol = ANY(:s) AND data_date <= :d "
            "ORDER BY symbol, data_date DESC"
        ),
        {"s": symbols, "d": score_date},
    ).all()
    by_symbol = {r.symbol: r for r in fundamentals}
    prices = load_prices(conn, score_date, symbols)
    universes: dict[tuple[str, str], list[InstrumentData]] = defaultdict(list)
    dates: dict[str, dt.date] = {}
    not_finite: list[str] = []
    for r in instruments:
        f = by_symbol.get(r.symbol)
        values: dict[str, Decimal | None] = {}
        if f is not None:
            dates[r.symbol] = f.data_date
            for c in FUNDAMENTAL_FIELDS:
                value = getattr(f, c)
                if value is None:
                    continue
                if value.is_finite():
                    values[c] = value
                else:  # NUMERIC takes 'NaN' and 'Infinity': a value no rule can compare
                    not_finite.append(f"{r.symbol} {c} {value}")
        price = prices.get(r.symbol)
        universes[(r.market, r.asset_type)].append(
            InstrumentData(
                symbol=r.symbol,
                currency=str(r.currency).strip().upper(),
                close=price.close if price else None,
                fundamentals=values,
            )
        )
    if not_finite:
        logger.warning(
            "fundamentals of %s: %d value(s) are not finite numbers and count as missing (their "
            "rules are skipped with missing_fundamental): %s",
            score_date,
            len(not_finite),
            first_few(not_finite, "; "),
        )
    return universes, dates, dict(prices)


class RunInputs:
    """What the batches of one run share for a date: the universes they read (with the date's
    prices and fundamentals), the rates, and the metrics and INPUTS_CAPTURED text computed from
    them. A run scores its batches one after the other: each universe is read from the database
    once per run instead of once per batch, and every batch of the run scores against the same
    inputs. Kept for one run only, so a batch retried after its fundamentals were corrected
    reads them anew."""

    __slots__ = (
        "dates",
        "json_pieces",
        "metrics_cache",
        "prices",
        "rates",
        "rates_read",
        "universes",
    )

    def __init__(self) -> None:
        self.universes: dict[tuple[str, str], list[InstrumentData]] = {}
        self.dates: dict[str, dt.date] = {}
        self.prices: dict[str, Any] = {}
        self.rates: dict[str, Any] = {}
        self.rates_read = False
        self.metrics_cache = MetricsCache()
        self.json_pieces: dict[Any, Any] = {}

    def load(self, conn: Connection, score_date: dt.date, keys: Iterable[tuple[str, str]]) -> None:
        """Read the universes of `keys` this run has not read yet, and the rates once."""
        missing = set(keys) - self.universes.keys()
        if missing:
            universes, dates, prices = _load_universes(conn, score_date, missing)
            for key in missing:  # a universe without instruments is read once too
                self.universes[key] = universes.get(key, [])
            self.dates.update(dates)
            self.prices.update(prices)
        if not self.rates_read:
            self.rates.update(load_rates(conn, score_date))
            self.rates_read = True


def load_batch_inputs(
    conn: Connection,
    score_date: dt.date,
    batch: str,
    markets: Sequence[str] | None = None,
    shared: RunInputs | None = None,
) -> BatchInputs:
    """The batch's users and criteria, and the universes they read: from `shared` (this run's
    inputs for `score_date`, extended with what it lacks) or read for this batch alone."""
    users = _load_users(conn, score_date, batch, markets)
    criteria = _load_criteria(conn, [u.user_id for u in users], markets)
    keys = {(c.target_market, c.asset_type) for rows in criteria.values() for c in rows}
    run = RunInputs() if shared is None else shared
    run.load(conn, score_date, keys)
    return BatchInputs(
        users=users,
        criteria=criteria,
        universes=run.universes,
        fundamentals_date=run.dates,
        prices=run.prices,
        rates=run.rates,
        metrics_cache=run.metrics_cache,
        json_pieces=run.json_pieces,
    )
