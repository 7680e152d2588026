"""File providers: rates from a Frankfurter-shaped JSON file and prices from a
``symbol,close,currency,price_date`` CSV — happy paths, filtering and missing symbols, an unreadable
file (unavailable, so a fallback can take over) and bad content refused with an error naming the
file, line, symbol or currency."""

import datetime
from decimal import Decimal

import pytest

from scoring_pipeline.errors import ProviderPayloadError, ProviderUnavailableError
from scoring_pipeline.providers import FilePricesProvider, FileRatesProvider, PriceQuote

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
        ('{"base":"USD","date":"2026-11-26","rates":{"EUR":-1}}', "rate for EUR must be greater"),
        ('{"base":"USD","date":"2026-11-26","rates":{"EUR":NaN}}', "rate for EUR is NaN"),
    ],
)
def test_bad_rates_file_is_refused_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "rates.json"
    path.write_text(content)

    with pytest.raises(ProviderPayloadError) as caught:
        FileRatesProvider(path=path).fetch_usd_rates(currencies=["EUR"])

    assert str(caught.value).startswith(f"file: rates file {path}: ")
    assert fragment in str(caught.value)


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
    ("row", "fragment"),
    [
        ("TSLA,NaN,USD,2026-11-26", "close for TSLA is NaN"),
        ("TSLA,inf,USD,2026-11-26", "close for TSLA is infinite"),
        ("TSLA,-Infinity,USD,2026-11-26", "close for TSLA is infinite"),
        ("TSLA,0,USD,2026-11-26", "close for TSLA must be greater than 0"),
        ("TSLA,-1.5,USD,2026-11-26", "close for TSLA must be greater than 0"),
        ("TSLA,2e9,USD,2026-11-26", "close for TSLA is absurdly large"),
        ("TSLA,sNaN,USD,2026-11-26", "close for TSLA is NaN"),
        ("TSLA,1e99999999999999999999,USD,2026-11-26", "close for TSLA is out of range"),
        ("TSLA,1e-99999999999999999999,USD,2026-11-26", "close for TSLA is out of range"),
        ("TSLA,abc,USD,2026-11-26", "close for TSLA is not a number"),
        ("TSLA,1_000,USD,2026-11-26", "close for TSLA is not a number"),
        ("TSLA,,USD,2026-11-26", "close for TSLA is not a number"),
        ("TSLA,10,DOLLAR,2026-11-26", "currency for TSLA is not a 3-letter code"),
        ("TSLA,10,USD,26/11/2026", "price_date for TSLA is not a YYYY-MM-DD date"),
        ("TSLA,10,USD", "price_date for TSLA is not a YYYY-MM-DD date"),
        ("AAPL,190,USD,2026-11-26", "two different quotes for AAPL"),
        (",10,USD,2026-11-26", "invalid symbol"),
    ],
)
def test_bad_price_rows_are_refused_naming_line_and_symbol(tmp_path, row, fragment):
    path = tmp_path / "prices.csv"
    path.write_text(PRICES_CSV + row + "\n")

    with pytest.raises(ProviderPayloadError) as caught:
        FilePricesProvider(path=path).fetch_prices(symbols=["AAPL"])

    assert str(caught.value).startswith(f"file: prices file {path}, line 4: ")
    assert fragment in str(caught.value)


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
