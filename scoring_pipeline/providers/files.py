"""File providers: rates from a JSON file, prices from a CSV file (demo data, tests, fallback).

The rates file has Frankfurter's ``latest`` shape and is validated by the same parser; the
prices file is a UTF-8 CSV with the header ``symbol,close,currency,price_date`` (extra columns
are ignored), ``close`` a plain decimal and ``price_date`` ``YYYY-MM-DD``. A file that cannot
be read is ProviderUnavailableError (so a fallback can take over); bad content is
ProviderPayloadError naming the file, line, symbol or currency.
"""

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pydantic

from scoring_pipeline.errors import ProviderPayloadError, ProviderUnavailableError
from scoring_pipeline.providers.base import (
    MAX_PRICE,
    MIN_PRICE,
    PriceQuote,
    PricesProvider,
    PricesResult,
    RatesProvider,
    RatesSnapshot,
    amount_problem,
    build_prices_result,
    describe_validation_error,
    is_valid_symbol,
    merge_quote,
    normalise_currency,
    parse_iso_date,
    requested_currencies,
    requested_symbols,
    select_rates,
    shorten,
)
from scoring_pipeline.providers.frankfurter import parse_frankfurter_payload

logger = logging.getLogger("scoring_pipeline.providers")

PRICES_CSV_COLUMNS = ("symbol", "close", "currency", "price_date")
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_DECIMAL = re.compile(r"(?i)[+-]?(?:s?nan|inf|infinity)")


def _read_bytes(path: Path, provider: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise ProviderUnavailableError(f"cannot read {path}: {reason}", provider=provider)


class FileRatesProvider(RatesProvider):
    """Rates from a JSON file shaped like Frankfurter's ``latest`` answer (``RATES_FILE``)."""

    name = "file"

    def __init__(self, *, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileRatesProvider(path={str(self.path)!r})"

    def fetch_usd_rates(self, *, currencies: Sequence[str]) -> RatesSnapshot:
        wanted, invalid = requested_currencies(currencies)
        if invalid:
            logger.warning(
                "%s: ignoring invalid currency codes %s", self.name, [shorten(c) for c in invalid]
            )
        body = _read_bytes(self.path, self.name)
        try:
            snapshot = parse_frankfurter_payload(body, source=self.name)
        except ProviderPayloadError as exc:
            problem = str(exc).removeprefix(f"{self.name}: ")
        else:
            return select_rates(snapshot, wanted if currencies else None)
        raise ProviderPayloadError(f"rates file {self.path}: {problem}", provider=self.name)


def _parse_close(text: str, symbol: str, where: str, provider: str) -> Decimal:
    if not (_PLAIN_DECIMAL.fullmatch(text) or _SPECIAL_DECIMAL.fullmatch(text)):
        raise ProviderPayloadError(
            f"{where}: close for {symbol} is not a number: {shorten(text)}", provider=provider
        )
    try:
        close = Decimal("NaN") if "nan" in text.lower() else Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal can hold
        raise ProviderPayloadError(
            f"{where}: close for {symbol} is out of range: {shorten(text)}", provider=provider
        ) from None
    problem = amount_problem(close, minimum=MIN_PRICE, maximum=MAX_PRICE)
    if problem is not None:
        raise ProviderPayloadError(f"{where}: close for {symbol} {problem}", provider=provider)
    return close


def _parse_row(row: dict[str, str | None], where: str, provider: str) -> PriceQuote:
    values = {column: (row.get(column) or "").strip() for column in PRICES_CSV_COLUMNS}
    symbol = values["symbol"]
    if not is_valid_symbol(symbol):
        raise ProviderPayloadError(f"{where}: invalid symbol {shorten(symbol)}", provider=provider)
    close = _parse_close(values["close"], symbol, where, provider)
    currency = normalise_currency(values["currency"])
    if currency is None:
        raise ProviderPayloadError(
            f"{where}: currency for {symbol} is not a 3-letter code: {shorten(values['currency'])}",
            provider=provider,
        )
    price_date = parse_iso_date(values["price_date"])
    if price_date is None:
        raise ProviderPayloadError(
            f"{where}: price_date for {symbol} is not a YYYY-MM-DD date: "
            f"{shorten(values['price_date'])}",
            provider=provider,
        )
    try:
        return PriceQuote(
            symbol=symbol, close=close, currency=currency, price_date=price_date, source=provider
        )
    except pydantic.ValidationError as exc:  # unreachable after the checks above; kept as a net
        message = f"{where}: quote for {symbol}: {describe_validation_error(exc)}"
    raise ProviderPayloadError(message, provider=provider)


def parse_prices_csv(text: str, *, path: str, provider: str = "file") -> dict[str, PriceQuote]:
    """Validate the prices CSV into quotes by upper-case symbol (identical duplicates allowed)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    absent = [column for column in PRICES_CSV_COLUMNS if column not in header]
    if absent:
        raise ProviderPayloadError(
            f"prices file {path}: header lacks {', '.join(absent)} "
            f"(expected {','.join(PRICES_CSV_COLUMNS)})",
            provider=provider,
        )
    reader.fieldnames = header
    quotes: dict[str, PriceQuote] = {}
    try:
        for row in reader:
            where = f"prices file {path}, line {reader.line_num}"
            merge_quote(quotes, _parse_row(row, where, provider), provider=provider, where=where)
    except csv.Error as exc:
        problem = f"line {reader.line_num}: {exc}"
    else:
        return quotes
    raise ProviderPayloadError(f"prices file {path}: malformed CSV ({problem})", provider=provider)


class FilePricesProvider(PricesProvider):
    """Prices from a CSV file ``symbol,close,currency,price_date`` (``PRICES_FILE``)."""

    name = "file"

    def __init__(self, *, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FilePricesProvider(path={str(self.path)!r})"

    def fetch_prices(self, *, symbols: Sequence[str]) -> PricesResult:
        valid, invalid = requested_symbols(symbols)
        body = _read_bytes(self.path, self.name)
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 ({exc.reason} at byte {exc.start})"
        else:
            returned = parse_prices_csv(text, path=str(self.path), provider=self.name)
            return build_prices_result(valid, invalid, returned, source=self.name)
        raise ProviderPayloadError(f"prices file {self.path}: {problem}", provider=self.name)
