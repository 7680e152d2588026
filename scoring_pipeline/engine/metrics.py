"""An instrument's metric values (SPEC §4): prices, ratios and fundamentals, converted to a
user's base currency where the metric is a money amount, and their text in a breakdown.

Every arithmetic operation runs in `SCORE_CONTEXT` (20 significant digits, ROUND_HALF_UP) in the
order the specification writes it, so a replay of the captured inputs reproduces it digit for digit.
"""

import decimal
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from scoring_pipeline.engine.criteria import CONVERTED_METRICS, FUNDAMENTAL_FIELDS
from scoring_pipeline.errors import MissingRateError

SCORE_CONTEXT = decimal.Context(
    prec=20,
    rounding=ROUND_HALF_UP,
    Emax=999_999,
    Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_ZERO = Decimal(0)
_divide = SCORE_CONTEXT.divide
_multiply = SCORE_CONTEXT.multiply


@dataclass(frozen=True, slots=True)
class InstrumentData:
    """What one instrument contributes to scoring: its price and latest fundamentals."""

    symbol: str
    currency: str
    close: Decimal | None
    fundamentals: Mapping[str, Decimal | None]


DERIVED = frozenset(
    {"price", "pe_ratio", "pb_ratio", "dividend_yield", "market_cap", "revenue", "earnings"}
)
# Everything else (stored metrics and raw fundamental fields) is read as stored.
_STORED = frozenset(FUNDAMENTAL_FIELDS) - DERIVED
_KNOWN = _STORED | DERIVED
ALL_STORED = tuple(sorted(_STORED))


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
    return instrument_values(instrument, *_split(wanted), rate)


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
    values = instrument_values(instrument, ALL_STORED, DERIVED, rate)
    return {
        name: value_text(x) for name, x in values.items() if x is not None and name not in dropped
    }


def instrument_values(
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
    return tuple(name for name in names if name in _STORED), DERIVED.intersection(names)


def value_text(x: Decimal) -> str:
    """A metric value as the breakdown shows it: plain notation with its trailing zeros."""
    text = str(x)
    if "E" in text:  # str() may use exponent notation; format "f" never does (slower)
        text = format(x, "f")
    return text


def value_tail(x: Decimal) -> str:
    """The breakdown's `"actualValue"` member and the entry's closing brace, for value x."""
    return f',"actualValue":"{value_text(x)}"}}'
