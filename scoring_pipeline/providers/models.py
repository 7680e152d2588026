"""The models the providers return: a date's rates, a quote, a page of quotes.

Their fields are the checked types of ``values.py``; ``split_rates`` and ``validate_quote`` turn
one refused value into a ``RejectedValue`` instead of failing the payload. Only a payload unusable
as a whole (malformed, wrong shape) raises ProviderPayloadError; the share of rejected values a
night tolerates is checked where providers are chained (``chain.py``).
"""

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Self

import pydantic

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.values import (
    CURRENCY_ADAPTER,
    RATE_ADAPTER,
    CurrencyCode,
    Price,
    QuoteDate,
    Rate,
    RejectedValue,
    Rejection,
    rejection_error,
    rejection_from,
    shorten,
    to_major_unit,
)

logger = logging.getLogger("scoring_pipeline.providers")


class RatesSnapshot(pydantic.BaseModel, frozen=True):
    """USD-based exchange rates of one date: ``rates[X]`` is USD->X; ``rates["USD"]`` is 1.

    ``rejected`` holds the currencies whose rate the provider gave but the checks refused.
    """

    rates: dict[CurrencyCode, Rate]
    rejected: dict[str, RejectedValue] = {}
    rate_date: QuoteDate
    source: str

    @pydantic.model_validator(mode="after")
    def _usd_is_one(self) -> Self:
        if self.rates.setdefault("USD", Decimal(1)) != 1:
            raise ValueError(f"the USD->USD rate must be 1, got {self.rates['USD']}")
        if "USD" in self.rejected:
            raise ValueError(f"the USD->USD rate must be 1: {self.rejected['USD'].detail}")
        both = sorted(self.rejected.keys() & self.rates.keys())
        if both:
            raise ValueError(f"currencies both rated and rejected: {both}")
        return self

    @property
    def accepted_count(self) -> int:
        """Rates given and accepted (USD->USD, implied, is not counted)."""
        return len(self.rates) - 1


def split_rates(
    raw: Mapping[object, object], *, provider: str
) -> tuple[dict[str, Decimal], dict[str, RejectedValue]]:
    """The rates of a payload's ``rates`` object that pass the checks, and the rejected ones.

    One currency given two different values (``eur`` and ``EUR``) is rejected as conflicting.
    A key that is not a currency code (a crypto ticker, say) is left out with a warning that
    counts, never echoes, them; only a non-empty object of such keys alone is misshapen:
    ProviderPayloadError.
    """
    outcomes: dict[str, Decimal | RejectedValue] = {}
    not_codes: list[object] = []
    for key, value in raw.items():
        try:
            currency = CURRENCY_ADAPTER.validate_python(key)
        except pydantic.ValidationError:
            not_codes.append(key)
            continue
        outcome: Decimal | RejectedValue
        try:
            outcome = RATE_ADAPTER.validate_python(value)
        except pydantic.ValidationError as exc:
            outcome = rejection_from(exc, what="rate", key=currency)
        seen = outcomes.setdefault(currency, outcome)
        if seen != outcome and not is_conflicting(seen):
            outcomes[currency] = RejectedValue(
                key=currency,
                reason=Rejection.CONFLICTING,
                detail=f"rate for {currency} given twice: {_rate_text(seen)} and "
                f"{_rate_text(outcome)}",
            )
    if not_codes and not outcomes:
        raise ProviderPayloadError(
            f"invalid currency code {shorten(not_codes[0])} in 'rates'", provider=provider
        )
    warn_left_out(provider, len(not_codes), len(raw), "keys of 'rates' that are not currency codes")
    rates = {c: o for c, o in outcomes.items() if isinstance(o, Decimal)}
    rejected = {c: o for c, o in outcomes.items() if isinstance(o, RejectedValue)}
    return rates, rejected


def warn_left_out(provider: str, left_out: int, items: int, what: str) -> None:
    """Items of an answer that cannot be told apart (no valid symbol, no currency code) are
    left out: counted, never echoed (their text may be anything, a reflected credential
    included)."""
    if left_out:
        logger.warning("%s: left out %d of the %d %s", provider, left_out, items, what)


def is_conflicting(outcome: object) -> bool:
    """Whether a value was rejected for being given twice differently."""
    return isinstance(outcome, RejectedValue) and outcome.reason is Rejection.CONFLICTING


def _rate_text(outcome: Decimal | RejectedValue) -> str:
    """A rate for a message: its number, or why it was rejected (never payload text)."""
    return str(outcome) if isinstance(outcome, Decimal) else f"a rejected one ({outcome.reason})"


class PriceQuote(pydantic.BaseModel, frozen=True):
    """The closing price of one symbol, in the major unit of the currency it trades in.

    Validated with ``context={"currency": X}``, a quote in any currency other than X is refused.
    """

    symbol: str = pydantic.Field(min_length=1)
    close: Price
    currency: CurrencyCode
    price_date: QuoteDate
    source: str

    @pydantic.model_validator(mode="before")
    @classmethod
    def _major_unit(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "close" in data and "currency" in data:
            close, currency = to_major_unit(data["close"], data["currency"])
            return {**data, "close": close, "currency": currency}
        return data

    @pydantic.model_validator(mode="after")
    def _instrument_currency(self, info: pydantic.ValidationInfo) -> Self:
        expected = (info.context or {}).get("currency")
        if expected is not None and self.currency != expected:
            raise rejection_error(
                Rejection.CURRENCY_MISMATCH,
                f"is in {self.currency}, not in the instrument's currency {expected}",
            )
        return self


def validate_quote(
    *,
    symbol: str,
    close: object,
    currency: object,
    price_date: object,
    source: str,
    expected_currency: str | None,
) -> PriceQuote | RejectedValue:
    """A checked quote, or why it is rejected; ``symbol`` must already be a valid symbol."""
    fields = {
        "symbol": symbol,
        "close": close,
        "currency": currency,
        "price_date": price_date,
        "source": source,
    }
    try:
        return PriceQuote.model_validate(fields, context={"currency": expected_currency})
    except pydantic.ValidationError as exc:
        return rejection_from(exc, what="price", key=symbol)


class PricesResult(pydantic.BaseModel, frozen=True):
    """The quotes a prices provider returned by symbol, the ones it refused, and the requested
    symbols it did not return."""

    quotes: dict[str, PriceQuote]
    rejected: dict[str, RejectedValue] = {}
    missing: list[str]
    source: str

    @pydantic.field_validator("quotes")
    @classmethod
    def _keyed_by_symbol(cls, quotes: dict[str, PriceQuote]) -> dict[str, PriceQuote]:
        for symbol, quote in quotes.items():
            if quote.symbol != symbol:
                raise ValueError(f"quote for {quote.symbol!r} filed under {symbol!r}")
        return quotes

    @pydantic.field_validator("missing")
    @classmethod
    def _sorted_missing(cls, missing: list[str]) -> list[str]:
        return sorted(set(missing))

    @pydantic.model_validator(mode="after")
    def _disjoint(self) -> Self:
        quoted, rejected, missing = set(self.quotes), set(self.rejected), set(self.missing)
        both = sorted((quoted & rejected) | (quoted & missing) | (rejected & missing))
        if both:
            raise ValueError(f"symbols in two of quoted, rejected and missing: {both}")
        return self

    @property
    def accepted_count(self) -> int:
        return len(self.quotes)


QuoteOutcome = PriceQuote | RejectedValue


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    """The first problem of a model validation failure, in one line, for our own messages."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return shorten(str(exc), 200)
    where = ".".join(str(part) for part in errors[0]["loc"])
    message = errors[0]["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class RequiredSymbols(pydantic.BaseModel, frozen=True):
    """Symbols asked of which an answer must price at least one to be usable, and what they are
    (a market group's own instruments, asked with its users' held symbols of other markets)."""

    symbols: frozenset[str]
    what: str
