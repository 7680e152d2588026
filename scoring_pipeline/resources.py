"""Dagster resources: the application database, the two providers and the night's settings.

Clients are built lazily, on first use inside a run, never at import or definition time.
"""

import os
from typing import ClassVar

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from scoring_pipeline.db import create_engine_for, resolve_database_url
from scoring_pipeline.providers import (
    PricesProvider,
    RatesProvider,
    build_prices_provider,
    build_rates_provider,
)


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


class RatesProviderResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The exchange-rates provider chosen by `RATES_PROVIDER` (and its fallback)."""

    api_key: str | None = None
    _provider: RatesProvider | None = PrivateAttr(default=None)

    def provider(self) -> RatesProvider:
        if self._provider is None:
            env = dict(os.environ)
            if self.api_key:
                env["RATES_API_KEY"] = self.api_key
            self._provider = build_rates_provider(env)
        return self._provider

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._provider is not None:
            self._provider.close()


class PricesProviderResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The prices provider chosen by `PRICES_PROVIDER` (and its fallback)."""

    api_key: str | None = None
    _provider: PricesProvider | None = PrivateAttr(default=None)

    def provider(self) -> PricesProvider:
        if self._provider is None:
            env = dict(os.environ)
            if self.api_key:
                env["PRICES_API_KEY"] = self.api_key
            self._provider = build_prices_provider(env)
        return self._provider

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._provider is not None:
            self._provider.close()


class ScoringSettingsResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Settings of a night: batch size, how old a snapshot may be reused, the market group."""

    batch_size: int = 50
    snapshot_max_age_days: int = 3
    market_group: str = "all"
