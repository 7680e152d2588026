"""Yahoo prices provider over real loopback HTTP: the request (path, symbols query, X-API-KEY
header), chunking of 120 symbols into 3 requests, UTC price dates, missing and priceless symbols,
duplicate symbols (identical accepted, different refused), minor-unit currencies, every payload it
must refuse as a whole (malformed JSON, wrong shapes), and every bad value (NaN, infinities, zero,
negative, absurd and non-numeric prices, bad currencies and times, a currency other than the
instrument's) rejected alone with its reason and the symbol, the other quotes being used."""

import datetime
import logging
from decimal import Decimal

import pytest

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.models import PriceQuote, PricesResult
from scoring_pipeline.providers.values import Rejection
from scoring_pipeline.providers.yahoo import YahooPricesProvider

QUOTE = "/v7/finance/quote"
# 2026-11-27 23:30:00 UTC: still the 27th in UTC, already the 28th in Tokyo.
LATE_EVENING = 1795822200


def _item(symbol: str, price: object = 10.5, currency: object = "USD", time: object = LATE_EVENING):
    return {
        "symbol": symbol,
        "regularMarketPrice": price,
        "currency": currency,
        "regularMarketTime": time,
    }


def _answer(*items: object) -> dict[str, object]:
    return {"quoteResponse": {"result": list(items), "error": None}}


@pytest.fixture
def provider(loopback, fast_http):
    with YahooPricesProvider(base_url=loopback.url, http_settings=fast_http) as p:
        yield p


def test_fetches_quotes_with_utc_dates(loopback, reply, provider):
    body = (
        b'{"quoteResponse":{"result":[{"symbol":"AAPL","regularMarketPrice":189.123456789,'
        b'"currency":"USD","regularMarketTime":1795822200},{"symbol":"PETR4.SA",'
        b'"regularMarketPrice":38,"currency":"brl","regularMarketTime":1795822200}],"error":null}}'
    )
    loopback.script(QUOTE, reply(200, body))

    result = provider.fetch_prices(symbols=["AAPL", "PETR4.SA"])

    day = datetime.date(2026, 11, 27)
    assert result == PricesResult(
        quotes={
            "AAPL": PriceQuote(
                symbol="AAPL",
                close=Decimal("189.123456789"),
                currency="USD",
                price_date=day,
                source="yahoo",
            ),
            "PETR4.SA": PriceQuote(
                symbol="PETR4.SA", close=Decimal(38), currency="BRL", price_date=day, source="yahoo"
            ),
        },
        missing=[],
        source="yahoo",
    )
    [request] = loopback.requests_to(QUOTE)
    assert request.query == {"symbols": ["AAPL,PETR4.SA"]}
    assert "x-api-key" not in request.headers


def test_chunks_120_symbols_into_3_requests(loopback, reply, provider):
    symbols = [f"S{i:03d}" for i in range(120)]
    loopback.script(
        QUOTE,
        reply(200, _answer(*(_item(s, price=i + 1) for i, s in enumerate(symbols[:50])))),
        reply(200, _answer(*(_item(s, price=i + 51) for i, s in enumerate(symbols[50:100])))),
        reply(200, _answer(*(_item(s, price=i + 101) for i, s in enumerate(symbols[100:])))),
    )

    result = provider.fetch_prices(symbols=symbols)

    sent = [r.query["symbols"][0].split(",") for r in loopback.requests_to(QUOTE)]
    assert [len(chunk) for chunk in sent] == [50, 50, 20]
    assert [s for chunk in sent for s in chunk] == symbols
    assert list(result.quotes) == symbols
    assert [q.close for q in result.quotes.values()] == [Decimal(i) for i in range(1, 121)]
    assert result.missing == []


def test_symbols_not_returned_are_missing_and_sorted(loopback, reply, provider):
    loopback.script(QUOTE, reply(200, _answer(_item("MSFT"), _item("UNASKED"))))

    result = provider.fetch_prices(symbols=["ZZZ", "MSFT", "AAA"])

    assert list(result.quotes) == ["MSFT"]
    assert result.missing == ["AAA", "ZZZ"]


def test_a_result_without_price_is_missing(loopback, reply, provider):
    no_price = {"symbol": "DELISTED", "currency": "USD"}
    loopback.script(QUOTE, reply(200, _answer(_item("IBM"), no_price, _item("NULL", price=None))))

    result = provider.fetch_prices(symbols=["IBM", "DELISTED", "NULL"])

    assert list(result.quotes) == ["IBM"]
    assert result.missing == ["DELISTED", "NULL"]


def test_symbols_match_case_insensitively_under_the_requested_spelling(loopback, reply, provider):
    loopback.script(QUOTE, reply(200, _answer(_item("BRK-B", price=400))))

    result = provider.fetch_prices(symbols=["brk-b", "BRK-B"])

    assert loopback.requests_to(QUOTE)[0].query == {"symbols": ["brk-b"]}
    assert result.quotes["brk-b"].symbol == "brk-b"
    assert result.quotes["BRK-B"].close == Decimal(400)
    assert result.missing == []


def test_invalid_symbols_are_missing_and_never_sent(loopback, reply, provider):
    loopback.script(QUOTE, reply(200, _answer(_item("IBM"))))

    result = provider.fetch_prices(symbols=["IBM", "A,B", "SP ACE", ""])

    assert loopback.requests_to(QUOTE)[0].query == {"symbols": ["IBM"]}
    assert result.missing == ["", "A,B", "SP ACE"]


def test_no_symbols_means_no_request(loopback, provider):
    assert provider.fetch_prices(symbols=[]) == PricesResult(quotes={}, missing=[], source="yahoo")
    assert loopback.requests == []


def test_identical_duplicates_are_accepted(loopback, reply, provider):
    loopback.script(QUOTE, reply(200, _answer(_item("IBM", 10), _item("IBM", 10.0))))

    result = provider.fetch_prices(symbols=["IBM"])

    assert result.quotes["IBM"].close == Decimal(10)


@pytest.mark.parametrize(
    ("second", "detail"),
    [
        (_item("IBM", price=11), "two different quotes: 10 USD on {d} and 11 USD on {d}"),
        (_item("IBM", 10, "EUR"), "two different quotes: 10 USD on {d} and 10 EUR on {d}"),
        (_item("IBM", 10, time=LATE_EVENING + 86_400), "two different quotes: 10 USD on {d} and"),
    ],
)
def test_different_duplicates_are_rejected_as_conflicting(
    loopback, reply, provider, second, detail
):
    """Which of two different quotes is right cannot be told: that symbol's value is rejected
    (SPEC §8, per value), the rest of the answer is used."""
    loopback.script(QUOTE, reply(200, _answer(_item("IBM", 10), second, _item("X", 5), second)))

    result = provider.fetch_prices(symbols=["IBM", "X"])

    assert result.quotes["X"].close == Decimal(5) and "IBM" not in result.quotes
    rejected = result.rejected["IBM"]
    assert rejected.reason is Rejection.CONFLICTING
    day = result.quotes["X"].price_date.isoformat()
    assert rejected.detail.startswith(detail.format(d=day)), rejected.detail


def test_different_duplicates_across_chunks_are_rejected(loopback, reply, fast_http):
    loopback.script(
        QUOTE,
        reply(200, _answer(_item("A", 1))),
        reply(200, _answer(_item("B", 2), _item("A", 3))),
    )
    with YahooPricesProvider(
        base_url=loopback.url, http_settings=fast_http, max_symbols_per_request=1
    ) as provider:
        result = provider.fetch_prices(symbols=["A", "B"])
    assert result.rejected["A"].reason is Rejection.CONFLICTING
    assert result.quotes["B"].close == Decimal(2)


def test_results_naming_no_valid_symbol_are_left_out_and_counted(loopback, reply, provider, caplog):
    """An item that cannot be told apart (no symbol, not an object) is one bad item, not a bad
    answer; said by count, never echoed (it may carry anything)."""
    caplog.set_level(logging.WARNING)
    loopback.script(
        QUOTE,
        reply(200, _answer(_item("IBM"), {"regularMarketPrice": 1}, "secret-ish", {"symbol": ""})),
    )

    result = provider.fetch_prices(symbols=["IBM"])

    assert result.quotes["IBM"].close == Decimal("10.5") and result.missing == []
    assert [r.getMessage() for r in caplog.records] == [
        "yahoo: left out 3 of the 4 results that name no valid symbol"
    ]


@pytest.mark.parametrize(
    ("currency", "price", "expected_currency", "expected_close"),
    [
        ("GBp", 7250, "GBP", Decimal("72.50")),
        ("GBX", 12.5, "GBP", Decimal("0.125")),
        ("ZAc", 1999, "ZAR", Decimal("19.99")),
        ("ILA", 100, "ILS", Decimal("1.00")),
        ("eur", 5, "EUR", Decimal(5)),
    ],
)
def test_minor_unit_currencies_are_converted_exactly(
    loopback, reply, provider, currency, price, expected_currency, expected_close
):
    loopback.script(QUOTE, reply(200, _answer(_item("X", price=price, currency=currency))))

    quote = provider.fetch_prices(symbols=["X"], currencies={"X": expected_currency}).quotes["X"]

    assert (quote.currency, quote.close) == (expected_currency, expected_close)
    assert str(quote.close) == str(expected_close)  # exact digits: nothing rounded


def test_api_key_is_sent_as_x_api_key_header(loopback, reply, fast_http):
    loopback.script(QUOTE, reply(200, _answer(_item("IBM"))))
    with YahooPricesProvider(base_url=loopback.url, api_key="yk-1", http_settings=fast_http) as p:
        p.fetch_prices(symbols=["IBM"])
        assert "yk-1" not in repr(p)

    [request] = loopback.requests_to(QUOTE)
    assert request.headers["x-api-key"] == "yk-1"
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<html>rate limited</html>", "malformed JSON"),
        (b'{"quoteResponse": ', "malformed JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"finance":{"result":null,"error":{"code":"Not Found"}}}', "no 'quoteResponse'"),
        (b'{"quoteResponse":[]}', "no 'quoteResponse'"),
        (b'{"quoteResponse":{"result":{"symbol":"IBM"},"error":null}}', "result is not a list"),
        (b'{"quoteResponse":{"error":null}}', "result is not a list"),
        (b'{"quoteResponse":{"result":["IBM"],"error":null}}', "result[0] is not an object"),
        (b'{"quoteResponse":{"result":[{"regularMarketPrice":1}],"error":null}}', "invalid symbol"),
        (
            b'{"quoteResponse":{"result":[],"error":{"code":"Unauthorized","description":"no"}}}',
            "quoteResponse.error",
        ),
    ],
)
def test_malformed_or_misshapen_answers_are_refused(loopback, reply, provider, body, fragment):
    loopback.script(QUOTE, reply(200, body))

    with pytest.raises(ProviderPayloadError) as caught:
        provider.fetch_prices(symbols=["IBM"])

    assert str(caught.value).startswith("yahoo: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("raw_price", "reason", "fragment"),
    [
        ("NaN", Rejection.NAN, "is NaN"),
        ("Infinity", Rejection.INFINITE, "is infinite"),
        ("-Infinity", Rejection.INFINITE, "is infinite"),
        ('"Infinity"', Rejection.NOT_NUMERIC, "is not a number"),
        ('"189.5"', Rejection.NOT_NUMERIC, "is not a number"),
        ('"n/a"', Rejection.NOT_NUMERIC, "is not a number"),
        ("false", Rejection.NOT_NUMERIC, "is not a number"),
        ("{}", Rejection.NOT_NUMERIC, "is not a number"),
        ("0", Rejection.NOT_POSITIVE, "must be greater than 0"),
        ("-3.5", Rejection.NOT_POSITIVE, "must be greater than 0, got -3.5"),
        ("1000000001", Rejection.OUT_OF_RANGE, "is outside"),
        ("1e400", Rejection.OUT_OF_RANGE, "is outside"),
        ("1e-10", Rejection.OUT_OF_RANGE, "is outside"),
    ],
)
def test_an_invalid_price_is_rejected_alone_naming_the_symbol(
    loopback, reply, provider, raw_price, reason, fragment
):
    template = (
        '{"quoteResponse":{"result":[{"symbol":"IBM","regularMarketPrice":1,"currency":"USD",'
        '"regularMarketTime":1795822200},{"symbol":"TSLA","regularMarketPrice":RAW,'
        '"currency":"USD","regularMarketTime":1795822200}],"error":null}}'
    )
    body = template.replace("RAW", raw_price)
    loopback.script(QUOTE, reply(200, body))

    result = provider.fetch_prices(symbols=["IBM", "TSLA"])

    assert result.quotes["IBM"].close == Decimal(1)
    assert set(result.quotes) == {"IBM"} and result.missing == []
    rejected = result.rejected["TSLA"]
    assert rejected.reason == reason and rejected.key == "TSLA"
    assert rejected.detail.startswith("price for TSLA ") and fragment in rejected.detail
    assert "n/a" not in rejected.detail


@pytest.mark.parametrize(
    ("item", "reason", "fragment"),
    [
        (_item("TSLA", currency="US"), Rejection.INVALID_CURRENCY, "currency for TSLA"),
        (_item("TSLA", currency=None), Rejection.INVALID_CURRENCY, "currency for TSLA"),
        (_item("TSLA", currency="U$D"), Rejection.INVALID_CURRENCY, "currency for TSLA"),
        (_item("TSLA", currency="EUR"), Rejection.CURRENCY_MISMATCH, "is in EUR, not in the"),
        (_item("TSLA", currency="GBp"), Rejection.CURRENCY_MISMATCH, "is in GBP, not in the"),
        (_item("TSLA", time=None), Rejection.INVALID_DATE, "price date for TSLA"),
        (_item("TSLA", time="2026-11-27"), Rejection.INVALID_DATE, "price date for TSLA"),
        (_item("TSLA", time=-5), Rejection.INVALID_DATE, "price date for TSLA"),
        (_item("TSLA", time=10**15), Rejection.INVALID_DATE, "price date for TSLA"),
    ],
)
def test_invalid_currency_or_time_is_rejected_naming_the_symbol(
    loopback, reply, provider, item, reason, fragment
):
    loopback.script(QUOTE, reply(200, _answer(item, _item("IBM"))))

    result = provider.fetch_prices(symbols=["TSLA", "ibm"], currencies={"TSLA": "USD"})

    assert set(result.quotes) == {"ibm"}
    assert result.rejected["TSLA"].reason == reason
    assert fragment in result.rejected["TSLA"].detail


def test_a_quote_in_the_instruments_currency_is_kept_and_matched_case_insensitively(
    loopback, reply, provider
):
    loopback.script(QUOTE, reply(200, _answer(_item("VOD.L", price=7250.5, currency="GBp"))))

    result = provider.fetch_prices(symbols=["vod.l"], currencies={"VOD.L": "GBP"})

    assert result.quotes["vod.l"].close == Decimal("72.505")
    assert result.quotes["vod.l"].currency == "GBP"
    assert result.rejected == {}


def test_price_bound_is_inclusive(loopback, reply, provider):
    loopback.script(QUOTE, reply(200, _answer(_item("BIG", price=1_000_000_000))))

    assert provider.fetch_prices(symbols=["BIG"]).quotes["BIG"].close == Decimal(10**9)
