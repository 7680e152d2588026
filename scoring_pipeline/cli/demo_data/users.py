"""The demo universe's users: a base currency each, 1–3 criteria sets of rules drawn from
templates, and 5–20 holdings among the universe's instruments.
"""

import json
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from scoring_pipeline.cli.demo_data.draws import random_decimal, random_uuid
from scoring_pipeline.cli.demo_data.instruments import MARKETS, Universe

BASE_CURRENCIES = ("USD", "EUR", "BRL", "GBP")

# (metric, operator, low, high): the rules users draw, each threshold between low and high.
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


def _rule(rng: random.Random, template: tuple[str, str, str, str]) -> dict[str, Any]:
    metric, operator, low, high = template
    rule: dict[str, Any] = {
        "id": random_uuid(rng),
        "name": f"{metric} {operator}",
        "metric": metric,
        "operator": operator,
        "points": rng.choice((5, 10, 10, 15, 20, -5, -10)),
    }
    lo, hi = float(low), float(high)
    if operator == "exists":
        rule["value"] = ""
    elif operator == "between":
        a = random_decimal(rng, lo, (lo + hi) / 2, 2)
        b = random_decimal(rng, (lo + hi) / 2, hi, 2)
        rule["value"], rule["value2"] = format(a, "f"), format(b, "f")
    else:
        rule["value"] = format(random_decimal(rng, lo, hi, 2), "f")
    return rule


def draw_users(
    rng: random.Random, count: int, universe: Universe, rules_per_set: int
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    targets = [(m.code, a) for m in MARKETS for a in m.asset_types]
    symbols = [i["symbol"] for i in universe.instruments]
    currency_of = {i["symbol"]: i["currency"] for i in universe.instruments}
    for n in range(count):
        user = {
            "id": random_uuid(rng),
            "email": f"user{n:06d}@example.com",
            "base_currency": rng.choice(BASE_CURRENCIES),
        }
        sets = []
        for market, asset_type in rng.sample(targets, rng.randint(1, 3)):
            rules = [_rule(rng, t) for t in rng.sample(RULE_TEMPLATES, rules_per_set)]
            sets.append(
                {
                    "id": random_uuid(rng),
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
