"""Three markets on three exchanges for the per-market nights' tests, with the rates and quote
providers answering over loopback HTTP (the `loopback` fixture of the providers' tests)."""

from collections.abc import Mapping
from typing import Any

from scoring_pipeline_tests import factories as f

DATE = "2026-11-27"
QUOTE = "/v7/finance/quote"
LATEST = "/v1/latest"
NOON = 1795780800  # 2026-11-27 12:00:00 UTC
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

THREE_GROUPS = """
[groups.us]
markets = ["US_TECH"]
calendar = "XNYS"

[groups.br]
markets = ["BR_BANKS"]
calendar = "BVMF"

[groups.eu]
markets = ["EU_IND"]
calendar = "XETR"
"""


def three_markets(
    engine: Any,
    prices: Mapping[str, tuple[object, str]],
    fundamentals: Mapping[str, dict[str, str]] | None = None,
) -> None:
    """US_TECH (New York 09:30), BR_BANKS (São Paulo 10:00), EU_IND (Berlin 09:00), and one
    instrument per symbol of `prices` in the market its currency says (with `fundamentals` of
    its own, or its market's usual ones)."""
    f.market(engine, "US_TECH", timezone="America/New_York", opens_at="09:30")
    f.market(engine, "BR_BANKS", timezone="America/Sao_Paulo", opens_at="10:00")
    f.market(engine, "EU_IND", timezone="Europe/Berlin", opens_at="09:00")
    usual = {"USD": {"eps": "2", "roe": "15"}, "BRL": {"eps": "3", "roe": "20"}}
    market = {"USD": "US_TECH", "BRL": "BR_BANKS", "EUR": "EU_IND"}
    for symbol, (_, currency) in prices.items():
        values = (fundamentals or {}).get(symbol) or usual.get(
            currency, {"eps": "1", "revenue": "1000000"}
        )
        f.instrument(engine, symbol, market=market[currency], currency=currency, **values)


def quote(symbol: str, price: object, currency: str = "USD") -> dict[str, object]:
    return {
        "symbol": symbol,
        "regularMarketPrice": price,
        "currency": currency,
        "regularMarketTime": NOON,
    }


def script_providers(
    loopback: Any,
    reply: Any,
    prices: Mapping[str, tuple[object, str]],
    rates: Mapping[str, float],
) -> None:
    """The rates API answers `rates` (USD-based); the quote API answers every price."""
    loopback.script(
        LATEST, reply(200, {"amount": 1.0, "base": "USD", "date": DATE, "rates": dict(rates)})
    )
    quotes = [quote(s, p, c) for s, (p, c) in prices.items()]
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": quotes, "error": None}}))


def loopback_providers_env(loopback: Any, *, rates: bool = True) -> dict[str, str]:
    """The environment pointing the prices (and `rates`) provider at `loopback`, no proxy.
    Apply it, and remove the `PROXIES` variables, in the process that runs the providers."""
    env = {
        "PRICES_PROVIDER": "yahoo",
        "PRICES_BASE_URL": loopback.url,
        "PROVIDER_BACKOFF_SECONDS": "0.01",
        "PROVIDER_BACKOFF_MAX_SECONDS": "0.05",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if rates:
        env.update(RATES_PROVIDER="frankfurter", RATES_BASE_URL=f"{loopback.url}/v1")
    return env
