"""Provider settings as typed resource configuration, read from the environment once when the
code location loads (``deployment.build_resources``): defaults, the file providers, fallbacks and
their base URLs, API keys as ``dg.EnvVar`` (resolved at launch, never stored as values), the
PROVIDER_* HTTP knobs, PROVIDER_MAX_REJECTED_FRACTION and PROVIDER_MAX_DATA_AGE_DAYS, every
misconfiguration (unknown names, missing files, bad URLs and numbers, a fallback identical to its
primary) refused with one ConfigurationError line naming the variable — plus configured providers
answering over HTTP."""

from decimal import Decimal

import dagster as dg
import pytest

from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.resources import PricesProviderResource, RatesProviderResource
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.frankfurter import FrankfurterRatesProvider
from scoring_pipeline.providers.http import HttpSettings
from scoring_pipeline.providers.yahoo import YahooPricesProvider


def _rates(env) -> RatesProviderResource:
    return build_resources(env)["rates_provider"]


def _prices(env) -> PricesProviderResource:
    return build_resources(env)["prices_provider"]


def test_defaults():
    rates, prices = _rates({}), _prices({})

    [frankfurter] = rates.chain().providers
    [yahoo] = prices.chain().providers
    assert isinstance(frankfurter, FrankfurterRatesProvider)
    assert frankfurter._http.base_url == "https://api.frankfurter.dev/v1"
    assert frankfurter._http.settings == HttpSettings()
    assert isinstance(yahoo, YahooPricesProvider)
    assert yahoo._http.base_url == "https://query1.finance.yahoo.com"
    assert rates.chain().max_rejected_fraction == Decimal("0.2")
    assert rates.api_key is None and prices.api_key is None


def test_file_providers():
    rates = _rates({"RATES_PROVIDER": " FILE ", "RATES_FILE": "/data/rates.json"})
    prices = _prices({"PRICES_PROVIDER": "file", "PRICES_FILE": "/data/p.csv"})

    [rates_file] = rates.chain().providers
    [prices_file] = prices.chain().providers
    assert isinstance(rates_file, FileRatesProvider) and str(rates_file.path) == "/data/rates.json"
    assert isinstance(prices_file, FilePricesProvider) and str(prices_file.path) == "/data/p.csv"


def test_api_keys_are_env_vars_resolved_at_launch(monkeypatch):
    env = {
        "RATES_BASE_URL": "http://rates.internal:8080/v1/",
        "RATES_API_KEY": "rk",
        "PRICES_BASE_URL": "https://gateway.example/yahoo",
        "PRICES_API_KEY": "pk",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    rates, prices = _rates(env), _prices(env)
    # The configuration holds the variable's name, never its value (the UI shows the name).
    assert isinstance(rates.api_key, dg.EnvVar) and rates.api_key == "RATES_API_KEY"
    assert isinstance(prices.api_key, dg.EnvVar) and prices.api_key == "PRICES_API_KEY"

    with (
        rates.process_config_and_initialize_cm() as live_rates,
        prices.process_config_and_initialize_cm() as live_prices,
    ):
        [frankfurter] = live_rates.chain().providers
        [yahoo] = live_prices.chain().providers
    assert frankfurter._http.base_url == "http://rates.internal:8080/v1"
    assert frankfurter._http._headers["Authorization"] == "Bearer rk"
    assert yahoo._http.base_url == "https://gateway.example/yahoo"
    assert yahoo._http._headers["X-API-KEY"] == "pk"
    assert "rk" not in repr(frankfurter) and "pk" not in repr(yahoo)


def test_empty_values_count_as_unset():
    rates = _rates({"RATES_PROVIDER": "", "RATES_API_KEY": "", "RATES_FALLBACK_PROVIDER": " "})

    [frankfurter] = rates.chain().providers
    assert isinstance(frankfurter, FrankfurterRatesProvider)
    assert rates.api_key is None
    assert "Authorization" not in frankfurter._http._headers


def test_http_knobs_and_rejected_share():
    env = {
        "PROVIDER_TIMEOUT_SECONDS": "2.5",
        "PROVIDER_MAX_RETRIES": "5",
        "PROVIDER_BACKOFF_SECONDS": "0.1",
        "PROVIDER_BACKOFF_MAX_SECONDS": "4",
        "PROVIDER_MAX_REJECTED_FRACTION": "0.05",
        "PROVIDER_MAX_DATA_AGE_DAYS": "5",
    }

    prices = _prices(env)

    [yahoo] = prices.chain().providers
    assert yahoo._http.settings == HttpSettings(
        timeout_seconds=2.5, max_retries=5, backoff_base_seconds=0.1, backoff_max_seconds=4.0
    )
    assert prices.chain().max_rejected_fraction == Decimal("0.05")
    assert prices.chain().max_data_age_days == 5 == _rates(env).chain().max_data_age_days
    assert _prices({}).chain().max_data_age_days == 10
    assert _rates(env).timeout_seconds == 2.5


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PROVIDER_TIMEOUT_SECONDS": "fast"}, "PROVIDER_TIMEOUT_SECONDS='fast': Input should"),
        (
            {"PROVIDER_TIMEOUT_SECONDS": "0"},
            "PROVIDER_TIMEOUT_SECONDS='0': Input should be greater",
        ),
        ({"PROVIDER_TIMEOUT_SECONDS": "-1"}, "PROVIDER_TIMEOUT_SECONDS='-1': Input should be"),
        ({"PROVIDER_TIMEOUT_SECONDS": "nan"}, "PROVIDER_TIMEOUT_SECONDS='nan'"),
        ({"SCORING_BATCHES_PER_RUN": "0"}, "SCORING_BATCHES_PER_RUN='0'"),
        ({"SCORING_BATCHES_PER_RUN": "500"}, "SCORING_BATCHES_PER_RUN='500'"),
        ({"SCORING_BATCHES_PER_RUN": "ten"}, "SCORING_BATCHES_PER_RUN='ten'"),
        ({"PROVIDER_MAX_RETRIES": "2.5"}, "PROVIDER_MAX_RETRIES='2.5'"),
        ({"PROVIDER_MAX_RETRIES": "-1"}, "PROVIDER_MAX_RETRIES='-1'"),
        ({"PROVIDER_MAX_RETRIES": "100"}, "PROVIDER_MAX_RETRIES='100'"),
        ({"PROVIDER_BACKOFF_SECONDS": "-0.5"}, "PROVIDER_BACKOFF_SECONDS='-0.5'"),
        ({"PROVIDER_BACKOFF_MAX_SECONDS": "inf"}, "PROVIDER_BACKOFF_MAX_SECONDS='inf'"),
        ({"PROVIDER_MAX_REJECTED_FRACTION": "1.5"}, "PROVIDER_MAX_REJECTED_FRACTION='1.5'"),
        ({"PROVIDER_MAX_REJECTED_FRACTION": "-0.1"}, "PROVIDER_MAX_REJECTED_FRACTION='-0.1'"),
        ({"PROVIDER_MAX_DATA_AGE_DAYS": "0"}, "PROVIDER_MAX_DATA_AGE_DAYS='0'"),
        ({"PROVIDER_MAX_DATA_AGE_DAYS": "a week"}, "PROVIDER_MAX_DATA_AGE_DAYS='a week'"),
        (
            {"RATES_PROVIDER": "ecb"},
            "RATES_PROVIDER='ecb': is not a known provider; choose one of frankfurter, file",
        ),
        ({"RATES_PROVIDER": "yahoo"}, "RATES_PROVIDER='yahoo'"),
        ({"RATES_FALLBACK_PROVIDER": "fixer"}, "RATES_FALLBACK_PROVIDER='fixer'"),
        ({"RATES_PROVIDER": "file"}, "the provider 'file' needs a file path (RATES_FILE)"),
        ({"RATES_FALLBACK_PROVIDER": "file"}, "the provider 'file' needs a file path (RATES_FILE)"),
        ({"RATES_BASE_URL": "ftp://rates.example/v1"}, "RATES_BASE_URL='ftp://rates.example/v1'"),
        ({"RATES_BASE_URL": "api.frankfurter.dev/v1"}, "must be an http(s) URL with a host"),
        ({"RATES_BASE_URL": "https://x.example/v1?k=1"}, "must not have a query string"),
        ({"RATES_BASE_URL": "http://[::1/v1"}, "RATES_BASE_URL='http://[::1/v1': is not a valid"),
        ({"RATES_FALLBACK_PROVIDER": "frankfurter"}, "the fallback provider is the same"),
        (
            {"RATES_PROVIDER": "file", "RATES_FILE": "r.json", "RATES_FALLBACK_PROVIDER": "file"},
            "the fallback provider is the same",
        ),
        (
            {"PRICES_PROVIDER": "frankfurter"},
            "PRICES_PROVIDER='frankfurter': is not a known provider; choose one of yahoo, file",
        ),
        ({"PRICES_PROVIDER": "file"}, "the provider 'file' needs a file path (PRICES_FILE)"),
        (
            {"PRICES_FALLBACK_PROVIDER": "yahoo", "PRICES_FALLBACK_BASE_URL": "nope"},
            "PRICES_FALLBACK_BASE_URL='nope': must be an http(s) URL",
        ),
    ],
)
def test_bad_settings_are_one_clear_line_naming_the_variable(env, fragment):
    with pytest.raises(ConfigurationError) as caught:
        build_resources(env)

    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message and message.startswith("invalid setting")


def test_secret_in_a_bad_url_is_not_echoed():
    env = {"PRICES_BASE_URL": "https://gw.example/q?apikey=pk-777", "PRICES_API_KEY": "pk-777"}

    with pytest.raises(ConfigurationError) as caught:
        build_resources(env)

    assert "pk-777" not in str(caught.value)
    assert "apikey=***" in str(caught.value)


def test_http_primary_with_file_fallback():
    rates = _rates({"RATES_FALLBACK_PROVIDER": "File", "RATES_FILE": "/data/rates.json"})

    primary, fallback = rates.chain().providers
    assert isinstance(primary, FrankfurterRatesProvider)
    assert isinstance(fallback, FileRatesProvider)
    assert rates.chain().name == "frankfurter+file"


def test_file_primary_with_http_fallback_uses_the_base_url():
    env = {
        "PRICES_PROVIDER": "file",
        "PRICES_FILE": "/data/p.csv",
        "PRICES_FALLBACK_PROVIDER": "yahoo",
        "PRICES_BASE_URL": "https://gw.example/yahoo",
    }

    primary, fallback = _prices(env).chain().providers

    assert isinstance(primary, FilePricesProvider)
    assert isinstance(fallback, YahooPricesProvider)
    assert fallback._http.base_url == "https://gw.example/yahoo"


def test_fallback_base_url_takes_precedence():
    env = {
        "PRICES_PROVIDER": "file",
        "PRICES_FILE": "/data/p.csv",
        "PRICES_FALLBACK_PROVIDER": "yahoo",
        "PRICES_BASE_URL": "https://primary.example",
        "PRICES_FALLBACK_BASE_URL": "https://fallback.example",
    }

    _, fallback = _prices(env).chain().providers

    assert isinstance(fallback, YahooPricesProvider)
    assert fallback._http.base_url == "https://fallback.example"


def test_same_http_provider_at_another_url_is_a_valid_fallback():
    env = {
        "RATES_FALLBACK_PROVIDER": "frankfurter",
        "RATES_FALLBACK_BASE_URL": "http://frankfurter.internal/v1",
    }

    primary, fallback = _rates(env).chain().providers

    assert isinstance(primary, FrankfurterRatesProvider)
    assert isinstance(fallback, FrankfurterRatesProvider)
    assert primary._http.base_url == "https://api.frankfurter.dev/v1"
    assert fallback._http.base_url == "http://frankfurter.internal/v1"


@pytest.mark.parametrize("value", ["none", "NONE", "off"])
def test_fallback_can_be_switched_off_explicitly(value):
    [only] = _rates({"RATES_FALLBACK_PROVIDER": value}).chain().providers

    assert isinstance(only, FrankfurterRatesProvider)


def test_configured_providers_answer_over_http(loopback, reply, tmp_path, monkeypatch):
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
    monkeypatch.setenv("RATES_API_KEY", "rk-9")
    resources = build_resources(env)

    with (
        resources["rates_provider"].process_config_and_initialize_cm() as rates,
        resources["prices_provider"].process_config_and_initialize_cm() as prices,
    ):
        snapshot = rates.fetch_usd_rates(currencies=["EUR"])
        result = prices.fetch_prices(symbols=["IBM"], currencies={"IBM": "USD"})

    assert snapshot.rates["EUR"] == Decimal("0.9")
    assert loopback.requests_to("/v1/latest")[0].headers["authorization"] == "Bearer rk-9"
    assert result.source == "file"
    assert result.quotes["IBM"].close == Decimal(150)
    assert len(loopback.requests_to("/v7/finance/quote")) == 1
