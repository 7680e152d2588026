"""Frankfurter (ECB reference rates, keyless): the default rates provider.

``GET {base}/latest?base=USD&symbols=EUR,GBP`` answers
``{"amount": 1.0, "base": "USD", "date": "YYYY-MM-DD", "rates": {"EUR": 0.9, ...}}``.
"""

import logging
from collections.abc import Mapping, Sequence

import pydantic

from scoring_pipeline.errors import ProviderPayloadError
from scoring_pipeline.providers.base import (
    RatesProvider,
    load_json,
    requested_currencies,
    select_rates,
)
from scoring_pipeline.providers.http import HttpSettings, ProviderHttpClient
from scoring_pipeline.providers.models import (
    RatesSnapshot,
    describe_validation_error,
    split_rates,
)
from scoring_pipeline.providers.redaction import call_redacted
from scoring_pipeline.providers.values import (
    as_decimal,
    shorten,
)

logger = logging.getLogger("scoring_pipeline.providers")

DEFAULT_BASE_URL = "https://api.frankfurter.dev/v1"


def _fail(message: str, source: str) -> ProviderPayloadError:
    return ProviderPayloadError(message, provider=source)


def parse_frankfurter_payload(
    payload: bytes | str | Mapping[str, object], *, source: str = "frankfurter"
) -> RatesSnapshot:
    """Take a ``latest`` answer (raw bytes or decoded JSON) apart into a snapshot of its rates.

    The base must be USD, ``amount`` (when present) 1, ``date`` a ``YYYY-MM-DD`` date and
    ``rates`` an object keyed by currency codes; otherwise ProviderPayloadError names ``source``
    and the field at fault. A rate that fails the checks of ``values.Rate`` is rejected on its own
    (``snapshot.rejected``); the others are used.
    """
    data = payload if isinstance(payload, Mapping) else load_json(payload, provider=source)
    if not isinstance(data, Mapping):
        raise _fail(f"expected a JSON object, got {type(data).__name__}", source)
    base = data.get("base")
    if not isinstance(base, str) or base.upper() != "USD":
        raise _fail(f"base currency is {shorten(base)}, expected 'USD'", source)
    if "amount" in data and as_decimal(data["amount"]) != 1:
        raise _fail(f"amount is {shorten(data['amount'])}, expected 1", source)
    if "rates" not in data:
        raise _fail("no 'rates' in the answer", source)
    if not isinstance(data["rates"], Mapping):
        raise _fail(f"'rates' is not an object but {type(data['rates']).__name__}", source)
    rates, rejected = split_rates(data["rates"], provider=source)
    try:
        return RatesSnapshot(
            rates=rates, rejected=rejected, rate_date=data.get("date"), source=source
        )
    except pydantic.ValidationError as exc:
        raise _fail(describe_validation_error(exc), source) from None


class FrankfurterRatesProvider(RatesProvider):
    """Rates from a Frankfurter v1 API (api.frankfurter.dev or a self-hosted instance).

    An API key, when given (for a gateway in front of a self-hosted instance), is sent as
    ``Authorization: Bearer <key>``.
    """

    name = "frankfurter"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        http_settings: HttpSettings | None = None,
    ) -> None:
        self._api_key = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = ProviderHttpClient(
            provider=self.name,
            base_url=base_url,
            settings=http_settings or HttpSettings(),
            headers=headers,
            secrets=[self._api_key],
        )

    def __repr__(self) -> str:
        return f"FrankfurterRatesProvider(base_url={self._http.redact(self._http.base_url)!r})"

    def fetch_usd_rates(self, *, currencies: Sequence[str]) -> RatesSnapshot:
        wanted, invalid = requested_currencies(currencies)
        if invalid:
            logger.warning(
                "%s: ignoring invalid currency codes %s", self.name, [shorten(c) for c in invalid]
            )
        params = {"base": "USD"}
        # USD is never requested (USD->USD is 1; Frankfurter refuses base == symbols); with no
        # other currency asked for, the whole table is fetched for its date and then filtered.
        others = [code for code in wanted if code != "USD"]
        if others:
            params["symbols"] = ",".join(others)
        snapshot = call_redacted([self._api_key], lambda: self._fetch(params))
        return select_rates(snapshot, wanted if currencies else None)

    def _fetch(self, params: dict[str, str]) -> RatesSnapshot:
        body = self._http.get_bytes("latest", params=params)
        return parse_frankfurter_payload(body, source=self.name)

    def close(self) -> None:
        self._http.close()
