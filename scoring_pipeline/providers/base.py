"""Models returned by the providers, the abstract providers, and shared payload checks.

Bounds (SPEC §8 "payloads are validated"): a rate (USD->X) must be a finite number in
[1e-12, 1e12] and a price a finite number in [1e-9, 1e9]; zero, negative, NaN, infinite,
non-numeric and absurd values are refused before they can reach a score.
"""

import abc
import datetime
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Self, TypeGuard

import pydantic

from scoring_pipeline.errors import ProviderPayloadError

MIN_RATE = Decimal("1e-12")
MAX_RATE = Decimal("1e12")
MIN_PRICE = Decimal("1e-9")
MAX_PRICE = Decimal("1e9")

_CURRENCY_CODE = re.compile(r"[A-Za-z]{3}")
# A symbol travels in a comma-separated query value: no commas, whitespace or control characters.
_BAD_SYMBOL = re.compile(r"[\s,\x00-\x1f\x7f]")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def shorten(value: object, limit: int = 60) -> str:
    """``repr(value)`` (``str`` for a Decimal) cut to ``limit`` characters, for echoing payload
    values in messages."""
    text = str(value) if isinstance(value, Decimal) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalise_currency(code: object) -> str | None:
    """The upper-case form of a three-letter ASCII currency code, or None when it is not one."""
    if isinstance(code, str) and _CURRENCY_CODE.fullmatch(code):
        return code.upper()
    return None


def as_decimal(value: object) -> Decimal | None:
    """A JSON number as a Decimal (floats through their shortest repr), or None if not a number.

    Strings and booleans are not numbers, even when they spell one.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        # A signalling NaN raises on comparison; every NaN becomes the quiet one.
        return Decimal("NaN") if value.is_nan() else value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if value == value else Decimal("NaN")
    return None


def amount_problem(value: Decimal, *, minimum: Decimal, maximum: Decimal) -> str | None:
    """Why ``value`` is not an acceptable rate or price, or None when it is."""
    if value.is_nan():
        return "is NaN"
    if value.is_infinite():
        return "is infinite"
    if value <= 0:
        return f"must be greater than 0, got {shorten(value, 40)}"
    if value > maximum:
        return f"is absurdly large (above {maximum}), got {shorten(value, 40)}"
    if value < minimum:
        return f"is absurdly small (below {minimum}), got {shorten(value, 40)}"
    return None


def parse_iso_date(value: object) -> datetime.date | None:
    """A strict ``YYYY-MM-DD`` date, or None."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


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


def _check_amount(value: Decimal, *, what: str, minimum: Decimal, maximum: Decimal) -> Decimal:
    problem = amount_problem(value, minimum=minimum, maximum=maximum)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return value


class RatesSnapshot(pydantic.BaseModel, frozen=True):
    """USD-based exchange rates of one date: ``rates[X]`` is USD->X; ``rates["USD"]`` is 1."""

    rates: dict[str, Decimal]
    rate_date: datetime.date
    source: str

    @pydantic.field_validator("rates")
    @classmethod
    def _valid_rates(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        checked: dict[str, Decimal] = {}
        for code, rate in rates.items():
            currency = normalise_currency(code)
            if currency is None:
                raise ValueError(f"invalid currency code {shorten(code)}")
            what = f"rate for {currency}"
            _check_amount(rate, what=what, minimum=MIN_RATE, maximum=MAX_RATE)
            if checked.setdefault(currency, rate) != rate:
                raise ValueError(f"two different rates for {currency}")
        if checked.setdefault("USD", Decimal(1)) != 1:
            raise ValueError(f"the USD->USD rate must be 1, got {checked['USD']}")
        return checked


class PriceQuote(pydantic.BaseModel, frozen=True):
    """The closing price of one symbol, in the currency it trades in."""

    symbol: str = pydantic.Field(min_length=1)
    close: Decimal
    currency: str
    price_date: datetime.date
    source: str

    @pydantic.field_validator("close")
    @classmethod
    def _valid_close(cls, close: Decimal) -> Decimal:
        return _check_amount(close, what="close", minimum=MIN_PRICE, maximum=MAX_PRICE)

    @pydantic.field_validator("currency")
    @classmethod
    def _valid_currency(cls, currency: str) -> str:
        normalised = normalise_currency(currency)
        if normalised is None:
            raise ValueError(f"invalid currency code {shorten(currency)}")
        return normalised


class PricesResult(pydantic.BaseModel, frozen=True):
    """The quotes a prices provider returned, by symbol, and the requested symbols it did not."""

    quotes: dict[str, PriceQuote]
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
        both = sorted(set(self.missing) & self.quotes.keys())
        if both:
            raise ValueError(f"symbols both quoted and missing: {both}")
        return self


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


class RatesProvider(_Closeable, abc.ABC):
    """A source of USD-based exchange rates."""

    name: str

    @abc.abstractmethod
    def fetch_usd_rates(self, *, currencies: Sequence[str]) -> RatesSnapshot:
        """USD->X for each requested currency the provider knows (all it knows when empty).

        Requested currencies the provider does not return are absent from ``rates``; the caller
        decides what that means. Raises ProviderUnavailableError or ProviderPayloadError.
        """


class PricesProvider(_Closeable, abc.ABC):
    """A source of closing prices."""

    name: str

    @abc.abstractmethod
    def fetch_prices(self, *, symbols: Sequence[str]) -> PricesResult:
        """Quotes of the requested symbols; the ones not returned are listed in ``missing``.

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
    rates = {code: rate for code, rate in snapshot.rates.items() if code in wanted}
    return RatesSnapshot(rates=rates, rate_date=snapshot.rate_date, source=snapshot.source)


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    """The first problem of a model validation failure, in one line, for our own messages."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return shorten(str(exc), 200)
    where = ".".join(str(part) for part in errors[0]["loc"])
    message = errors[0]["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


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


def merge_quote(
    quotes: dict[str, PriceQuote], quote: PriceQuote, *, provider: str, where: str = ""
) -> None:
    """File ``quote`` under its upper-case symbol; a disagreeing duplicate is a payload error."""
    seen = quotes.setdefault(quote.symbol.upper(), quote)
    if (seen.close, seen.currency, seen.price_date) != (
        quote.close,
        quote.currency,
        quote.price_date,
    ):
        raise ProviderPayloadError(
            f"{where}{': ' if where else ''}"
            f"two different quotes for {quote.symbol}: {shorten(seen.close, 40)} {seen.currency} "
            f"on {seen.price_date} and {shorten(quote.close, 40)} {quote.currency} on "
            f"{quote.price_date}",
            provider=provider,
        )


def build_prices_result(
    valid: Sequence[str],
    invalid: Sequence[str],
    returned: Mapping[str, PriceQuote],
    *,
    source: str,
) -> PricesResult:
    """Quotes for the requested symbols, matched case-insensitively against ``returned`` (keyed
    by upper-case symbol) and filed under the spelling requested; the rest are missing."""
    quotes: dict[str, PriceQuote] = {}
    for symbol in valid:
        found = returned.get(symbol.upper())
        if found is not None:
            quotes[symbol] = found.model_copy(update={"symbol": symbol})
    missing = [s for s in valid if s not in quotes] + list(invalid)
    return PricesResult(quotes=quotes, missing=missing, source=source)
