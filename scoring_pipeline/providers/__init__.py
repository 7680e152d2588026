"""Rates and prices providers over httpx (SPEC §8): models, value checks, implementations."""

from scoring_pipeline.providers.base import (
    PricesProvider,
    PricesSource,
    RatesProvider,
    RatesSource,
)
from scoring_pipeline.providers.chain import ProviderChain, check_rejected_share
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.frankfurter import (
    FrankfurterRatesProvider,
    parse_frankfurter_payload,
)
from scoring_pipeline.providers.http import HttpSettings, ProviderHttpClient
from scoring_pipeline.providers.models import (
    PriceQuote,
    PricesResult,
    RatesSnapshot,
)
from scoring_pipeline.providers.redaction import redact
from scoring_pipeline.providers.values import (
    MAX_PRICE,
    MAX_RATE,
    MIN_PRICE,
    MIN_RATE,
    MINOR_UNITS,
    RejectedValue,
    Rejection,
)
from scoring_pipeline.providers.yahoo import YahooPricesProvider, parse_yahoo_payload

__all__ = [
    "MAX_PRICE",
    "MAX_RATE",
    "MINOR_UNITS",
    "MIN_PRICE",
    "MIN_RATE",
    "FilePricesProvider",
    "FileRatesProvider",
    "FrankfurterRatesProvider",
    "HttpSettings",
    "PriceQuote",
    "PricesProvider",
    "PricesResult",
    "PricesSource",
    "ProviderChain",
    "ProviderHttpClient",
    "RatesProvider",
    "RatesSnapshot",
    "RatesSource",
    "RejectedValue",
    "Rejection",
    "YahooPricesProvider",
    "check_rejected_share",
    "parse_frankfurter_payload",
    "parse_yahoo_payload",
    "redact",
]
