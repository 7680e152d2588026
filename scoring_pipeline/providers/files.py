"""File providers: rates from a JSON file, prices from a CSV file (demo data, tests, fallback).

The rates file has Frankfurter's ``latest`` shape and is validated by the same parser; the
prices file is a UTF-8 CSV with the header ``symbol,close,currency,price_date`` (extra columns
are ignored), ``close`` a plain decimal and ``price_date`` ``YYYY-MM-DD``. A file that cannot
be read is ProviderUnavailableError (so a fallback can take over); a malformed file (bad JSON or
CSV, a missing column, an invalid symbol) is ProviderPayloadError naming the file and line. A bad
value in a well-formed row is rejected on its own, by the same checks as every provider's
(``values.py``, ``models.py``): prices in minor units (``GBp``…) are converted, and the other
rows are used.
"""

import csv
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from scoring_pipeline.errors import ProviderPayloadError, ProviderUnavailableError
from scoring_pipeline.providers.base import (
    PricesProvider,
    RatesProvider,
    build_prices_result,
    expected_by_upper,
    is_valid_symbol,
    merge_quote,
    requested_currencies,
    requested_symbols,
    select_rates,
)
from scoring_pipeline.providers.frankfurter import parse_frankfurter_payload
from scoring_pipeline.providers.models import (
    PricesResult,
    QuoteOutcome,
    RatesSnapshot,
    validate_quote,
    warn_left_out,
)
from scoring_pipeline.providers.values import (
    shorten,
)

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


def _csv_number(text: str) -> object:
    """The CSV cell as a Decimal when it spells a number (NaN and infinities included, so the
    checks can say which), else the text itself, which the checks reject as not a number."""
    if not (_PLAIN_DECIMAL.fullmatch(text) or _SPECIAL_DECIMAL.fullmatch(text)):
        return text
    try:
        return Decimal("NaN") if "nan" in text.lower() else Decimal(text)
    except InvalidOperation:
        # An exponent beyond what Decimal can hold: as far out of bounds, in the same direction.
        mantissa, _, exponent = text.lower().partition("e")
        sign = "-" if mantissa.startswith("-") else ""
        return Decimal(f"{sign}1e{'-' if exponent.startswith('-') else ''}999999")


def _parse_row(
    row: dict[str, str | None], provider: str, currencies: Mapping[str, str]
) -> tuple[str, QuoteOutcome] | None:
    """The row's symbol and quote (or rejection); None for a row naming no valid symbol."""
    values = {column: (row.get(column) or "").strip() for column in PRICES_CSV_COLUMNS}
    symbol = values["symbol"]
    if not is_valid_symbol(symbol):
        return None
    outcome = validate_quote(
        symbol=symbol,
        close=_csv_number(values["close"]),
        currency=values["currency"],
        price_date=values["price_date"],
        source=provider,
        expected_currency=currencies.get(symbol.upper()),
    )
    return symbol, outcome


def parse_prices_csv(
    text: str,
    *,
    path: str,
    provider: str = "file",
    currencies: Mapping[str, str] | None = None,
) -> dict[str, QuoteOutcome]:
    """Take the prices CSV apart into a quote or a rejection by upper-case symbol (identical
    duplicates allowed); ``currencies`` maps symbols to their instrument's currency."""
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
    expected = expected_by_upper(currencies)
    outcomes: dict[str, QuoteOutcome] = {}
    rows = 0
    unattributed: list[int] = []  # line numbers of rows naming no valid symbol
    try:
        for row in reader:
            rows += 1
            parsed = _parse_row(row, provider, expected)
            if parsed is None:
                unattributed.append(reader.line_num)  # left out, the rest used (SPEC §8)
            else:
                merge_quote(outcomes, *parsed, provider=provider)
    except csv.Error as exc:
        problem = f"line {reader.line_num}: {exc}"
    else:
        if unattributed and len(unattributed) == rows:
            raise ProviderPayloadError(
                f"prices file {path}, line {unattributed[0]}: invalid symbol (no row names a "
                "valid one)",
                provider=provider,
            )
        warn_left_out(
            provider, len(unattributed), rows, f"rows of {path} that name no valid symbol"
        )
        return outcomes
    raise ProviderPayloadError(f"prices file {path}: malformed CSV ({problem})", provider=provider)


class FilePricesProvider(PricesProvider):
    """Prices from a CSV file ``symbol,close,currency,price_date`` (``PRICES_FILE``)."""

    name = "file"

    def __init__(self, *, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FilePricesProvider(path={str(self.path)!r})"

    def fetch_prices(
        self, *, symbols: Sequence[str], currencies: Mapping[str, str] | None = None
    ) -> PricesResult:
        valid, invalid = requested_symbols(symbols)
        body = _read_bytes(self.path, self.name)
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 ({exc.reason} at byte {exc.start})"
        else:
            returned = parse_prices_csv(
                text, path=str(self.path), provider=self.name, currencies=currencies
            )
            return build_prices_result(valid, invalid, returned, source=self.name)
        raise ProviderPayloadError(f"prices file {self.path}: {problem}", provider=self.name)
