"""Criteria versions: parsing and validation of their rules (SPEC §4).

A criteria version's `rules` arrive as decoded JSON or as JSON text. Text is decoded with
`parse_float=Decimal` so that numbers stay exact. Every problem raises `InvalidCriteriaError`
naming the criteria version and the rule (its id, else its 1-based position such as `#3`, plus its
name); invalid rules are never skipped.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

from scoring_pipeline.errors import InvalidCriteriaError

METRICS: frozenset[str] = frozenset(
    {
        "price",
        "pe_ratio",
        "pb_ratio",
        "dividend_yield",
        "market_cap",
        "revenue",
        "earnings",
        "surplus_years",
        "roe",
        "roa",
        "debt_to_equity",
        "current_ratio",
        "gross_margin",
        "net_margin",
        "payout_ratio",
        "ev_ebitda",
    }
)
CONVERTED_METRICS: frozenset[str] = frozenset({"market_cap", "revenue", "earnings"})
FUNDAMENTAL_FIELDS: tuple[str, ...] = (
    "eps",
    "book_value_per_share",
    "dividends_per_share",
    "shares_outstanding",
    "revenue",
    "earnings",
    "surplus_years",
    "roe",
    "roa",
    "debt_to_equity",
    "current_ratio",
    "gross_margin",
    "net_margin",
    "payout_ratio",
    "ev_ebitda",
)
OPERATORS: frozenset[str] = frozenset({"gt", "gte", "lt", "lte", "equals", "between", "exists"})
POINTS_RANGE = range(-100, 101)

_REQUIRABLE = METRICS | frozenset(FUNDAMENTAL_FIELDS)
# ASCII digits only: `\d` would also accept other scripts' digits, which Decimal() happily parses.
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule; `value`/`value2` are None where the operator ignores them."""

    id: str
    name: str
    metric: str
    operator: str
    value: Decimal | None
    value2: Decimal | None
    points: int
    required: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CriteriaSet:
    """A validated criteria version, ready to score one market's instruments."""

    criteria_version_id: str
    target_market: str
    asset_type: str
    version: int
    rules: tuple[Rule, ...]
    raw_rules: list[dict[str, Any]]


def parse_criteria(
    *, criteria_version_id: str, target_market: str, asset_type: str, version: int, rules: object
) -> CriteriaSet:
    """Validate a criteria version's rules (decoded JSON, or JSON text) into a `CriteriaSet`."""
    decoded = _decode(rules, criteria_version_id)
    if not isinstance(decoded, list):
        raise InvalidCriteriaError(
            f"rules must be a JSON array of objects, not {_type_name(decoded)}",
            criteria_version_id=criteria_version_id,
        )
    parsed: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(decoded, start=1):
        rule = _parse_rule(raw, index, criteria_version_id)
        if rule.id in seen:
            _fail("duplicate rule id", raw, index, criteria_version_id)
        seen.add(rule.id)
        parsed.append(rule)
    return CriteriaSet(
        criteria_version_id=criteria_version_id,
        target_market=target_market,
        asset_type=asset_type,
        version=version,
        rules=tuple(parsed),
        raw_rules=[_json_copy(raw) for raw in decoded],
    )


def _decode(rules: object, criteria_version_id: str) -> object:
    if not isinstance(rules, str | bytes | bytearray):
        return rules
    try:
        return json.loads(rules, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidCriteriaError(
            f"malformed JSON: {exc}", criteria_version_id=criteria_version_id
        ) from None


def _reject_constant(name: str) -> NoReturn:
    # json.loads accepts NaN and Infinity by default; they are not JSON.
    raise ValueError(f"{name} is not valid JSON")


def _parse_rule(raw: object, index: int, cvid: str) -> Rule:
    if not isinstance(raw, dict):
        raise InvalidCriteriaError(
            f"a rule must be a JSON object, not {_type_name(raw)}",
            criteria_version_id=cvid,
            rule=f"#{index}",
        )
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        _fail(f"id must be a non-empty string, got {_show(rule_id)}", raw, index, cvid)
    name = raw.get("name")
    if name is None:
        name = ""
    elif not isinstance(name, str):
        _fail(f"name must be a string, got {_show(name)}", raw, index, cvid)
    metric = raw.get("metric")
    if not isinstance(metric, str) or metric not in METRICS:
        _fail(f"unknown metric {_show(metric)}", raw, index, cvid)
    operator = raw.get("operator")
    if not isinstance(operator, str) or operator not in OPERATORS:
        _fail(f"unknown operator {_show(operator)}", raw, index, cvid)
    value = value2 = None
    if operator != "exists":
        value = _decimal(raw, "value", index, cvid)
    if operator == "between":
        value2 = _decimal(raw, "value2", index, cvid)
        assert value is not None  # for mypy: _decimal never returns None
        if value > value2:
            _fail(f"between needs value <= value2, got {value} > {value2}", raw, index, cvid)
    return Rule(
        id=rule_id,
        name=name,
        metric=metric,
        operator=operator,
        value=value,
        value2=value2,
        points=_points(raw, index, cvid),
        required=_required(raw, metric, index, cvid),
    )


def _decimal(raw: dict[str, Any], key: str, index: int, cvid: str) -> Decimal:
    if key not in raw:
        _fail(f"{key} is required for operator {raw['operator']!r}", raw, index, cvid)
    value = raw[key]
    if isinstance(value, str):
        if _PLAIN_DECIMAL.fullmatch(value):
            return Decimal(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    elif isinstance(value, Decimal) and value.is_finite():
        return value
    _fail(f"{key} must be a plain decimal string, got {_show(value)}", raw, index, cvid)


def _points(raw: dict[str, Any], index: int, cvid: str) -> int:
    points = raw.get("points")
    if not isinstance(points, int) or isinstance(points, bool):
        _fail(f"points must be an integer, got {_show(points)}", raw, index, cvid)
    if points not in POINTS_RANGE:
        _fail(f"points must be within -100..100, got {points}", raw, index, cvid)
    return points


def _required(raw: dict[str, Any], metric: str, index: int, cvid: str) -> tuple[str, ...]:
    names = raw.get("required_fundamentals")
    if names is None:
        return (metric,)
    if not isinstance(names, list):
        _fail(f"required_fundamentals must be a list, got {_show(names)}", raw, index, cvid)
    for name in names:
        if not isinstance(name, str) or name not in _REQUIRABLE:
            _fail(f"unknown required fundamental {_show(name)}", raw, index, cvid)
    # Order kept, duplicates dropped; an empty list means "just the metric" (SPEC §4).
    return tuple(dict.fromkeys(names)) or (metric,)


def _fail(message: str, raw: Mapping[str, Any], index: int, cvid: str) -> NoReturn:
    rule_id = raw.get("id")
    label = rule_id if isinstance(rule_id, str) and rule_id else f"#{index}"
    name = raw.get("name")
    if isinstance(name, str) and name:
        label += f" ({name!r})"
    raise InvalidCriteriaError(message, criteria_version_id=cvid, rule=label)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def _type_name(value: object) -> str:
    """The JSON name of a decoded value's type, as an operator reading the rules knows it."""
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _json_copy(value: Any) -> Any:
    """A detached copy that the standard json module can encode.

    Non-integer JSON numbers decoded as Decimal become their exact plain decimal strings, which
    `parse_criteria` reads back as the same value (so INPUTS_CAPTURED replays exactly).
    """
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_copy(item) for item in value]
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    return value
