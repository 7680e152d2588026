"""Small builders for the app's input tables, used by the database-backed tests."""

import itertools
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.store import tables as t

_counter = itertools.count()


def market(engine: Engine, code: str, *, timezone: str = "UTC", opens_at: str = "09:00") -> str:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.markets).values(code=code, name=code, timezone=timezone, opens_at=opens_at)
        )
    return code


def instrument(
    engine: Engine,
    symbol: str,
    *,
    market: str,
    currency: str,
    asset_type: str = "stock",
    data_date: str = "2026-11-01",
    **fundamentals: Any,
) -> str:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.instruments).values(
                symbol=symbol,
                name=symbol,
                market=market,
                asset_type=asset_type,
                currency=currency,
            )
        )
        if fundamentals:
            conn.execute(
                sa.insert(t.instrument_fundamentals).values(
                    symbol=symbol,
                    data_date=data_date,
                    **{
                        k: Decimal(str(v)) if v is not None else None
                        for k, v in fundamentals.items()
                    },
                )
            )
    return symbol


def rule(
    metric: str, operator: str, value: str | None, points: int, **extra: Any
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": f"{metric} {operator} {value}",
        "metric": metric,
        "operator": operator,
        "points": points,
    }
    if value is not None:
        r["value"] = value
    r.update(extra)
    return r


def user(
    engine: Engine,
    *,
    base_currency: str = "USD",
    holdings: list[tuple[str, str]] | None = None,
    criteria: list[tuple[str, str, list[dict[str, Any]] | str]] | None = None,
    deleted: bool = False,
    user_id: str | None = None,
) -> str:
    """A user with one portfolio of `holdings` (symbol, currency) and criteria sets
    (market, asset_type, rules — a list, or raw JSON text)."""
    uid = user_id or str(uuid.uuid4())
    n = next(_counter)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.users).values(
                id=uid,
                email=f"u{n}-{uid[:8]}@example.com",
                base_currency=base_currency,
                deleted_at=sa.func.now() if deleted else None,
            )
        )
        pid = str(uuid.uuid4())
        conn.execute(sa.insert(t.portfolios).values(id=pid, user_id=uid, name="Main"))
        for symbol, currency in holdings or []:
            conn.execute(
                sa.insert(t.portfolio_assets).values(
                    id=str(uuid.uuid4()),
                    portfolio_id=pid,
                    symbol=symbol,
                    quantity=Decimal("10"),
                    currency=currency,
                    is_ignored=False,
                )
            )
        for market_code, asset_type, rules in criteria or []:
            text = rules if isinstance(rules, str) else json.dumps(rules)
            conn.execute(
                sa.text(
                    "INSERT INTO criteria_versions (id, user_id, target_market, asset_type, "
                    "name, version, is_active, rules) VALUES (:i, :u, :m, :a, 'set', 1, true, "
                    "CAST(:r AS jsonb))"
                ),
                {"i": str(uuid.uuid4()), "u": uid, "m": market_code, "a": asset_type, "r": text},
            )
    return uid


def provider_files(
    directory: Path,
    *,
    rates: dict[str, str],
    prices: dict[str, tuple[str, str]],
    day: str = "2026-11-27",
) -> dict[str, str]:
    """Files for the `file` providers and the environment that selects them."""
    directory.mkdir(parents=True, exist_ok=True)
    body = ",".join(f'"{c}":{v}' for c, v in rates.items())
    (directory / "rates.json").write_text(
        f'{{"amount":1.0,"base":"USD","date":"{day}","rates":{{{body}}}}}'
    )
    lines = ["symbol,close,currency,price_date"]
    lines += [f"{s},{close},{cur},{day}" for s, (close, cur) in prices.items()]
    (directory / "prices.csv").write_text("\n".join(lines) + "\n")
    return {
        "RATES_PROVIDER": "file",
        "RATES_FILE": str(directory / "rates.json"),
        "PRICES_PROVIDER": "file",
        "PRICES_FILE": str(directory / "prices.csv"),
    }
