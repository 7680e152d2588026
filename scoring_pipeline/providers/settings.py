"""Build the rates and prices providers from environment variables (SPEC §8).

Nothing is read at import time: callers pass the environment (``os.environ`` or a dict).
Empty values count as unset; provider names are case-insensitive.

Rates:
  RATES_PROVIDER             ``frankfurter`` (default) or ``file``
  RATES_BASE_URL             base URL of the HTTP rates provider named above
                             (default ``https://api.frankfurter.dev/v1``)
  RATES_FILE                 JSON file in Frankfurter's ``latest`` shape; needed when the primary
                             or the fallback provider is ``file``
  RATES_API_KEY              optional secret, sent as ``Authorization: Bearer <key>``
  RATES_FALLBACK_PROVIDER    optional second provider (``frankfurter`` or ``file``; ``none``)
  RATES_FALLBACK_BASE_URL    base URL of an HTTP fallback; when unset, an HTTP fallback behind a
                             ``file`` primary uses RATES_BASE_URL, else the provider's default
Prices:
  PRICES_PROVIDER            ``yahoo`` (default) or ``file``
  PRICES_BASE_URL            default ``https://query1.finance.yahoo.com``
  PRICES_FILE                CSV ``symbol,close,currency,price_date``
  PRICES_API_KEY             optional secret, sent as the ``X-API-KEY`` header
  PRICES_FALLBACK_PROVIDER, PRICES_FALLBACK_BASE_URL   as for rates
HTTP (every HTTP provider):
  PROVIDER_TIMEOUT_SECONDS     per-request timeout (default 10)
  PROVIDER_MAX_RETRIES         retries after the first attempt (default 3, at most 20)
  PROVIDER_BACKOFF_SECONDS     first backoff, doubled each retry (default 0.5)
  PROVIDER_BACKOFF_MAX_SECONDS cap of a backoff and of a Retry-After wait (default 30)

A fallback identical to its primary (``file`` twice, or the same HTTP provider at the same URL)
is refused, as is any unknown provider name, a missing file variable or a malformed URL:
ConfigurationError with a message naming the variable.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx

from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.providers import frankfurter, yahoo
from scoring_pipeline.providers.base import PricesProvider, RatesProvider
from scoring_pipeline.providers.fallback import FallbackPricesProvider, FallbackRatesProvider
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.http import HttpSettings, redact

__all__ = [
    "HttpSettings",
    "build_prices_provider",
    "build_rates_provider",
    "http_settings_from_env",
]

RATES_HTTP_PROVIDERS = {"frankfurter": frankfurter.DEFAULT_BASE_URL}
PRICES_HTTP_PROVIDERS = {"yahoo": yahoo.DEFAULT_BASE_URL}
_NO_FALLBACK = {"none", "off"}
_P = TypeVar("_P", RatesProvider, PricesProvider)


def _get(env: Mapping[str, str], var: str) -> str | None:
    value = env.get(var)
    if value is None or not value.strip():
        return None
    return value.strip()


def _number(env: Mapping[str, str], var: str, default: float) -> float:
    raw = _get(env, var)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{var} must be a number of seconds, got {raw!r}") from None


def http_settings_from_env(env: Mapping[str, str]) -> HttpSettings:
    """HttpSettings from the PROVIDER_* variables (defaults for the unset ones)."""
    defaults = HttpSettings()
    raw_retries = _get(env, "PROVIDER_MAX_RETRIES")
    retries = defaults.max_retries
    if raw_retries is not None:
        try:
            retries = int(raw_retries)
        except ValueError:
            raise ConfigurationError(
                f"PROVIDER_MAX_RETRIES must be an integer, got {raw_retries!r}"
            ) from None
    try:
        return HttpSettings(
            timeout_seconds=_number(env, "PROVIDER_TIMEOUT_SECONDS", defaults.timeout_seconds),
            max_retries=retries,
            backoff_base_seconds=_number(
                env, "PROVIDER_BACKOFF_SECONDS", defaults.backoff_base_seconds
            ),
            backoff_max_seconds=_number(
                env, "PROVIDER_BACKOFF_MAX_SECONDS", defaults.backoff_max_seconds
            ),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid PROVIDER_* setting: {exc}") from None


def _base_url(value: str, var: str, secrets: list[str | None]) -> str:
    shown = redact(value, secrets)
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ConfigurationError(f"{var} is not a valid URL: {shown!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"{var} must be an http(s) URL with a host, got {shown!r}")
    if url.query or url.fragment:
        raise ConfigurationError(
            f"{var} must not have a query string or fragment (keys go in *_API_KEY), got {shown!r}"
        )
    return value


@dataclass(frozen=True)
class _Choice:
    name: str
    base_url: str | None = None  # HTTP providers
    path: str | None = None  # file providers


def _provider_name(
    env: Mapping[str, str], var: str, default: str | None, allowed: list[str]
) -> str | None:
    raw = _get(env, var)
    if raw is None:
        return default
    name = raw.lower()
    if default is None and name in _NO_FALLBACK:
        return None
    if name not in allowed:
        raise ConfigurationError(
            f"{var}={raw!r} is not a known provider; choose one of {', '.join(allowed)}"
        )
    return name


def _choose(
    env: Mapping[str, str], prefix: str, http_defaults: Mapping[str, str]
) -> tuple[_Choice, _Choice | None]:
    allowed = [*http_defaults, "file"]
    default = next(iter(http_defaults))
    primary_name = _provider_name(env, f"{prefix}_PROVIDER", default, allowed)
    assert primary_name is not None
    fallback_name = _provider_name(env, f"{prefix}_FALLBACK_PROVIDER", None, allowed)
    secrets = [_get(env, f"{prefix}_API_KEY")]

    def choice(name: str, url_vars: list[str]) -> _Choice:
        if name == "file":
            path = _get(env, f"{prefix}_FILE")
            if path is None:
                raise ConfigurationError(
                    f"the {prefix.lower()} provider 'file' needs {prefix}_FILE (a file path)"
                )
            return _Choice(name, path=path)
        for var in url_vars:
            value = _get(env, var)
            if value is not None:
                return _Choice(name, base_url=_base_url(value, var, secrets))
        return _Choice(name, base_url=http_defaults[name])

    primary = choice(primary_name, [f"{prefix}_BASE_URL"])
    if fallback_name is None:
        return primary, None
    fallback_urls = [f"{prefix}_FALLBACK_BASE_URL"]
    if primary_name != fallback_name:
        fallback_urls.append(f"{prefix}_BASE_URL")
    fallback = choice(fallback_name, fallback_urls)
    if fallback == primary:
        raise ConfigurationError(
            f"{prefix}_FALLBACK_PROVIDER={fallback_name!r} is the same provider as "
            f"{prefix}_PROVIDER"
            + (
                f" reading the same {prefix}_FILE"
                if fallback_name == "file"
                else f"; give {prefix}_FALLBACK_BASE_URL a different URL"
            )
        )
    return primary, fallback


def build_rates_provider(env: Mapping[str, str]) -> RatesProvider:
    """The rates provider the environment selects, with its fallback when one is configured."""
    primary, fallback = _choose(env, "RATES", RATES_HTTP_PROVIDERS)
    http_settings = http_settings_from_env(env)
    api_key = _get(env, "RATES_API_KEY")

    def make(choice: _Choice) -> RatesProvider:
        if choice.path is not None:
            return FileRatesProvider(path=choice.path)
        assert choice.base_url is not None
        return frankfurter.FrankfurterRatesProvider(
            base_url=choice.base_url, api_key=api_key, http_settings=http_settings
        )

    return _combine(make, primary, fallback, FallbackRatesProvider)


def build_prices_provider(env: Mapping[str, str]) -> PricesProvider:
    """The prices provider the environment selects, with its fallback when one is configured."""
    primary, fallback = _choose(env, "PRICES", PRICES_HTTP_PROVIDERS)
    http_settings = http_settings_from_env(env)
    api_key = _get(env, "PRICES_API_KEY")

    def make(choice: _Choice) -> PricesProvider:
        if choice.path is not None:
            return FilePricesProvider(path=choice.path)
        assert choice.base_url is not None
        return yahoo.YahooPricesProvider(
            base_url=choice.base_url, api_key=api_key, http_settings=http_settings
        )

    return _combine(make, primary, fallback, FallbackPricesProvider)


def _combine(
    make: Callable[[_Choice], _P],
    primary: _Choice,
    fallback: _Choice | None,
    chain: Callable[[_P, _P], _P],
) -> _P:
    if fallback is None:
        return make(primary)
    return chain(make(primary), make(fallback))
