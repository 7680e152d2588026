"""The pure scoring engine (SPEC §4): metrics, currency conversion and rule evaluation.

No Dagster, no database, no I/O, no floats. Every arithmetic operation runs in `SCORE_CONTEXT`
(20 significant digits, ROUND_HALF_UP) in the order the specification writes it, so a replay of
the captured inputs reproduces the stored scores digit for digit.
"""

import decimal
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from scoring_pipeline.engine.criteria import CONVERTED_METRICS, FUNDAMENTAL_FIELDS, CriteriaSet
from scoring_pipeline.errors import MissingRateError

SCORE_CONTEXT = decimal.Context(
    prec=20,
    rounding=ROUND_HALF_UP,
    Emax=999_999,
    Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
MISSING_FUNDAMENTAL = "missing_fundamental"
# Tails of a breakdown entry's JSON text (see `_Plan`): the entry is built from cached pieces.
_SKIPPED_TAIL = f',"skippedReason":"{MISSING_FUNDAMENTAL}"}}'

_QUANTUM = Decimal("0.0001")
_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_ZERO = Decimal(0)
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_divide = SCORE_CONTEXT.divide
_multiply = SCORE_CONTEXT.multiply


@dataclass(frozen=True, slots=True)
class InstrumentData:
    """What one instrument contributes to scoring: its price and latest fundamentals."""

    symbol: str
    currency: str
    close: Decimal | None
    fundamentals: Mapping[str, Decimal | None]


# A rule's outcome on one instrument, one character per rule in the compact form (SPEC §4).
MATCHED, UNMATCHED, SKIPPED = "m", "u", "s"


class AssetScore(NamedTuple):
    """The score of one instrument under one criteria set.

    `outcomes` is the compact breakdown stored in `asset_scores`, `score_history` and
    SCORES_COMPUTED: one character per rule, in rule order — `m` matched (the rule's points), `u`
    not matched, `s` skipped for a missing fundamental. With the rules and the instrument's metric
    values it gives the canonical breakdown (`breakdown_json`: one entry per rule, ruleId,
    matched, points, then actualValue and skippedReason when not null), which `source` and
    `position` render on demand (replay and the tests; readers use `asset_score_breakdowns`).
    """

    symbol: str
    criteria_version_id: str
    score: Decimal
    max_possible_score: Decimal
    percentage: Decimal | None
    outcomes: str
    source: "_Rendering"
    position: int

    @property
    def breakdown_json(self) -> str:
        plan, universe = self.source
        return plan.render(self.outcomes, lambda metric: universe.tails(metric)[self.position])

    @property
    def breakdown(self) -> list[dict[str, Any]]:
        decoded: list[dict[str, Any]] = json.loads(self.breakdown_json)
        return decoded


@dataclass(frozen=True, slots=True)
class SetOutcome:
    """The scores of a criteria set's universe and the currency conversions they used."""

    scores: list[AssetScore]
    currency_pairs: frozenset[tuple[str, str]]


def metric_texts(
    instrument: InstrumentData, *, base_currency: str, usd_rates: Mapping[str, Decimal]
) -> dict[str, str]:
    """Every present metric and fundamental of an instrument for users of `base_currency`, as the
    breakdown's `actualValue` text: the per-night values of the compact storage form. Converted
    metrics are left out when the snapshot has no rate for them (nobody can be scored on them)."""
    rate = None
    dropped: frozenset[str] = frozenset()
    if instrument.currency != base_currency:
        try:
            rate = rate_between(usd_rates, instrument.currency, base_currency)
        except MissingRateError:
            dropped = CONVERTED_METRICS
    values = _values(instrument, _ALL_STORED, _DERIVED, rate)
    return {
        name: value_text(x) for name, x in values.items() if x is not None and name not in dropped
    }


def canonical_breakdown_json(criteria: CriteriaSet, outcomes: str, texts: Mapping[str, str]) -> str:
    """The canonical breakdown (SPEC §4) from the compact form: the criteria set, the outcome
    characters and the instrument's metric texts (`metric_texts`)."""

    def tail(metric: str) -> str:
        text = texts.get(metric)
        return "" if text is None else f',"actualValue":"{text}"}}'

    return _Plan(criteria).render(outcomes, tail)


def rate_between(usd_rates: Mapping[str, Decimal], from_currency: str, to_currency: str) -> Decimal:
    """rate(A→B) = usd_to[B] / usd_to[A] from a snapshot of USD→X rates (USD→USD is 1)."""
    if from_currency == to_currency:
        return _ONE
    from_usd = usd_rates.get(from_currency, _ONE if from_currency == "USD" else None)
    to_usd = usd_rates.get(to_currency, _ONE if to_currency == "USD" else None)
    if from_usd is None or to_usd is None:
        raise MissingRateError(from_currency, to_currency)
    return _divide(to_usd, from_usd)


def compute_metrics(
    instrument: InstrumentData,
    *,
    base_currency: str,
    usd_rates: Mapping[str, Decimal],
    wanted: Collection[str],
) -> dict[str, Decimal | None]:
    """The values of the wanted metrics (and raw fundamental fields) of one instrument.

    A name that is a metric gets the metric's value (so `revenue` is converted to the base
    currency); `eps`, `book_value_per_share`, `dividends_per_share` and `shares_outstanding` get
    the raw stored value. Asking for a converted metric of an instrument in another currency needs
    the rate even when the value is missing: `MissingRateError` if the snapshot lacks it.
    """
    unknown = [name for name in wanted if name not in _KNOWN]
    if unknown:
        raise ValueError(f"unknown metric or fundamental field: {', '.join(sorted(unknown))}")
    rate = None
    if instrument.currency != base_currency and not CONVERTED_METRICS.isdisjoint(wanted):
        rate = rate_between(usd_rates, instrument.currency, base_currency)
    return _values(instrument, *_split(wanted), rate)


class _Universe:
    """A universe's instruments at one set of conversion rates, held as columns: per metric,
    the values in instrument order and their breakdown text (`,"actualValue":"…"}`, or ''
    when the value is missing). Built lazily, shared by every set that scores the universe."""

    __slots__ = ("values", "_columns", "_tails")

    def __init__(self, values: list[dict[str, Decimal | None]]) -> None:
        self.values = values
        self._columns: dict[str, list[Decimal | None]] = {}
        self._tails: dict[str, list[str]] = {}

    def column(self, metric: str) -> list[Decimal | None]:
        found = self._columns.get(metric)
        if found is None:
            found = self._columns[metric] = [v[metric] for v in self.values]
        return found

    def tails(self, metric: str) -> list[str]:
        found = self._tails.get(metric)
        if found is None:
            found = self._tails[metric] = [
                "" if x is None else _value_text(x) for x in self.column(metric)
            ]
        return found


_Rendering = tuple["_Plan", _Universe]


class MetricsCache:
    """Shared by the calls that score one batch. Rates are keyed by their text: 2 and 2.0 are
    equal Decimals, but a value converted with each has a different text, which the breakdown
    shows."""

    __slots__ = ("instruments", "universes")

    def __init__(self) -> None:
        # An instrument's metrics by (symbol, text of its conversion rate, or "" for none).
        self.instruments: dict[tuple[str, str], dict[str, Decimal | None]] = {}
        # A universe's columns by (its symbols, (currency, rate text) of its conversions).
        self.universes: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], _Universe] = {}


def score_criteria_set(
    criteria: CriteriaSet,
    instruments: Sequence[InstrumentData],
    *,
    base_currency: str,
    usd_rates: Mapping[str, Decimal],
    metrics_cache: MetricsCache | None = None,
) -> SetOutcome:
    """Score every instrument of a criteria set's universe, in the order given.

    `metrics_cache`, shared by the calls that score the same instruments (one batch), computes
    each instrument's metrics once per conversion rate instead of once per user and set: the
    values are the same whoever asks, so results are identical with or without it.
    """
    plan = _Plan(criteria)
    cache = MetricsCache() if metrics_cache is None else metrics_cache
    rates: dict[str, Decimal] = {}
    instrument_rates: list[Decimal | None] = []
    for instrument in instruments:
        currency = instrument.currency
        rate = None
        if plan.converts and currency != base_currency:
            rate = rates.get(currency)
            if rate is None:
                rate = rates[currency] = rate_between(usd_rates, currency, base_currency)
        instrument_rates.append(rate)
    symbols = tuple(i.symbol for i in instruments)
    rate_texts = {currency: str(rate) for currency, rate in rates.items()}
    key = (symbols, tuple(sorted(rate_texts.items())))
    universe = cache.universes.get(key)
    if universe is None:
        values = []
        for instrument, rate in zip(instruments, instrument_rates, strict=True):
            instrument_key = (instrument.symbol, rate_texts.get(instrument.currency, ""))
            found = cache.instruments.get(instrument_key)
            if found is None:
                found = cache.instruments[instrument_key] = _values(
                    instrument, _ALL_STORED, _DERIVED, rate
                )
            values.append(found)
        universe = cache.universes[key] = _Universe(values)
    return SetOutcome(
        scores=plan.score_universe(symbols, universe),
        currency_pairs=frozenset((currency, base_currency) for currency in rates),
    )


_DERIVED = frozenset(
    {"price", "pe_ratio", "pb_ratio", "dividend_yield", "market_cap", "revenue", "earnings"}
)
# Everything else (stored metrics and raw fundamental fields) is read as stored.
_STORED = frozenset(FUNDAMENTAL_FIELDS) - _DERIVED
_KNOWN = _STORED | _DERIVED
_ALL_STORED = tuple(sorted(_STORED))


def _values(
    instrument: InstrumentData,
    stored: tuple[str, ...],
    derived: frozenset[str],
    rate: Decimal | None,
) -> dict[str, Decimal | None]:
    """The named values of one instrument; `rate` is None when no conversion applies.

    One straight function rather than one per metric: this runs for every instrument of a set.
    """
    get = instrument.fundamentals.get
    values: dict[str, Decimal | None] = {}
    for name in stored:
        values[name] = get(name)
    if not derived:
        return values
    price = instrument.close
    if "price" in derived:
        values["price"] = price
    if "pe_ratio" in derived:
        eps = get("eps")
        values["pe_ratio"] = (
            _divide(price, eps) if price is not None and eps is not None and eps > _ZERO else None
        )
    if "pb_ratio" in derived:
        bvps = get("book_value_per_share")
        values["pb_ratio"] = (
            _divide(price, bvps)
            if price is not None and bvps is not None and bvps > _ZERO
            else None
        )
    if "dividend_yield" in derived:
        dps = get("dividends_per_share")
        values["dividend_yield"] = (
            _multiply(_divide(dps, price), _HUNDRED)
            if price is not None and dps is not None and price > _ZERO
            else None
        )
    if "market_cap" in derived:
        shares = get("shares_outstanding")
        cap = None if price is None or shares is None else _multiply(price, shares)
        values["market_cap"] = cap if cap is None or rate is None else _multiply(cap, rate)
    for name in ("revenue", "earnings"):
        if name in derived:
            value = get(name)
            values[name] = value if value is None or rate is None else _multiply(value, rate)
    return values


def _split(names: Collection[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    return tuple(name for name in names if name in _STORED), _DERIVED.intersection(names)


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


def value_text(x: Decimal) -> str:
    """A metric value as the breakdown shows it: plain notation with its trailing zeros."""
    text = str(x)
    if "E" in text:  # str() may use exponent notation; format "f" never does (slower)
        text = format(x, "f")
    return text


def _value_text(x: Decimal) -> str:
    """The breakdown's `"actualValue"` member and the entry's closing brace, for value x."""
    return f',"actualValue":"{value_text(x)}"}}'


class _Plan:
    """A criteria set compiled for fast evaluation over a universe, one rule at a time.

    A breakdown entry is a head made once per rule (`{"ruleId":…,"matched":…,"points":…`, or
    the whole entry when it has no value) followed by the universe's text for the value (see
    `_Universe`): no object is built or encoded per rule and instrument. Heads carry the
    separator before them (`[` for the first rule, `,` after), so an instrument's breakdown is
    the concatenation of its heads and tails and a closing `]`.
    """

    __slots__ = ("criteria_version_id", "rules", "converts", "max_score", "_max", "_results")

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
                )
            )
        self.rules = tuple(rules)
        names: dict[str, None] = {}
        for rule in criteria.rules:
            names[rule.metric] = None
            names.update(dict.fromkeys(rule.required))
        self.converts = not CONVERTED_METRICS.isdisjoint(names)
        self.max_score = sum(rule.points for rule in criteria.rules if rule.points > 0)
        self._max = _quantize(Decimal(self.max_score))
        # Scores are small integers, so (score, percentage) repeat a lot across instruments.
        self._results: dict[int, tuple[Decimal, Decimal | None]] = {}

    def score_universe(self, symbols: tuple[str, ...], universe: _Universe) -> list[AssetScore]:
        count = len(symbols)
        totals = [0] * count
        codes: list[list[str]] = []
        for _m, _u, _s, _e, metric, test, points, metric_required, others in self.rules:
            column = universe.column(metric)
            if others or not metric_required:
                rule_codes = _general_rule(
                    (test, points, others), metric_required, universe, column, totals
                )
            elif test is None:  # `exists` of a required metric: matched when present
                rule_codes = [SKIPPED if x is None else MATCHED for x in column]
            else:
                rule_codes = [
                    SKIPPED if x is None else MATCHED if test(x) else UNMATCHED for x in column
                ]
            if points and not (others or not metric_required):
                totals = [
                    t + points if c is MATCHED else t
                    for t, c in zip(totals, rule_codes, strict=True)
                ]
            codes.append(rule_codes)
        cvid, maximum, results = self.criteria_version_id, self._max, self._results
        source = (self, universe)
        outcomes = ["".join(parts) for parts in zip(*codes, strict=True)] if codes else [""] * count
        out = []
        for position, (symbol, outcome, total) in enumerate(
            zip(symbols, outcomes, totals, strict=True)
        ):
            found = results.get(total)
            score, percentage = self._result(total) if found is None else found
            # A named tuple: built several times faster than a frozen dataclass.
            out.append(
                AssetScore(symbol, cvid, score, maximum, percentage, outcome, source, position)
            )
        return out

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

    def _result(self, total: int) -> tuple[Decimal, Decimal | None]:
        cached = self._results.get(total)
        if cached is None:
            percentage = None
            if self.max_score:
                ratio = _divide(Decimal(total), Decimal(self.max_score))
                percentage = _quantize(_multiply(ratio, _HUNDRED))
            cached = self._results[total] = (_quantize(Decimal(total)), percentage)
        return cached


def _general_rule(
    rule: tuple[Callable[[Decimal], bool] | None, int, tuple[str, ...]],
    metric_required: bool,
    universe: _Universe,
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
