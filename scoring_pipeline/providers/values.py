"""The rules a rate or a price must pass (SPEC §8): the one place values are checked.

A rate (USD->X) must be a finite number in [1e-12, 1e12] and a price a finite number in
[1e-9, 1e9], in a 3-letter currency (a price in the instrument's currency when it is known; see
``models.PriceQuote``), dated by a valid date. The rules live in the annotated types below
(``Rate``, ``Price``, ``CurrencyCode``, ``QuoteDate``), which the models use as field types; the
parsers only take payloads apart and ask these types. A value that breaks a rule is *rejected*
(SPEC §8, revised: per value): it becomes a ``RejectedValue`` with a ``Rejection`` reason, and the
rest of the payload is used.
"""

import datetime
import enum
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated

import pydantic
from pydantic_core import PydanticCustomError

MIN_RATE = Decimal("1e-12")
MAX_RATE = Decimal("1e12")
MIN_PRICE = Decimal("1e-9")
MAX_PRICE = Decimal("1e9")
# Quote currencies that are a hundredth of a currency (Yahoo's codes): pence, cents, agorot.
MINOR_UNITS = {"GBp": "GBP", "GBX": "GBP", "ZAc": "ZAR", "ZAC": "ZAR", "ILA": "ILS"}

_CURRENCY_CODE = re.compile(r"[A-Za-z]{3}")
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
    # The answer gave the symbol or currency twice with different values: which is right
    # cannot be told.
    CONFLICTING = "conflicting"
    # Dated more than PROVIDER_MAX_DATA_AGE_DAYS before the score date: a halted or delisted
    # instrument's last trade, not the date's close.
    TOO_OLD = "too_old"


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


def rejection_error(reason: Rejection, message: str) -> PydanticCustomError:
    """The validation error that makes a value rejected with ``reason``."""
    return PydanticCustomError(reason.value, message)


def _amount(minimum: Decimal, maximum: Decimal) -> Callable[[object], Decimal]:
    def check(value: object) -> Decimal:
        number = as_decimal(value)
        if number is None:
            # Only the type is echoed: payload text never reaches a message (see RejectedValue).
            raise rejection_error(
                Rejection.NOT_NUMERIC, f"is not a number ({type(value).__name__})"
            )
        if number.is_nan():
            raise rejection_error(Rejection.NAN, "is NaN")
        if number.is_infinite():
            raise rejection_error(Rejection.INFINITE, "is infinite")
        if number <= 0:
            raise rejection_error(
                Rejection.NOT_POSITIVE, f"must be greater than 0, got {shorten(number, 40)}"
            )
        if not minimum <= number <= maximum:
            raise rejection_error(
                Rejection.OUT_OF_RANGE,
                f"is outside [{minimum}, {maximum}], got {shorten(number, 40)}",
            )
        return number

    return check


def _currency(value: object) -> str:
    currency = normalise_currency(value)
    if currency is None:
        raise rejection_error(Rejection.INVALID_CURRENCY, "is not a 3-letter currency code")
    return currency


def _date(value: object) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    parsed = parse_iso_date(value)
    if parsed is None:
        raise rejection_error(Rejection.INVALID_DATE, "is not a valid date")
    return parsed


Rate = Annotated[Decimal, pydantic.BeforeValidator(_amount(MIN_RATE, MAX_RATE))]
Price = Annotated[Decimal, pydantic.BeforeValidator(_amount(MIN_PRICE, MAX_PRICE))]
CurrencyCode = Annotated[str, pydantic.BeforeValidator(_currency)]
QuoteDate = Annotated[datetime.date, pydantic.BeforeValidator(_date)]
RATE_ADAPTER = pydantic.TypeAdapter(Rate)
CURRENCY_ADAPTER = pydantic.TypeAdapter(CurrencyCode)
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
