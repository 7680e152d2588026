"""A criteria set compiled for evaluation over a universe's columns, one rule at a time: each
instrument's outcome characters and points, and the canonical breakdown's text they stand for."""

import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from scoring_pipeline.engine.columns import UniverseColumns
from scoring_pipeline.engine.criteria import CONVERTED_METRICS, CriteriaSet
from scoring_pipeline.engine.metrics import SCORE_CONTEXT

MISSING_FUNDAMENTAL = "missing_fundamental"
# Tails of a breakdown entry's JSON text (see `RulePlan`): the entry is built from cached pieces.
_SKIPPED_TAIL = f',"skippedReason":"{MISSING_FUNDAMENTAL}"}}'
_QUANTUM = Decimal("0.0001")
_HUNDRED = Decimal(100)
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_divide = SCORE_CONTEXT.divide
_multiply = SCORE_CONTEXT.multiply

# A rule's outcome on one instrument, one character per rule in the compact form (SPEC §4).
MATCHED, UNMATCHED, SKIPPED = "m", "u", "s"
_MATCHED_BYTE = ord(MATCHED)

# One rule's outcome characters over a universe's instruments, as ASCII bytes.
CodesRow = npt.NDArray[np.uint8]


class ResultTexts(NamedTuple):
    """A result's numbers as their exact plain text, made once per distinct total of a plan:
    the events' JSON and the COPY rows reuse them instead of formatting every asset's Decimals."""

    score: str
    maximum: str
    percentage: str | None
    # A SCORES_COMPUTED result's text around its symbol and outcomes, keys in `jsonb`'s order:
    # `{"score":"…","assetId":` and `,"percentage":"…"` (or `null`)
    # `,"maxPossibleScore":"…","criteriaVersionId":"…"}`.
    json_head: str
    json_tail: str


class PlanResult(NamedTuple):
    score: Decimal
    percentage: Decimal | None
    texts: ResultTexts


class RulePlan:
    """A criteria set compiled for fast evaluation over a universe, one rule at a time.

    A breakdown entry is a head made once per rule (`{"ruleId":…,"matched":…,"points":…`, or
    the whole entry when it has no value) followed by the universe's text for the value (see
    `UniverseColumns`): no object is built or encoded per rule and instrument. Heads carry the
    separator before them (`[` for the first rule, `,` after), so an instrument's breakdown is
    the concatenation of its heads and tails and a closing `]`.
    """

    __slots__ = (
        "criteria_version_id",
        "rules",
        "converts",
        "max_score",
        "maximum",
        "_decided_points",
        "_results",
    )

    def __init__(self, criteria: CriteriaSet) -> None:
        self.criteria_version_id = criteria.criteria_version_id
        # Per rule: the heads of its entry when matched and when not, its whole entry when
        # skipped for a missing value, and when an `exists` rule matches without a value; then
        # metric, test (None for exists), points, whether the metric itself is required, and
        # the other required names (usually none).
        rules = []
        for index, rule in enumerate(criteria.rules):
            head = ("[" if index == 0 else ",") + '{"ruleId":' + _ENCODE(rule.id) + ',"matched":'
            matched, unmatched = f'{head}true,"points":{rule.points}', f'{head}false,"points":0'
            rules.append(
                (
                    matched,
                    unmatched,
                    unmatched + _SKIPPED_TAIL,
                    matched + "}",
                    rule.metric,
                    _comparison(rule.operator, rule.value, rule.value2),
                    rule.points,
                    rule.metric in rule.required,
                    tuple(name for name in rule.required if name != rule.metric),
                    _rank(rule.operator, rule.value, rule.value2),
                )
            )
        self.rules = tuple(rules)
        # Per rule, the points a match awards when the rule's outcome alone decides them (its
        # own metric required, nothing else): a rule with other required names, or whose metric
        # is not required, adds its points instrument by instrument (`_general_rule`).
        self._decided_points = np.array(
            [
                0 if others or not metric_required else points
                for *_, points, metric_required, others, _rank in self.rules
            ],
            dtype=np.int64,
        )
        names: dict[str, None] = {}
        for rule in criteria.rules:
            names[rule.metric] = None
            names.update(dict.fromkeys(rule.required))
        self.converts = not CONVERTED_METRICS.isdisjoint(names)
        self.max_score = sum(rule.points for rule in criteria.rules if rule.points > 0)
        self.maximum = _quantize(Decimal(self.max_score))
        # Scores are small integers, so (score, percentage) repeat a lot across instruments.
        self._results: dict[int, PlanResult] = {}

    def evaluate(self, count: int, universe: UniverseColumns) -> tuple[list[str], list[int]]:
        """Each of the universe's `count` instruments' outcome characters (one per rule, in
        rule order) and points.

        Each rule's outcome characters are a row of bytes (shared between rules that compare
        the same column the same way); the rows stacked and transposed are every instrument's
        outcome string, and the matched cells times the rules' points its total (integers:
        exact)."""
        if not self.rules:
            return [""] * count, [0] * count
        # The points of the rules that `_general_rule` decides instrument by instrument; the
        # others' come from their outcome characters (`_decided_points`).
        totals = [0] * count
        general = False
        rows: list[CodesRow] = []
        for _m, _u, _s, _e, metric, test, points, metric_required, others, rank in self.rules:
            column = universe.column(metric)
            if others or not metric_required:
                general = True
                rows.append(
                    _codes_row(
                        _general_rule(
                            (test, points, others), metric_required, universe, column, totals
                        )
                    )
                )
            elif test is None:  # `exists` of a required metric: matched when present
                rows.append(_exists_row(universe, metric, column))
            else:
                rows.append(_compared(universe, metric, column, test, rank))
        codes = np.stack(rows, axis=1)  # one row per instrument, one column per rule
        width = len(rows)
        text = codes.tobytes().decode("ascii")
        outcomes = [text[at : at + width] for at in range(0, width * count, width)]
        decided = (codes == _MATCHED_BYTE) @ self._decided_points
        if general:
            decided += np.asarray(totals, dtype=np.int64)
        return outcomes, decided.tolist()

    def render(self, outcomes: str, tail_of: Callable[[str], str]) -> str:
        """The canonical breakdown's JSON text for these outcomes; `tail_of(metric)` is the
        instrument's `,"actualValue":"…"}` text for a metric, or '' when it is missing."""
        parts = []
        for (matched, unmatched, skipped, exists_without_value, metric, *_), code in zip(
            self.rules, outcomes, strict=True
        ):
            tail = tail_of(metric)
            if code == MATCHED:
                parts.append(matched + tail if tail else exists_without_value)
            elif code == SKIPPED:
                parts.append(unmatched + tail[:-1] + _SKIPPED_TAIL if tail else skipped)
            else:
                parts.append(unmatched + (tail or "}"))
        return ("".join(parts) or "[") + "]"

    def result(self, total: int) -> PlanResult:
        """(score, percentage, their texts) of a total of points: both to 4 decimal places."""
        cached = self._results.get(total)
        if cached is None:
            score, percentage, score_text, maximum_text, percentage_text, head, tail = _numbers(
                total, self.max_score
            )
            texts = ResultTexts(
                score_text,
                maximum_text,
                percentage_text,
                json_head=head,
                json_tail=f"{tail}{_ENCODE(self.criteria_version_id)}}}",
            )
            cached = self._results[total] = PlanResult(score, percentage, texts)
        return cached


# A result's numbers and their texts by (total, max possible score), whatever the criteria set:
# every set's scores are small integers out of a few maxima, so a run worker computes each pair
# once instead of once per set. Emptied when it outgrows what a night shows.
_NUMBERS: dict[tuple[int, int], tuple[Decimal, Decimal | None, str, str, str | None, str, str]] = {}
NUMBERS_KEPT = 100_000


def _numbers(
    total: int, max_score: int
) -> tuple[Decimal, Decimal | None, str, str, str | None, str, str]:
    """(score, percentage, the texts of score, maximum and percentage, and of a SCORES_COMPUTED
    result before its symbol and before its criteria version id)."""
    key = (total, max_score)
    found = _NUMBERS.get(key)
    if found is None:
        if len(_NUMBERS) >= NUMBERS_KEPT:
            _NUMBERS.clear()
        percentage = None
        if max_score:
            ratio = _divide(Decimal(total), Decimal(max_score))
            percentage = _quantize(_multiply(ratio, _HUNDRED))
        score = _quantize(Decimal(total))
        score_text, maximum_text = format(score, "f"), format(_quantize(Decimal(max_score)), "f")
        percentage_text = None if percentage is None else format(percentage, "f")
        percentage_json = "null" if percentage_text is None else f'"{percentage_text}"'
        found = _NUMBERS[key] = (
            score,
            percentage,
            score_text,
            maximum_text,
            percentage_text,
            f'{{"score":"{score_text}","assetId":',
            f',"percentage":{percentage_json},"maxPossibleScore":"{maximum_text}",'
            '"criteriaVersionId":',
        )
    return found


# Where a rule's value falls among a column's distinct values, in ascending order (`ordered`):
# every value with the same rank matches the same instruments, so their outcome characters are
# computed once per column. `("up", i)`: the values from position i on match; `("down", i)`:
# those before i; `("range", i, j)`: positions i to j - 1; `("eq", i)`: position i alone.
Rank = Callable[[list[Decimal]], tuple[object, ...]]


def _rank(op: str, value: Decimal | None, value2: Decimal | None) -> Rank | None:
    if value is None:  # `exists`
        return None
    if op == "gt":  # value < x
        return lambda ordered: ("up", bisect_right(ordered, value))
    if op == "gte":  # value <= x
        return lambda ordered: ("up", bisect_left(ordered, value))
    if op == "lt":  # x < value
        return lambda ordered: ("down", bisect_left(ordered, value))
    if op == "lte":  # x <= value
        return lambda ordered: ("down", bisect_right(ordered, value))
    if op == "between":  # value <= x <= value2
        assert value2 is not None
        high = value2
        return lambda ordered: ("range", bisect_left(ordered, value), bisect_right(ordered, high))
    if op == "equals":

        def equal(ordered: list[Decimal]) -> tuple[object, ...]:
            at = bisect_left(ordered, value)
            return ("eq", at if at < len(ordered) and ordered[at] == value else -1)

        return equal
    raise ValueError(f"no rank for operator {op!r}")


def _compared(
    universe: UniverseColumns,
    metric: str,
    column: list[Decimal | None],
    test: Callable[[Decimal], bool],
    rank: Rank | None,
) -> CodesRow:
    """A comparison rule's outcome characters over a column (missing values skipped). The
    characters of a rank are those of the first rule that had it, evaluated value by value;
    the row is shared, never modified."""
    ordered = None if rank is None else universe.ordered(metric)
    if rank is None or ordered is None:
        return _codes_row(_each_value(column, test))
    return _shared_row(universe, (metric, rank(ordered)), lambda: _each_value(column, test))


def _exists_row(universe: UniverseColumns, metric: str, column: list[Decimal | None]) -> CodesRow:
    """An `exists` rule's outcome characters over a column of a required metric: matched when
    present, skipped when missing; shared like a comparison's."""
    return _shared_row(
        universe,
        (metric, ("exists",)),
        lambda: [SKIPPED if x is None else MATCHED for x in column],
    )


def _shared_row(
    universe: UniverseColumns, key: tuple[str, tuple[object, ...]], codes: Callable[[], list[str]]
) -> CodesRow:
    """The universe's row of outcome characters under `key`, made from `codes` the first time."""
    found: CodesRow | None = universe.outcomes.get(key)
    if found is None:
        found = universe.outcomes[key] = _codes_row(codes())
    return found


def _codes_row(codes: list[str]) -> CodesRow:
    return np.frombuffer("".join(codes).encode("ascii"), dtype=np.uint8)


def _each_value(column: list[Decimal | None], test: Callable[[Decimal], bool]) -> list[str]:
    """A comparison rule's outcome characters, value by value (missing values skipped)."""
    return [SKIPPED if x is None else MATCHED if test(x) else UNMATCHED for x in column]


def _comparison(
    op: str, value: Decimal | None, value2: Decimal | None
) -> Callable[[Decimal], bool] | None:
    """A test of the metric value x against the rule's values; None for `exists`."""
    if op == "exists":
        return None
    assert value is not None  # parse_criteria guarantees a value for every other operator
    if op == "between":
        assert value2 is not None
        low, high = value, value2
        return lambda x: low <= x <= high
    # Bound comparisons of the rule's value, mirrored: `x > v` is `v < x`. No Python frame.
    mirrored: dict[str, Callable[[Decimal], bool]] = {
        "gt": value.__lt__,
        "gte": value.__le__,
        "lt": value.__gt__,
        "lte": value.__ge__,
        "equals": value.__eq__,
    }
    return mirrored[op]


def _general_rule(
    rule: tuple[Callable[[Decimal], bool] | None, int, tuple[str, ...]],
    metric_required: bool,
    universe: UniverseColumns,
    column: list[Decimal | None],
    totals: list[int],
) -> list[str]:
    """Outcomes of a rule with other required fields, or whose metric is not required
    (`required_fundamentals` given): instrument by instrument. Adds its points to `totals`."""
    test, points, others = rule
    required = [universe.column(name) for name in others]
    codes: list[str] = []
    for i, x in enumerate(column):
        lacking = any(values[i] is None for values in required)
        if x is None:
            if lacking or metric_required or test is not None:
                codes.append(SKIPPED)
            else:  # `exists` whose metric is missing but not required
                codes.append(MATCHED)
                totals[i] += points
        elif lacking:
            codes.append(SKIPPED)  # its value is still shown
        elif test is None or test(x):
            codes.append(MATCHED)
            totals[i] += points
        else:
            codes.append(UNMATCHED)
    return codes


def _quantize(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, rounding=ROUND_HALF_UP, context=SCORE_CONTEXT)
