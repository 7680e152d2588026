"""Parsing and validation of criteria versions' rules (scoring_pipeline.criteria, SPEC §4).

Covers every validation failure (each names the criteria version and the rule), the accepted
value formats, `exists` without a value, JSON text input decoded exactly, `required_fundamentals`
defaults, and `raw_rules` as a detached, JSON-encodable copy that parses back to the same rules.
"""

import json
from decimal import Decimal
from typing import Any

import pytest

from scoring_pipeline.engine.criteria import (
    CONVERTED_METRICS,
    FUNDAMENTAL_FIELDS,
    METRICS,
    OPERATORS,
    CriteriaSet,
    Rule,
    parse_criteria,
)
from scoring_pipeline.errors import InvalidCriteriaError, UserCalculationError

CVID = "7b0e3c1a-0000-4000-8000-00000000c0de"


def parse(rules: object) -> CriteriaSet:
    return parse_criteria(
        criteria_version_id=CVID,
        target_market="US_TECH",
        asset_type="stock",
        version=3,
        rules=rules,
    )


def rule(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "r-1",
        "name": "P/E below 15",
        "metric": "pe_ratio",
        "operator": "lt",
        "value": "15",
        "points": 10,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not _ABSENT}


_ABSENT: Any = object()


def test_public_name_sets() -> None:
    assert METRICS == {
        "price", "pe_ratio", "pb_ratio", "dividend_yield", "market_cap", "revenue", "earnings",
        "surplus_years", "roe", "roa", "debt_to_equity", "current_ratio", "gross_margin",
        "net_margin", "payout_ratio", "ev_ebitda",
    }  # fmt: skip
    assert CONVERTED_METRICS == {"market_cap", "revenue", "earnings"}
    assert FUNDAMENTAL_FIELDS == (
        "eps", "book_value_per_share", "dividends_per_share", "shares_outstanding", "revenue",
        "earnings", "surplus_years", "roe", "roa", "debt_to_equity", "current_ratio",
        "gross_margin", "net_margin", "payout_ratio", "ev_ebitda",
    )  # fmt: skip
    assert OPERATORS == {"gt", "gte", "lt", "lte", "equals", "between", "exists"}


def test_a_valid_rule_becomes_a_typed_rule_and_the_set_keeps_its_identity() -> None:
    criteria = parse([rule()])
    assert criteria == CriteriaSet(
        criteria_version_id=CVID,
        target_market="US_TECH",
        asset_type="stock",
        version=3,
        rules=(
            Rule(
                id="r-1",
                name="P/E below 15",
                metric="pe_ratio",
                operator="lt",
                value=Decimal("15"),
                value2=None,
                points=10,
                required=("pe_ratio",),
            ),
        ),
        raw_rules=[rule()],
    )


def test_an_empty_rules_list_is_valid() -> None:
    criteria = parse([])
    assert criteria.rules == ()
    assert criteria.raw_rules == []
    assert parse("[]").rules == ()


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_metric_is_accepted(metric: str) -> None:
    assert parse([rule(metric=metric)]).rules[0].metric == metric


@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_every_operator_is_accepted(operator: str) -> None:
    parsed = parse([rule(operator=operator, value="1", value2="2")]).rules[0]
    assert parsed.operator == operator


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15", Decimal("15")),
        ("-0.5", Decimal("-0.5")),
        ("+0.5", Decimal("0.5")),
        ("1.25", Decimal("1.25")),
        (".5", Decimal("0.5")),
        ("15.", Decimal("15")),
        ("0.10000000000000000000000001", Decimal("0.10000000000000000000000001")),
        (15, Decimal(15)),
        (-3, Decimal(-3)),
        (Decimal("0.1"), Decimal("0.1")),
    ],
)
def test_plain_decimal_values_are_accepted_exactly(value: object, expected: Decimal) -> None:
    parsed = parse([rule(value=value)]).rules[0].value
    assert parsed == expected
    assert isinstance(parsed, Decimal)
    if isinstance(value, str):
        assert str(parsed) == str(Decimal(value))  # the written digits are kept


@pytest.mark.parametrize("value", [_ABSENT, None, "", "garbage", [1], 1.5, True, "NaN"])
def test_exists_ignores_its_value(value: object) -> None:
    parsed = parse([rule(operator="exists", value=value, value2="also ignored")]).rules[0]
    assert (parsed.operator, parsed.value, parsed.value2) == ("exists", None, None)


def test_between_keeps_both_values_and_accepts_equal_bounds() -> None:
    parsed = parse([rule(operator="between", value="1.5", value2="1.50")]).rules[0]
    assert (parsed.value, parsed.value2) == (Decimal("1.5"), Decimal("1.50"))


def test_value2_is_ignored_by_other_operators() -> None:
    assert parse([rule(operator="gt", value2="not a number")]).rules[0].value2 is None


@pytest.mark.parametrize("points", [-100, -1, 0, 1, 100])
def test_points_within_range_are_accepted(points: int) -> None:
    assert parse([rule(points=points)]).rules[0].points == points


@pytest.mark.parametrize(
    ("required", "expected"),
    [
        (_ABSENT, ("pe_ratio",)),
        (None, ("pe_ratio",)),
        ([], ("pe_ratio",)),
        (["eps"], ("eps",)),
        (["price", "eps", "price"], ("price", "eps")),
        (
            ["shares_outstanding", "market_cap", "revenue"],
            ("shares_outstanding", "market_cap", "revenue"),
        ),
        (list(FUNDAMENTAL_FIELDS), FUNDAMENTAL_FIELDS),
    ],
)
def test_required_fundamentals(required: object, expected: tuple[str, ...]) -> None:
    assert parse([rule(required_fundamentals=required)]).rules[0].required == expected


def test_name_defaults_to_empty_and_extra_keys_are_kept_in_raw_rules() -> None:
    raw = rule(name=_ABSENT, note="from the app")
    criteria = parse([raw])
    assert criteria.rules[0].name == ""
    assert criteria.raw_rules == [raw]
    assert parse([rule(name=None)]).rules[0].name == ""


def test_json_text_is_decoded_with_exact_decimals() -> None:
    text = """[
        {"id": "r-1", "metric": "pe_ratio", "operator": "lt", "value": "0.1", "points": 10},
        {"id": "r-2", "metric": "roe", "operator": "between",
         "value": 0.1, "value2": 0.30000000000000000001, "points": -5}
    ]"""
    criteria = parse(text)
    assert criteria.rules[0].value == Decimal("0.1")
    assert criteria.rules[1].value == Decimal("0.1")  # a JSON number, read as Decimal, not float
    assert criteria.rules[1].value2 == Decimal("0.30000000000000000001")
    assert criteria.rules[1].points == -5
    assert parse(text.encode()).rules == criteria.rules
    assert parse(bytearray(text.encode())).rules == criteria.rules


def test_raw_rules_are_a_detached_json_encodable_copy_that_parses_back() -> None:
    text = '[{"id": "a", "metric": "roe", "operator": "gte", "value": 1.50, "points": 5,'
    text += ' "required_fundamentals": ["roe"], "meta": {"weights": [0.5, 2]}}]'
    criteria = parse(text)
    raw = criteria.raw_rules
    assert raw == [
        {
            "id": "a",
            "metric": "roe",
            "operator": "gte",
            "value": "1.50",
            "points": 5,
            "required_fundamentals": ["roe"],
            "meta": {"weights": ["0.5", 2]},
        }
    ]
    assert json.loads(json.dumps(raw)) == raw
    assert parse(json.dumps(raw)).rules == criteria.rules

    given = [rule()]
    parsed = parse(given)
    given[0]["value"] = "99"
    assert parsed.raw_rules[0]["value"] == "15"


def test_invalid_criteria_is_a_user_calculation_error() -> None:
    with pytest.raises(UserCalculationError):
        parse([rule(metric="nope")])


NOT_A_LIST: list[object] = [
    {"id": "r-1"},
    None,
    5,
    '{"rules": []}',
    '"[]"',
]


@pytest.mark.parametrize("rules", NOT_A_LIST)
def test_rules_must_be_a_list(rules: object) -> None:
    with pytest.raises(InvalidCriteriaError, match="must be a JSON array") as caught:
        parse(rules)
    assert CVID in str(caught.value)
    assert caught.value.criteria_version_id == CVID


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[",
        "[{]",
        '[{"id": "a",}]',
        b"\xff\xfe\xfd",
        "[NaN]",
        '[{"value": Infinity}]',
        "[-Infinity]",
    ],
)
def test_malformed_json_text(text: str | bytes) -> None:
    with pytest.raises(InvalidCriteriaError, match="malformed JSON") as caught:
        parse(text)
    assert CVID in str(caught.value)


def test_a_rule_must_be_an_object() -> None:
    with pytest.raises(InvalidCriteriaError, match="must be a JSON object") as caught:
        parse([rule(), ["id", "r-2"]])
    assert caught.value.rule == "#2"
    assert CVID in str(caught.value) and "#2" in str(caught.value)


@pytest.mark.parametrize(
    ("rules", "named"),
    [({"not": "a list"}, "object"), ("[1]", "number"), ('"x"', "string"), ("true", "boolean")],
)
def test_what_the_rules_are_instead_is_named_in_json_terms(rules: object, named: str) -> None:
    # An operator reads the rules as JSON: "not object", never Python's "not dict".
    with pytest.raises(InvalidCriteriaError) as caught:
        parse(rules if isinstance(rules, dict) else str(rules))
    assert str(caught.value).endswith(f"not {named}"), str(caught.value)


# (overrides, expected message fragment, expected rule label). The label is the rule id when it
# has one, else its 1-based position; the name follows when there is one.
NAMED = "r-1 ('P/E below 15')"
INVALID_RULES: list[tuple[dict[str, Any], str, str]] = [
    ({"id": _ABSENT}, "id must be a non-empty string", "#1 ('P/E below 15')"),
    ({"id": ""}, "id must be a non-empty string", "#1 ('P/E below 15')"),
    ({"id": 7, "name": _ABSENT}, "id must be a non-empty string", "#1"),
    ({"id": None}, "id must be a non-empty string", "#1 ('P/E below 15')"),
    ({"name": 5}, "name must be a string", "r-1"),
    ({"metric": "pe"}, "unknown metric 'pe'", NAMED),
    ({"metric": _ABSENT}, "unknown metric None", NAMED),
    ({"metric": ["price"]}, "unknown metric", NAMED),
    ({"metric": "eps"}, "unknown metric 'eps'", NAMED),
    ({"operator": "ne"}, "unknown operator 'ne'", NAMED),
    ({"operator": _ABSENT}, "unknown operator", NAMED),
    ({"operator": {"gt": 1}}, "unknown operator", NAMED),
    ({"operator": "GT"}, "unknown operator", NAMED),
    ({"value": _ABSENT}, "value is required for operator 'lt'", NAMED),
    ({"value": None}, "value must be a plain decimal", NAMED),
    ({"value": ""}, "value must be a plain decimal", NAMED),
    ({"value": " 15"}, "value must be a plain decimal", NAMED),
    ({"value": "15 "}, "value must be a plain decimal", NAMED),
    ({"value": "15\n"}, "value must be a plain decimal", NAMED),
    ({"value": "1e3"}, "value must be a plain decimal", NAMED),
    ({"value": "1E-3"}, "value must be a plain decimal", NAMED),
    ({"value": "NaN"}, "value must be a plain decimal", NAMED),
    ({"value": "Infinity"}, "value must be a plain decimal", NAMED),
    ({"value": "-inf"}, "value must be a plain decimal", NAMED),
    ({"value": "0x1F"}, "value must be a plain decimal", NAMED),
    ({"value": "1_000"}, "value must be a plain decimal", NAMED),
    ({"value": "1,5"}, "value must be a plain decimal", NAMED),
    ({"value": "\u0661\u0665"}, "value must be a plain decimal", NAMED),
    ({"value": "--1"}, "value must be a plain decimal", NAMED),
    ({"value": "."}, "value must be a plain decimal", NAMED),
    ({"value": "-"}, "value must be a plain decimal", NAMED),
    ({"value": "1.2.3"}, "value must be a plain decimal", NAMED),
    ({"value": True}, "value must be a plain decimal", NAMED),
    ({"value": 15.0}, "value must be a plain decimal", NAMED),
    ({"value": Decimal("NaN")}, "value must be a plain decimal", NAMED),
    ({"value": Decimal("-Infinity")}, "value must be a plain decimal", NAMED),
    ({"value": ["15"]}, "value must be a plain decimal", NAMED),
    ({"operator": "between"}, "value2 is required for operator 'between'", NAMED),
    ({"operator": "between", "value2": "x"}, "value2 must be a plain decimal", NAMED),
    ({"operator": "between", "value2": 1.5}, "value2 must be a plain decimal", NAMED),
    ({"operator": "between", "value2": "14.99"}, "value <= value2", NAMED),
    ({"operator": "between", "value": "x", "value2": "1"}, "value must be", NAMED),
    ({"points": _ABSENT}, "points must be an integer", NAMED),
    ({"points": None}, "points must be an integer", NAMED),
    ({"points": True}, "points must be an integer", NAMED),
    ({"points": 10.0}, "points must be an integer", NAMED),
    ({"points": Decimal("10")}, "points must be an integer", NAMED),
    ({"points": "10"}, "points must be an integer", NAMED),
    ({"points": 101}, "within -100..100", NAMED),
    ({"points": -101}, "within -100..100", NAMED),
    ({"points": 10**30}, "within -100..100", NAMED),
    ({"required_fundamentals": "eps"}, "must be a list", NAMED),
    ({"required_fundamentals": {"eps": 1}}, "must be a list", NAMED),
    ({"required_fundamentals": ["eps", "ebitda"]}, "unknown required fundamental 'ebitda'", NAMED),
    ({"required_fundamentals": [None]}, "unknown required fundamental None", NAMED),
    ({"required_fundamentals": [["eps"]]}, "unknown required fundamental", NAMED),
]


@pytest.mark.parametrize(("overrides", "message", "label"), INVALID_RULES)
def test_invalid_rule_names_the_version_and_the_rule(
    overrides: dict[str, Any], message: str, label: str
) -> None:
    with pytest.raises(InvalidCriteriaError) as caught:
        parse([rule(**overrides)])
    error = caught.value
    assert message in str(error)
    assert error.criteria_version_id == CVID
    assert error.rule == label
    assert CVID in str(error) and f"rule {label}" in str(error)


@pytest.mark.parametrize(("overrides", "message", "label"), INVALID_RULES)
def test_an_invalid_rule_is_found_after_valid_ones(
    overrides: dict[str, Any], message: str, label: str
) -> None:
    valid = [rule(id="ok-1"), rule(id="ok-2", operator="exists", value=_ABSENT)]
    with pytest.raises(InvalidCriteriaError) as caught:
        parse([*valid, rule(**overrides)])
    assert message in str(caught.value)
    assert caught.value.rule == label.replace("#1", "#3")


def test_invalid_rule_in_json_text_is_named_too() -> None:
    text = '[{"id": "r-1", "metric": "roe", "operator": "gt", "value": 1e3, "points": 5}]'
    # A JSON number with an exponent is an exact Decimal, so it is accepted...
    assert parse(text).rules[0].value == Decimal("1E+3")
    bad = text.replace('"points": 5', '"points": 5.0')
    with pytest.raises(InvalidCriteriaError, match="points must be an integer") as caught:
        parse(bad)
    assert caught.value.rule == "r-1"


def test_duplicate_rule_ids_are_rejected() -> None:
    with pytest.raises(InvalidCriteriaError, match="duplicate rule id") as caught:
        parse([rule(), rule(name="again")])
    assert caught.value.rule == "r-1 ('again')"


def test_long_garbage_is_shortened_in_messages() -> None:
    with pytest.raises(InvalidCriteriaError) as caught:
        parse([rule(metric="x" * 500)])
    assert len(str(caught.value)) < 200
    assert "..." in str(caught.value)
