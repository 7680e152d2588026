"""Retries, failures, fallback and secrecy over real loopback HTTP: 5xx then success, 429 with
Retry-After, exponential backoff, 5xx forever, 4xx not retried, timeouts, refused and dropped
connections, oversized bodies; the provider chain (the fallback used when the primary fails or
rejects more than the allowed share of its values, both failing); and API keys never present in
exception messages, reprs, tracebacks or captured log records — even when the failing URL or the
server's answer contains them."""

import logging
import time
import traceback
from decimal import Decimal

import pytest

from scoring_pipeline.errors import (
    ConfigurationError,
    ProviderError,
    ProviderPayloadError,
    ProviderUnavailableError,
)
from scoring_pipeline.providers.chain import ProviderChain, last_resort
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.frankfurter import FrankfurterRatesProvider
from scoring_pipeline.providers.http import HttpSettings, ProviderHttpClient
from scoring_pipeline.providers.models import PricesResult, RatesSnapshot, RequiredSymbols
from scoring_pipeline.providers.redaction import redact
from scoring_pipeline.providers.values import Rejection
from scoring_pipeline.providers.yahoo import YahooPricesProvider

LATEST = "/v1/latest"
QUOTE = "/v7/finance/quote"
RATES = {"amount": 1.0, "base": "USD", "date": "2026-11-27", "rates": {"EUR": 0.9}}
SECRET = "s3cr3t-K3y/with+chars"


def _retry_delays(caplog) -> list[float]:
    return [
        r.delay_seconds
        for r in caplog.records
        if r.name == "scoring_pipeline.providers" and hasattr(r, "delay_seconds")
    ]


@pytest.fixture
def rates(loopback, fast_http):
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=fast_http) as p:
        yield p


def test_5xx_then_success_is_retried(loopback, reply, rates, caplog):
    loopback.script(LATEST, reply(500), reply(502), reply(200, RATES))

    snapshot = rates.fetch_usd_rates(currencies=["EUR"])

    assert snapshot.rates["EUR"] == Decimal("0.9")
    assert len(loopback.requests_to(LATEST)) == 3
    assert _retry_delays(caplog) == [0.01, 0.02]
    assert "HTTP 500" in caplog.records[0].getMessage()


def test_429_honours_retry_after_capped_by_backoff_max(loopback, reply, fast_http, caplog):
    loopback.script(
        LATEST,
        reply(429, headers={"Retry-After": "0.03"}),
        reply(503, headers={"Retry-After": "120"}),
        reply(200, RATES),
    )
    settings = HttpSettings(
        timeout_seconds=2, max_retries=3, backoff_base_seconds=0.001, backoff_max_seconds=0.2
    )
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=settings) as p:
        started = time.monotonic()
        p.fetch_usd_rates(currencies=["EUR"])
        elapsed = time.monotonic() - started

    assert _retry_delays(caplog) == [0.03, 0.2]
    assert elapsed >= 0.23
    assert len(loopback.requests_to(LATEST)) == 3


def test_non_numeric_retry_after_falls_back_to_exponential_backoff(loopback, reply, rates, caplog):
    loopback.script(
        LATEST,
        reply(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}),
        reply(200, RATES),
    )

    rates.fetch_usd_rates(currencies=["EUR"])

    assert _retry_delays(caplog) == [0.01]


def test_backoff_doubles_up_to_the_cap_then_gives_up(loopback, reply, caplog):
    loopback.script(LATEST, reply(503))
    settings = HttpSettings(
        timeout_seconds=2, max_retries=5, backoff_base_seconds=0.005, backoff_max_seconds=0.03
    )
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=settings) as p:
        with pytest.raises(ProviderUnavailableError) as caught:
            p.fetch_usd_rates(currencies=["EUR"])

    assert _retry_delays(caplog) == [0.005, 0.01, 0.02, 0.03, 0.03]
    assert len(loopback.requests_to(LATEST)) == 6
    assert "HTTP 503; after 6 attempts" in str(caught.value)


def test_5xx_forever_is_unavailable_after_max_retries(loopback, reply, rates):
    loopback.script(LATEST, reply(500))

    with pytest.raises(ProviderUnavailableError) as caught:
        rates.fetch_usd_rates(currencies=["EUR"])

    assert len(loopback.requests_to(LATEST)) == 4  # 1 + max_retries
    assert str(caught.value).startswith("frankfurter: GET http://127.0.0.1:")
    assert "HTTP 500; after 4 attempts" in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 301])
def test_other_4xx_and_redirects_are_not_retried(loopback, reply, rates, status):
    loopback.script(LATEST, reply(status, headers={"Location": "http://example.invalid/"}))

    with pytest.raises(ProviderUnavailableError, match=rf"HTTP {status}; not retried"):
        rates.fetch_usd_rates(currencies=["EUR"])

    assert len(loopback.requests_to(LATEST)) == 1


def test_zero_retries_means_one_attempt(loopback, reply):
    loopback.script(LATEST, reply(500))
    settings = HttpSettings(max_retries=0, backoff_base_seconds=0)
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=settings) as p:
        with pytest.raises(ProviderUnavailableError, match="after 1 attempt\\)"):
            p.fetch_usd_rates(currencies=["EUR"])

    assert len(loopback.requests_to(LATEST)) == 1


def test_timeout_is_retried_then_unavailable(loopback, reply):
    loopback.script(LATEST, reply(200, RATES, delay=1.0))
    settings = HttpSettings(
        timeout_seconds=0.2, max_retries=1, backoff_base_seconds=0.01, backoff_max_seconds=0.01
    )
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=settings) as p:
        with pytest.raises(ProviderUnavailableError, match="timed out: ReadTimeout") as caught:
            p.fetch_usd_rates(currencies=["EUR"])

    assert len(loopback.requests_to(LATEST)) == 2
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_timeout_then_success(loopback, reply, caplog):
    loopback.script(LATEST, reply(200, RATES, delay=1.0), reply(200, RATES))
    settings = HttpSettings(timeout_seconds=0.2, max_retries=2, backoff_base_seconds=0.01)
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=settings) as p:
        assert p.fetch_usd_rates(currencies=["EUR"]).rates["EUR"] == Decimal("0.9")

    # The first attempt timed out (its answer came too late) and was retried once.
    assert len(loopback.requests_to(LATEST)) == 2
    assert len(_retry_delays(caplog)) == 1
    (retried,) = [r for r in caplog.records if hasattr(r, "delay_seconds")]
    assert "timed out: ReadTimeout" in retried.getMessage(), retried.getMessage()


def test_connection_refused_is_retried_then_unavailable(closed_port_url, fast_http, caplog):
    with FrankfurterRatesProvider(base_url=closed_port_url, http_settings=fast_http) as p:
        with pytest.raises(ProviderUnavailableError, match="connection error: ConnectError"):
            p.fetch_usd_rates(currencies=["EUR"])

    assert len(_retry_delays(caplog)) == 3


def test_dropped_connection_is_retried(loopback, reply, rates):
    loopback.script(LATEST, reply(disconnect=True), reply(200, RATES))

    assert rates.fetch_usd_rates(currencies=["EUR"]).rates["EUR"] == Decimal("0.9")
    assert len(loopback.requests_to(LATEST)) == 2


def test_oversized_body_is_refused(loopback, reply, fast_http):
    loopback.script("/big", reply(200, b"x" * 5000))
    client = ProviderHttpClient(
        provider="test", base_url=loopback.url, settings=fast_http, max_response_bytes=4096
    )
    try:
        with pytest.raises(ProviderPayloadError, match="larger than 4096 bytes"):
            client.get_bytes("big")
        loopback.script("/small", reply(200, b"y" * 4096))
        assert client.get_bytes("small") == b"y" * 4096
    finally:
        client.close()


def test_client_is_reusable_after_close(loopback, reply, rates):
    loopback.script(LATEST, reply(200, RATES))

    rates.fetch_usd_rates(currencies=["EUR"])
    rates.close()
    rates.fetch_usd_rates(currencies=["EUR"])

    assert len(loopback.requests_to(LATEST)) == 2


# Fallback

TWENTY_PERCENT = Decimal("0.2")


def _chain(*providers, max_rejected_fraction=TWENTY_PERCENT):
    return ProviderChain(providers, max_rejected_fraction=max_rejected_fraction)


def _rates_of(chain, currencies=("EUR",)):
    return chain.ask(lambda p: p.fetch_usd_rates(currencies=list(currencies)))


def test_fallback_rates_used_when_primary_is_down(loopback, reply, rates, tmp_path, caplog):
    loopback.script(LATEST, reply(503))
    path = tmp_path / "rates.json"
    path.write_text('{"base":"USD","date":"2026-11-26","rates":{"EUR":0.95}}')
    chain = _chain(rates, FileRatesProvider(path=path))

    snapshot = _rates_of(chain)

    assert snapshot.source == "file"
    assert snapshot.rates["EUR"] == Decimal("0.95")
    assert chain.name == "frankfurter+file"
    assert any("frankfurter failed, asking file" in r.getMessage() for r in caplog.records)


def test_fallback_not_asked_when_primary_answers(loopback, reply, rates, tmp_path):
    loopback.script(LATEST, reply(200, RATES))
    chain = _chain(rates, FileRatesProvider(path=tmp_path / "absent.json"))

    assert _rates_of(chain).source == "frankfurter"


def test_fallback_used_when_every_value_is_rejected(loopback, reply, rates, tmp_path):
    loopback.script(LATEST, reply(200, {"base": "USD", "date": "2026-11-27", "rates": {"EUR": 0}}))
    path = tmp_path / "rates.json"
    path.write_text('{"base":"USD","date":"2026-11-26","rates":{"EUR":0.95}}')

    snapshot = _rates_of(_chain(rates, FileRatesProvider(path=path)))

    assert snapshot.source == "file" and snapshot.rejected == {}


def _five_rates(bad: int) -> dict[str, object]:
    values: dict[str, object] = {"EUR": 0.9, "GBP": 0.8, "JPY": 150, "CHF": 0.88, "BRL": 5.1}
    for code in list(values)[:bad]:
        values[code] = -1
    return {"base": "USD", "date": "2026-11-27", "rates": values}


@pytest.mark.parametrize(
    ("bad", "max_fraction", "source"),
    [
        (1, TWENTY_PERCENT, "frankfurter"),  # 1 of 5 is 20%: not more than allowed
        (2, TWENTY_PERCENT, "file"),  # 40%: the payload is unusable, the fallback answers
        (1, Decimal(0), "file"),  # no rejection tolerated at all
        (5, Decimal(1), "frankfurter"),  # every rejection tolerated
    ],
)
def test_rejected_share_threshold_decides_the_fallback(
    loopback, reply, rates, tmp_path, bad, max_fraction, source
):
    loopback.script(LATEST, reply(200, _five_rates(bad)))
    path = tmp_path / "rates.json"
    path.write_text('{"base":"USD","date":"2026-11-26","rates":{"EUR":0.95}}')
    chain = _chain(rates, FileRatesProvider(path=path), max_rejected_fraction=max_fraction)

    snapshot = _rates_of(chain, ["EUR", "GBP", "JPY", "CHF", "BRL"])

    assert snapshot.source == source
    if source == "frankfurter":
        assert len(snapshot.rejected) == bad
        assert {r.reason for r in snapshot.rejected.values()} == {Rejection.NOT_POSITIVE}


def test_too_many_rejections_without_a_fallback_fail_naming_the_share(loopback, reply, rates):
    loopback.script(LATEST, reply(200, _five_rates(2)))

    with pytest.raises(ProviderPayloadError) as caught:
        _rates_of(_chain(rates), ["EUR", "GBP", "JPY", "CHF", "BRL"])

    message = str(caught.value)
    assert message.startswith("frankfurter: 2 of 5 rates rejected, more than the 0.2 allowed")
    assert "rate for EUR must be greater than 0, got -1; rate for GBP" in message


def test_fallback_prices_used_when_primary_is_down(closed_port_url, fast_http, tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("symbol,close,currency,price_date\nIBM,150.5,USD,2026-11-26\n")
    yahoo = YahooPricesProvider(base_url=closed_port_url, http_settings=fast_http)
    chain = _chain(yahoo, FilePricesProvider(path=path))
    try:
        result = chain.ask(lambda p: p.fetch_prices(symbols=["IBM", "MSFT"]))
    finally:
        chain.close()

    assert result.source == "file"
    assert result.quotes["IBM"].source == "file"
    assert result.missing == ["MSFT"]


def test_both_prices_providers_down(loopback, reply, fast_http, tmp_path):
    loopback.script(QUOTE, reply(200, b"not json"))
    bad_csv = tmp_path / "prices.csv"
    bad_csv.write_text("symbol,close,currency,price_date\nIBM,NaN,USD,2026-11-26\n")
    yahoo = YahooPricesProvider(base_url=loopback.url, http_settings=fast_http)
    chain = _chain(yahoo, FilePricesProvider(path=bad_csv))
    with pytest.raises(ProviderUnavailableError) as caught:
        chain.ask(lambda p: p.fetch_prices(symbols=["IBM"]))
    chain.close()

    message = str(caught.value)
    assert "primary yahoo (yahoo: malformed JSON" in message
    assert "fallback file (file: 1 of 1 prices rejected" in message
    assert "price for IBM is NaN" in message


def test_fallback_does_not_swallow_bugs(tmp_path):
    class Broken(FileRatesProvider):
        def fetch_usd_rates(self, *, currencies):
            raise RuntimeError("bug")

    chain = _chain(Broken(path=tmp_path), FileRatesProvider(path=tmp_path))

    with pytest.raises(RuntimeError, match="bug"):
        _rates_of(chain)


# Secrecy


def _assert_secret_absent(error: BaseException, caplog, secret: str = SECRET) -> None:
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.__dict__) for r in caplog.records]
    for variant in (secret, "s3cr3t"):
        for text in texts:
            assert variant not in text


@pytest.mark.parametrize("failure", ["5xx", "404", "timeout", "refused", "echo"])
def test_api_key_never_leaks_even_in_the_failing_url(
    loopback, reply, closed_port_url, caplog, failure
):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log request URLs at INFO/DEBUG
    settings = HttpSettings(
        timeout_seconds=0.2, max_retries=1, backoff_base_seconds=0.001, backoff_max_seconds=0.01
    )
    host = closed_port_url if failure == "refused" else loopback.url
    # The key in the URL path (a gateway routing on it) and in a credential-looking query.
    base_url = f"{host}/{SECRET}/v1"
    path = f"/{SECRET}/v1/latest"
    if failure == "5xx":
        loopback.script(path, reply(500))
    elif failure == "timeout":
        loopback.script(path, reply(200, RATES, delay=1.0))
    elif failure == "echo":
        loopback.script(
            path, reply(200, {"base": "USD", "date": "2026-11-27", "rates": {SECRET: 1}})
        )
    with FrankfurterRatesProvider(base_url=base_url, api_key=SECRET, http_settings=settings) as p:
        with pytest.raises(ProviderError) as caught:
            p.fetch_usd_rates(currencies=["EUR"])
        assert SECRET not in repr(p)

    assert "***" in str(caught.value)
    _assert_secret_absent(caught.value, caplog)
    if failure != "refused":
        assert loopback.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_yahoo_key_never_leaks_from_an_error_payload(loopback, reply, fast_http, caplog):
    caplog.set_level(logging.DEBUG)
    loopback.script(
        QUOTE,
        reply(
            200,
            {"quoteResponse": {"result": [], "error": {"description": f"bad key {SECRET}"}}},
        ),
    )
    with YahooPricesProvider(base_url=loopback.url, api_key=SECRET, http_settings=fast_http) as p:
        with pytest.raises(ProviderPayloadError) as caught:
            p.fetch_prices(symbols=["IBM"])

    assert "quoteResponse.error" in str(caught.value)
    _assert_secret_absent(caught.value, caplog)


@pytest.mark.parametrize("kept", [30, 8, 4])
def test_yahoo_key_cut_by_a_shortened_error_payload_never_leaks(
    loopback, reply, fast_http, caplog, kept
):
    """The payload's error text is shortened to 200 characters before the error is redacted: a
    key echoed where the cut falls ends in "...", and its first characters must not show."""
    caplog.set_level(logging.DEBUG)
    key = "pk-live-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    # The message is repr()'d (a quote first) and cut to 197 characters, then "..." is added.
    text = "x" * (196 - kept) + "key sent: " + key + " was refused"
    text = text[len("key sent: ") :]
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": None, "error": text}}))
    with YahooPricesProvider(base_url=loopback.url, api_key=key, http_settings=fast_http) as p:
        with pytest.raises(ProviderPayloadError) as caught:
            p.fetch_prices(symbols=["IBM"])

    message = str(caught.value)
    assert message.endswith("***...") and "quoteResponse.error" in message
    assert key[:kept] not in message
    _assert_secret_absent(caught.value, caplog, secret=key)
    for text in [r.getMessage() for r in caplog.records]:
        assert key[:kept] not in text


def test_an_answer_trickling_in_is_cut_at_the_requests_deadline(loopback, reply):
    """Each read of a dribbling answer comes within the timeout, so the timeout alone would
    wait as long as the provider keeps sending (a provider review held a fetch 7 s on a 1 s
    timeout): a request's whole answer must arrive within 3 times the timeout."""
    body = {"amount": 1, "base": "USD", "date": "2026-11-27", "rates": {"EUR": 0.9}} | {
        "padding": "x" * 400
    }
    loopback.script(LATEST, reply(200, body, trickle=0.05))  # ~2.5 s in all, 50 ms apart
    settings = HttpSettings(timeout_seconds=0.3, max_retries=1, backoff_base_seconds=0.01)
    with FrankfurterRatesProvider(base_url=f"{loopback.url}/v1", http_settings=settings) as p:
        with pytest.raises(ProviderUnavailableError) as caught:
            p.fetch_usd_rates(currencies=["EUR"])

    assert "timed out: the whole answer took longer than 0.9 s" in str(caught.value)
    assert "after 2 attempts" in str(caught.value)
    assert len(loopback.requests_to(LATEST)) == 2


def test_key_never_leaks_through_the_fallback(closed_port_url, fast_http, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    primary = FrankfurterRatesProvider(
        base_url=f"{closed_port_url}/{SECRET}", api_key=SECRET, http_settings=fast_http
    )
    provider = _chain(primary, FileRatesProvider(path=tmp_path / "absent.json"))

    with pytest.raises(ProviderUnavailableError) as caught:
        _rates_of(provider)
    provider.close()

    _assert_secret_absent(caught.value, caplog)
    assert SECRET not in repr(provider)


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("GET https://h/q?apikey=abc&symbols=A,B", [], "GET https://h/q?apikey=***&symbols=A,B"),
        ("https://h/q?s=1&api_key=abc#x", [], "https://h/q?s=1&api_key=***#x"),
        ("https://h/q?access_token=t0k&sig=zz", [], "https://h/q?access_token=***&sig=***"),
        ("https://user:pa55@h/path", [], "https://user:***@h/path"),
        ("Authorization: Bearer abc.def", [], "Authorization: Bearer ***"),
        ("key a/b+c in a%2Fb%2Bc or a%2Fb%2Bc", ["a/b+c"], "key *** in *** or ***"),
        ("plain text", ["", None], "plain text"),
        ("symbols=KEYS,TOKEN", [], "symbols=KEYS,TOKEN"),
        # A key cut by a shortened message: its first characters before the "..." go too.
        ("error: 'key sent: pk-live-ABCD...", ["pk-live-ABCDEFGH"], "error: 'key sent: ***..."),
        ("error: 'sent pk-l...", ["pk-live-ABCDEFGH"], "error: 'sent ***..."),
        ("error: 'sent pk-...", ["pk-live-ABCDEFGH"], "error: 'sent pk-..."),
        ("pk-live-ABCD and more", ["pk-live-ABCDEFGH"], "pk-live-ABCD and more"),
    ],
)
def test_redact(text, secrets, expected):
    assert redact(text, secrets) == expected


@pytest.mark.parametrize("base_url", ["ftp://h/v1", "no-scheme/v1", "http://[::1/v1", "https://"])
def test_invalid_base_url_is_a_configuration_error(base_url):
    with pytest.raises(ConfigurationError, match="base URL must be an http"):
        FrankfurterRatesProvider(base_url=base_url)


def test_invalid_base_url_does_not_echo_the_key():
    with pytest.raises(ConfigurationError) as caught:
        YahooPricesProvider(base_url=f"ftp://h/{SECRET}", api_key=SECRET)

    assert SECRET not in str(caught.value)


def test_an_answer_with_no_value_at_all_goes_to_the_fallback(loopback, reply, fast_http, tmp_path):
    # A provider that answers, but with nothing for any symbol asked (a prices file with only
    # its header): every symbol "not returned" made a night of prices-less scores that read
    # `completed`. It is an unusable answer: the fallback's is used, or the chain fails.
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": [], "error": None}}))
    header_only = tmp_path / "prices.csv"
    header_only.write_text("symbol,close,currency,price_date\n")
    fallback = tmp_path / "fallback.csv"
    fallback.write_text("symbol,close,currency,price_date\nIBM,150.5,USD,2026-11-26\n")
    for primary in (
        YahooPricesProvider(base_url=loopback.url, http_settings=fast_http),
        FilePricesProvider(path=header_only),
    ):
        chain = _chain(primary, FilePricesProvider(path=fallback))
        try:
            result = chain.ask(lambda p: p.fetch_prices(symbols=["IBM", "MSFT"]), asked=2)
        finally:
            chain.close()
        assert result.source == "file" and list(result.quotes) == ["IBM"]
        assert result.missing == ["MSFT"]  # one missing symbol of an answer is no failure
    alone = _chain(FilePricesProvider(path=header_only))
    with pytest.raises(ProviderPayloadError) as caught:
        alone.ask(lambda p: p.fetch_prices(symbols=["IBM", "MSFT"]), asked=2)
    assert str(caught.value) == "file: an empty answer: no price for any of the 2 asked"
    empty_rates = tmp_path / "rates.json"
    empty_rates.write_text('{"base":"USD","date":"2026-11-26","rates":{}}')
    with pytest.raises(ProviderPayloadError, match="an empty answer: no rate for any of the 1"):
        _chain(FileRatesProvider(path=empty_rates)).ask(
            lambda p: p.fetch_usd_rates(currencies=["EUR"]), asked=1
        )


def test_an_answer_pricing_none_of_the_required_symbols_is_not_usable(tmp_path):
    # A market group asks for its own instruments and its users' held symbols of other markets:
    # an answer with only the latter is not empty, yet it leaves the group's market unpriced.
    held_only = tmp_path / "held.csv"
    held_only.write_text("symbol,close,currency,price_date\nIBM,150.5,USD,2026-11-26\n")
    required = RequiredSymbols(symbols=frozenset({"SAP", "SIE"}), what="instruments of EU_IND")
    chain = _chain(FilePricesProvider(path=held_only))
    with pytest.raises(ProviderPayloadError) as caught:
        chain.ask(
            lambda p: p.fetch_prices(symbols=["IBM", "SAP", "SIE"]), asked=3, required=required
        )
    assert str(caught.value) == (
        "file: no price for any of the 2 instruments of EU_IND asked (left out or rejected): the "
        "answer leaves them all unpriced"
    )
    one_of_them = tmp_path / "one.csv"
    one_of_them.write_text("symbol,close,currency,price_date\nSIE,90,EUR,2026-11-26\n")
    result = _chain(FilePricesProvider(path=one_of_them)).ask(
        lambda p: p.fetch_prices(symbols=["IBM", "SAP", "SIE"]), asked=3, required=required
    )
    assert list(result.quotes) == ["SIE"] and result.missing == ["IBM", "SAP"]
    # A rejected value prices nothing: the group's own instruments all refused (quoted in
    # another currency than theirs), its users' held symbols priced, is no usable answer
    # either, though the refused share (1 of 5) is within the limit (0.2).
    refused = tmp_path / "refused.csv"
    refused.write_text(
        "symbol,close,currency,price_date\nIBM,150.5,USD,2026-11-26\nMSFT,400,USD,2026-11-26\n"
        "AAPL,200,USD,2026-11-26\nNVDA,100,USD,2026-11-26\nSIE,90,USD,2026-11-26\n"
    )
    with pytest.raises(ProviderPayloadError, match="no price for any of the 1 instruments"):
        _chain(FilePricesProvider(path=refused)).ask(
            lambda p: p.fetch_prices(
                symbols=["IBM", "MSFT", "AAPL", "NVDA", "SIE"], currencies={"SIE": "EUR"}
            ),
            asked=5,
            required=RequiredSymbols(symbols=frozenset({"SIE"}), what="instruments of EU_IND"),
        )


def _three_rates_one_bad() -> dict[str, object]:
    return {"base": "USD", "date": "2026-11-27", "rates": {"EUR": 0.9, "GBP": -1, "JPY": 150}}


def test_one_bad_value_of_a_small_answer_goes_to_the_fallback(loopback, reply, rates, tmp_path):
    """1 of 3 is over the 0.2 share: the fallback is asked, as SPEC §8 says."""
    loopback.script(LATEST, reply(200, _three_rates_one_bad()))
    path = tmp_path / "rates.json"
    path.write_text('{"base":"USD","date":"2026-11-26","rates":{"EUR":0.95,"GBP":0.8}}')

    assert _rates_of(_chain(rates, FileRatesProvider(path=path)), ["EUR", "GBP"]).source == "file"


def test_every_provider_failing_keeps_the_answer_refused_for_one_value_as_last_resort(
    loopback, reply, rates, tmp_path
):
    """The chain's error carries the primary's answer refused only for its one rejected value
    (the snapshot uses it when no recent snapshot can stand in); never an answer with two
    rejected values, nor one refused under a share of 0 (no rejection tolerated)."""
    loopback.script(LATEST, reply(200, _three_rates_one_bad()))
    absent = FileRatesProvider(path=tmp_path / "absent.json")

    with pytest.raises(ProviderUnavailableError) as caught:
        _rates_of(_chain(rates, absent), ["EUR", "GBP", "JPY"])

    answer = last_resort(caught.value, RatesSnapshot)
    assert answer is not None and answer.source == "frankfurter"
    assert answer.rates == {"EUR": Decimal("0.9"), "JPY": Decimal(150), "USD": Decimal(1)}
    assert set(answer.rejected) == {"GBP"}
    assert last_resort(caught.value, PricesResult) is None  # not an answer of that kind

    loopback.script(LATEST, reply(200, _three_rates_one_bad()))
    with pytest.raises(ProviderPayloadError) as strict:
        _rates_of(_chain(rates, max_rejected_fraction=Decimal(0)), ["EUR", "GBP", "JPY"])
    assert strict.value.last_resort is None

    loopback.script(LATEST, reply(200, _five_rates(2)))
    with pytest.raises(ProviderPayloadError) as two:
        _rates_of(_chain(rates), ["EUR", "GBP", "JPY", "CHF", "BRL"])
    assert two.value.last_resort is None
