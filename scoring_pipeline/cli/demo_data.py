"""A realistic synthetic universe for the demo and the benchmark, plus files for `file` providers.

Several markets and currencies, fundamentals (some missing), users with different base
currencies, 1–3 criteria sets of ~12 rules each, and 5–20 holdings. Deterministic for a seed.
"""

import csv
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.store.copy import copy_rows
from scoring_pipeline.store.tables import FUNDAMENTAL_COLUMNS


@dataclass(frozen=True)
class Market:
    code: str
    name: str
    timezone: str
    opens_at: str
    currency: str
    asset_types: tuple[str, ...]


MARKETS = (
    Market("US_TECH", "US Technology", "America/New_York", "09:30", "USD", ("stock", "etf")),
    Market("BR_BANKS", "Brazilian Banks", "America/Sao_Paulo", "10:00", "BRL", ("stock", "reit")),
    Market(
        "EU_INDUSTRIALS", "European Industrials", "Europe/Berlin", "09:00", "EUR", ("stock", "etf")
    ),
)
BASE_CURRENCIES = ("USD", "EUR", "BRL", "GBP")
USD_RATES = {"USD": "1", "EUR": "0.9183", "BRL": "5.4127", "GBP": "0.7891"}

# (metric, operator, low, high, points range): templates users draw thresholds from.
RULE_TEMPLATES: tuple[tuple[str, str, str, str], ...] = (
    ("pe_ratio", "lt", "8", "25"),
    ("pb_ratio", "lte", "0.8", "3"),
    ("dividend_yield", "gt", "1", "8"),
    ("roe", "gte", "5", "25"),
    ("roa", "gt", "2", "12"),
    ("debt_to_equity", "lt", "0.3", "2"),
    ("current_ratio", "gte", "0.8", "2.5"),
    ("gross_margin", "between", "20", "70"),
    ("net_margin", "gt", "3", "25"),
    ("payout_ratio", "between", "20", "80"),
    ("ev_ebitda", "lt", "5", "15"),
    ("market_cap", "gt", "500000000", "50000000000"),
    ("revenue", "gt", "100000000", "20000000000"),
    ("earnings", "gt", "10000000", "2000000000"),
    ("surplus_years", "gte", "3", "10"),
    ("price", "lt", "10", "300"),
    ("roe", "exists", "0", "0"),
)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _dec(rng: random.Random, low: float, high: float, places: int) -> Decimal:
    # Built from an integer so the text is exact; the random draw itself is not money.
    scale = 10**places
    value: Decimal = Decimal(rng.randint(int(low * scale), int(high * scale))) / scale
    return value


def _rule(rng: random.Random, template: tuple[str, str, str, str]) -> dict[str, Any]:
    metric, operator, low, high = template
    rule: dict[str, Any] = {
        "id": _uuid(rng),
        "name": f"{metric} {operator}",
        "metric": metric,
        "operator": operator,
        "points": rng.choice((5, 10, 10, 15, 20, -5, -10)),
    }
    lo, hi = float(low), float(high)
    if operator == "exists":
        rule["value"] = ""
    elif operator == "between":
        a = _dec(rng, lo, (lo + hi) / 2, 2)
        b = _dec(rng, (lo + hi) / 2, hi, 2)
        rule["value"], rule["value2"] = format(a, "f"), format(b, "f")
    else:
        rule["value"] = format(_dec(rng, lo, hi, 2), "f")
    return rule


def _fundamentals(rng: random.Random, symbol: str, day: dt.date) -> dict[str, Any]:
    row: dict[str, Any] = {
        "symbol": symbol,
        "data_date": day,
        "eps": _dec(rng, -2, 12, 2),
        "book_value_per_share": _dec(rng, 1, 80, 2),
        "dividends_per_share": _dec(rng, 0, 5, 2),
        "shares_outstanding": Decimal(rng.randint(10_000_000, 5_000_000_000)),
        "revenue": Decimal(rng.randint(50_000_000, 90_000_000_000)),
        "earnings": Decimal(rng.randint(-500_000_000, 20_000_000_000)),
        "surplus_years": Decimal(rng.randint(0, 15)),
        "roe": _dec(rng, -5, 40, 2),
        "roa": _dec(rng, -3, 20, 2),
        "debt_to_equity": _dec(rng, 0, 3, 2),
        "current_ratio": _dec(rng, 0.3, 3.5, 2),
        "gross_margin": _dec(rng, 5, 85, 2),
        "net_margin": _dec(rng, -10, 40, 2),
        "payout_ratio": _dec(rng, 0, 100, 2),
        "ev_ebitda": _dec(rng, 2, 30, 2),
    }
    for name in FUNDAMENTAL_COLUMNS:  # about 5 % of values are missing, as in real feeds
        if rng.random() < 0.05:
            row[name] = None
    return row


@dataclass
class Universe:
    instruments: list[dict[str, Any]]
    fundamentals: list[dict[str, Any]]
    prices: dict[str, Decimal]


def _universe(rng: random.Random, per_market: int, today: dt.date) -> Universe:
    instruments: list[dict[str, Any]] = []
    fundamentals: list[dict[str, Any]] = []
    prices: dict[str, Decimal] = {}
    for market in MARKETS:
        for i in range(per_market):
            symbol = f"{market.code.split('_')[0]}{i:04d}.{market.code[:2]}"
            asset_type = market.asset_types[i % len(market.asset_types)]
            instruments.append(
                {
                    "symbol": symbol,
                    "name": f"{market.name} #{i}",
                    "market": market.code,
                    "asset_type": asset_type,
                    "currency": market.currency,
                }
            )
            if rng.random() < 0.97:  # a few instruments have no fundamentals at all
                fundamentals.append(_fundamentals(rng, symbol, today - dt.timedelta(days=40)))
                fundamentals.append(_fundamentals(rng, symbol, today - dt.timedelta(days=5)))
            if rng.random() < 0.99:  # and a few are not quoted by the provider
                prices[symbol] = _dec(rng, 1, 400, 2)
    return Universe(instruments, fundamentals, prices)


def _users(
    rng: random.Random, count: int, universe: Universe, rules_per_set: int
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    targets = [(m.code, a) for m in MARKETS for a in m.asset_types]
    symbols = [i["symbol"] for i in universe.instruments]
    currency_of = {i["symbol"]: i["currency"] for i in universe.instruments}
    for n in range(count):
        user = {
            "id": _uuid(rng),
            "email": f"user{n:06d}@example.com",
            "base_currency": rng.choice(BASE_CURRENCIES),
        }
        sets = []
        for market, asset_type in rng.sample(targets, rng.randint(1, 3)):
            rules = [_rule(rng, t) for t in rng.sample(RULE_TEMPLATES, rules_per_set)]
            sets.append(
                {
                    "id": _uuid(rng),
                    "user_id": user["id"],
                    "target_market": market,
                    "asset_type": asset_type,
                    "name": f"{market} {asset_type}",
                    "version": rng.randint(1, 3),
                    "is_active": True,
                    "rules": json.dumps(rules),
                }
            )
        holdings = [
            {
                "symbol": s,
                "quantity": Decimal(rng.randint(1, 500)),
                "currency": currency_of[s],
                "is_ignored": rng.random() < 0.05,
            }
            for s in rng.sample(symbols, rng.randint(5, 20))
        ]
        yield user, sets, holdings


def generate(
    conn: Connection,
    *,
    users: int,
    seed: int,
    out_dir: Path,
    instruments_per_market: int = 100,
    rules_per_set: int = 12,
    today: dt.date | None = None,
) -> dict[str, int]:
    """Replace the input tables' contents with a synthetic universe; write provider files."""
    rng = random.Random(seed)
    today = today or dt.datetime.now(dt.UTC).date()
    universe = _universe(rng, instruments_per_market, today)
    conn.execute(
        sa.text(
            "TRUNCATE portfolio_assets, portfolios, criteria_versions, instrument_fundamentals, "
            "instruments, markets, users CASCADE"
        )
    )
    copy_rows(
        conn,
        "markets",
        ("code", "name", "timezone", "opens_at"),
        ((m.code, m.name, m.timezone, m.opens_at) for m in MARKETS),
    )
    copy_rows(
        conn,
        "instruments",
        ("symbol", "name", "market", "asset_type", "currency"),
        (
            (i["symbol"], i["name"], i["market"], i["asset_type"], i["currency"])
            for i in universe.instruments
        ),
    )
    columns = ("symbol", "data_date", *FUNDAMENTAL_COLUMNS)
    copy_rows(
        conn,
        "instrument_fundamentals",
        columns,
        ([f[c] for c in columns] for f in universe.fundamentals),
    )
    user_rows: list[tuple[Any, ...]] = []
    set_rows: list[tuple[Any, ...]] = []
    portfolio_rows: list[tuple[Any, ...]] = []
    asset_rows: list[tuple[Any, ...]] = []
    for user, sets, holdings in _users(rng, users, universe, rules_per_set):
        user_rows.append((user["id"], user["email"], user["base_currency"]))
        set_rows.extend(
            (
                s["id"],
                s["user_id"],
                s["target_market"],
                s["asset_type"],
                s["name"],
                s["version"],
                s["is_active"],
                s["rules"],
            )
            for s in sets
        )
        portfolio_id = _uuid(rng)
        portfolio_rows.append((portfolio_id, user["id"], "Main"))
        asset_rows.extend(
            (_uuid(rng), portfolio_id, h["symbol"], h["quantity"], h["currency"], h["is_ignored"])
            for h in holdings
        )
    copy_rows(conn, "users", ("id", "email", "base_currency"), user_rows)
    copy_rows(
        conn,
        "criteria_versions",
        ("id", "user_id", "target_market", "asset_type", "name", "version", "is_active", "rules"),
        set_rows,
    )
    copy_rows(conn, "portfolios", ("id", "user_id", "name"), portfolio_rows)
    copy_rows(
        conn,
        "portfolio_assets",
        ("id", "portfolio_id", "symbol", "quantity", "currency", "is_ignored"),
        asset_rows,
    )
    write_provider_files(out_dir, universe.prices, today)
    return {
        "users": len(user_rows),
        "criteria_sets": len(set_rows),
        "instruments": len(universe.instruments),
        "holdings": len(asset_rows),
    }


def write_provider_files(out_dir: Path, prices: dict[str, Decimal], day: dt.date) -> None:
    """`rates.json` (frankfurter's shape) and `prices.csv` for the `file` providers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rates as exact decimal text in the frankfurter shape (no float round trip).
    body = ",".join(f'"{c}":{v}' for c, v in USD_RATES.items() if c != "USD")
    text = f'{{"amount":1.0,"base":"USD","date":"{day.isoformat()}","rates":{{{body}}}}}'
    (out_dir / "rates.json").write_text(text + "\n")
    with (out_dir / "prices.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["symbol", "close", "currency", "price_date"])
        for symbol, close in sorted(prices.items()):
            writer.writerow([symbol, format(close, "f"), _currency_of(symbol), day.isoformat()])


def _currency_of(symbol: str) -> str:
    suffix = symbol.rsplit(".", 1)[-1]
    return {m.code[:2]: m.currency for m in MARKETS}[suffix]
