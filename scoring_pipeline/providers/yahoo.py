"""Yahoo Finance v7 quotes: the default prices provider.

``GET {base}/v7/finance/quote?symbols=A,B`` (at most 50 symbols a request) answers
``{"quoteResponse": {"result": [{"symbol", "regularMarketPrice", "currency",
"regularMarketTime"}], "error": null}}``; ``regularMarketTime`` is in epoch seconds and the
price date is its UTC date.

Decisions:
- A result without ``regularMarketPrice`` (or with null) is a symbol Yahoo knows but has no
  price for: it is reported missing. A price that is present but invalid (non-numeric, NaN,
  infinite, zero, negative, out of bounds), a bad currency or time, or a currency other than the
  instrument's is *rejected* as a value (``values.py`` holds the rules); the other quotes are used.
- The same symbol twice in one answer (or across chunks) is accepted when both agree and refused
  as a payload error otherwise.
- Prices quoted in minor units (``GBp``/``GBX`` pence, ``ZAc`` cents, ``ILA`` agorot) are
  converted exactly to the major currency (``GBP``, ``ZAR``, ``ILS``) by ``PriceQuote``.
- Symbols are matched case-insensitively; quotes are filed under the symbol as requested.
"""

import datetime
import logging
from collections.abc import Mapping, Sequence

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.base import (
    PricesProvider,
    build_prices_result,
    expected_by_upper,
    is_valid_symbol,
    load_json,
    merge_quote,
    requested_symbols,
)
from scoring_pipeline.providers.http import HttpSettings, ProviderHttpClient
from scoring_pipeline.providers.models import (
    PricesResult,
    QuoteOutcome,
    validate_quote,
    warn_left_out,
)
from scoring_pipeline.providers.redaction import call_redacted
from scoring_pipeline.providers.values import (
    as_decimal,
    shorten,
)

logger = logging.getLogger("scoring_pipeline.providers")

DEFAULT_BASE_URL = "https://query1.finance.yahoo.com"
MAX_SYMBOLS_PER_REQUEST = 50
# Epoch seconds of 10000-01-01: later times cannot be dates.
_MAX_EPOCH_SECONDS = 253_402_300_800


def _fail(message: str, source: str) -> ProviderPayloadError:
    return ProviderPayloadError(message, provider=source)


def _price_date(raw_time: object) -> datetime.date | None:
    """The UTC date of an epoch time in seconds, or None (which the checks reject)."""
    seconds = as_decimal(raw_time)
    if seconds is None or not seconds.is_finite() or not 0 < seconds < _MAX_EPOCH_SECONDS:
        return None
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC).date()


def _parse_item(
    item: Mapping[str, object], symbol: str, source: str, currencies: Mapping[str, str]
) -> QuoteOutcome | None:
    if item.get("regularMarketPrice") is None:
        return None
    return validate_quote(
        symbol=symbol,
        close=item["regularMarketPrice"],
        currency=item.get("currency"),
        price_date=_price_date(item.get("regularMarketTime")),
        source=source,
        expected_currency=currencies.get(symbol.upper()),
    )


def parse_yahoo_payload(
    payload: bytes | str | Mapping[str, object],
    *,
    source: str = "yahoo",
    currencies: Mapping[str, str] | None = None,
) -> dict[str, QuoteOutcome]:
    """Take a v7 quote answer (raw bytes or decoded JSON) apart into a quote or a rejection by
    upper-case symbol; ``currencies`` maps symbols to their instrument's currency.

    Results without a price are left out (the caller reports them missing); a malformed answer
    raises ProviderPayloadError naming ``source`` and the part at fault.
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
    expected = expected_by_upper(currencies)
    outcomes: dict[str, QuoteOutcome] = {}
    unattributed: list[int] = []
    for index, item in enumerate(results):
        symbol = item.get("symbol") if isinstance(item, Mapping) else None
        if not isinstance(item, Mapping) or not is_valid_symbol(symbol):
            unattributed.append(index)  # one item: left out, the rest used (SPEC §8)
            continue
        outcome = _parse_item(item, symbol, source, expected)
        if outcome is not None:
            merge_quote(outcomes, symbol, outcome, provider=source)
    if unattributed and len(unattributed) == len(results):
        # Not one item names a symbol: the answer is misshapen, not one bad item.
        first = unattributed[0]
        what = (
            f"has an invalid symbol {shorten(results[first].get('symbol'))}"
            if isinstance(results[first], Mapping)
            else "is not an object"
        )
        raise _fail(f"quoteResponse.result[{first}] {what}", source)
    warn_left_out(source, len(unattributed), len(results), "results that name no valid symbol")
    return outcomes


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

    def fetch_prices(
        self, *, symbols: Sequence[str], currencies: Mapping[str, str] | None = None
    ) -> PricesResult:
        valid, invalid = requested_symbols(symbols)
        if invalid:
            logger.warning(
                "%s: not requesting invalid symbols %s", self.name, [shorten(s) for s in invalid]
            )
        # One request per symbol whatever its case; every requested spelling gets the quote.
        by_upper: dict[str, str] = {}
        for symbol in valid:
            by_upper.setdefault(symbol.upper(), symbol)
        returned = call_redacted(
            [self._api_key], lambda: self._fetch(list(by_upper.values()), currencies or {})
        )
        return build_prices_result(valid, invalid, returned, source=self.name)

    def _fetch(self, symbols: list[str], currencies: Mapping[str, str]) -> dict[str, QuoteOutcome]:
        returned: dict[str, QuoteOutcome] = {}
        for start in range(0, len(symbols), self._chunk):
            chunk = symbols[start : start + self._chunk]
            body = self._http.get_bytes("v7/finance/quote", params={"symbols": ",".join(chunk)})
            page = parse_yahoo_payload(body, source=self.name, currencies=currencies)
            for symbol, outcome in page.items():
                merge_quote(returned, symbol, outcome, provider=self.name)
        return returned

    def close(self) -> None:
        self._http.close()
