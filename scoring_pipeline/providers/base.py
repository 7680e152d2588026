"""The abstract providers, what they share, and the helpers of their payload parsers.

Values are checked in ``values.py`` (the rules) and ``models.py`` (the models using them).
"""

import abc
import datetime
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Protocol, Self, TypeGuard

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.models import (
    PriceQuote,
    PricesResult,
    QuoteOutcome,
    RatesSnapshot,
    RequiredSymbols,
    is_conflicting,
)
from scoring_pipeline.providers.values import (
    RejectedValue,
    Rejection,
    normalise_currency,
    shorten,
)

# A symbol travels in a comma-separated query value: no commas, whitespace or control characters.
_BAD_SYMBOL = re.compile(r"[\s,\x00-\x1f\x7f]")


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result and result[key] != value:
            raise _DuplicateKeyError(f"duplicate key {shorten(key)} with different values")
        result[key] = value
    return result


def load_json(body: bytes | str, *, provider: str) -> object:
    """Parse JSON keeping numbers exact (Decimal; NaN and Infinity become Decimal too, so the
    value checks can name the currency or symbol holding them).

    Raises ProviderPayloadError on malformed JSON, undecodable bytes, excessive nesting or an
    object repeating a key with different values.
    """
    try:
        return json.loads(
            body,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=Decimal,
            object_pairs_hook=_unique_keys,
        )
    except InvalidOperation:  # an exponent beyond Decimal's range, e.g. 1e99999999999999999999
        problem = "a number beyond the representable range"
    except (ValueError, RecursionError) as exc:
        problem = f"{type(exc).__name__}: {shorten(str(exc), 120)}"
    raise ProviderPayloadError(f"malformed JSON ({problem})", provider=provider)


class _Closeable:
    def close(self) -> None:
        """Release the provider's resources (HTTP connections); the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RatesSource(Protocol):
    """Anything that fetches USD-based rates: a provider, or the resource chaining them."""

    def fetch_usd_rates(
        self, *, currencies: Sequence[str], as_of: datetime.date | None = None
    ) -> RatesSnapshot: ...


class PricesSource(Protocol):
    """What fetches the night's closing prices: the resource chaining the providers, asked for
    an answer with a value for some of the symbols (unless not `expect_some`: symbols asked
    again that may all still be missing) and for some of `required` (a market group's own
    instruments) when given."""

    def fetch_prices(
        self,
        *,
        symbols: Sequence[str],
        currencies: Mapping[str, str] | None = None,
        required: RequiredSymbols | None = None,
        expect_some: bool = True,
        as_of: datetime.date | None = None,
    ) -> PricesResult: ...


class RatesProvider(_Closeable, abc.ABC):
    """A source of USD-based exchange rates."""

    name: str

    @abc.abstractmethod
    def fetch_usd_rates(self, *, currencies: Sequence[str]) -> RatesSnapshot:
        """USD->X for each requested currency the provider knows (all it knows when empty).

        Requested currencies the provider does not return are absent from ``rates``; the ones
        it returned with a refused value are in ``rejected``. Raises ProviderUnavailableError or
        ProviderPayloadError.
        """


class PricesProvider(_Closeable, abc.ABC):
    """A source of closing prices."""

    name: str

    @abc.abstractmethod
    def fetch_prices(
        self, *, symbols: Sequence[str], currencies: Mapping[str, str] | None = None
    ) -> PricesResult:
        """Quotes of the requested symbols; refused ones are in ``rejected``, the ones not
        returned in ``missing``. ``currencies`` maps a symbol to its instrument's currency: a
        quote in another currency is rejected.

        Raises ProviderUnavailableError or ProviderPayloadError.
        """


def requested_currencies(currencies: Sequence[str]) -> tuple[list[str], list[str]]:
    """The distinct valid codes requested (upper case, in order) and the invalid ones."""
    if isinstance(currencies, str):
        raise TypeError("currencies must be a sequence of codes, not a single string")
    valid: list[str] = []
    invalid: list[str] = []
    for code in currencies:
        normalised = normalise_currency(code)
        if normalised is None:
            invalid.append(code)
        elif normalised not in valid:
            valid.append(normalised)
    return valid, invalid


def select_rates(snapshot: RatesSnapshot, currencies: Sequence[str] | None) -> RatesSnapshot:
    """The snapshot restricted to ``currencies`` (plus USD); all of it when None."""
    if currencies is None:
        return snapshot
    wanted = {*currencies, "USD"}
    return snapshot.model_copy(
        update={
            "rates": {c: r for c, r in snapshot.rates.items() if c in wanted},
            "rejected": {c: r for c, r in snapshot.rejected.items() if c in wanted},
        }
    )


def is_valid_symbol(symbol: object) -> TypeGuard[str]:
    """Whether ``symbol`` can be requested: 1 to 64 characters, no comma, space or control."""
    return isinstance(symbol, str) and 0 < len(symbol) <= 64 and _BAD_SYMBOL.search(symbol) is None


def requested_symbols(symbols: Sequence[str]) -> tuple[list[str], list[str]]:
    """The distinct valid symbols requested (in order) and the invalid ones (sorted)."""
    if isinstance(symbols, str):
        raise TypeError("symbols must be a sequence of symbols, not a single string")
    valid = list(dict.fromkeys(s for s in symbols if is_valid_symbol(s)))
    invalid = sorted({s for s in symbols if not is_valid_symbol(s)})
    return valid, invalid


def expected_by_upper(currencies: Mapping[str, str] | None) -> dict[str, str]:
    """The instruments' currencies keyed by upper-case symbol (symbols match case-insensitively)."""
    return {symbol.upper(): currency for symbol, currency in (currencies or {}).items()}


def _comparable(outcome: QuoteOutcome) -> tuple[object, ...]:
    if isinstance(outcome, RejectedValue):
        return ("rejected", outcome.reason)
    return (outcome.close, outcome.currency, outcome.price_date)


def _describe(outcome: QuoteOutcome) -> str:
    if isinstance(outcome, RejectedValue):
        return f"a rejected one ({outcome.reason})"
    return f"{shorten(outcome.close, 40)} {outcome.currency} on {outcome.price_date}"


def merge_quote(
    outcomes: dict[str, QuoteOutcome], symbol: str, outcome: QuoteOutcome, *, provider: str
) -> None:
    """File ``outcome`` under the upper-case ``symbol``. A disagreeing duplicate makes the
    symbol's value rejected as conflicting (which of two different quotes is right cannot be
    told); the rest of the answer is used (SPEC §8: per value)."""
    key = symbol.upper()
    seen = outcomes.setdefault(key, outcome)
    if _comparable(seen) == _comparable(outcome) or is_conflicting(seen):
        return
    outcomes[key] = RejectedValue(
        key=symbol,
        reason=Rejection.CONFLICTING,
        detail=f"two different quotes: {_describe(seen)} and {_describe(outcome)}",
    )


def build_prices_result(
    valid: Sequence[str],
    invalid: Sequence[str],
    returned: Mapping[str, QuoteOutcome],
    *,
    source: str,
) -> PricesResult:
    """Quotes for the requested symbols, matched case-insensitively against ``returned`` (keyed
    by upper-case symbol) and filed under the spelling requested; the rest are missing."""
    quotes: dict[str, PriceQuote] = {}
    rejected: dict[str, RejectedValue] = {}
    for symbol in valid:
        found = returned.get(symbol.upper())
        if isinstance(found, PriceQuote):
            quotes[symbol] = found.model_copy(update={"symbol": symbol})
        elif found is not None:
            rejected[symbol] = found.model_copy(
                update={"key": symbol, "detail": found.detail.replace(found.key, symbol, 1)}
            )
    missing = [s for s in valid if s not in quotes and s not in rejected] + list(invalid)
    return PricesResult(quotes=quotes, rejected=rejected, missing=missing, source=source)
