"""Models returned by the providers, the abstract providers, and the one place values are checked.

Bounds (SPEC §8 "payloads are validated"): a rate (USD->X) must be a finite number in
[1e-12, 1e12] and a price a finite number in [1e-9, 1e9], in a 3-letter currency (a price in the
instrument's currency when it is known). The rules live in the annotated types below (``Rate``,
``Price``, ``CurrencyCode``, ``QuoteDate``) and in ``PriceQuote``; the parsers only take payloads
apart and ask these types. A value that breaks a rule is *rejected* (SPEC §8, revised: per value):
it becomes a ``RejectedValue`` with a ``Rejection`` reason, and the rest of the payload is used.
Only a payload unusable as a whole (malformed, wrong shape) raises ProviderPayloadError; the share
of rejected values a night tolerates is checked where providers are chained (``chain.py``).
"""

import abc
import datetime
import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Annotated, Any, Protocol, Self, TypeGuard

import pydantic
from pydantic_core import PydanticCustomError

from scoring_pipeline.errors import ProviderPayloadError

MIN_RATE = Decimal("1e-12")
MAX_RATE = Decimal("1e12")
MIN_PRICE = Decimal("1e-9")
MAX_PRICE = Decimal("1e9")
# Quote currencies that are a hundredth of a currency (Yahoo's codes): pence, cents, agorot.
MINOR_UNITS = {"GBp": "GBP", "GBX": "GBP", "ZAc": "ZAR", "ZAC": "ZAR", "ILA": "ILS"}

_CURRENCY_CODE = re.compile(r"[A-Za-z]{3}")
# A symbol travels in a comma-separated query value: no commas, whitespace or control characters.
_BAD_SYMBOL = re.compile(r"[\s,\x00-\x1f\x7f]")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class Rejection(enum.StrEnum):
    """Why one rate or price was refused; stored as the snapshot row's ``missing_reason``."""

    NOT_NUMERIC = "not_numeric"
    NAN = "nan"
    INFINITE = "infinite"
    NOT_POSITIVE = "not_positive"
    OUT_OF_RANGE = "out_of_range"
    INVALID_CURRENCY = "invalid_currency"
    CURRENCY_MISMATCH = "currency_mismatch"
    INVALID_DATE = "invalid_date"


class RejectedValue(pydantic.BaseModel, frozen=True):
    """One refused value: the symbol or currency it was for, the reason, and a one-line detail.

    The detail never echoes text from the payload (only numbers and codes), so it cannot carry a
    credential a hostile provider might reflect.
    """

    key: str
    reason: Rejection
    detail: str


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


def parse_iso_date(value: object) -> datetime.date | None:
    """A strict ``YYYY-MM-DD`` date, or None."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


def _rejected(reason: Rejection, message: str) -> PydanticCustomError:
    return PydanticCustomError(reason.value, message)


def _amount(minimum: Decimal, maximum: Decimal) -> Callable[[object], Decimal]:
    def check(value: object) -> Decimal:
        number = as_decimal(value)
        if number is None:
            # Only the type is echoed: a payload's text never reaches a message (see RejectedValue).
            raise _rejected(Rejection.NOT_NUMERIC, f"is not a number ({type(value).__name__})")
        if number.is_nan():
            raise _rejected(Rejection.NAN, "is NaN")
        if number.is_infinite():
            raise _rejected(Rejection.INFINITE, "is infinite")
        if number <= 0:
            raise _rejected(
                Rejection.NOT_POSITIVE, f"must be greater than 0, got {shorten(number, 40)}"
            )
        if not minimum <= number <= maximum:
            raise _rejected(
                Rejection.OUT_OF_RANGE,
                f"is outside [{minimum}, {maximum}], got {shorten(number, 40)}",
            )
        return number

    return check


def _currency(value: object) -> str:
    currency = normalise_currency(value)
    if currency is None:
        raise _rejected(Rejection.INVALID_CURRENCY, "is not a 3-letter currency code")
    return currency


def _date(value: object) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    parsed = parse_iso_date(value)
    if parsed is None:
        raise _rejected(Rejection.INVALID_DATE, "is not a valid date")
    return parsed


Rate = Annotated[Decimal, pydantic.BeforeValidator(_amount(MIN_RATE, MAX_RATE))]
Price = Annotated[Decimal, pydantic.BeforeValidator(_amount(MIN_PRICE, MAX_PRICE))]
CurrencyCode = Annotated[str, pydantic.BeforeValidator(_currency)]
QuoteDate = Annotated[datetime.date, pydantic.BeforeValidator(_date)]
_RATE = pydantic.TypeAdapter(Rate)
_CURRENCY = pydantic.TypeAdapter(CurrencyCode)
_FIELD_LABELS = {"close": "price", "currency": "currency", "price_date": "price date"}


def to_major_unit(close: object, currency: object) -> tuple[object, object]:
    """A price quoted in a minor unit (GBp, ZAc, ILA…) as the major currency's exact amount.

    Anything else, and a minor-unit price that is not a finite number, is returned unchanged
    (its checks then reject it with the right reason).
    """
    major = MINOR_UNITS.get(currency) if isinstance(currency, str) else None
    number = as_decimal(close)
    if major is None or number is None or not number.is_finite():
        return close, currency
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite, so never 'n', 'N' or 'F'
    return Decimal((sign, digits, exponent - 2)), major


def rejection_from(exc: pydantic.ValidationError, *, what: str, key: str) -> RejectedValue:
    """The first problem of a value's validation failure as a RejectedValue about ``key``."""
    error = exc.errors(include_url=False, include_input=False)[0]
    # Every field has a validator of ours that raises a Rejection, so the type is one of them.
    reason = Rejection(error["type"])
    field = ".".join(str(part) for part in error["loc"])
    label = _FIELD_LABELS.get(field, what)
    return RejectedValue(key=key, reason=reason, detail=f"{label} for {key} {error['msg']}")


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

    A key that is not a currency code, or one currency given two different values (``eur`` and
    ``EUR``), makes the whole payload unusable: ProviderPayloadError.
    """
    outcomes: dict[str, Decimal | RejectedValue] = {}
    for key, value in raw.items():
        try:
            currency = _CURRENCY.validate_python(key)
        except pydantic.ValidationError:
            raise ProviderPayloadError(
                f"invalid currency code {shorten(key)} in 'rates'", provider=provider
            ) from None
        outcome: Decimal | RejectedValue
        try:
            outcome = _RATE.validate_python(value)
        except pydantic.ValidationError as exc:
            outcome = rejection_from(exc, what="rate", key=currency)
        if outcomes.setdefault(currency, outcome) != outcome:
            raise ProviderPayloadError(f"two different rates for {currency}", provider=provider)
    rates = {c: o for c, o in outcomes.items() if isinstance(o, Decimal)}
    rejected = {c: o for c, o in outcomes.items() if isinstance(o, RejectedValue)}
    return rates, rejected


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
            raise _rejected(
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

    def fetch_usd_rates(self, *, currencies: Sequence[str]) -> RatesSnapshot: ...


class PricesSource(Protocol):
    """Anything that fetches closing prices: a provider, or the resource chaining them."""

    def fetch_prices(
        self, *, symbols: Sequence[str], currencies: Mapping[str, str] | None = None
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


def expected_by_upper(currencies: Mapping[str, str] | None) -> dict[str, str]:
    """The instruments' currencies keyed by upper-case symbol (symbols match case-insensitively)."""
    return {symbol.upper(): currency for symbol, currency in (currencies or {}).items()}


QuoteOutcome = PriceQuote | RejectedValue


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
    """File ``outcome`` under the upper-case ``symbol``; a disagreeing duplicate is a payload
    error (which of two different quotes is right cannot be told)."""
    seen = outcomes.setdefault(symbol.upper(), outcome)
    if _comparable(seen) != _comparable(outcome):
        raise ProviderPayloadError(
            f"two different quotes for {symbol}: {_describe(seen)} and {_describe(outcome)}",
            provider=provider,
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
