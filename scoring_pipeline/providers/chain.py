"""Providers of one kind asked in order (``*_PROVIDER``, then ``*_FALLBACK_PROVIDER``).

One class serves rates and prices alike. An answer counts only when it is usable as a whole: a
ProviderError, or an answer with more than ``max_rejected_fraction`` of its values rejected
(SPEC §8), moves on to the next provider. When every provider fails, a single provider's own
error is raised, or ProviderUnavailableError naming each provider and its error; either carries,
as its `last_resort`, the first answer refused only for a single rejected value. Other
exceptions (bugs) are not swallowed. The result's ``source`` is the provider that answered.
"""

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Generic, TypeVar

from scoring_pipeline.errors import ProviderError, ProviderPayloadError, ProviderUnavailableError
from scoring_pipeline.providers.base import (
    PricesProvider,
    RatesProvider,
)
from scoring_pipeline.providers.models import (
    PricesResult,
    RatesSnapshot,
    RequiredSymbols,
)
from scoring_pipeline.providers.values import RejectedValue, Rejection

logger = logging.getLogger("scoring_pipeline.providers")

_P = TypeVar("_P", RatesProvider, PricesProvider)
_R = TypeVar("_R", RatesSnapshot, PricesResult)


def check_rejected_share(result: RatesSnapshot | PricesResult, *, max_fraction: Decimal) -> None:
    """Raise ProviderPayloadError when more than ``max_fraction`` of the values given were
    rejected (values not returned at all do not count). An answer refused for a single
    rejected value (an answer of fewer than 1 / max_fraction values) is the error's
    `last_resort`: stored if nothing else can stand in for it (unless `max_fraction` is 0)."""
    rejected = len(result.rejected)
    total = rejected + result.accepted_count
    if rejected and Decimal(rejected) > max_fraction * total:
        what = "rates" if isinstance(result, RatesSnapshot) else "prices"
        first = "; ".join(value.detail for value in list(result.rejected.values())[:3])
        error = ProviderPayloadError(
            f"{rejected} of {total} {what} rejected, more than the {max_fraction} allowed "
            f"(PROVIDER_MAX_REJECTED_FRACTION): {first}",
            provider=result.source,
        )
        if rejected == 1 and max_fraction > 0:  # 0: an operator who tolerates no rejection
            error.last_resort = result
        raise error


def last_resort(error: ProviderError, kind: type[_R]) -> _R | None:
    """The answer of `error`'s providers that was refused only for one rejected value, if any
    (`check_rejected_share`)."""
    answer = error.last_resort
    return answer if isinstance(answer, kind) else None


def check_answered(
    result: RatesSnapshot | PricesResult,
    *,
    asked: int | None,
    required: RequiredSymbols | None = None,
) -> None:
    """Raise ProviderPayloadError when the answer holds no value at all for what was asked
    (`asked` values; None: whatever the provider knows; 0: none is expected): an empty answer (a
    prices file with only its header, say) is unusable as a whole, not N symbols each missing.
    So is an answer with no usable quote for any of the `required` symbols, though it has
    values for others: it leaves a market group's whole market unpriced."""
    what = "rate" if isinstance(result, RatesSnapshot) else "price"
    if asked != 0 and not (result.accepted_count or result.rejected):
        of = f" for any of the {asked} asked" if asked is not None else ""
        raise ProviderPayloadError(f"an empty answer: no {what}{of}", provider=result.source)
    if not required or not isinstance(result, PricesResult):
        return
    # Only a quote prices one: a rejected value (a quote in another currency) does not.
    if required.symbols.isdisjoint(result.quotes):
        raise ProviderPayloadError(
            f"no {what} for any of the {len(required.symbols)} {required.what} asked (left out "
            "or rejected): the answer leaves them all unpriced",
            provider=result.source,
        )


# How many days before the score date a price or the rates may be dated (a long holiday of a
# market, or its golden week, is shorter; a halted or delisted instrument's last trade is older).
DEFAULT_MAX_DATA_AGE_DAYS = 10


def check_dated(result: _R, *, as_of: dt.date | None, max_age_days: int) -> _R:
    """The answer without what is dated more than `max_age_days` before `as_of` (the score
    date; None: not checked). Such a price is rejected as a value (`too_old`), and counts in the
    rejected share; rates so dated make the answer unusable as a whole (one date dates them
    all): ProviderPayloadError, so the fallback or a recent snapshot is used."""
    if as_of is None:
        return result
    oldest = as_of - dt.timedelta(days=max_age_days)
    if isinstance(result, RatesSnapshot):
        if result.rate_date < oldest:
            raise ProviderPayloadError(
                f"the rates are dated {result.rate_date}, {(as_of - result.rate_date).days} days "
                f"before {as_of} (PROVIDER_MAX_DATA_AGE_DAYS is {max_age_days})",
                provider=result.source,
            )
        return result
    old = {s: q.price_date for s, q in result.quotes.items() if q.price_date < oldest}
    if not old:
        return result
    too_old = {
        symbol: RejectedValue(
            key=symbol,
            reason=Rejection.TOO_OLD,
            detail=f"price of {symbol} is dated {day}, {(as_of - day).days} days before {as_of}",
        )
        for symbol, day in old.items()
    }
    quotes = {s: q for s, q in result.quotes.items() if s not in old}
    return result.model_copy(update={"quotes": quotes, "rejected": {**result.rejected, **too_old}})


class ProviderChain(Generic[_P]):
    """Providers of one kind, asked in order until one gives a usable answer."""

    def __init__(
        self,
        providers: Sequence[_P],
        *,
        max_rejected_fraction: Decimal,
        max_data_age_days: int = DEFAULT_MAX_DATA_AGE_DAYS,
    ) -> None:
        if not providers:
            raise ValueError("a provider chain needs at least one provider")
        self.providers: tuple[_P, ...] = tuple(providers)
        self.max_rejected_fraction = max_rejected_fraction
        self.max_data_age_days = max_data_age_days
        self.name = "+".join(p.name for p in self.providers)

    def __repr__(self) -> str:
        return f"ProviderChain({', '.join(repr(p) for p in self.providers)})"

    def ask(
        self,
        call: Callable[[_P], _R],
        *,
        asked: int | None = None,
        required: RequiredSymbols | None = None,
        as_of: dt.date | None = None,
    ) -> _R:
        """The first usable answer of ``call(provider)``, provider by provider; `asked` is how
        many values the call asks for (None: all the provider knows), `required` what it must
        price some of (`check_answered`), `as_of` the score date the values may not be dated
        long before (`check_dated`)."""
        errors: list[tuple[str, ProviderError]] = []
        for index, provider in enumerate(self.providers):
            try:
                result = check_dated(
                    call(provider), as_of=as_of, max_age_days=self.max_data_age_days
                )
                check_answered(result, asked=asked, required=required)
                check_rejected_share(result, max_fraction=self.max_rejected_fraction)
                return result
            except ProviderError as exc:
                errors.append((provider.name, exc))
            if index + 1 < len(self.providers):
                logger.warning(
                    "%s: provider %s failed, asking %s: %s",
                    self.name,
                    provider.name,
                    self.providers[index + 1].name,
                    errors[-1][1],
                    extra={"provider": provider.name},
                )
        if len(errors) == 1:
            raise errors[0][1]
        roles = ["primary", *["fallback"] * (len(errors) - 1)]
        described = "; ".join(
            f"{role} {name} ({error})" for role, (name, error) in zip(roles, errors, strict=True)
        )
        failed = ProviderUnavailableError(f"every provider failed: {described}", provider=self.name)
        # The first provider's answer with one bad value, as every answer would be: in order.
        failed.last_resort = next((e.last_resort for _, e in errors if e.last_resort), None)
        raise failed from errors[-1][1]

    def close(self) -> None:
        """Close every provider, even when one of them fails to close."""
        failures: list[BaseException] = []
        for provider in self.providers:
            try:
                provider.close()
            except Exception as exc:  # close the others before reporting it
                failures.append(exc)
        if failures:
            raise failures[0]
