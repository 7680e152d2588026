"""The provider result models refuse results that contradict themselves: a value both accepted
and rejected, a quote filed under another symbol, a symbol both quoted and missing."""

import datetime as dt
from decimal import Decimal

import pydantic
import pytest

from scoring_pipeline.providers.models import PriceQuote, PricesResult, RatesSnapshot
from scoring_pipeline.providers.values import RejectedValue, Rejection

DAY = dt.date(2026, 11, 27)


def _rejected(key: str) -> RejectedValue:
    return RejectedValue(key=key, reason=Rejection.NOT_POSITIVE, detail=f"{key} is 0")


def _quote(symbol: str) -> PriceQuote:
    return PriceQuote(
        symbol=symbol, close=Decimal("10"), currency="USD", price_date=DAY, source="test"
    )


def test_a_currency_both_rated_and_rejected_is_refused():
    RatesSnapshot(
        rates={"EUR": Decimal("0.9")},
        rejected={"BRL": _rejected("BRL")},
        rate_date=DAY,
        source="test",
    )
    with pytest.raises(pydantic.ValidationError, match=r"both rated and rejected: \['EUR'\]"):
        RatesSnapshot(
            rates={"EUR": Decimal("0.9")},
            rejected={"EUR": _rejected("EUR")},
            rate_date=DAY,
            source="test",
        )


def test_a_quote_filed_under_another_symbol_is_refused():
    PricesResult(quotes={"AAA": _quote("AAA")}, missing=[], source="test")
    with pytest.raises(pydantic.ValidationError, match="quote for 'AAA' filed under 'BBB'"):
        PricesResult(quotes={"BBB": _quote("AAA")}, missing=[], source="test")


@pytest.mark.parametrize(
    ("quoted", "rejected", "missing"),
    [(["AAA"], ["AAA"], []), (["AAA"], [], ["AAA"]), ([], ["AAA"], ["AAA"])],
)
def test_a_symbol_in_two_of_quoted_rejected_and_missing_is_refused(quoted, rejected, missing):
    PricesResult(
        quotes={s: _quote(s) for s in quoted},
        rejected={f"{s}X": _rejected(f"{s}X") for s in rejected},
        missing=[f"{s}Y" for s in missing],
        source="test",
    )
    with pytest.raises(pydantic.ValidationError, match=r"in two of quoted, rejected and missing"):
        PricesResult(
            quotes={s: _quote(s) for s in quoted},
            rejected={s: _rejected(s) for s in rejected},
            missing=missing,
            source="test",
        )
