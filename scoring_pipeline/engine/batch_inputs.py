"""What scoring one batch reads: its users, their criteria, the universes with the date's
frozen prices and fundamentals, and the rates. Plain data; the store fills it."""

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from scoring_pipeline.engine.columns import MetricsCache
from scoring_pipeline.engine.criteria import CriteriaSet, parse_criteria
from scoring_pipeline.engine.metrics import InstrumentData


class QuotedRate(Protocol):
    """A USD→X rate of the date's snapshot, with where it came from."""

    @property
    def quote_currency(self) -> str: ...
    @property
    def rate(self) -> Decimal: ...
    @property
    def rate_date(self) -> dt.date: ...
    @property
    def source(self) -> str: ...


class PriceQuote(Protocol):
    """A close of the date's price snapshot, with where it came from."""

    @property
    def price_date(self) -> dt.date | None: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    base_currency: str


@dataclass(frozen=True, slots=True)
class CriteriaRow:
    id: str
    user_id: str
    target_market: str
    asset_type: str
    version: int
    rules_text: str

    def parse(self) -> CriteriaSet:
        """The validated criteria set; `InvalidCriteriaError` names this version and the rule."""
        return parse_criteria(
            criteria_version_id=self.id,
            target_market=self.target_market,
            asset_type=self.asset_type,
            version=self.version,
            rules=self.rules_text,
        )


@dataclass(slots=True)
class BatchInputs:
    """The date's frozen inputs restricted to what one batch needs."""

    users: list[UserRow]
    criteria: dict[str, list[CriteriaRow]]
    universes: dict[tuple[str, str], list[InstrumentData]]
    fundamentals_date: dict[str, dt.date]
    prices: Mapping[str, PriceQuote]
    rates: Mapping[str, QuotedRate]
    # Each instrument's metrics, computed once per conversion rate for the whole batch.
    metrics_cache: MetricsCache = field(default_factory=MetricsCache)
    # JSON text pieces of INPUTS_CAPTURED shared by the batch's users (prices, fundamentals).
    json_pieces: dict[Any, Any] = field(default_factory=dict)
    # Time spent in the pure engine and the rule evaluations it made, for the benchmark.
    engine_seconds: float = 0.0
    engine_cpu_seconds: float = 0.0  # this thread's CPU time in the engine (no time waiting)
    rule_evaluations: int = 0

    @property
    def usd_rates(self) -> dict[str, Decimal]:
        """The snapshot's USD→X rates, as the engine takes them."""
        return {currency: r.rate for currency, r in self.rates.items()}
