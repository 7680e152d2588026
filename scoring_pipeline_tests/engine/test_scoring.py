"""The pure scoring engine (scoring_pipeline.scoring, SPEC §4).

Covers the decimal context, rate_between (direct, inverse and cross rates, missing rates),
compute_metrics for every metric and raw field, every operator at its boundaries, cases where
binary floating point would give the wrong answer, currency conversion in both directions and
the rates a set needs, missing operands, negative points, percentages and their HALF_UP
quantization, the breakdown's exact shape, and property-based tests against a slow, literal
reference implementation of SPEC §4 written below.
"""

import decimal
import json
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring_pipeline.engine.columns import MetricsCache
from scoring_pipeline.engine.criteria import (
    CONVERTED_METRICS,
    FUNDAMENTAL_FIELDS,
    METRICS,
    OPERATORS,
    CriteriaSet,
    parse_criteria,
)
from scoring_pipeline.engine.metrics import (
    SCORE_CONTEXT,
    InstrumentData,
    compute_metrics,
    metric_texts,
    rate_between,
)
from scoring_pipeline.engine.scoring import (
    AssetScore,
    SetOutcome,
    canonical_breakdown_json,
    score_criteria_set,
)
from scoring_pipeline.errors import MissingRateError
from scoring_pipeline_tests.reference import (
    ref_metric,
    ref_rate,
    ref_score_set,
)

CVID = "c0000000-0000-4000-8000-000000000001"
RATES = {"EUR": Decimal("0.92"), "GBP": Decimal("0.79"), "BRL": Decimal("5.43")}


def criteria(*rules: dict[str, Any]) -> CriteriaSet:
    return parse_criteria(
        criteria_version_id=CVID,
        target_market="US_TECH",
        asset_type="stock",
        version=1,
        rules=list(rules),
    )


_counter = iter(range(10**9))


def rule(
    metric: str,
    operator: str,
    value: str | None = None,
    value2: str | None = None,
    *,
    points: int = 10,
    required: list[str] | None = None,
    rule_id: str | None = None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": rule_id or f"r{next(_counter)}",
        "name": f"{metric} {operator}",
        "metric": metric,
        "operator": operator,
        "points": points,
    }
    if value is not None:
        raw["value"] = value
    if value2 is not None:
        raw["value2"] = value2
    if required is not None:
        raw["required_fundamentals"] = required
    return raw


def instrument(
    close: str | None = "100", currency: str = "USD", symbol: str = "AAA", **fields: str | None
) -> InstrumentData:
    return InstrumentData(
        symbol=symbol,
        currency=currency,
        close=None if close is None else Decimal(close),
        fundamentals={
            name: None if value is None else Decimal(value) for name, value in fields.items()
        },
    )


def score_one(
    instr: InstrumentData,
    *rules: dict[str, Any],
    base: str = "USD",
    rates: Mapping[str, Decimal] = RATES,
) -> AssetScore:
    outcome = score_criteria_set(criteria(*rules), [instr], base_currency=base, usd_rates=rates)
    [result] = outcome.scores
    return result


def entry(result: AssetScore, index: int = 0) -> dict[str, Any]:
    return result.breakdown[index]


def metric_of(instr: InstrumentData, name: str, base: str = "USD") -> Decimal | None:
    return compute_metrics(instr, base_currency=base, usd_rates=RATES, wanted=[name])[name]


# --- context and rates -----------------------------------------------------------------------


def test_score_context() -> None:
    assert SCORE_CONTEXT.prec == 20
    assert SCORE_CONTEXT.rounding == ROUND_HALF_UP
    for trap in (decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow):
        assert SCORE_CONTEXT.traps[trap]
    assert not SCORE_CONTEXT.traps[decimal.Inexact]
    assert not SCORE_CONTEXT.traps[decimal.Rounded]


@pytest.mark.parametrize(
    ("from_currency", "to_currency", "expected"),
    [
        ("USD", "EUR", "0.92"),
        ("EUR", "USD", "1.0869565217391304348"),  # 1/0.92 to 20 digits, ...43478 rounds up
        ("GBP", "BRL", "6.8734177215189873418"),  # 5.43/0.79 through USD
        ("BRL", "GBP", "0.14548802946593001842"),
        ("EUR", "EUR", "1"),
        ("XXX", "XXX", "1"),  # same currency: no lookup at all
        ("USD", "USD", "1"),
    ],
)
def test_rate_between(from_currency: str, to_currency: str, expected: str) -> None:
    rate = rate_between(RATES, from_currency, to_currency)
    assert str(rate) == expected


def test_rate_between_uses_a_stored_usd_rate_and_defaults_it_to_one() -> None:
    assert rate_between({"EUR": Decimal("0.5")}, "EUR", "USD") == Decimal(2)
    assert rate_between({"EUR": Decimal("0.5"), "USD": Decimal(1)}, "USD", "EUR") == Decimal("0.5")


@pytest.mark.parametrize(
    ("rates", "from_currency", "to_currency"),
    [
        ({}, "EUR", "USD"),
        ({}, "USD", "EUR"),
        ({"EUR": Decimal("0.92")}, "EUR", "JPY"),
        ({"EUR": Decimal("0.92")}, "JPY", "EUR"),
        ({"EUR": Decimal("0.92")}, "GBP", "BRL"),
    ],
)
def test_missing_rate_names_the_pair(
    rates: dict[str, Decimal], from_currency: str, to_currency: str
) -> None:
    with pytest.raises(MissingRateError) as caught:
        rate_between(rates, from_currency, to_currency)
    assert (caught.value.from_currency, caught.value.to_currency) == (from_currency, to_currency)
    assert f"{from_currency}->{to_currency}" in str(caught.value)


# --- metrics ---------------------------------------------------------------------------------

FULL = instrument(
    close="12.5",
    eps="2.5",
    book_value_per_share="5",
    dividends_per_share="0.5",
    shares_outstanding="1000",
    revenue="1e6",
    earnings="-250000.50",
    surplus_years="7",
    roe="12.50",
    roa="0.0001",
    debt_to_equity="1.2",
    current_ratio="1.5",
    gross_margin="40",
    net_margin="-3.5",
    payout_ratio="55.5",
    ev_ebitda="8.25",
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("price", "12.5"),
        ("pe_ratio", "5"),
        ("pb_ratio", "2.5"),
        ("dividend_yield", "4.00"),
        ("market_cap", "12500.0"),
        ("revenue", "1E+6"),  # as stored: same currency, no multiplication
        ("earnings", "-250000.50"),
        ("surplus_years", "7"),
        ("roe", "12.50"),
        ("roa", "0.0001"),
        ("debt_to_equity", "1.2"),
        ("current_ratio", "1.5"),
        ("gross_margin", "40"),
        ("net_margin", "-3.5"),
        ("payout_ratio", "55.5"),
        ("ev_ebitda", "8.25"),
        ("eps", "2.5"),
        ("book_value_per_share", "5"),
        ("dividends_per_share", "0.5"),
        ("shares_outstanding", "1000"),
    ],
)
def test_compute_metrics_each_name(name: str, expected: str) -> None:
    values = compute_metrics(FULL, base_currency="USD", usd_rates={}, wanted=[name])
    assert values == {name: Decimal(expected)}
    assert str(values[name]) == expected


def test_compute_metrics_returns_only_what_is_wanted() -> None:
    wanted = {"pe_ratio", "eps", "revenue"}
    values = compute_metrics(FULL, base_currency="USD", usd_rates={}, wanted=wanted)
    assert values == {"pe_ratio": Decimal(5), "eps": Decimal("2.5"), "revenue": Decimal(10**6)}
    assert compute_metrics(FULL, base_currency="USD", usd_rates={}, wanted=()) == {}


def test_compute_metrics_all_names_at_once_in_another_currency() -> None:
    eur = InstrumentData("EEE", "EUR", FULL.close, FULL.fundamentals)
    names = sorted(METRICS | set(FUNDAMENTAL_FIELDS))
    values = compute_metrics(eur, base_currency="USD", usd_rates=RATES, wanted=names)
    assert set(values) == set(names)
    rate = Decimal("1.0869565217391304348")
    assert values["market_cap"] == SCORE_CONTEXT.multiply(Decimal("12500.0"), rate)
    assert values["revenue"] == Decimal("1086956.5217391304348")
    assert values["earnings"] == SCORE_CONTEXT.multiply(Decimal("-250000.50"), rate)
    assert values["price"] == Decimal("12.5")  # price-based ratios stay in the local currency
    assert values["pe_ratio"] == Decimal(5)


def test_compute_metrics_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="ebitda"):
        compute_metrics(FULL, base_currency="USD", usd_rates={}, wanted=["ebitda"])


def test_compute_metrics_needs_a_rate_only_for_converted_metrics() -> None:
    eur = instrument(currency="EUR", revenue=None, eps="1")
    wanted = ["pe_ratio", "eps", "revenue"]
    with pytest.raises(MissingRateError, match="EUR->USD"):
        compute_metrics(eur, base_currency="USD", usd_rates={}, wanted=wanted)
    assert compute_metrics(eur, base_currency="USD", usd_rates={}, wanted=wanted[:2]) == {
        "pe_ratio": Decimal(100),
        "eps": Decimal(1),
    }


@pytest.mark.parametrize(
    ("instr", "name"),
    [
        (instrument(eps="0"), "pe_ratio"),
        (instrument(eps="-1.5"), "pe_ratio"),
        (instrument(eps=None), "pe_ratio"),
        (instrument(), "pe_ratio"),
        (instrument(close=None, eps="1"), "pe_ratio"),
        (instrument(book_value_per_share="0"), "pb_ratio"),
        (instrument(book_value_per_share="-2"), "pb_ratio"),
        (instrument(close=None, book_value_per_share="2"), "pb_ratio"),
        (instrument(close="0", dividends_per_share="1"), "dividend_yield"),
        (instrument(close="-1", dividends_per_share="1"), "dividend_yield"),
        (instrument(close=None, dividends_per_share="1"), "dividend_yield"),
        (instrument(dividends_per_share=None), "dividend_yield"),
        (instrument(close=None, shares_outstanding="10"), "market_cap"),
        (instrument(shares_outstanding=None), "market_cap"),
        (instrument(close=None), "price"),
        (instrument(), "revenue"),
        (instrument(currency="EUR"), "earnings"),
        (instrument(currency="EUR", close=None, shares_outstanding="5"), "market_cap"),
        (instrument(), "roe"),
        (instrument(roe=None), "roe"),
    ],
)
def test_missing_operands_make_the_metric_missing(instr: InstrumentData, name: str) -> None:
    assert metric_of(instr, name) is None
    result = score_one(instr, rule(name, "gt", "-1000000"))
    assert entry(result) == {
        "ruleId": entry(result)["ruleId"],
        "matched": False,
        "points": 0,
        "skippedReason": "missing_fundamental",
    }
    assert result.score == 0


def test_zero_price_still_gives_a_pe_ratio() -> None:
    assert metric_of(instrument(close="0", eps="2"), "pe_ratio") == 0


# --- operators -------------------------------------------------------------------------------

OPERATOR_CASES = [
    ("gt", "15", None, "15.0001", True),
    ("gt", "15", None, "15", False),
    ("gt", "15", None, "14.9999", False),
    ("gt", "-1", None, "0", True),
    ("gte", "15", None, "15", True),
    ("gte", "15", None, "15.00", True),
    ("gte", "15", None, "14.99999999999999999999", False),
    ("lt", "15", None, "14.9999", True),
    ("lt", "15", None, "15", False),
    ("lt", "15", None, "15.0000000000000000001", False),
    ("lte", "15", None, "15", True),
    ("lte", "15", None, "15.0000000000000000001", False),
    ("lte", "-0.5", None, "-0.5", True),
    ("equals", "15", None, "15.000", True),
    ("equals", "15", None, "15.0000000000000000001", False),
    ("equals", "0", None, "-0", True),
    ("between", "1", "2", "1", True),
    ("between", "1", "2", "2", True),
    ("between", "1", "2", "1.5", True),
    ("between", "1", "2", "0.99999", False),
    ("between", "1", "2", "2.00001", False),
    ("between", "3", "3", "3.0", True),
    ("exists", None, None, "0", True),
    ("exists", None, None, "-123.456", True),
]


@pytest.mark.parametrize(("op", "value", "value2", "x", "matched"), OPERATOR_CASES)
def test_operators(op: str, value: str, value2: str | None, x: str, matched: bool) -> None:
    result = score_one(instrument(roe=x), rule("roe", op, value, value2, points=7))
    assert entry(result)["matched"] is matched
    assert entry(result)["points"] == (7 if matched else 0)
    assert entry(result)["actualValue"] == x
    assert "skippedReason" not in entry(result)
    assert result.score == (7 if matched else 0)


def test_all_operators_are_covered() -> None:
    assert {case[0] for case in OPERATOR_CASES} == OPERATORS


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_metric_can_be_scored(metric: str) -> None:
    eur = InstrumentData("EEE", "EUR", FULL.close, FULL.fundamentals)
    expected = compute_metrics(eur, base_currency="BRL", usd_rates=RATES, wanted=[metric])[metric]
    assert expected is not None
    rules = [
        rule(metric, "equals", format(expected, "f"), points=3),
        rule(metric, "gt", format(expected, "f"), points=5),
        rule(metric, "between", format(expected - 1, "f"), format(expected + 1, "f"), points=2),
    ]
    result = score_one(eur, *rules, base="BRL")
    assert [e["matched"] for e in result.breakdown] == [True, False, True]
    assert {e["actualValue"] for e in result.breakdown} == {format(expected, "f")}
    assert result.score == 5
    assert result.max_possible_score == 10
    assert result.percentage == Decimal("50.0000")


# --- exactness: where binary floating point gets it wrong -------------------------------------


@pytest.mark.parametrize(
    ("close", "eps"),
    [
        ("0.3", "0.02"),
        ("0.57", "0.038"),  # as doubles: 14.999999999999998, so a float engine says "below 15"
        ("0.45", "0.03"),  # as doubles: 15.000000000000002, so a float engine says "above 15"
    ],
)
def test_pe_of_exactly_15_is_not_below_15(close: str, eps: str) -> None:
    result = score_one(
        instrument(close=close, eps=eps),
        rule("pe_ratio", "lt", "15"),
        rule("pe_ratio", "lte", "15"),
        rule("pe_ratio", "gt", "15"),
        rule("pe_ratio", "equals", "15"),
    )
    assert [e["matched"] for e in result.breakdown] == [False, True, False, True]
    assert entry(result)["actualValue"] == "15"
    assert (float(close) / float(eps) == 15) is (close == "0.3")  # the others miss 15 as doubles


@pytest.mark.parametrize(
    ("fields", "metric", "op", "value", "actual"),
    [
        ({"close": "0.1", "shares_outstanding": "3"}, "market_cap", "equals", "0.3", "0.3"),
        ({"close": "0.3", "book_value_per_share": "0.1"}, "pb_ratio", "equals", "3", "3"),
        ({"close": "0.3", "book_value_per_share": "0.1"}, "pb_ratio", "gte", "3", "3"),
        ({"close": "1", "dividends_per_share": "0.07"}, "dividend_yield", "lte", "7", "7.00"),
        # Not a float boundary: about the text of an exact value, "10.0" (scale kept).
        ({"close": "3", "dividends_per_share": "0.3"}, "dividend_yield", "equals", "10", "10.0"),
        ({"close": "0.7", "eps": "0.1"}, "pe_ratio", "gte", "7", "7"),
        ({"close": "1.1", "shares_outstanding": "1.1"}, "market_cap", "lte", "1.21", "1.21"),
    ],
)
def test_decimal_exact_boundaries(
    fields: dict[str, str], metric: str, op: str, value: str, actual: str
) -> None:
    result = score_one(instrument(**fields), rule(metric, op, value))
    assert entry(result)["matched"] is True
    assert entry(result)["actualValue"] == actual
    # Each case but one is where IEEE doubles disagree: the same metric in floats misses the
    # rule (the exception is the exact text case, marked above).
    floats = {k: float(v) for k, v in fields.items()}
    in_floats = {
        "market_cap": lambda: floats["close"] * floats["shares_outstanding"],
        "pb_ratio": lambda: floats["close"] / floats["book_value_per_share"],
        "dividend_yield": lambda: floats["dividends_per_share"] / floats["close"] * 100,
        "pe_ratio": lambda: floats["close"] / floats["eps"],
    }[metric]()
    compare = {
        "equals": float.__eq__,
        "gte": float.__ge__,
        "lte": float.__le__,
    }[op]
    assert compare(in_floats, float(value)) is (actual == "10.0"), (in_floats, value)


def test_dividend_yield_is_rounded_to_20_digits_half_up() -> None:
    result = score_one(
        instrument(close="3", dividends_per_share="2"),
        rule("dividend_yield", "equals", "66.666666666666666667"),
    )
    assert entry(result)["matched"] is True
    assert entry(result)["actualValue"] == "66.666666666666666667"
    # dps / price = 0.500000000000000000005 exactly: HALF_UP keeps the last 1 (HALF_EVEN drops it).
    tie = instrument(close="2", dividends_per_share="1.00000000000000000001")
    assert metric_of(tie, "dividend_yield") == Decimal("50.000000000000000001")
    assert metric_of(instrument(close="0.2", dividends_per_share="0.01"), "dividend_yield") == 5


def test_market_cap_rounds_half_up_to_20_digits() -> None:
    instr = instrument(close="1.5", shares_outstanding="10000000000000000003")
    assert str(metric_of(instr, "market_cap")) == "15000000000000000005"  # exact: ...4.5
    result = score_one(instr, rule("market_cap", "gt", "15000000000000000004.9"))
    assert entry(result)["matched"] is True
    assert entry(result)["actualValue"] == "15000000000000000005"


def test_values_are_used_as_stored_beyond_the_context_precision() -> None:
    stored = "123456789012345678901234.5"  # 25 digits: no operation, so no rounding
    result = score_one(
        instrument(revenue=stored, roe=stored),
        rule("revenue", "equals", stored),
        rule("roe", "gt", "123456789012345678901234.4"),
    )
    assert [e["matched"] for e in result.breakdown] == [True, True]
    assert [e["actualValue"] for e in result.breakdown] == [stored, stored]


@pytest.mark.parametrize(
    ("fields", "metric", "actual"),
    [
        ({"revenue": "1E+9"}, "revenue", "1000000000"),
        ({"roe": "1.5E-9"}, "roe", "0.0000000015"),
        ({"close": "3", "shares_outstanding": "1E+25"}, "market_cap", "30000000000000000000000000"),
        ({"close": "2", "eps": "3E-7"}, "pe_ratio", "6666666.6666666666667"),
        ({"close": "1E+30", "eps": "3"}, "pe_ratio", "333333333333333333330000000000"),
        ({"roe": "-0"}, "roe", "-0"),
        ({"roe": "0E-8"}, "roe", "0.00000000"),
    ],
)
def test_actual_value_is_plain_without_exponent(
    fields: dict[str, str], metric: str, actual: str
) -> None:
    instr = instrument(**fields)
    result = score_one(instr, rule(metric, "exists"))
    assert entry(result)["actualValue"] == actual
    assert Decimal(actual) == metric_of(instr, metric)


# --- currency conversion ---------------------------------------------------------------------


def test_eur_instrument_with_usd_base() -> None:
    eur = instrument(currency="EUR", revenue="920", close="10", shares_outstanding="92")
    outcome = score_criteria_set(
        criteria(rule("revenue", "equals", "1000"), rule("market_cap", "gte", "1000")),
        [eur],
        base_currency="USD",
        usd_rates=RATES,
    )
    [result] = outcome.scores
    # 920 × 1.0869565217391304348 = 1000.000000000000000016…, rounded to 20 digits.
    assert [e["actualValue"] for e in result.breakdown] == ["1000.0000000000000000"] * 2
    assert [e["matched"] for e in result.breakdown] == [True, True]
    assert outcome.currency_pairs == {("EUR", "USD")}


def test_market_cap_is_multiplied_before_it_is_converted() -> None:
    eur = instrument(currency="EUR", close="12.34", shares_outstanding="987654321")
    # (12.34 × 987654321) × (1/0.92); 12.34 × (987654321 × rate) would end in ...391.
    assert str(metric_of(eur, "market_cap")) == "13247450349.065217392"


def test_usd_instrument_with_eur_base() -> None:
    usd = instrument(revenue="1000", earnings="-12.5", close="4", shares_outstanding="25")
    outcome = score_criteria_set(
        criteria(
            rule("revenue", "equals", "920"),
            rule("earnings", "exists"),
            rule("market_cap", "lt", "92"),
        ),  # fmt: skip
        [usd],
        base_currency="EUR",
        usd_rates=RATES,
    )
    [result] = outcome.scores
    assert [e["actualValue"] for e in result.breakdown] == ["920.00", "-11.500", "92.00"]
    assert [e["matched"] for e in result.breakdown] == [True, True, False]
    assert outcome.currency_pairs == {("USD", "EUR")}


def test_gbp_to_brl_goes_through_usd() -> None:
    gbp = instrument(currency="GBP", close="2", shares_outstanding="1000", earnings="79")
    rate = Decimal("6.8734177215189873418")  # 5.43 / 0.79 in 20 digits
    outcome = score_criteria_set(
        criteria(rule("market_cap", "exists"), rule("earnings", "equals", "543")),
        [gbp],
        base_currency="BRL",
        usd_rates=RATES,
    )
    [result] = outcome.scores
    assert entry(result)["actualValue"] == str(SCORE_CONTEXT.multiply(Decimal(2000), rate))
    assert entry(result)["actualValue"] == "13746.835443037974684"
    # 79 × 6.8734177215189873418 = 543.0000000000000000022 → 543.00000000000000000 (20 digits)
    assert entry(result, 1) == {
        "ruleId": entry(result, 1)["ruleId"],
        "matched": True,
        "points": 10,
        "actualValue": "543.00000000000000000",
    }
    assert outcome.currency_pairs == {("GBP", "BRL")}


def test_same_currency_is_never_multiplied() -> None:
    brl = instrument(currency="BRL", revenue="0.123456789012345678901234")
    outcome = score_criteria_set(
        criteria(rule("revenue", "exists")), [brl], base_currency="BRL", usd_rates={}
    )
    assert entry(outcome.scores[0])["actualValue"] == "0.123456789012345678901234"
    assert outcome.currency_pairs == frozenset()


def test_currency_pairs_list_each_conversion_once() -> None:
    instruments = [
        instrument(currency="EUR", symbol="E1", revenue="1"),
        instrument(currency="USD", symbol="U1", revenue="1"),
        instrument(currency="GBP", symbol="G1", revenue=None),
        instrument(currency="EUR", symbol="E2", revenue="2"),
    ]
    outcome = score_criteria_set(
        criteria(rule("revenue", "gt", "0")), instruments, base_currency="USD", usd_rates=RATES
    )
    assert outcome.currency_pairs == {("EUR", "USD"), ("GBP", "USD")}
    assert [s.symbol for s in outcome.scores] == ["E1", "U1", "G1", "E2"]


@pytest.mark.parametrize("metric", sorted(CONVERTED_METRICS))
def test_a_missing_rate_fails_the_set_even_when_the_value_is_missing(metric: str) -> None:
    instruments = [instrument(symbol="U"), instrument(currency="JPY", symbol="J")]
    with pytest.raises(MissingRateError, match="JPY->USD") as caught:
        score_criteria_set(
            criteria(rule(metric, "gt", "0")), instruments, base_currency="USD", usd_rates=RATES
        )
    assert (caught.value.from_currency, caught.value.to_currency) == ("JPY", "USD")


def test_a_missing_base_currency_rate_names_the_pair() -> None:
    with pytest.raises(MissingRateError, match="EUR->CHF"):
        score_criteria_set(
            criteria(rule("market_cap", "gt", "0")),
            [instrument(currency="EUR")],
            base_currency="CHF",
            usd_rates=RATES,
        )


def test_a_converted_metric_in_required_fundamentals_needs_the_rate() -> None:
    rules = criteria(rule("roe", "gt", "0", required=["roe", "earnings"]))
    with pytest.raises(MissingRateError, match="JPY->USD"):
        score_criteria_set(
            rules, [instrument(currency="JPY", roe="1")], base_currency="USD", usd_rates={}
        )


def test_no_rate_is_needed_without_converted_metrics_or_across_equal_currencies() -> None:
    set_without_conversion = criteria(
        rule("price", "gt", "1"),
        rule("pe_ratio", "lt", "20", required=["eps", "shares_outstanding"]),
        rule("roe", "exists"),
    )
    jpy = instrument(currency="JPY", close="1500", eps="100", shares_outstanding="5", roe="3")
    outcome = score_criteria_set(set_without_conversion, [jpy], base_currency="USD", usd_rates={})
    assert outcome.scores[0].score == 30
    assert outcome.currency_pairs == frozenset()

    converting = criteria(rule("market_cap", "gt", "1"), rule("revenue", "exists"))
    outcome = score_criteria_set(converting, [jpy], base_currency="JPY", usd_rates={})
    assert outcome.scores[0].score == 10
    assert outcome.currency_pairs == frozenset()


# --- required fundamentals and missing data ---------------------------------------------------


def test_required_fundamentals_are_checked_before_comparing() -> None:
    instr = instrument(close="30", eps="2", roe=None, book_value_per_share=None)
    result = score_one(
        instr,
        rule("pe_ratio", "lt", "20", required=["eps", "roe"], rule_id="needs-roe"),
        rule("pe_ratio", "lt", "20", required=["eps", "dividends_per_share"], rule_id="raw"),
        rule("pe_ratio", "lt", "20", required=["eps", "price"], rule_id="ok"),
    )
    assert result.breakdown == [
        {
            "ruleId": "needs-roe",
            "matched": False,
            "points": 0,
            "actualValue": "15",
            "skippedReason": "missing_fundamental",
        },
        {
            "ruleId": "raw",
            "matched": False,
            "points": 0,
            "actualValue": "15",
            "skippedReason": "missing_fundamental",
        },
        {"ruleId": "ok", "matched": True, "points": 10, "actualValue": "15"},
    ]


def test_raw_fields_are_looked_up_raw_and_metrics_as_metrics() -> None:
    # eps is present (so the raw requirement holds) but negative, so pe_ratio itself is missing.
    instr = instrument(close="10", eps="-1", roe="5")
    result = score_one(
        instr,
        rule("pe_ratio", "lt", "20", required=["eps"], rule_id="cmp"),
        rule("pe_ratio", "exists", required=["eps"], rule_id="exists-unrequired"),
        rule("pe_ratio", "exists", rule_id="exists-required"),
        rule("roe", "gt", "1", required=["pe_ratio"], rule_id="needs-pe"),
    )
    assert result.breakdown == [
        {"ruleId": "cmp", "matched": False, "points": 0, "skippedReason": "missing_fundamental"},
        {"ruleId": "exists-unrequired", "matched": True, "points": 10},
        {
            "ruleId": "exists-required",
            "matched": False,
            "points": 0,
            "skippedReason": "missing_fundamental",
        },
        {
            "ruleId": "needs-pe",
            "matched": False,
            "points": 0,
            "actualValue": "5",
            "skippedReason": "missing_fundamental",
        },
    ]
    assert result.score == 10


def test_no_price_and_no_fundamentals() -> None:
    rules = [rule(metric, "exists") for metric in sorted(METRICS)]
    result = score_one(InstrumentData("NONE", "EUR", None, {}), *rules)
    assert all(e["skippedReason"] == "missing_fundamental" for e in result.breakdown)
    assert all("actualValue" not in e for e in result.breakdown)
    assert result.score == 0
    assert result.max_possible_score == 10 * len(METRICS)
    assert result.percentage == Decimal("0.0000")


# --- results ---------------------------------------------------------------------------------


def test_negative_points_are_deducted_and_do_not_count_in_the_maximum() -> None:
    result = score_one(
        instrument(roe="30", debt_to_equity="3"),
        rule("roe", "gt", "15", points=20),
        rule("debt_to_equity", "gt", "2", points=-15),
        rule("debt_to_equity", "gt", "5", points=-40),
        rule("roe", "lt", "0", points=5),
    )
    assert [e["points"] for e in result.breakdown] == [20, -15, 0, 0]
    assert str(result.score) == "5.0000"
    assert str(result.max_possible_score) == "25.0000"
    assert str(result.percentage) == "20.0000"


def test_a_negative_score_gives_a_negative_percentage() -> None:
    result = score_one(
        instrument(roe="1"), rule("roe", "gt", "0", points=-30), rule("roe", "lt", "0", points=10)
    )
    assert str(result.score) == "-30.0000"
    assert str(result.percentage) == "-300.0000"


@pytest.mark.parametrize(
    "rules",
    [
        [],
        [{"metric": "roe", "operator": "gt", "value": "0", "points": -5}],
        [{"metric": "roe", "operator": "gt", "value": "0", "points": 0}],
    ],
)
def test_percentage_is_none_when_nothing_positive_can_be_scored(
    rules: list[dict[str, Any]],
) -> None:
    result = score_one(instrument(roe="1"), *[rule(**r) for r in rules])
    assert result.percentage is None
    assert str(result.max_possible_score) == "0.0000"
    assert result.score == sum(r["points"] for r in rules)
    assert len(result.breakdown) == len(rules)


@pytest.mark.parametrize(
    ("matched_points", "unmatched_points", "percentage"),
    [
        ([1], [2], "33.3333"),  # 33.33333333333333333|3
        ([2], [1], "66.6667"),  # 66.66666666666666666|7
        ([1], [100, 27], "0.7813"),  # 1/128 = 0.0078125 exactly: HALF_UP, not HALF_EVEN (0.7812)
        ([3], [100, 25], "2.3438"),  # 3/128 → 2.34375
        ([1, -2], [100, 27], "-0.7813"),  # -1/128 rounds away from zero too
        ([1], [5, 6], "8.3333"),  # 1/12
        ([7], [], "100.0000"),
    ],
)
def test_percentage_is_quantized_half_up(
    matched_points: list[int], unmatched_points: list[int], percentage: str
) -> None:
    rules = [rule("roe", "gt", "0", points=p) for p in matched_points]
    rules += [rule("roe", "lt", "0", points=p) for p in unmatched_points]
    result = score_one(instrument(roe="1"), *rules)
    assert str(result.percentage) == percentage
    assert result.score == sum(matched_points)
    assert result.max_possible_score == sum(p for p in matched_points + unmatched_points if p > 0)


def test_result_shape() -> None:
    instruments = [
        instrument(symbol="B", roe="20"),
        instrument(symbol="A", roe=None),
        instrument(symbol="C", roe="5"),
    ]
    rules = criteria(
        rule("roe", "gte", "10", rule_id="high"), rule("roe", "exists", points=-1, rule_id="any")
    )
    outcome = score_criteria_set(rules, instruments, base_currency="USD", usd_rates={})
    assert isinstance(outcome, SetOutcome)
    assert [(s.symbol, s.criteria_version_id) for s in outcome.scores] == [
        ("B", CVID),
        ("A", CVID),
        ("C", CVID),
    ]
    assert [str(s.score) for s in outcome.scores] == ["9.0000", "0.0000", "-1.0000"]
    assert [str(s.percentage) for s in outcome.scores] == ["90.0000", "0.0000", "-10.0000"]
    first = outcome.scores[0].breakdown
    assert [list(e) for e in first] == [
        ["ruleId", "matched", "points", "actualValue"],
        ["ruleId", "matched", "points", "actualValue"],
    ]
    assert first == [
        {"ruleId": "high", "matched": True, "points": 10, "actualValue": "20"},
        {"ruleId": "any", "matched": True, "points": -1, "actualValue": "20"},
    ]
    assert [list(e) for e in outcome.scores[1].breakdown] == [
        ["ruleId", "matched", "points", "skippedReason"]
    ] * 2
    assert all(type(e["points"]) is int for s in outcome.scores for e in s.breakdown)
    # Stored as compact JSON text: no whitespace, non-ASCII kept as is.
    assert outcome.scores[0].breakdown_json == (
        '[{"ruleId":"high","matched":true,"points":10,"actualValue":"20"},'
        '{"ruleId":"any","matched":true,"points":-1,"actualValue":"20"}]'
    )


def test_rule_ids_are_json_escaped_in_the_breakdown_text() -> None:
    hostile = 'quote" back\\slash\ttab \u00e9 \n'
    outcome = score_criteria_set(
        criteria(rule("roe", "exists", rule_id=hostile)),
        [InstrumentData("A", "USD", Decimal("1"), {"roe": Decimal("2")})],
        base_currency="USD",
        usd_rates={},
    )
    (score,) = outcome.scores
    assert score.breakdown == [
        {"ruleId": hostile, "matched": True, "points": 10, "actualValue": "2"}
    ]


def test_scoring_no_instruments() -> None:
    outcome = score_criteria_set(
        criteria(rule("market_cap", "gt", "1")), [], base_currency="USD", usd_rates={}
    )
    assert outcome == SetOutcome(scores=[], currency_pairs=frozenset())


# --- property-based tests against the literal reference implementation (reference.py) ----

CURRENCIES = ["USD", "EUR", "GBP", "BRL", "JPY"]
POOL = ["0", "0.02", "0.1", "0.2", "0.3", "1", "1.5", "3", "7", "15", "100", "-1", "-0.5"]


def _scaled(digits: int, exponent: int) -> Decimal:
    return Decimal(digits).scaleb(exponent)


decimals = st.one_of(
    st.sampled_from(POOL).map(Decimal),
    st.decimals(min_value=-(10**6), max_value=10**6, places=4),
    # Long coefficients and large/small exponents exercise the 20-digit rounding and text form;
    # 20-21 digit integers times 0.5, 1.5 or 2 from POOL land exactly on rounding ties.
    st.builds(_scaled, st.integers(-(10**25), 10**25), st.integers(-30, 12)),
    st.integers(10**19, 10**21).map(Decimal),
)
positive = decimals.filter(lambda d: d > 0)
optional = st.none() | decimals
usd_rates_strategy = st.dictionaries(st.sampled_from(CURRENCIES[1:]), positive, max_size=4)


def _mostly(draw: st.DrawFn, strategy: st.SearchStrategy[Any], otherwise: Any) -> Any:
    """A value from `strategy` seven times in eight, else `otherwise` (a missing value)."""
    return draw(strategy) if draw(st.integers(0, 7)) else draw(otherwise)


@st.composite
def instruments_strategy(draw: st.DrawFn) -> list[InstrumentData]:
    result = []
    for index in range(draw(st.integers(0, 5))):
        fundamentals = {}
        for name in FUNDAMENTAL_FIELDS:
            # Mostly present, sometimes null, sometimes absent (absent == null).
            if draw(st.integers(0, 9)):
                fundamentals[name] = _mostly(draw, decimals, st.none())
        result.append(
            InstrumentData(
                symbol=f"S{index}",
                currency=draw(st.sampled_from(CURRENCIES)),
                close=_mostly(draw, positive, st.none() | decimals),
                fundamentals=fundamentals,
            )
        )
    return result


def _seen_values(
    metric: str, instruments: list[InstrumentData], base: str, usd_rates: dict[str, Decimal]
) -> list[Decimal]:
    """The metric's actual values in this universe, so that rules often sit on a boundary."""
    seen = []
    for inst in instruments:
        try:
            value = ref_metric(metric, inst, base, usd_rates, set())
        except MissingRateError:
            continue
        if value is not None:
            seen.append(value)
    return seen


Scenario = tuple[list[dict[str, Any]], list[InstrumentData], str, dict[str, Decimal]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    instruments = draw(instruments_strategy())
    base = draw(st.sampled_from(CURRENCIES))
    usd_rates = draw(usd_rates_strategy)
    requirable = sorted(METRICS | set(FUNDAMENTAL_FIELDS))
    rules = []
    for index in range(draw(st.integers(0, 6))):
        metric = draw(st.sampled_from(sorted(METRICS)))
        operator = draw(st.sampled_from(sorted(OPERATORS)))
        seen = _seen_values(metric, instruments, base, usd_rates)
        values = st.one_of(st.sampled_from(seen), decimals) if seen else decimals
        low, high = sorted([draw(values), draw(values)])
        raw: dict[str, Any] = {
            "id": f"rule-{index}",
            "metric": metric,
            "operator": operator,
            "value": format(low, "f"),
            "points": draw(st.integers(-100, 100)),
        }
        if operator == "between":
            raw["value2"] = format(high, "f")
        if operator == "exists" and draw(st.booleans()):
            del raw["value"]
        if not draw(st.integers(0, 3)):
            raw["required_fundamentals"] = draw(st.lists(st.sampled_from(requirable), max_size=3))
        rules.append(raw)
    return rules, instruments, base, usd_rates


def _run(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args, **kwargs)
    except MissingRateError as error:
        return "missing", (error.from_currency, error.to_currency)


def _comparable(outcome: SetOutcome) -> Any:
    # str() of the Decimals so that 10 and 10.0000 differ; key order of the breakdown included.
    return (
        [
            (
                s.symbol,
                s.criteria_version_id,
                str(s.score),
                str(s.max_possible_score),
                str(s.percentage),
                [list(e.items()) for e in s.breakdown],
            )
            for s in outcome.scores
        ],
        outcome.currency_pairs,
    )


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_score_criteria_set_matches_the_reference(scenario: Scenario) -> None:
    rules, instruments, base, usd_rates = scenario
    criteria_set = criteria(*rules)
    kind, actual = _run(
        score_criteria_set, criteria_set, instruments, base_currency=base, usd_rates=usd_rates
    )
    ref_kind, expected = _run(ref_score_set, criteria_set, instruments, base, usd_rates)
    assert kind == ref_kind
    if kind == "ok":
        assert _comparable(actual) == _comparable(expected)
        by_symbol = {i.symbol: i for i in instruments}
        for s in actual.scores:  # compact JSON text, exactly what json would write
            compact = json.dumps(s.breakdown, separators=(",", ":"), ensure_ascii=False)
            assert s.breakdown_json == compact
            # The stored form (outcome characters + the night's metric texts) gives it back.
            texts = metric_texts(by_symbol[s.symbol], base_currency=base, usd_rates=usd_rates)
            assert canonical_breakdown_json(criteria_set, s.outcomes, texts) == s.breakdown_json
            assert len(s.outcomes) == len(criteria_set.rules)
    else:
        assert actual == expected


@settings(max_examples=200, deadline=None)
@given(first=scenarios(), second=scenarios())
def test_a_shared_metrics_cache_never_changes_results(first: Scenario, second: Scenario) -> None:
    """One batch shares a metrics cache across users and sets: every set, scored through a cache
    that other sets (other rules, base currencies and rates) filled first, equals the reference.
    The instruments are the batch's, so the same for every set."""
    cache = MetricsCache()
    instruments = first[1]
    for rules, _, base, usd_rates in (first, second, first):
        criteria_set = criteria(*rules)
        kind, actual = _run(
            score_criteria_set,
            criteria_set,
            instruments,
            base_currency=base,
            usd_rates=usd_rates,
            metrics_cache=cache,
        )
        ref_kind, expected = _run(ref_score_set, criteria_set, instruments, base, usd_rates)
        assert kind == ref_kind
        if kind == "ok":
            assert _comparable(actual) == _comparable(expected)


@settings(max_examples=200, deadline=None)
@given(
    inst=instruments_strategy().filter(bool).map(lambda found: found[0]),
    wanted=st.lists(st.sampled_from(sorted(METRICS | set(FUNDAMENTAL_FIELDS))), unique=True),
    base=st.sampled_from(CURRENCIES),
    usd_rates=usd_rates_strategy,
)
def test_compute_metrics_matches_the_reference(
    inst: InstrumentData, wanted: list[str], base: str, usd_rates: dict[str, Decimal]
) -> None:
    kind, actual = _run(
        compute_metrics, inst, base_currency=base, usd_rates=usd_rates, wanted=wanted
    )
    pairs: set[Any] = set()
    ref_kind, expected = _run(
        lambda: {name: ref_metric(name, inst, base, usd_rates, pairs) for name in wanted}
    )
    assert kind == ref_kind
    if kind == "ok":
        assert {k: str(v) for k, v in actual.items()} == {k: str(v) for k, v in expected.items()}


@settings(max_examples=200, deadline=None)
@given(a=st.sampled_from(CURRENCIES), b=st.sampled_from(CURRENCIES), usd_rates=usd_rates_strategy)
def test_rate_between_matches_the_reference(a: str, b: str, usd_rates: dict[str, Decimal]) -> None:
    kind, actual = _run(rate_between, usd_rates, a, b)
    expected = ("ok", Decimal(1)) if a == b else _run(ref_rate, usd_rates, a, b)
    assert (kind, str(actual)) == (expected[0], str(expected[1]))


def test_a_shared_cache_keeps_the_text_of_equal_rates_apart() -> None:
    # EUR->USD is 1/0.5 = 2 and EUR->CHF is 1.00/0.5 = 2.0: equal Decimals of different text, so
    # revenue converted with each is "2000" and "2000.0"; the breakdown shows each exactly.
    usd_rates = {"EUR": Decimal("0.5"), "CHF": Decimal("1.00")}
    instruments = [InstrumentData("E", "EUR", Decimal("10"), {"revenue": Decimal("1000")})]
    rules = criteria(rule("revenue", "gt", "1", rule_id="rev"))
    cache = MetricsCache()
    texts = {}
    for base in ("USD", "CHF"):
        alone = score_criteria_set(rules, instruments, base_currency=base, usd_rates=usd_rates)
        shared = score_criteria_set(
            rules, instruments, base_currency=base, usd_rates=usd_rates, metrics_cache=cache
        )
        assert [(x[:6], x.breakdown_json) for x in shared.scores] == [
            (x[:6], x.breakdown_json) for x in alone.scores
        ]
        texts[base] = shared.scores[0].breakdown[0]["actualValue"]
    assert texts == {"USD": "2000", "CHF": "2000.0"}
