"""The demo universe's markets and instruments: three markets in three currencies, their
instruments' fundamentals (two dates each, some values missing) and the provider's prices.
"""

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from scoring_pipeline.cli.demo_data.draws import random_decimal
from scoring_pipeline.engine.criteria import FUNDAMENTAL_FIELDS


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


def _fundamentals(rng: random.Random, symbol: str, day: dt.date) -> dict[str, Any]:
    row: dict[str, Any] = {
        "symbol": symbol,
        "data_date": day,
        "eps": random_decimal(rng, -2, 12, 2),
        "book_value_per_share": random_decimal(rng, 1, 80, 2),
        "dividends_per_share": random_decimal(rng, 0, 5, 2),
        "shares_outstanding": Decimal(rng.randint(10_000_000, 5_000_000_000)),
        "revenue": Decimal(rng.randint(50_000_000, 90_000_000_000)),
        "earnings": Decimal(rng.randint(-500_000_000, 20_000_000_000)),
        "surplus_years": Decimal(rng.randint(0, 15)),
        "roe": random_decimal(rng, -5, 40, 2),
        "roa": random_decimal(rng, -3, 20, 2),
        "debt_to_equity": random_decimal(rng, 0, 3, 2),
        "current_ratio": random_decimal(rng, 0.3, 3.5, 2),
        "gross_margin": random_decimal(rng, 5, 85, 2),
        "net_margin": random_decimal(rng, -10, 40, 2),
        "payout_ratio": random_decimal(rng, 0, 100, 2),
        "ev_ebitda": random_decimal(rng, 2, 30, 2),
    }
    for name in FUNDAMENTAL_FIELDS:  # about 5 % of values are missing, as in real feeds
        if rng.random() < 0.05:
            row[name] = None
    return row


@dataclass
class Universe:
    instruments: list[dict[str, Any]]
    fundamentals: list[dict[str, Any]]
    prices: dict[str, Decimal]


def draw_universe(rng: random.Random, per_market: int, today: dt.date) -> Universe:
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
                prices[symbol] = random_decimal(rng, 1, 400, 2)
    return Universe(instruments, fundamentals, prices)
