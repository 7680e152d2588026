"""A comparison rule's outcomes are shared by every rule whose value falls at the same place
among a column's distinct values (`rule_plan._rank`): for any column (missing values, equal
values written with different scales such as 2.5 and 2.50, a NaN) and any rules scored one after
another over the same universe, each rule's outcome characters are exactly those of comparing
its value with every instrument's, one by one."""

import json
import operator
import uuid
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring_pipeline.engine.columns import UniverseColumns
from scoring_pipeline.engine.criteria import parse_criteria
from scoring_pipeline.engine.rule_plan import MATCHED, SKIPPED, UNMATCHED, RulePlan

TESTS = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "equals": operator.eq,
}

# Few distinct values (so that rules collide on ranks), scales that differ for equal values.
_values = st.sampled_from(
    ["-1", "0", "0.0", "1.5", "1.50", "2", "2.5", "2.50", "3", "10", "10.000", "99.99"]
).map(Decimal)
_cells = st.one_of(st.none(), _values)
_rule = st.tuples(
    st.sampled_from([*TESTS, "between"]),
    _values,
    _values,
)


def _expected(op: str, low: Decimal, high: Decimal, column: list[Decimal | None]) -> str:
    out = []
    for x in column:
        if x is None:
            out.append(SKIPPED)
        elif op == "between":
            out.append(MATCHED if low <= x <= high else UNMATCHED)
        else:
            out.append(MATCHED if TESTS[op](x, low) else UNMATCHED)
    return "".join(out)


def _plan(op: str, low: Decimal, high: Decimal) -> RulePlan:
    rule = {"id": str(uuid.uuid4()), "metric": "roe", "operator": op, "points": 1}
    rule["value"] = format(low, "f")
    if op == "between":
        rule["value2"] = format(high, "f")
    criteria = parse_criteria(
        criteria_version_id=str(uuid.uuid4()),
        target_market="US_TECH",
        asset_type="stock",
        version=1,
        rules=json.dumps([rule]),
    )
    return RulePlan(criteria)


@settings(max_examples=300, deadline=None)
@given(
    column=st.lists(_cells, min_size=1, max_size=12),
    rules=st.lists(_rule, min_size=1, max_size=25),
)
def test_ranked_outcomes_equal_comparing_value_by_value(column, rules):
    universe = UniverseColumns([{"roe": x} for x in column])  # shared by every rule below
    for op, a, b in rules:
        low, high = (min(a, b), max(a, b)) if op == "between" else (a, b)
        outcomes, totals = _plan(op, low, high).evaluate(len(column), universe)
        expected = _expected(op, low, high, column)
        assert "".join(outcomes) == expected, (op, low, high)
        assert totals == [1 if c == MATCHED else 0 for c in expected]


def test_a_column_with_nan_is_compared_value_by_value():
    column = [Decimal("1"), Decimal("NaN"), None, Decimal("3")]
    universe = UniverseColumns([{"roe": x} for x in column])
    assert universe.ordered("roe") is None
    outcomes, _ = _plan("equals", Decimal("3"), Decimal("3")).evaluate(len(column), universe)
    assert "".join(outcomes) == "uusm"
    assert universe.outcomes == {}  # nothing shared for a column that does not order
