"""Yahoo Finance v7 quotes: the default prices provider.

``GET {base}/v7/finance/quote?symbols=A,B`` (at most 50 symbols a request) answers
``{"quoteResponse": {"result": [{"symbol", "regularMarketPrice", "currency",
"regularMarketTime"}], "error": null}}``; ``regularMarketTime`` is in epoch seconds and the
price date is its UTC date.

Decisions:
- A result without ``regularMarketPrice`` (or with null) is a symbol Yahoo knows but has no
  price for: it is reported missing. A price that is present but invalid fails the payload.
- The same symbol twice in one answer (or across chunks) is accepted when both quotes agree
  (same close, currency and date) and refused as a payload error otherwise.
- Prices quoted in minor units (``GBp``/``GBX`` pence, ``ZAc`` cents, ``ILA`` agorot) are
  converted exactly to the major currency (``GBP``, ``ZAR``, ``ILS``).
- Symbols are matched case-insensitively; quotes are filed under the symbol as requested.
"""

import datetime
import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal

import pydantic

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.base import (
    MAX_PRICE,
    MIN_PRICE,
    PriceQuote,
    PricesProvider,
    PricesResult,
    amount_problem,
    as_decimal,
    build_prices_result,
    describe_validation_error,
    is_valid_symbol,
    load_json,
    merge_quote,
    normalise_currency,
    requested_symbols,
    shorten,
)
from scoring_pipeline.providers.http import HttpSettings, ProviderHttpClient, call_redacted

logger = logging.getLogger("scoring_pipeline.providers")

DEFAULT_BASE_URL = "https://query1.finance.yahoo.com"
MAX_SYMBOLS_PER_REQUEST = 50
# Yahoo's codes for prices in a currency's hundredth part.
_MINOR_UNITS = {"GBp": "GBP", "GBX": "GBP", "ZAc": "ZAR", "ZAC": "ZAR", "ILA": "ILS"}
# Epoch seconds of 10000-01-01: later times cannot be dates.
_MAX_EPOCH_SECONDS = 253_402_300_800


def _fail(message: str, source: str) -> ProviderPayloadError:
    return ProviderPayloadError(message, provider=source)


def _close_and_currency(
    raw_price: object, raw_currency: object, symbol: str, source: str
) -> tuple[Decimal, str]:
    price = as_decimal(raw_price)
    if price is None:
        raise _fail(f"price for {symbol} is not a number: {shorten(raw_price)}", source)
    if price.is_finite() and price > 0 and isinstance(raw_currency, str):
        major = _MINOR_UNITS.get(raw_currency)
        if major is not None:
            sign, digits, exponent = price.as_tuple()
            assert isinstance(exponent, int)  # finite, so never 'n', 'N' or 'F'
            price, raw_currency = Decimal((sign, digits, exponent - 2)), major
    problem = amount_problem(price, minimum=MIN_PRICE, maximum=MAX_PRICE)
    if problem is not None:
        raise _fail(f"price for {symbol} {problem}", source)
    currency = normalise_currency(raw_currency)
    if currency is None:
        raise _fail(
            f"currency for {symbol} is not a 3-letter code: {shorten(raw_currency)}", source
        )
    return price, currency


def _price_date(raw_time: object, symbol: str, source: str) -> datetime.date:
    seconds = as_decimal(raw_time)
    if seconds is None or not seconds.is_finite() or not 0 < seconds < _MAX_EPOCH_SECONDS:
        raise _fail(
            f"regularMarketTime for {symbol} is not an epoch time in seconds: {shorten(raw_time)}",
            source,
        )
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC).date()


def _parse_item(item: object, index: int, source: str) -> PriceQuote | None:
    if not isinstance(item, Mapping):
        raise _fail(f"quoteResponse.result[{index}] is not an object", source)
    symbol = item.get("symbol")
    if not is_valid_symbol(symbol):
        raise _fail(
            f"quoteResponse.result[{index}] has an invalid symbol {shorten(symbol)}", source
        )
    if item.get("regularMarketPrice") is None:
        return None
    close, currency = _close_and_currency(
        item["regularMarketPrice"], item.get("currency"), symbol, source
    )
    price_date = _price_date(item.get("regularMarketTime"), symbol, source)
    try:
        return PriceQuote(
            symbol=symbol, close=close, currency=currency, price_date=price_date, source=source
        )
    except pydantic.ValidationError as exc:  # unreachable after the checks above; kept as a net
        raise _fail(f"quote for {symbol}: {describe_validation_error(exc)}", source) from None


def parse_yahoo_payload(
    payload: bytes | str | Mapping[str, object], *, source: str = "yahoo"
) -> dict[str, PriceQuote]:
    """Validate a v7 quote answer (raw bytes or decoded JSON) into quotes by upper-case symbol.

    Results without a price are left out (the caller reports them missing); anything malformed
    raises ProviderPayloadError naming ``source`` and the symbol at fault.
    """
    data = payload if isinstance(payload, Mapping) else load_json(payload, provider=source)
    if not isinstance(data, Mapping):
        raise _fail(f"expected a JSON object, got {type(data).__name__}", source)
    response = data.get("quoteResponse")
    if not isinstance(response, Mapping):
        raise _fail("no 'quoteResponse' object in the answer", source)
    if response.get("error") is not None:
        raise _fail(f"quoteResponse.error: {shorten(response['error'], 200)}", source)
    results = response.get("result")
    if not isinstance(results, list):
        raise _fail(f"quoteResponse.result is not a list but {type(results).__name__}", source)
    quotes: dict[str, PriceQuote] = {}
    for index, item in enumerate(results):
        quote = _parse_item(item, index, source)
        if quote is not None:
            merge_quote(quotes, quote, provider=source)
    return quotes


class YahooPricesProvider(PricesProvider):
    """Prices from Yahoo Finance's v7 quote API (or a compatible gateway).

    An API key, when given, is sent as the ``X-API-KEY`` header.
    """

    name = "yahoo"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        http_settings: HttpSettings | None = None,
        max_symbols_per_request: int = MAX_SYMBOLS_PER_REQUEST,
    ) -> None:
        if not 1 <= max_symbols_per_request <= MAX_SYMBOLS_PER_REQUEST:
            raise ValueError(f"max_symbols_per_request must be 1..{MAX_SYMBOLS_PER_REQUEST}")
        self._api_key = api_key or None
        self._chunk = max_symbols_per_request
        self._http = ProviderHttpClient(
            provider=self.name,
            base_url=base_url,
            settings=http_settings or HttpSettings(),
            headers={"X-API-KEY": api_key} if api_key else {},
            secrets=[self._api_key],
        )

    def __repr__(self) -> str:
        return f"YahooPricesProvider(base_url={self._http.redact(self._http.base_url)!r})"

    def fetch_prices(self, *, symbols: Sequence[str]) -> PricesResult:
        valid, invalid = requested_symbols(symbols)
        if invalid:
            logger.warning(
                "%s: not requesting invalid symbols %s", self.name, [shorten(s) for s in invalid]
            )
        # One request per symbol whatever its case; every requested spelling gets the quote.
        by_upper: dict[str, str] = {}
        for symbol in valid:
            by_upper.setdefault(symbol.upper(), symbol)
        returned = call_redacted([self._api_key], lambda: self._fetch(list(by_upper.values())))
        return build_prices_result(valid, invalid, returned, source=self.name)

    def _fetch(self, symbols: list[str]) -> dict[str, PriceQuote]:
        returned: dict[str, PriceQuote] = {}
        for start in range(0, len(symbols), self._chunk):
            chunk = symbols[start : start + self._chunk]
            body = self._http.get_bytes("v7/finance/quote", params={"symbols": ",".join(chunk)})
            for quote in parse_yahoo_payload(body, source=self.name).values():
                merge_quote(returned, quote, provider=self.name)
        return returned

    def close(self) -> None:
        self._http.close()
