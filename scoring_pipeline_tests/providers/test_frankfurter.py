"""Frankfurter rates provider over real loopback HTTP: the request it sends (path, query, key
header), exact Decimal parsing, currencies absent or unrequested, every payload it must refuse as a
whole (malformed JSON, wrong shapes, wrong base/date/amount, bad or duplicate currency codes), and
every bad rate (NaN, infinities, zero, negative, absurd, non-numeric) rejected alone with its
reason, naming the currency, while the other rates are used."""

import datetime
import logging
from decimal import Decimal

import pytest

from scoring_pipeline.errors import ProviderPayloadError, ProviderUnavailableError
from scoring_pipeline.providers.frankfurter import FrankfurterRatesProvider
from scoring_pipeline.providers.models import RatesSnapshot
from scoring_pipeline.providers.values import Rejection

LATEST = "/v1/latest"


def _payload(rates: object, **overrides: object) -> dict[str, object]:
    return {"amount": 1.0, "base": "USD", "date": "2026-11-27", "rates": rates} | overrides


@pytest.fixture
def provider(loopback, fast_http):
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=fast_http) as p:
        yield p


def test_fetches_requested_currencies_exactly(loopback, reply, provider):
    body = (
        b'{"amount":1.0,"base":"USD","date":"2026-11-27",'
        b'"rates":{"EUR":0.91234567890123456789,"GBP":0.79}}'
    )
    loopback.script(LATEST, reply(200, body, {"Content-Type": "application/json"}))

    snapshot = provider.fetch_usd_rates(currencies=["eur", "GBP", "USD", "EUR"])

    assert snapshot == RatesSnapshot(
        rates={
            "EUR": Decimal("0.91234567890123456789"),
            "GBP": Decimal("0.79"),
            "USD": Decimal(1),
        },
        rate_date=datetime.date(2026, 11, 27),
        source="frankfurter",
    )
    [request] = loopback.requests_to(LATEST)
    # USD is never asked for; duplicates and case are normalised away.
    assert request.query == {"base": ["USD"], "symbols": ["EUR,GBP"]}
    assert "authorization" not in request.headers
    assert request.headers["accept"] == "application/json"


def test_currency_missing_from_answer_is_absent(loopback, reply, provider):
    loopback.script(LATEST, reply(200, _payload({"EUR": 0.9})))

    snapshot = provider.fetch_usd_rates(currencies=["EUR", "BRL"])

    assert snapshot.rates == {"EUR": Decimal("0.9"), "USD": Decimal(1)}


def test_unrequested_currencies_are_dropped(loopback, reply, provider):
    loopback.script(LATEST, reply(200, _payload({"EUR": 0.9, "JPY": 150, "GBP": 0.8})))

    snapshot = provider.fetch_usd_rates(currencies=["JPY"])

    assert snapshot.rates == {"JPY": Decimal(150), "USD": Decimal(1)}


def test_no_currencies_means_the_whole_table(loopback, reply, provider):
    loopback.script(LATEST, reply(200, _payload({"EUR": 0.9, "JPY": 150})))

    snapshot = provider.fetch_usd_rates(currencies=[])

    assert snapshot.rates == {"EUR": Decimal("0.9"), "JPY": Decimal(150), "USD": Decimal(1)}
    assert loopback.requests_to(LATEST)[0].query == {"base": ["USD"]}


def test_only_usd_requested_still_gets_a_dated_snapshot(loopback, reply, provider):
    loopback.script(LATEST, reply(200, _payload({"EUR": 0.9})))

    snapshot = provider.fetch_usd_rates(currencies=["USD"])

    assert snapshot.rates == {"USD": Decimal(1)}
    assert snapshot.rate_date == datetime.date(2026, 11, 27)
    assert loopback.requests_to(LATEST)[0].query == {"base": ["USD"]}


def test_invalid_requested_codes_are_not_sent(loopback, reply, provider, caplog):
    loopback.script(LATEST, reply(200, _payload({"EUR": 0.9})))

    snapshot = provider.fetch_usd_rates(currencies=["EUR", "EURO", "E1", "&x=1"])

    assert snapshot.rates == {"EUR": Decimal("0.9"), "USD": Decimal(1)}
    assert loopback.requests_to(LATEST)[0].query == {"base": ["USD"], "symbols": ["EUR"]}
    assert "EURO" in caplog.text


def test_a_single_string_is_refused(provider):
    with pytest.raises(TypeError):
        provider.fetch_usd_rates(currencies="EUR")


def test_lower_case_answer_codes_are_normalised(loopback, reply, provider):
    loopback.script(LATEST, reply(200, _payload({"eur": 0.9}, base="usd")))

    assert provider.fetch_usd_rates(currencies=["EUR"]).rates["EUR"] == Decimal("0.9")


def test_a_currency_given_twice_differently_is_rejected_the_rest_used(loopback, reply, provider):
    body = b'{"base":"USD","date":"2026-11-27","rates":{"EUR":0.9,"eur":0.8,"GBP":0.75}}'
    loopback.script(LATEST, reply(200, body))

    snapshot = provider.fetch_usd_rates(currencies=["EUR", "GBP"])

    assert snapshot.rates == {"USD": Decimal(1), "GBP": Decimal("0.75")}
    assert snapshot.rejected["EUR"].reason is Rejection.CONFLICTING
    assert snapshot.rejected["EUR"].detail == "rate for EUR given twice: 0.9 and 0.8"


def test_keys_that_are_no_currency_code_are_left_out_and_counted(loopback, reply, provider, caplog):
    """A crypto ticker in the table (`USDT`), or anything else: counted, never echoed."""
    caplog.set_level(logging.WARNING)
    body = b'{"base":"USD","date":"2026-11-27","rates":{"EUR":0.9,"USDT":1.0,"k-e-y":2}}'
    loopback.script(LATEST, reply(200, body))

    snapshot = provider.fetch_usd_rates(currencies=["EUR"])

    assert snapshot.rates == {"USD": Decimal(1), "EUR": Decimal("0.9")}
    assert [r.getMessage() for r in caplog.records] == [
        "frankfurter: left out 2 of the 3 keys of 'rates' that are not currency codes"
    ]


def test_api_key_is_sent_as_bearer_header(loopback, reply, fast_http):
    loopback.script(LATEST, reply(200, _payload({"EUR": 0.9})))
    with FrankfurterRatesProvider(
        base_url=f"{loopback.url}/v1", api_key="fk-123", http_settings=fast_http
    ) as provider:
        provider.fetch_usd_rates(currencies=["EUR"])
        assert "fk-123" not in repr(provider)

    [request] = loopback.requests_to(LATEST)
    assert request.headers["authorization"] == "Bearer fk-123"
    assert "fk-123" not in str(request.query)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"amount":1,"base":"USD","date":"2026-11-27"}', "no 'rates'"),
        (
            b'{"amount":1,"base":"USD","date":"2026-11-27","rates":[0.9]}',
            "'rates' is not an object",
        ),
        (
            b'{"amount":1,"base":"USD","date":"2026-11-27","rates":"EUR"}',
            "'rates' is not an object",
        ),
        (b'{"amount":1,"base":"EUR","date":"2026-11-27","rates":{}}', "base currency is 'EUR'"),
        (b'{"amount":1,"date":"2026-11-27","rates":{}}', "base currency is None"),
        (b'{"amount":2,"base":"USD","date":"2026-11-27","rates":{}}', "amount is"),
        (b'{"amount":1,"base":"USD","date":"27/11/2026","rates":{}}', "date: is not a valid date"),
        (b'{"amount":1,"base":"USD","date":"2026-02-30","rates":{}}', "date: is not a valid date"),
        (b'{"amount":1,"base":"USD","rates":{}}', "date: is not a valid date"),
        (b'{"amount":1,"base":"USD","date":"2026-11-27","rates":{"EURO":1}}', "invalid currency"),
        (b'{"amount":1,"base":"USD","date":"2026-11-27","rates":{"US":1}}', "invalid currency"),
        (b'{"base":"USD","date":"2026-11-27","rates":{"USD":2}}', "the USD->USD rate must be 1"),
        (
            b'{"base":"USD","date":"2026-11-27","rates":{"EUR":0.9,"EUR":0.8}}',
            "duplicate key 'EUR'",
        ),
        (b"[" * 100_000, "malformed JSON (RecursionError"),
        (
            b'{"base":"USD","date":"2026-11-27","rates":{"EUR":1e99999999999999999999}}',
            "malformed JSON (a number beyond the representable range)",
        ),
    ],
)
def test_malformed_or_misshapen_answers_are_refused(loopback, reply, provider, body, fragment):
    loopback.script(LATEST, reply(200, body))

    with pytest.raises(ProviderPayloadError) as caught:
        provider.fetch_usd_rates(currencies=["EUR"])

    assert str(caught.value).startswith("frankfurter: ")
    assert fragment in str(caught.value)
    assert caught.value.provider == "frankfurter"


@pytest.mark.parametrize(
    ("raw_rate", "reason", "fragment"),
    [
        ("NaN", Rejection.NAN, "is NaN"),
        ("Infinity", Rejection.INFINITE, "is infinite"),
        ("-Infinity", Rejection.INFINITE, "is infinite"),
        ('"Infinity"', Rejection.NOT_NUMERIC, "is not a number"),
        ('"NaN"', Rejection.NOT_NUMERIC, "is not a number"),
        ('"0.9"', Rejection.NOT_NUMERIC, "is not a number"),
        ('"abc"', Rejection.NOT_NUMERIC, "is not a number"),
        ("true", Rejection.NOT_NUMERIC, "is not a number"),
        ("null", Rejection.NOT_NUMERIC, "is not a number"),
        ("{}", Rejection.NOT_NUMERIC, "is not a number"),
        ("[0.9]", Rejection.NOT_NUMERIC, "is not a number"),
        ("0", Rejection.NOT_POSITIVE, "must be greater than 0"),
        ("0.0", Rejection.NOT_POSITIVE, "must be greater than 0"),
        ("-0.9", Rejection.NOT_POSITIVE, "must be greater than 0, got -0.9"),
        ("1e13", Rejection.OUT_OF_RANGE, "is outside"),
        ("1000000000000.5", Rejection.OUT_OF_RANGE, "is outside"),
        ("1e-13", Rejection.OUT_OF_RANGE, "is outside"),
        ("1e999999999", Rejection.OUT_OF_RANGE, "is outside"),
    ],
)
def test_an_invalid_rate_is_rejected_alone_naming_the_currency(
    loopback, reply, provider, raw_rate, reason, fragment
):
    template = '{"base":"USD","date":"2026-11-27","rates":{"EUR":0.9,"GBP":RAW}}'
    body = template.replace("RAW", raw_rate)
    loopback.script(LATEST, reply(200, body))

    snapshot = provider.fetch_usd_rates(currencies=["EUR", "GBP"])

    assert snapshot.rates == {"EUR": Decimal("0.9"), "USD": Decimal(1)}
    assert set(snapshot.rejected) == {"GBP"}
    assert snapshot.rejected["GBP"].reason == reason
    assert snapshot.rejected["GBP"].detail.startswith("rate for GBP ")
    assert fragment in snapshot.rejected["GBP"].detail
    assert "abc" not in snapshot.rejected["GBP"].detail


def test_a_rejected_usd_rate_makes_the_payload_unusable(loopback, reply, provider):
    loopback.script(LATEST, reply(200, b'{"base":"USD","date":"2026-11-27","rates":{"USD":0}}'))

    with pytest.raises(ProviderPayloadError, match="the USD->USD rate must be 1"):
        provider.fetch_usd_rates(currencies=["EUR"])


def test_bounds_are_inclusive(loopback, reply, provider):
    loopback.script(LATEST, reply(200, _payload({"AAA": 1e12, "BBB": 1e-12})))

    rates = provider.fetch_usd_rates(currencies=[]).rates

    assert rates["AAA"] == Decimal("1e12")
    assert rates["BBB"] == Decimal("1e-12")


def test_http_errors_become_provider_unavailable(loopback, reply, provider):
    loopback.script(LATEST, reply(404, {"message": "not found"}))

    with pytest.raises(ProviderUnavailableError, match=r"frankfurter: GET .* \(HTTP 404"):
        provider.fetch_usd_rates(currencies=["EUR"])
