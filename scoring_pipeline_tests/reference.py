"""A slow, literal reference implementation of SPEC §4 scoring, written independently of
the engine: the property tests and the at-scale comparison hold the engine equal to it."""

import decimal
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from scoring_pipeline.engine.criteria import (
    CriteriaSet,
)
from scoring_pipeline.engine.metrics import InstrumentData
from scoring_pipeline.engine.scoring import SetOutcome
from scoring_pipeline.errors import MissingRateError

REF_CONTEXT = decimal.Context(prec=20, rounding=ROUND_HALF_UP)


def ref_rate(usd_rates: Mapping[str, Decimal], a: str, b: str) -> Decimal:
    usd_to = {"USD": Decimal(1), **usd_rates}
    if a not in usd_to or b not in usd_to:
        raise MissingRateError(a, b)
    with decimal.localcontext(REF_CONTEXT):
        return usd_to[b] / usd_to[a]


def ref_metric(
    name: str, inst: InstrumentData, base: str, usd_rates: Mapping[str, Decimal], pairs: set[Any]
) -> Decimal | None:
    """SPEC §4 "Metrics of one instrument", line by line, one metric at a time."""
    fundamentals = dict(inst.fundamentals)
    price = inst.close
    with decimal.localcontext(REF_CONTEXT):
        if name == "price":
            return price
        if name == "pe_ratio":
            eps = fundamentals.get("eps")
            if price is None or eps is None or not eps > 0:
                return None
            return price / eps
        if name == "pb_ratio":
            bvps = fundamentals.get("book_value_per_share")
            if price is None or bvps is None or not bvps > 0:
                return None
            return price / bvps
        if name == "dividend_yield":
            dps = fundamentals.get("dividends_per_share")
            if dps is None or price is None or not price > 0:
                return None
            return dps / price * 100
        if name in ("market_cap", "revenue", "earnings"):
            factor = None
            if inst.currency != base:
                factor = ref_rate(usd_rates, inst.currency, base)  # needed even for a null value
                pairs.add((inst.currency, base))
            if name == "market_cap":
                shares = fundamentals.get("shares_outstanding")
                value = None if price is None or shares is None else price * shares
            else:
                value = fundamentals.get(name)
            if value is None or factor is None:
                return value
            return value * factor
        return fundamentals.get(name)  # stored metrics and raw fundamental fields


def ref_score_set(
    criteria_set: CriteriaSet,
    instruments: Sequence[InstrumentData],
    base: str,
    usd_rates: Mapping[str, Decimal],
) -> SetOutcome:
    """SPEC §4 "Evaluation" and "Result", written as plainly as possible."""
    pairs: set[tuple[str, str]] = set()
    scores = []
    for inst in instruments:
        breakdown = []
        score = 0
        for r in criteria_set.rules:
            required = [ref_metric(n, inst, base, usd_rates, pairs) for n in r.required]
            x = ref_metric(r.metric, inst, base, usd_rates, pairs)
            if any(v is None for v in required) or (x is None and r.operator != "exists"):
                matched, skipped = False, True
            else:
                skipped = False
                if r.operator == "exists":
                    matched = True
                else:
                    assert x is not None and r.value is not None
                    if r.operator == "gt":
                        matched = x > r.value
                    elif r.operator == "gte":
                        matched = x >= r.value
                    elif r.operator == "lt":
                        matched = x < r.value
                    elif r.operator == "lte":
                        matched = x <= r.value
                    elif r.operator == "equals":
                        matched = x == r.value
                    else:
                        assert r.value2 is not None
                        matched = r.value <= x <= r.value2
            awarded = r.points if matched else 0
            score += awarded
            item: dict[str, Any] = {"ruleId": r.id, "matched": matched, "points": awarded}
            if x is not None:
                item["actualValue"] = format(x, "f")
            if skipped:
                item["skippedReason"] = "missing_fundamental"
            breakdown.append(item)
        maximum = sum(r.points for r in criteria_set.rules if r.points > 0)
        four = Decimal("0.0001")
        percentage = None
        if maximum != 0:
            with decimal.localcontext(REF_CONTEXT):
                percentage = (Decimal(score) / Decimal(maximum) * 100).quantize(
                    four, rounding=ROUND_HALF_UP
                )
        scores.append(
            RefScore(
                symbol=inst.symbol,
                criteria_version_id=criteria_set.criteria_version_id,
                score=Decimal(score).quantize(four, rounding=ROUND_HALF_UP),
                max_possible_score=Decimal(maximum).quantize(four, rounding=ROUND_HALF_UP),
                percentage=percentage,
                breakdown=breakdown,
            )
        )
    return SetOutcome(scores=scores, currency_pairs=frozenset(pairs))  # type: ignore[arg-type]


class RefScore(NamedTuple):
    """The reference's result for one instrument: the canonical breakdown as plain dicts."""

    symbol: str
    criteria_version_id: str
    score: Decimal
    max_possible_score: Decimal
    percentage: Decimal | None
    breakdown: list[dict[str, Any]]
