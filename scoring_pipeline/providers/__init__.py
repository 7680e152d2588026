"""Rates and prices providers over httpx (SPEC §8): models, implementations, env wiring."""

from scoring_pipeline.providers.base import (
    MAX_PRICE,
    MAX_RATE,
    MIN_PRICE,
    MIN_RATE,
    PriceQuote,
    PricesProvider,
    PricesResult,
    RatesProvider,
    RatesSnapshot,
)
from scoring_pipeline.providers.fallback import FallbackPricesProvider, FallbackRatesProvider
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.frankfurter import (
    FrankfurterRatesProvider,
    parse_frankfurter_payload,
)
from scoring_pipeline.providers.http import HttpSettings, ProviderHttpClient, redact
from scoring_pipeline.providers.settings import (
    build_prices_provider,
    build_rates_provider,
    http_settings_from_env,
)
from scoring_pipeline.providers.yahoo import YahooPricesProvider, parse_yahoo_payload

__all__ = [
    "MAX_PRICE",
    "MAX_RATE",
    "MIN_PRICE",
    "MIN_RATE",
    "FallbackPricesProvider",
    "FallbackRatesProvider",
    "FilePricesProvider",
    "FileRatesProvider",
    "FrankfurterRatesProvider",
    "HttpSettings",
    "PriceQuote",
    "PricesProvider",
    "PricesResult",
    "ProviderHttpClient",
    "RatesProvider",
    "RatesSnapshot",
    "YahooPricesProvider",
    "build_prices_provider",
    "build_rates_provider",
    "http_settings_from_env",
    "parse_frankfurter_payload",
    "parse_yahoo_payload",
    "redact",
]
