"""The pure scoring engine (SPEC §4): a criteria set scored over its universe.

No Dagster, no database, no I/O, no floats: metric values come from `metrics` in the exact
decimal context, rules are evaluated column by column (`rule_plan`, `columns`), and each
instrument's score keeps its compact breakdown, rendered to the canonical one on demand.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from scoring_pipeline.engine.columns import MetricsCache, UniverseColumns
from scoring_pipeline.engine.criteria import CriteriaSet
from scoring_pipeline.engine.metrics import (
    ALL_STORED,
    DERIVED,
    InstrumentData,
    instrument_values,
    rate_between,
)
from scoring_pipeline.engine.rule_plan import ResultTexts, RulePlan


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
    source: tuple[RulePlan, UniverseColumns]
    position: int
    texts: ResultTexts  # score, max and percentage as text (shared by equal totals)

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


def canonical_breakdown_json(criteria: CriteriaSet, outcomes: str, texts: Mapping[str, str]) -> str:
    """The canonical breakdown (SPEC §4) from the compact form: the criteria set, the outcome
    characters and the instrument's metric texts (`metric_texts`)."""

    def tail(metric: str) -> str:
        text = texts.get(metric)
        return "" if text is None else f',"actualValue":"{text}"}}'

    return RulePlan(criteria).render(outcomes, tail)


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
    plan = RulePlan(criteria)
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
                found = cache.instruments[instrument_key] = instrument_values(
                    instrument, ALL_STORED, DERIVED, rate
                )
            values.append(found)
        universe = cache.universes[key] = UniverseColumns(values)
    return SetOutcome(
        scores=_scores(plan, symbols, universe),
        currency_pairs=frozenset((currency, base_currency) for currency in rates),
    )


def _scores(
    plan: RulePlan, symbols: tuple[str, ...], universe: UniverseColumns
) -> list[AssetScore]:
    outcomes, totals = plan.evaluate(len(symbols), universe)
    cvid, maximum, source = plan.criteria_version_id, plan.maximum, (plan, universe)
    # Scores are small integers: each distinct total's result once, then looked up.
    results = {total: plan.result(total) for total in set(totals)}
    # `tuple.__new__` builds each named tuple without the Python frame of its `__new__`.
    new = tuple.__new__
    return [
        new(
            AssetScore,
            (symbol, cvid, r.score, maximum, r.percentage, outcome, source, position, r.texts),
        )
        for position, (symbol, outcome, r) in enumerate(
            zip(symbols, outcomes, map(results.__getitem__, totals), strict=True)
        )
    ]
