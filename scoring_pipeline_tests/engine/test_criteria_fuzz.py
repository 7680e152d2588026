"""Fuzzing of criteria validation (SPEC §4 "Invalid criteria"), against an independent oracle.

Rules are generated near the schema (each field either valid or one of many wrong shapes) and
far from it (arbitrary JSON). `parse_criteria` must accept exactly what the oracle below accepts
and reject everything else with `InvalidCriteriaError` naming the criteria version; nothing
else may escape. The pipeline-level test stores each generated version in PostgreSQL (JSONB, as
the web app does) and scores the batch through the same code the `scores` asset runs: an invalid
version fails only its user, with a complete failed event set and no score written; a valid one
is scored.
"""

import datetime as dt
import json
import math
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from scoring_pipeline.engine.batch import score_batch
from scoring_pipeline.engine.criteria import parse_criteria
from scoring_pipeline.errors import InvalidCriteriaError
from scoring_pipeline.store.batch_inputs import load_batch_inputs
from scoring_pipeline.store.batch_write import write_batch
from scoring_pipeline.store.night.opening import open_night
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import DATE, rows, rules, snapshots

CVID = "00000000-0000-4000-8000-00000000f022"
SCORES = (
    "SELECT symbol, criteria_version_id::text AS cv, score, correlation_id::text AS c "
    "FROM asset_scores WHERE user_id = :u ORDER BY symbol"
)

# The schema as SPEC §4 states it, written out independently of scoring_pipeline.criteria.
SPEC_METRICS = (
    "price pe_ratio pb_ratio dividend_yield market_cap revenue earnings surplus_years roe roa "
    "debt_to_equity current_ratio gross_margin net_margin payout_ratio ev_ebitda"
).split()
SPEC_RAW_FIELDS = "eps book_value_per_share dividends_per_share shares_outstanding".split()
SPEC_OPERATORS = "gt gte lt lte equals between exists".split()
ASCII_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def oracle_decimal(value: Any, *, as_text: bool = True) -> Decimal | None:
    """The exact value of a rule's value/value2 per the spec, or None when it is not one.

    A non-integer number is exact in JSON text (the number as written); handed over already
    decoded, as a Python float, it is not, and is refused."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if as_text and math.isfinite(value) else None
    if isinstance(value, str) and ASCII_DECIMAL.fullmatch(value):
        return Decimal(value)
    return None


def oracle_valid(rules_value: Any, *, as_text: bool = True) -> bool:
    if not isinstance(rules_value, list):
        return False
    ids: set[str] = set()
    for rule in rules_value:
        if not isinstance(rule, dict):
            return False
        rule_id = rule.get("id")
        if not isinstance(rule_id, str) or rule_id == "" or rule_id in ids:
            return False
        ids.add(rule_id)
        if rule.get("name") is not None and not isinstance(rule.get("name"), str):
            return False
        if rule.get("metric") not in SPEC_METRICS or rule.get("operator") not in SPEC_OPERATORS:
            return False
        if rule["operator"] != "exists":
            low = oracle_decimal(rule.get("value"), as_text=as_text) if "value" in rule else None
            if low is None:
                return False
            if rule["operator"] == "between":
                high = (
                    oracle_decimal(rule.get("value2"), as_text=as_text)
                    if "value2" in rule
                    else None
                )
                if high is None or low > high:
                    return False
        points = rule.get("points")
        if isinstance(points, bool) or not isinstance(points, int) or not -100 <= points <= 100:
            return False
        required = rule.get("required_fundamentals")
        if required is not None and (
            not isinstance(required, list)
            or any(r not in SPEC_METRICS + SPEC_RAW_FIELDS for r in required)
        ):
            return False
    return True


_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_garbage = st.recursive(
    _json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
_plain_decimals = st.decimals(allow_nan=False, allow_infinity=False, places=4).map(
    lambda d: format(d, "f")
)
_values = st.one_of(
    _plain_decimals,
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1e5", "1,5", " 1", "", "١٢", "NaN", "Infinity", "0x10", "--1", "."]),
    _garbage,
)
_points = st.one_of(
    st.integers(-150, 150),
    st.sampled_from([True, False, 10.0, "10", None]),
    st.integers(),
)


@st.composite
def near_rules(draw: st.DrawFn) -> dict[str, Any]:
    """A rule whose every field is drawn from valid and invalid shapes; fields may be absent."""
    rule: dict[str, Any] = {}
    fields = {
        "id": st.one_of(st.uuids().map(str), st.sampled_from(["", "dup"]), _garbage),
        "name": st.one_of(st.text(max_size=10), st.none(), st.integers()),
        "metric": st.one_of(st.sampled_from(SPEC_METRICS), st.text(max_size=12), _garbage),
        "operator": st.one_of(st.sampled_from(SPEC_OPERATORS), st.text(max_size=8), _garbage),
        "value": _values,
        "value2": _values,
        "points": _points,
        "required_fundamentals": st.one_of(
            st.none(),
            st.lists(st.sampled_from(SPEC_METRICS + SPEC_RAW_FIELDS), max_size=3),
            st.lists(st.text(max_size=6), min_size=1, max_size=2),
            _garbage,
        ),
    }
    for key, strategy in fields.items():
        # Mostly valid-looking rules: the interesting failures are one field off.
        if key in ("id", "metric", "operator", "points") and draw(st.integers(0, 9)) < 8:
            rule[key] = draw(
                {
                    "id": st.uuids().map(str),
                    "metric": st.sampled_from(SPEC_METRICS),
                    "operator": st.sampled_from(SPEC_OPERATORS),
                    "points": st.integers(-100, 100),
                }[key]
            )
        elif draw(st.booleans()):
            rule[key] = draw(strategy)
    return rule


rule_lists = st.one_of(
    st.lists(near_rules(), max_size=4),
    _garbage,
)


def _json_text(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


_FLOAT_VALUE = [{"id": "r", "metric": "price", "operator": "gt", "value": 0.5, "points": 1}]


@settings(max_examples=400, deadline=None)
@given(rule_lists, st.booleans())
@example(_FLOAT_VALUE, False)  # a Python float: refused (found by this test)
@example(_FLOAT_VALUE, True)  # the same number in JSON text: exact, accepted
def test_parse_criteria_accepts_exactly_what_the_spec_allows(rules_value, as_text):
    given_rules: Any = _json_text(rules_value) if as_text else rules_value
    try:
        parsed = parse_criteria(
            criteria_version_id=CVID,
            target_market="US_TECH",
            asset_type="stock",
            version=1,
            rules=given_rules,
        )
    except InvalidCriteriaError as exc:
        assert not oracle_valid(rules_value, as_text=as_text), exc
        assert CVID in str(exc) and exc.criteria_version_id == CVID
        return
    assert oracle_valid(rules_value, as_text=as_text)
    assert [r.id for r in parsed.rules] == [r["id"] for r in rules_value]
    for rule, raw in zip(parsed.rules, rules_value, strict=True):
        assert rule.points == raw["points"] and rule.metric == raw["metric"]
        if rule.operator != "exists":
            assert rule.value == oracle_decimal(raw["value"], as_text=as_text)
    # What INPUTS_CAPTURED stores parses back to the same rules (replay).
    again = parse_criteria(
        criteria_version_id=CVID,
        target_market="US_TECH",
        asset_type="stock",
        version=1,
        rules=_json_text(parsed.raw_rules),
    )
    assert again.rules == parsed.rules


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_any_text_is_rules_or_a_named_invalid_criteria_error(text):
    try:
        parse_criteria(
            criteria_version_id=CVID, target_market="M", asset_type="stock", version=1, rules=text
        )
    except InvalidCriteriaError as exc:
        assert CVID in str(exc)


@pytest.mark.db
def test_fuzzed_criteria_through_the_batch_fail_only_their_user(world, dagster_instance):
    fuzzed = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    healthy = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    score_date = dt.date.fromisoformat(DATE)
    versions = iter(range(2, 10_000))
    seen = {"valid": 0, "invalid": 0}

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(rule_lists)
    def check(rules_value):
        text = _json_text(rules_value)
        assume("\\u0000" not in text)  # PostgreSQL's jsonb cannot hold NUL, nor can the app's
        cvid, version = str(uuid.uuid4()), next(versions)
        with world.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO criteria_versions (id, user_id, target_market, asset_type, "
                    "name, version, is_active, rules) VALUES (:i, :u, 'US_TECH', 'stock', "
                    "'fuzzed', :v, true, CAST(:r AS jsonb))"
                ),
                {"i": cvid, "u": fuzzed, "v": version, "r": text},
            )
        before = rows(world, SCORES, u=fuzzed)
        with world.begin() as conn:
            job = open_night(conn, score_date)
            inputs = load_batch_inputs(conn, score_date, "b0000")
            output = score_batch(
                inputs, score_date=score_date, batch="b0000", job_correlation_id=job
            )
            write_batch(conn, output, run_id=None)
        outcome = {u.user_id: u for u in output.users}
        assert outcome[healthy].ok
        mine = outcome[fuzzed]
        events = rows(
            world,
            "SELECT event_type, payload FROM calculation_events WHERE correlation_id = :c "
            "ORDER BY id",
            c=mine.correlation_id,
        )
        after = rows(world, SCORES, u=fuzzed)
        valid = oracle_valid(rules_value)
        seen["valid" if valid else "invalid"] += 1
        if valid:
            assert mine.ok, mine.error
            assert [e.event_type for e in events] == [
                "CALC_STARTED",
                "INPUTS_CAPTURED",
                "SCORES_COMPUTED",
                "CALC_COMPLETED",
            ]
            assert [(a.symbol, a.cv) for a in after] == [("AAA", cvid), ("BBB", cvid)]
        else:
            assert not mine.ok and mine.stage == "criteria_validation"
            assert mine.error is not None and cvid in mine.error["message"]
            assert [e.event_type for e in events] == ["CALC_STARTED", "CALC_COMPLETED"]
            assert events[-1].payload["status"] == "failed"
            assert events[-1].payload["error"]["type"] == "InvalidCriteriaError"
            assert after == before  # nothing changed
        duplicates = rows(
            world,
            "SELECT 1 FROM score_history GROUP BY user_id, symbol, score_date HAVING count(*) > 1",
        )
        assert duplicates == []

    check()
    assert seen["valid"] and seen["invalid"], seen  # both outcomes were exercised
