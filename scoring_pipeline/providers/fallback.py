"""A primary provider backed by a fallback one (``RATES_FALLBACK_PROVIDER``, ...).

On a ProviderError from the primary the error is logged and the fallback is asked; when it fails
too, ProviderUnavailableError names both providers and both errors. The result's ``source`` is
the provider that actually answered. Other exceptions (bugs) are not swallowed.
"""

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from scoring_pipeline.errors import ProviderError, ProviderUnavailableError
from scoring_pipeline.providers.base import (
    PricesProvider,
    PricesResult,
    RatesProvider,
    RatesSnapshot,
)

logger = logging.getLogger("scoring_pipeline.providers")

_Result = TypeVar("_Result")


def _with_fallback(
    chain_name: str,
    primary: tuple[str, Callable[[], _Result]],
    fallback: tuple[str, Callable[[], _Result]],
) -> _Result:
    primary_name, ask_primary = primary
    fallback_name, ask_fallback = fallback
    try:
        return ask_primary()
    except ProviderError as exc:
        primary_error = exc
    logger.warning(
        "%s: primary provider %s failed, using fallback %s: %s",
        chain_name,
        primary_name,
        fallback_name,
        primary_error,
        extra={"provider": primary_name, "fallback_provider": fallback_name},
    )
    try:
        return ask_fallback()
    except ProviderError as exc:
        fallback_error = exc
    raise ProviderUnavailableError(
        f"every provider failed: primary {primary_name} ({primary_error}); "
        f"fallback {fallback_name} ({fallback_error})",
        provider=chain_name,
    ) from fallback_error


class FallbackRatesProvider(RatesProvider):
    """Rates from ``primary``, or from ``fallback`` when the primary fails."""

    def __init__(self, primary: RatesProvider, fallback: RatesProvider) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}+{fallback.name}"

    def __repr__(self) -> str:
        return f"FallbackRatesProvider({self.primary!r}, {self.fallback!r})"

    def fetch_usd_rates(self, *, currencies: Sequence[str]) -> RatesSnapshot:
        return _with_fallback(
            self.name,
            (self.primary.name, lambda: self.primary.fetch_usd_rates(currencies=currencies)),
            (self.fallback.name, lambda: self.fallback.fetch_usd_rates(currencies=currencies)),
        )

    def close(self) -> None:
        try:
            self.primary.close()
        finally:
            self.fallback.close()


class FallbackPricesProvider(PricesProvider):
    """Prices from ``primary``, or from ``fallback`` when the primary fails."""

    def __init__(self, primary: PricesProvider, fallback: PricesProvider) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}+{fallback.name}"

    def __repr__(self) -> str:
        return f"FallbackPricesProvider({self.primary!r}, {self.fallback!r})"

    def fetch_prices(self, *, symbols: Sequence[str]) -> PricesResult:
        return _with_fallback(
            self.name,
            (self.primary.name, lambda: self.primary.fetch_prices(symbols=symbols)),
            (self.fallback.name, lambda: self.fallback.fetch_prices(symbols=symbols)),
        )

    def close(self) -> None:
        try:
            self.primary.close()
        finally:
            self.fallback.close()
