"""File providers: rates from a Frankfurter-shaped JSON file and prices from a
``symbol,close,currency,price_date`` CSV — happy paths, filtering and missing symbols, an unreadable
file (unavailable, so a fallback can take over), a bad value rejected on its own with its reason
while the other rows are used, minor units converted, and a malformed file refused with an error
naming the file and line."""

import datetime
import logging
from decimal import Decimal

import pytest

from scoring_pipeline.errors import ProviderPayloadError, ProviderUnavailableError
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.models import PriceQuote
from scoring_pipeline.providers.values import Rejection

RATES_JSON = '{"amount":1.0,"base":"USD","date":"2026-11-26","rates":{"EUR":0.9012,"GBP":0.79}}'
PRICES_CSV = (
    "symbol,close,currency,price_date\n"
    "AAPL,189.1234,USD,2026-11-26\n"
    "PETR4.SA,38.10,brl,2026-11-26\n"
)


@pytest.fixture
def rates_file(tmp_path):
    path = tmp_path / "rates.json"
    path.write_text(RATES_JSON)
    return path


@pytest.fixture
def prices_file(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV)
    return path


def test_rates_file_returns_requested_currencies(rates_file):
    snapshot = FileRatesProvider(path=rates_file).fetch_usd_rates(currencies=["eur", "CHF"])

    assert snapshot.rates == {"EUR": Decimal("0.9012"), "USD": Decimal(1)}
    assert snapshot.rate_date == datetime.date(2026, 11, 26)
    assert snapshot.source == "file"


def test_rates_file_returns_everything_when_nothing_is_requested(rates_file):
    snapshot = FileRatesProvider(path=rates_file).fetch_usd_rates(currencies=[])

    assert snapshot.rates == {"EUR": Decimal("0.9012"), "GBP": Decimal("0.79"), "USD": Decimal(1)}


def test_missing_rates_file_is_unavailable(tmp_path):
    path = tmp_path / "absent.json"

    with pytest.raises(ProviderUnavailableError, match=r"file: cannot read .*absent\.json"):
        FileRatesProvider(path=path).fetch_usd_rates(currencies=["EUR"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{", "malformed JSON"),
        ('{"base":"USD","date":"2026-11-26"}', "no 'rates'"),
        ('{"base":"USD","date":"2026-11-26","rates":{"EURO":1,"US":2}}', "invalid currency code"),
        ('{"base":"USD","date":"2026-11-26","rates":[]}', "'rates' is not an object"),
    ],
)
def test_bad_rates_file_is_refused_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "rates.json"
    path.write_text(content)

    with pytest.raises(ProviderPayloadError) as caught:
        FileRatesProvider(path=path).fetch_usd_rates(currencies=["EUR"])

    assert str(caught.value).startswith(f"file: rates file {path}: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("value", "reason", "fragment"),
    [
        ("-1", Rejection.NOT_POSITIVE, "rate for EUR must be greater than 0, got -1"),
        ("NaN", Rejection.NAN, "rate for EUR is NaN"),
        ('"0.9"', Rejection.NOT_NUMERIC, "rate for EUR is not a number"),
    ],
)
def test_a_bad_rate_in_the_file_is_rejected_alone(tmp_path, value, reason, fragment):
    path = tmp_path / "rates.json"
    path.write_text(f'{{"base":"USD","date":"2026-11-26","rates":{{"EUR":{value},"GBP":0.79}}}}')

    snapshot = FileRatesProvider(path=path).fetch_usd_rates(currencies=["EUR", "GBP"])

    assert snapshot.rates == {"GBP": Decimal("0.79"), "USD": Decimal(1)}
    assert snapshot.rejected["EUR"].reason == reason
    assert fragment in snapshot.rejected["EUR"].detail


def test_prices_file_returns_requested_quotes_and_missing(prices_file):
    result = FilePricesProvider(path=prices_file).fetch_prices(symbols=["PETR4.SA", "MSFT"])

    assert result.quotes == {
        "PETR4.SA": PriceQuote(
            symbol="PETR4.SA",
            close=Decimal("38.10"),
            currency="BRL",
            price_date=datetime.date(2026, 11, 26),
            source="file",
        )
    }
    assert result.missing == ["MSFT"]
    assert result.source == "file"


def test_prices_file_accepts_bom_extra_columns_and_crlf(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_bytes(
        '\ufeffprice_date,symbol,name,close,currency\r\n2026-11-26,IBM,"Intl, Business",1e2,USD\r\n'
        "\r\n".encode()
    )

    result = FilePricesProvider(path=path).fetch_prices(symbols=["IBM"])

    assert result.quotes["IBM"].close == Decimal(100)


def test_prices_file_identical_duplicates_are_accepted(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV + "AAPL,189.12340,USD,2026-11-26\n")

    result = FilePricesProvider(path=path).fetch_prices(symbols=["AAPL"])

    assert result.quotes["AAPL"].close == Decimal("189.1234")


def test_missing_prices_file_is_unavailable(tmp_path):
    with pytest.raises(ProviderUnavailableError, match="file: cannot read"):
        FilePricesProvider(path=tmp_path / "nope.csv").fetch_prices(symbols=["AAPL"])


@pytest.mark.parametrize(
    ("row", "reason", "fragment"),
    [
        ("TSLA,NaN,USD,2026-11-26", Rejection.NAN, "price for TSLA is NaN"),
        ("TSLA,inf,USD,2026-11-26", Rejection.INFINITE, "price for TSLA is infinite"),
        ("TSLA,-Infinity,USD,2026-11-26", Rejection.INFINITE, "price for TSLA is infinite"),
        ("TSLA,0,USD,2026-11-26", Rejection.NOT_POSITIVE, "price for TSLA must be greater than 0"),
        ("TSLA,-1.5,USD,2026-11-26", Rejection.NOT_POSITIVE, "greater than 0, got -1.5"),
        ("TSLA,2e9,USD,2026-11-26", Rejection.OUT_OF_RANGE, "price for TSLA is outside"),
        ("TSLA,sNaN,USD,2026-11-26", Rejection.NAN, "price for TSLA is NaN"),
        ("TSLA,1e99999999999999999999,USD,2026-11-26", Rejection.OUT_OF_RANGE, "is outside"),
        ("TSLA,1e-99999999999999999999,USD,2026-11-26", Rejection.OUT_OF_RANGE, "is outside"),
        ("TSLA,abc,USD,2026-11-26", Rejection.NOT_NUMERIC, "price for TSLA is not a number"),
        ("TSLA,1_000,USD,2026-11-26", Rejection.NOT_NUMERIC, "price for TSLA is not a number"),
        ("TSLA,,USD,2026-11-26", Rejection.NOT_NUMERIC, "price for TSLA is not a number"),
        ("TSLA,10,DOLLAR,2026-11-26", Rejection.INVALID_CURRENCY, "currency for TSLA is not"),
        ("TSLA,10,EUR,2026-11-26", Rejection.CURRENCY_MISMATCH, "is in EUR, not in the"),
        ("TSLA,10,USD,26/11/2026", Rejection.INVALID_DATE, "price date for TSLA is not"),
        ("TSLA,10,USD", Rejection.INVALID_DATE, "price date for TSLA is not a valid date"),
    ],
)
def test_a_bad_price_row_is_rejected_alone_with_its_reason(tmp_path, row, reason, fragment):
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV + row + "\n")

    result = FilePricesProvider(path=path).fetch_prices(
        symbols=["AAPL", "TSLA"], currencies={"AAPL": "USD", "TSLA": "USD"}
    )

    assert result.quotes["AAPL"].close == Decimal("189.1234")
    assert set(result.quotes) == {"AAPL"} and result.missing == []
    assert result.rejected["TSLA"].reason == reason
    assert fragment in result.rejected["TSLA"].detail
    # The detail never echoes payload text (only numbers and codes).
    assert "abc" not in result.rejected["TSLA"].detail


@pytest.mark.parametrize(
    ("row", "close", "currency"),
    [
        ("VOD.L,7250.5,GBp,2026-11-26", "72.505", "GBP"),
        ("VOD.L,7250.5,GBX,2026-11-26", "72.505", "GBP"),
        ("VOD.L,1999,ZAc,2026-11-26", "19.99", "ZAR"),
        ("VOD.L,0.01,ILA,2026-11-26", "0.0001", "ILS"),
    ],
)
def test_minor_unit_prices_in_the_file_are_converted_exactly(tmp_path, row, close, currency):
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV + row + "\n")

    result = FilePricesProvider(path=path).fetch_prices(
        symbols=["VOD.L"], currencies={"VOD.L": currency}
    )

    quote = result.quotes["VOD.L"]
    assert (quote.close, quote.currency) == (Decimal(close), currency)
    assert str(quote.close) == close  # exact: the digits move, nothing is rounded


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ("AAPL,190,USD,2026-11-26", "two different quotes: 189.1234 USD on 2026-11-26 and 190 USD"),
        ("AAPL,NaN,USD,2026-11-26", "two different quotes: 189.1234 USD on 2026-11-26 and a rej"),
    ],
)
def test_a_symbol_priced_twice_differently_is_rejected_the_rest_used(tmp_path, row, detail):
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV + row + "\n")

    result = FilePricesProvider(path=path).fetch_prices(symbols=["AAPL", "PETR4.SA"])

    assert result.rejected["AAPL"].reason is Rejection.CONFLICTING
    assert result.rejected["AAPL"].detail.startswith(detail), result.rejected["AAPL"].detail
    assert result.quotes["PETR4.SA"].close == Decimal("38.10")


def test_rows_naming_no_valid_symbol_are_left_out_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV + ",10,USD,2026-11-26\nA B,1,USD,2026-11-26\n")

    result = FilePricesProvider(path=path).fetch_prices(symbols=["AAPL"])

    assert result.quotes["AAPL"].close == Decimal("189.1234")
    assert [r.getMessage() for r in caplog.records] == [
        f"file: left out 2 of the 4 rows of {path} that name no valid symbol"
    ]


def test_a_prices_file_whose_rows_all_lack_a_symbol_is_refused(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("symbol,close,currency,price_date\n,10,USD,2026-11-26\n")

    with pytest.raises(ProviderPayloadError) as caught:
        FilePricesProvider(path=path).fetch_prices(symbols=["AAPL"])

    assert str(caught.value) == (
        f"file: prices file {path}, line 2: invalid symbol (no row names a valid one)"
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("symbol,price,currency,date\nAAPL,1,USD,2026-11-26\n", "header lacks close, price_date"),
        ("", "header lacks symbol, close, currency, price_date"),
    ],
)
def test_bad_prices_header_is_refused(tmp_path, content, fragment):
    path = tmp_path / "prices.csv"
    path.write_text(content)

    with pytest.raises(ProviderPayloadError, match=fragment):
        FilePricesProvider(path=path).fetch_prices(symbols=["AAPL"])


def test_non_utf8_prices_file_is_refused(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_bytes(b"symbol,close,currency,price_date\n\xff\xfe,1,USD,2026-11-26\n")

    with pytest.raises(ProviderPayloadError, match="not UTF-8"):
        FilePricesProvider(path=path).fetch_prices(symbols=["AAPL"])
