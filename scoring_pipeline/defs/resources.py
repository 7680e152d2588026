"""Dagster resources: the application database, the two providers and the night's settings.

Every setting is a typed field, read from the environment once when the code location loads
(``deployment.build_resources``) and shown in the UI's resource view; the API keys are
``dg.EnvVar`` fields, resolved at launch and masked. A bad value fails the load with one message
naming the variable. Clients are built lazily, on first use inside a run, never at import or
definition time.
"""

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import dagster as dg
import httpx
from pydantic import Field, PrivateAttr, field_validator, model_validator
from sqlalchemy.engine import Engine

from scoring_pipeline.providers import frankfurter, yahoo
from scoring_pipeline.providers.base import PricesProvider, RatesProvider
from scoring_pipeline.providers.chain import DEFAULT_MAX_DATA_AGE_DAYS, ProviderChain
from scoring_pipeline.providers.files import FilePricesProvider, FileRatesProvider
from scoring_pipeline.providers.frankfurter import FrankfurterRatesProvider
from scoring_pipeline.providers.http import HttpSettings
from scoring_pipeline.providers.models import PricesResult, RatesSnapshot, RequiredSymbols
from scoring_pipeline.providers.yahoo import YahooPricesProvider
from scoring_pipeline.store.db import create_engine_for, resolve_database_url


class DatabaseResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The app's PostgreSQL: `DATABASE_URL`, or the embedded server when it is unset."""

    url: str | None = None

    # One engine per process and URL: runs in the same process share its pool; the pid in the
    # key keeps a forked run worker from reusing its parent's connections.
    _engines: ClassVar[dict[tuple[int, str], Engine]] = {}

    def resolved_url(self) -> str:
        return self.url or resolve_database_url()

    def engine(self) -> Engine:
        url = self.resolved_url()
        key = (os.getpid(), url)
        engine = self._engines.get(key)
        if engine is None:
            engine = create_engine_for(url, pool_size=2, max_overflow=4)
            self._engines[key] = engine
        return engine


_NO_FALLBACK = ("", "none", "off")


def _provider_name(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class _ProviderResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Fields and lifecycle shared by the rates and prices provider resources."""

    provider: str
    base_url: str | None = None
    file: str | None = None
    fallback_provider: str | None = None
    fallback_base_url: str | None = None
    api_key: str | None = None
    # Bounded: a huge timeout or backoff (1e300) passed the load, then failed every fetch
    # with "OverflowError: timestamp out of range for platform time_t".
    timeout_seconds: float = Field(default=10.0, gt=0, le=600, allow_inf_nan=False)
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_seconds: float = Field(default=0.5, ge=0, le=3600, allow_inf_nan=False)
    backoff_max_seconds: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)
    max_rejected_fraction: float = Field(default=0.2, ge=0, le=1)
    max_data_age_days: int = Field(default=DEFAULT_MAX_DATA_AGE_DAYS, ge=1, le=3650)

    _chain: ProviderChain[Any] | None = PrivateAttr(default=None)
    # The provider names of each kind, the HTTP one first, and its default URL.
    _names: ClassVar[tuple[str, ...]]
    _http_default_url: ClassVar[str]

    @field_validator("provider", mode="before")
    @classmethod
    def _known_provider(cls, value: object) -> object:
        name = _provider_name(value)
        if name not in cls._names:
            raise ValueError(f"is not a known provider; choose one of {', '.join(cls._names)}")
        return name

    @field_validator("fallback_provider", mode="before")
    @classmethod
    def _known_fallback(cls, value: object) -> object:
        name = _provider_name(value)
        if name is None or name in _NO_FALLBACK:
            return None
        if name not in cls._names:
            raise ValueError(
                f"is not a known provider; choose one of {', '.join(cls._names)} (or none)"
            )
        return name

    @field_validator("base_url", "fallback_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http(s) URL with a host")
        if url.query or url.fragment:
            raise ValueError("must not have a query string or fragment (keys go in *_API_KEY)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "_ProviderResource":
        if "file" in (self.provider, self.fallback_provider) and not self.file:
            raise ValueError("the provider 'file' needs a file path (*_FILE)")
        if self.fallback_provider is not None and self._choices()[0] == self._choices()[1]:
            raise ValueError(
                "the fallback provider is the same as the primary one (same file or URL)"
            )
        return self

    def _choices(self) -> list[tuple[str, str | None]]:
        """(provider, base URL) of the primary and the fallback; a file provider has no URL."""
        primary = (self.provider, self._url(self.provider, self.base_url))
        if self.fallback_provider is None:
            return [primary]
        url = self.fallback_base_url
        if url is None and self.fallback_provider != self.provider:
            url = self.base_url
        return [primary, (self.fallback_provider, self._url(self.fallback_provider, url))]

    def _url(self, name: str, base_url: str | None) -> str | None:
        if name == "file":
            return None
        return (base_url or self._http_default_url).rstrip("/")

    def _http_settings(self) -> HttpSettings:
        return HttpSettings(
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
            backoff_base_seconds=self.backoff_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )

    def _make(self, name: str, base_url: str | None) -> Any:
        raise NotImplementedError  # each kind builds its own providers

    def chain(self) -> ProviderChain[Any]:
        """The configured providers in order, built on first use."""
        if self._chain is None:
            providers = [self._make(name, url) for name, url in self._choices()]
            self._chain = ProviderChain(
                providers,
                max_rejected_fraction=Decimal(str(self.max_rejected_fraction)),
                max_data_age_days=self.max_data_age_days,
            )
        return self._chain

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._chain is not None:
            self._chain.close()


class RatesProviderResource(_ProviderResource):
    """Exchange rates from `RATES_PROVIDER`, then `RATES_FALLBACK_PROVIDER` (SPEC §8)."""

    provider: str = "frankfurter"
    _names: ClassVar[tuple[str, ...]] = ("frankfurter", "file")
    _http_default_url: ClassVar[str] = frankfurter.DEFAULT_BASE_URL

    def _make(self, name: str, base_url: str | None) -> Any:
        if name == "file" or base_url is None:
            return FileRatesProvider(path=str(self.file))
        return FrankfurterRatesProvider(
            base_url=base_url, api_key=self.api_key, http_settings=self._http_settings()
        )

    def fetch_usd_rates(
        self, *, currencies: Sequence[str], as_of: dt.date | None = None
    ) -> RatesSnapshot:
        """USD->X rates from the first provider with a usable answer (dated no more than
        `max_data_age_days` before `as_of`, the score date)."""
        chain: ProviderChain[RatesProvider] = self.chain()
        asked = len({c for c in currencies if c != "USD"}) if currencies else None
        return chain.ask(
            lambda p: p.fetch_usd_rates(currencies=currencies), asked=asked, as_of=as_of
        )


class PricesProviderResource(_ProviderResource):
    """Closing prices from `PRICES_PROVIDER`, then `PRICES_FALLBACK_PROVIDER` (SPEC §8)."""

    provider: str = "yahoo"
    _names: ClassVar[tuple[str, ...]] = ("yahoo", "file")
    _http_default_url: ClassVar[str] = yahoo.DEFAULT_BASE_URL

    def _make(self, name: str, base_url: str | None) -> Any:
        if name == "file" or base_url is None:
            return FilePricesProvider(path=str(self.file))
        return YahooPricesProvider(
            base_url=base_url, api_key=self.api_key, http_settings=self._http_settings()
        )

    def fetch_prices(
        self,
        *,
        symbols: Sequence[str],
        currencies: Mapping[str, str] | None = None,
        required: RequiredSymbols | None = None,
        expect_some: bool = True,
        as_of: dt.date | None = None,
    ) -> PricesResult:
        """Quotes from the first provider with a usable answer: one with a value for some of
        the symbols (unless not `expect_some`), and for some of `required` when given; a quote
        dated more than `max_data_age_days` before `as_of` (the score date) is rejected."""
        chain: ProviderChain[PricesProvider] = self.chain()
        return chain.ask(
            lambda p: p.fetch_prices(symbols=symbols, currencies=currencies),
            asked=len(set(symbols)) if expect_some else 0,
            required=required,
            as_of=as_of,
        )


class ScoringSettingsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Settings of a night: batch size, batches per run, how old a snapshot may be reused, the
    market group."""

    # A run worker holds one batch's output at a time (~7 MB of rows and events for 50 users of
    # the benchmark's universe): 1,000 users keep a worker well under 1 GB, where 1e20 (a typo)
    # made one batch of every user and held the whole night in one process.
    batch_size: int = Field(default=50, gt=0, le=1000)
    # How many of a night's consecutive batch partitions one sensor-launched run scores: each
    # batch still commits, lands and shows in the partitions UI on its own; the run's fixed
    # Dagster cost is paid once for all of them (docs/design.md, "Runs of several batches").
    batches_per_run: int = Field(default=10, gt=0, le=200)
    # Bounded like PROVIDER_MAX_DATA_AGE_DAYS: a larger value overflowed the date arithmetic
    # of the stale-snapshot fallback, failing the night just when every provider was down.
    snapshot_max_age_days: int = Field(default=3, gt=0, le=3650)
    market_group: str = "all"
