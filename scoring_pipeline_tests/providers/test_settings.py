"""Building providers from environment variables: defaults, the file providers, fallbacks and
their base URLs, API keys, the PROVIDER_* HTTP knobs, and every misconfiguration (unknown names,
missing files, bad URLs and numbers, a fallback identical to its primary) refused with a
ConfigurationError naming the variable — plus a built provider actually answering over HTTP."""

from decimal import Decimal

import pytest

from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.providers import (
    FallbackPricesProvider,
    FallbackRatesProvider,
    FilePricesProvider,
    FileRatesProvider,
    FrankfurterRatesProvider,
    HttpSettings,
    YahooPricesProvider,
    build_prices_provider,
    build_rates_provider,
    http_settings_from_env,
)
from scoring_pipeline.providers import settings as settings_module


def test_defaults():
    rates = build_rates_provider({})
    prices = build_prices_provider({})

    assert isinstance(rates, FrankfurterRatesProvider)
    assert rates._http.base_url == "https://api.frankfurter.dev/v1"
    assert rates._http.settings == HttpSettings()
    assert isinstance(prices, YahooPricesProvider)
    assert prices._http.base_url == "https://query1.finance.yahoo.com"


def test_http_settings_interface_lives_in_settings_too():
    assert settings_module.HttpSettings is HttpSettings
    assert HttpSettings() == HttpSettings(
        timeout_seconds=10.0, max_retries=3, backoff_base_seconds=0.5, backoff_max_seconds=30.0
    )


def test_file_providers():
    rates = build_rates_provider({"RATES_PROVIDER": " FILE ", "RATES_FILE": "/data/rates.json"})
    prices = build_prices_provider({"PRICES_PROVIDER": "file", "PRICES_FILE": "/data/p.csv"})

    assert isinstance(rates, FileRatesProvider)
    assert str(rates.path) == "/data/rates.json"
    assert isinstance(prices, FilePricesProvider)
    assert str(prices.path) == "/data/p.csv"


def test_base_url_and_api_key():
    env = {
        "RATES_BASE_URL": "http://rates.internal:8080/v1/",
        "RATES_API_KEY": "rk",
        "PRICES_BASE_URL": "https://gateway.example/yahoo",
        "PRICES_API_KEY": "pk",
    }

    rates = build_rates_provider(env)
    prices = build_prices_provider(env)

    assert isinstance(rates, FrankfurterRatesProvider)
    assert isinstance(prices, YahooPricesProvider)
    assert rates._http.base_url == "http://rates.internal:8080/v1"
    assert rates._http._headers["Authorization"] == "Bearer rk"
    assert prices._http.base_url == "https://gateway.example/yahoo"
    assert prices._http._headers["X-API-KEY"] == "pk"
    assert "rk" not in repr(rates) and "pk" not in repr(prices)


def test_empty_values_count_as_unset():
    env = {"RATES_PROVIDER": "", "RATES_API_KEY": " ", "RATES_FALLBACK_PROVIDER": ""}

    rates = build_rates_provider(env)

    assert isinstance(rates, FrankfurterRatesProvider)
    assert "Authorization" not in rates._http._headers


def test_http_knobs():
    env = {
        "PROVIDER_TIMEOUT_SECONDS": "2.5",
        "PROVIDER_MAX_RETRIES": "5",
        "PROVIDER_BACKOFF_SECONDS": "0.1",
        "PROVIDER_BACKOFF_MAX_SECONDS": "4",
    }

    expected = HttpSettings(
        timeout_seconds=2.5, max_retries=5, backoff_base_seconds=0.1, backoff_max_seconds=4.0
    )
    assert http_settings_from_env(env) == expected
    prices = build_prices_provider(env)
    assert isinstance(prices, YahooPricesProvider)
    assert prices._http.settings == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PROVIDER_TIMEOUT_SECONDS": "fast"}, "PROVIDER_TIMEOUT_SECONDS must be a number"),
        ({"PROVIDER_TIMEOUT_SECONDS": "0"}, "timeout must be a positive number"),
        ({"PROVIDER_TIMEOUT_SECONDS": "nan"}, "timeout must be a positive number"),
        ({"PROVIDER_MAX_RETRIES": "2.5"}, "PROVIDER_MAX_RETRIES must be an integer"),
        ({"PROVIDER_MAX_RETRIES": "-1"}, "max retries must be an integer from 0 to 20"),
        ({"PROVIDER_MAX_RETRIES": "100"}, "max retries must be an integer from 0 to 20"),
        ({"PROVIDER_BACKOFF_SECONDS": "-0.5"}, "backoff base must be a non-negative"),
        ({"PROVIDER_BACKOFF_MAX_SECONDS": "inf"}, "backoff max must be a non-negative"),
    ],
)
def test_bad_http_knobs(env, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        build_rates_provider(env)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RATES_PROVIDER": "ecb"}, "RATES_PROVIDER='ecb' is not a known provider"),
        ({"RATES_PROVIDER": "yahoo"}, "choose one of frankfurter, file"),
        ({"RATES_FALLBACK_PROVIDER": "fixer"}, "RATES_FALLBACK_PROVIDER='fixer' is not a known"),
        ({"RATES_PROVIDER": "file"}, "'file' needs RATES_FILE"),
        ({"RATES_FALLBACK_PROVIDER": "file"}, "'file' needs RATES_FILE"),
        ({"RATES_BASE_URL": "ftp://rates.example/v1"}, "RATES_BASE_URL must be an http(s) URL"),
        ({"RATES_BASE_URL": "api.frankfurter.dev/v1"}, "RATES_BASE_URL must be an http(s) URL"),
        ({"RATES_BASE_URL": "https://x.example/v1?k=1"}, "must not have a query string"),
        ({"RATES_BASE_URL": "http://[::1/v1"}, "RATES_BASE_URL is not a valid URL"),
        (
            {"RATES_FALLBACK_PROVIDER": "frankfurter"},
            "RATES_FALLBACK_PROVIDER='frankfurter' is the same provider as RATES_PROVIDER",
        ),
        (
            {"RATES_PROVIDER": "file", "RATES_FILE": "r.json", "RATES_FALLBACK_PROVIDER": "file"},
            "reading the same RATES_FILE",
        ),
    ],
)
def test_bad_rates_configuration(env, fragment):
    with pytest.raises(ConfigurationError) as caught:
        build_rates_provider(env)

    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PRICES_PROVIDER": "frankfurter"}, "choose one of yahoo, file"),
        ({"PRICES_PROVIDER": "file"}, "'file' needs PRICES_FILE"),
        ({"PRICES_FALLBACK_BASE_URL": "nope"}, None),  # unused without a fallback: accepted
        (
            {"PRICES_FALLBACK_PROVIDER": "yahoo", "PRICES_FALLBACK_BASE_URL": "nope"},
            "PRICES_FALLBACK_BASE_URL must be an http(s) URL",
        ),
    ],
)
def test_bad_prices_configuration(env, fragment):
    if fragment is None:
        assert isinstance(build_prices_provider(env), YahooPricesProvider)
        return
    with pytest.raises(ConfigurationError) as caught:
        build_prices_provider(env)

    assert fragment in str(caught.value)


def test_secret_in_a_bad_url_is_not_echoed():
    env = {"PRICES_BASE_URL": "https://gw.example/q?apikey=pk-777", "PRICES_API_KEY": "pk-777"}

    with pytest.raises(ConfigurationError) as caught:
        build_prices_provider(env)

    assert "pk-777" not in str(caught.value)
    assert "apikey=***" in str(caught.value)


def test_http_primary_with_file_fallback():
    env = {"RATES_FALLBACK_PROVIDER": "File", "RATES_FILE": "/data/rates.json"}

    provider = build_rates_provider(env)

    assert isinstance(provider, FallbackRatesProvider)
    assert isinstance(provider.primary, FrankfurterRatesProvider)
    assert isinstance(provider.fallback, FileRatesProvider)
    assert provider.name == "frankfurter+file"


def test_file_primary_with_http_fallback_uses_the_base_url():
    env = {
        "PRICES_PROVIDER": "file",
        "PRICES_FILE": "/data/p.csv",
        "PRICES_FALLBACK_PROVIDER": "yahoo",
        "PRICES_BASE_URL": "https://gw.example/yahoo",
        "PRICES_API_KEY": "pk",
    }

    provider = build_prices_provider(env)

    assert isinstance(provider, FallbackPricesProvider)
    assert isinstance(provider.primary, FilePricesProvider)
    assert isinstance(provider.fallback, YahooPricesProvider)
    assert provider.fallback._http.base_url == "https://gw.example/yahoo"
    assert provider.fallback._http._headers["X-API-KEY"] == "pk"


def test_fallback_base_url_takes_precedence():
    env = {
        "PRICES_PROVIDER": "file",
        "PRICES_FILE": "/data/p.csv",
        "PRICES_FALLBACK_PROVIDER": "yahoo",
        "PRICES_BASE_URL": "https://primary.example",
        "PRICES_FALLBACK_BASE_URL": "https://fallback.example",
    }

    provider = build_prices_provider(env)

    assert isinstance(provider, FallbackPricesProvider)
    assert isinstance(provider.fallback, YahooPricesProvider)
    assert provider.fallback._http.base_url == "https://fallback.example"


def test_same_http_provider_at_another_url_is_a_valid_fallback():
    env = {
        "RATES_FALLBACK_PROVIDER": "frankfurter",
        "RATES_FALLBACK_BASE_URL": "http://frankfurter.internal/v1",
    }

    provider = build_rates_provider(env)

    assert isinstance(provider, FallbackRatesProvider)
    assert isinstance(provider.primary, FrankfurterRatesProvider)
    assert isinstance(provider.fallback, FrankfurterRatesProvider)
    assert provider.primary._http.base_url == "https://api.frankfurter.dev/v1"
    assert provider.fallback._http.base_url == "http://frankfurter.internal/v1"


@pytest.mark.parametrize("value", ["none", "NONE", "off"])
def test_fallback_can_be_switched_off_explicitly(value):
    assert isinstance(
        build_rates_provider({"RATES_FALLBACK_PROVIDER": value}), FrankfurterRatesProvider
    )


def test_built_providers_answer_over_http(loopback, reply, tmp_path):
    loopback.script(
        "/v1/latest",
        reply(200, {"amount": 1, "base": "USD", "date": "2026-11-27", "rates": {"EUR": 0.9}}),
    )
    prices_file = tmp_path / "prices.csv"
    prices_file.write_text("symbol,close,currency,price_date\nIBM,150,USD,2026-11-26\n")
    env = {
        "RATES_BASE_URL": f"{loopback.url}/v1",
        "RATES_API_KEY": "rk-9",
        "PRICES_BASE_URL": loopback.url,  # answers 404 on the quote path: the fallback answers
        "PRICES_FALLBACK_PROVIDER": "file",
        "PRICES_FILE": str(prices_file),
        "PROVIDER_MAX_RETRIES": "0",
    }

    with build_rates_provider(env) as rates, build_prices_provider(env) as prices:
        snapshot = rates.fetch_usd_rates(currencies=["EUR"])
        result = prices.fetch_prices(symbols=["IBM"])

    assert snapshot.rates["EUR"] == Decimal("0.9")
    assert loopback.requests_to("/v1/latest")[0].headers["authorization"] == "Bearer rk-9"
    assert result.source == "file"
    assert result.quotes["IBM"].close == Decimal(150)
    assert len(loopback.requests_to("/v7/finance/quote")) == 1
