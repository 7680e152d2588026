"""Property-based fuzzing of the pure payload parsers (``parse_frankfurter_payload``,
``parse_yahoo_payload``) with hypothesis: on arbitrary bytes, on near-valid JSON text with hostile
number tokens (NaN, Infinity, huge exponents, long digit strings, strings, booleans) and on decoded
Python mappings, a parser either returns valid models — every accepted rate and price finite,
positive and within bounds, every currency a 3-letter upper-case code, every other value rejected
with a known reason — or raises ProviderPayloadError; never any other exception."""

import datetime
import json
from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.frankfurter import parse_frankfurter_payload
from scoring_pipeline.providers.models import PriceQuote, RatesSnapshot
from scoring_pipeline.providers.values import (
    MAX_PRICE,
    MAX_RATE,
    MIN_PRICE,
    MIN_RATE,
    RejectedValue,
    Rejection,
)
from scoring_pipeline.providers.yahoo import parse_yahoo_payload

FUZZ = settings(max_examples=200, deadline=None)


def mostly(plausible: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Plausible 80% of the time, so whole payloads parse often enough to exercise success."""
    return st.integers(0, 9).flatmap(lambda n: hostile if n >= 8 else plausible)


hostile_number_tokens = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,25})?", fullmatch=True),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-0", "0.0", "1e12", "1e-12", "1e9"]),
    st.sampled_from(['"1.5"', '"NaN"', '"Infinity"', "true", "false", "null", "{}", "[]", '""']),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: json.dumps(f)),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
)
plausible_decimals = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal("1000000"), allow_nan=False
)
number_tokens = mostly(plausible_decimals.map(str), hostile_number_tokens)
code_keys = mostly(
    st.sampled_from(["EUR", "gbp", "USD", "JPY", "Brl", "chf"]),
    st.sampled_from(["usd", "EURO", "E1", "", "€€€", "US"]) | st.text(max_size=4),
)
python_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.sampled_from([Decimal("sNaN"), Decimal("-NaN"), Decimal("1e999999999999999999")]),
        st.text(max_size=12),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
python_numbers = mostly(
    plausible_decimals | st.floats(min_value=1e-6, max_value=1e6) | st.integers(1, 10**6),
    python_values,
)
dates = mostly(
    st.dates().map(datetime.date.isoformat),
    st.sampled_from(["2026-02-30", "2026-13-01", "26-11-27", "2026-11-27T00:00:00", "٢٠٢٦-١١-٢٧"])
    | st.text(max_size=12),
)
epoch_times = st.integers(min_value=1, max_value=253_402_300_799)
symbols = mostly(
    st.sampled_from(["AAPL", "aapl", "VOD.L", "BRK-B", "^GSPC", "EURUSD=X"]),
    st.sampled_from(["", "A,B", "X Y", "\x00"]) | st.text(max_size=8),
)
currencies = mostly(
    st.sampled_from(["USD", "GBp", "GBX", "ZAc", "ILA", "eur"]),
    st.sampled_from(["US", "", "U$D", "EURO"]),
)


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{token}" for key, token in pairs) + "}"


def _check_snapshot(snapshot: RatesSnapshot) -> None:
    assert isinstance(snapshot, RatesSnapshot)
    assert snapshot.rates["USD"] == 1
    for code, rate in snapshot.rates.items():
        assert len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()
        assert isinstance(rate, Decimal) and rate.is_finite()
        assert MIN_RATE <= rate <= MAX_RATE
    for code, rejected in snapshot.rejected.items():
        assert code not in snapshot.rates and rejected.key == code
        assert isinstance(rejected.reason, Rejection)
        event(f"rate rejected: {rejected.reason}")


def _check_quotes(outcomes: dict[str, PriceQuote | RejectedValue]) -> None:
    for key, quote in outcomes.items():
        if isinstance(quote, RejectedValue):
            assert key == quote.key.upper() and isinstance(quote.reason, Rejection)
            event(f"price rejected: {quote.reason}")
            continue
        assert isinstance(quote, PriceQuote)
        assert key == quote.symbol.upper()
        assert quote.close.is_finite() and MIN_PRICE <= quote.close <= MAX_PRICE
        assert len(quote.currency) == 3 and quote.currency.isascii() and quote.currency.isupper()
        assert isinstance(quote.price_date, datetime.date)


def _rates_or_payload_error(payload: object) -> None:
    try:
        snapshot = parse_frankfurter_payload(payload)  # type: ignore[arg-type]
    except ProviderPayloadError as exc:
        assert str(exc).startswith("frankfurter: ")
        event("refused")
    else:
        _check_snapshot(snapshot)
        event("parsed")


def _quotes_or_payload_error(payload: object) -> None:
    try:
        quotes = parse_yahoo_payload(payload)  # type: ignore[arg-type]
    except ProviderPayloadError as exc:
        assert str(exc).startswith("yahoo: ")
        event("refused")
    else:
        _check_quotes(quotes)
        event("parsed" if quotes else "parsed, no quotes")


@FUZZ
@given(st.binary(max_size=300))
def test_frankfurter_arbitrary_bytes(body):
    _rates_or_payload_error(body)


@FUZZ
@given(
    base=mostly(st.sampled_from(['"USD"', '"usd"']), st.sampled_from(['"EUR"', "null", "1"])),
    amount=mostly(st.sampled_from([None, "1", "1.0"]), number_tokens),
    date=dates,
    rates=st.lists(st.tuples(code_keys, number_tokens), max_size=4),
    rates_shape=mostly(st.just("object"), st.sampled_from(["list", "string", "absent"])),
)
def test_frankfurter_near_valid_json(base, amount, date, rates, rates_shape):
    fields = [("base", base), ("date", json.dumps(date))]
    if amount is not None:
        fields.append(("amount", amount))
    if rates_shape == "object":
        fields.append(("rates", _object(rates)))
    elif rates_shape == "list":
        fields.append(("rates", "[" + ",".join(token for _, token in rates) + "]"))
    elif rates_shape == "string":
        fields.append(("rates", '"EUR=0.9"'))
    _rates_or_payload_error(_object(fields).encode())


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "base": mostly(st.just("USD"), python_values),
            "date": mostly(dates, python_values),
            "rates": mostly(st.dictionaries(code_keys, python_numbers, max_size=4), python_values),
        },
        optional={"amount": mostly(st.sampled_from([1, Decimal("1.0"), 1.0]), python_values)},
    )
)
def test_frankfurter_decoded_mappings(payload):
    _rates_or_payload_error(payload)


@FUZZ
@given(st.binary(max_size=300))
def test_yahoo_arbitrary_bytes(body):
    _quotes_or_payload_error(body)


quote_items = st.lists(
    st.tuples(
        symbols,
        mostly(number_tokens, st.none()),
        currencies,
        mostly(epoch_times.map(str), hostile_number_tokens),
    ),
    max_size=4,
)


@FUZZ
@given(
    items=quote_items,
    error=mostly(st.just("null"), st.sampled_from(['{"code":"x"}', '"oops"'])),
    result_shape=mostly(st.just("list"), st.sampled_from(["object", "absent"])),
)
def test_yahoo_near_valid_json(items, error, result_shape):
    rendered = []
    for symbol, price, currency, market_time in items:
        fields = [("symbol", json.dumps(symbol)), ("currency", json.dumps(currency))]
        fields.append(("regularMarketTime", market_time))
        if price is not None:
            fields.append(("regularMarketPrice", price))
        rendered.append(_object(fields))
    response = [("error", error)]
    if result_shape == "list":
        response.append(("result", "[" + ",".join(rendered) + "]"))
    elif result_shape == "object":
        response.append(("result", rendered[0] if rendered else "{}"))
    _quotes_or_payload_error(_object([("quoteResponse", _object(response))]).encode())


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "quoteResponse": mostly(
                st.fixed_dictionaries(
                    {
                        "result": mostly(
                            st.lists(
                                st.fixed_dictionaries(
                                    {
                                        "symbol": mostly(symbols, python_values),
                                        "regularMarketPrice": python_numbers,
                                        "currency": mostly(currencies, python_values),
                                        "regularMarketTime": mostly(epoch_times, python_values),
                                    }
                                ),
                                max_size=4,
                            ),
                            python_values,
                        )
                    },
                    optional={"error": mostly(st.none(), python_values)},
                ),
                python_values,
            )
        }
    )
)
def test_yahoo_decoded_mappings(payload):
    _quotes_or_payload_error(payload)


def test_valid_payloads_do_parse():
    # The fuzz tests would pass with a parser that refuses everything; these must be accepted.
    snapshot = parse_frankfurter_payload(
        {"amount": 1, "base": "USD", "date": "2026-11-27", "rates": {"EUR": Decimal("0.9")}}
    )
    _check_snapshot(snapshot)
    assert snapshot.rates["EUR"] == Decimal("0.9")
    item = {
        "symbol": "IBM",
        "regularMarketPrice": 150.25,
        "currency": "USD",
        "regularMarketTime": 1795822200,
    }
    quotes = parse_yahoo_payload({"quoteResponse": {"result": [item], "error": None}})
    _check_quotes(quotes)
    assert quotes["IBM"].close == Decimal("150.25")
