"""Per-value rejection through the snapshot assets and a scored batch (SPEC §8 revised, §4), on
real PostgreSQL and, for Yahoo, real HTTP over loopback: a bad quote or rate is stored as missing
with its reason, listed in the asset's metadata and the night's metrics, and only the scores that
need it change (a rule on a rejected price is skipped with `missing_fundamental`; a user needing a
rejected rate fails naming the pair); a payload with too many rejected values goes to the fallback;
503s and a 429 with Retry-After before the good answer are retried."""

import json
from decimal import Decimal

import pytest

from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests import market_world as mw
from scoring_pipeline_tests.scenario import DATE, batch, rows, rules, snapshots

pytestmark = pytest.mark.db

QUOTE = mw.QUOTE


def _metadata(result, asset: str) -> dict[str, object]:
    materialization = result.asset_materializations_for_node(asset)[0]
    return {key: value.value for key, value in materialization.metadata.items()}


def _metrics(world) -> dict[str, object]:
    return rows(world, "SELECT metrics FROM overnight_job_runs WHERE score_date = :d", d=DATE)[
        0
    ].metrics


def _stored_prices(world) -> dict[str, object]:
    """The date's price snapshot rows by symbol."""
    return {
        r.symbol: r
        for r in rows(
            world,
            "SELECT symbol, close, currency, price_date, missing_reason, source "
            "FROM price_snapshots WHERE score_date = :d",
            d=DATE,
        )
    }


def _use_yahoo(monkeypatch, loopback, **extra: str) -> None:
    for key, value in {**mw.loopback_providers_env(loopback, rates=False), **extra}.items():
        monkeypatch.setenv(key, value)
    for proxy in mw.PROXIES:
        monkeypatch.delenv(proxy, raising=False)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (float("nan"), "nan"),
        (0, "not_positive"),
        (-5, "not_positive"),
        ("abc", "not_numeric"),
    ],
)
def test_a_bad_quote_is_missing_with_its_reason_and_only_its_scores_change(
    world, dagster_instance, loopback, reply, monkeypatch, raw, reason
):
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    # 1 of 2 values rejected: at most half allowed here, so the payload is used.
    _use_yahoo(monkeypatch, loopback, PROVIDER_MAX_REJECTED_FRACTION="0.5")
    body = json.dumps(
        {
            "quoteResponse": {
                "result": [mw.quote("AAA", 30), mw.quote("BBB", raw)],
                "error": None,
            }
        }
    )
    loopback.script(QUOTE, reply(503), reply(429, headers={"Retry-After": "0"}), reply(200, body))

    result = snapshots(dagster_instance)

    assert result.success
    assert len(loopback.requests_to(QUOTE)) == 3  # 503, 429, then the answer
    stored = _stored_prices(world)
    assert stored["AAA"].close == Decimal(30) and stored["AAA"].missing_reason is None
    assert stored["BBB"].close is None and stored["BBB"].currency is None
    assert stored["BBB"].missing_reason == reason and stored["BBB"].source == "yahoo"
    metadata = _metadata(result, "prices")
    assert metadata["rejected"] == 1 and metadata["rejected_values"] == {"BBB": reason}
    assert metadata["priced"] == 1 and metadata["missing"] == 1
    metrics = _metrics(world)
    assert metrics["prices_rejected"] == 1 and metrics["prices_rejected_values"] == {"BBB": reason}
    assert metrics["rates_rejected"] == 0

    assert batch(dagster_instance).success
    scores = {
        r.symbol: r
        for r in rows(
            world,
            "SELECT symbol, score, breakdown FROM asset_scores "
            "JOIN asset_score_breakdowns USING (user_id, symbol) WHERE user_id = :u",
            u=user,
        )
    }
    # AAA as without any rejection: P/E 30/2 = 15 not < 15; roe 15 >= 10 (5); price exists (1).
    assert scores["AAA"].score == Decimal("6.0000")
    # BBB: the price rules are skipped for the missing price; roe 5 < 10 is simply not matched.
    assert scores["BBB"].score == Decimal("0.0000")
    skipped = [entry.get("skippedReason") for entry in scores["BBB"].breakdown]
    assert skipped == ["missing_fundamental", None, "missing_fundamental"]


def test_a_quote_in_another_currency_is_rejected_and_minor_units_are_converted(
    world, dagster_instance, loopback, reply, monkeypatch
):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    f.instrument(world, "VOD.L", market="US_TECH", currency="GBP", eps="1")
    _use_yahoo(monkeypatch, loopback, PROVIDER_MAX_REJECTED_FRACTION="0.5")
    answer = [
        mw.quote("AAA", 30),
        mw.quote("BBB", 0.3, "EUR"),
        mw.quote("VOD.L", 7250.5, "GBp"),
    ]
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": answer, "error": None}}))

    result = snapshots(dagster_instance)

    assert result.success
    stored = _stored_prices(world)
    assert (stored["VOD.L"].close, stored["VOD.L"].currency) == (Decimal("72.505"), "GBP")
    assert stored["BBB"].close is None and stored["BBB"].missing_reason == "currency_mismatch"
    assert _metadata(result, "prices")["rejected_values"] == {"BBB": "currency_mismatch"}
    assert _metadata(result, "prices")["unpriced_rejected"] == 1  # BBB, stored unpriced


def test_a_payload_with_mostly_bad_quotes_goes_to_the_fallback(
    world, dagster_instance, loopback, reply, monkeypatch
):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    # The world's prices file is the fallback; the default share (0.2) is exceeded by 2 of 2.
    _use_yahoo(monkeypatch, loopback, PRICES_FALLBACK_PROVIDER="file")
    answer = [mw.quote("AAA", "NaN"), mw.quote("BBB", -1)]
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": answer, "error": None}}))

    result = snapshots(dagster_instance)

    assert result.success
    assert len(loopback.requests_to(QUOTE)) == 1  # a payload failure is not retried
    stored = rows(
        world,
        "SELECT symbol, close, source, missing_reason FROM price_snapshots "
        "WHERE score_date = :d ORDER BY symbol",
        d=DATE,
    )
    assert [(r.symbol, r.close, r.source, r.missing_reason) for r in stored] == [
        ("AAA", Decimal("30"), "file", None),
        ("BBB", Decimal("0.3"), "file", None),
    ]
    metadata = _metadata(result, "prices")
    assert metadata["source"] == "file" and metadata["rejected"] == 0


def test_a_rejected_rate_is_missing_and_fails_only_the_user_needing_it(
    world, dagster_instance, tmp_path, monkeypatch
):
    needs_jpy = f.user(
        world,
        base_currency="JPY",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])],
        user_id="00000000-0000-4000-8000-000000000001",
    )
    fine = f.user(
        world,
        base_currency="EUR",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])],
        user_id="00000000-0000-4000-8000-000000000002",
    )
    env = f.provider_files(
        tmp_path / "rates",
        rates={"EUR": "0.5", "JPY": "NaN"},
        prices={"CCC": ("10", "EUR")},
    )
    monkeypatch.setenv("RATES_FILE", env["RATES_FILE"])
    monkeypatch.setenv("PROVIDER_MAX_REJECTED_FRACTION", "0.5")

    result = snapshots(dagster_instance)

    assert result.success
    stored = {
        r.quote_currency: r
        for r in rows(
            world,
            "SELECT quote_currency, rate, missing_reason FROM exchange_rate_snapshots "
            "WHERE score_date = :d",
            d=DATE,
        )
    }
    assert stored["EUR"].rate == Decimal("0.5") and stored["EUR"].missing_reason is None
    assert stored["JPY"].rate is None and stored["JPY"].missing_reason == "nan"
    metadata = _metadata(result, "exchange_rates")
    assert metadata["rejected"] == 1 and metadata["rejected_values"] == {"JPY": "nan"}
    assert metadata["missing_currencies"] == []
    assert _metrics(world)["rates_rejected_values"] == {"JPY": "nan"}

    assert not batch(dagster_instance).success  # both users share b0000; one of them failed
    completed = {
        r.user_id: r.payload
        for r in rows(
            world,
            "SELECT user_id::text, payload FROM calculation_events "
            "WHERE event_type = 'CALC_COMPLETED'",
        )
    }
    assert completed[fine]["status"] == "success"
    assert completed[needs_jpy]["status"] == "failed"
    assert completed[needs_jpy]["error"]["type"] == "MissingRateError"
    assert "EUR->JPY" in completed[needs_jpy]["error"]["message"]


def test_reusing_the_dates_snapshot_reports_its_rejections_again(
    world, dagster_instance, loopback, reply, monkeypatch
):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    _use_yahoo(monkeypatch, loopback, PROVIDER_MAX_REJECTED_FRACTION="0.5")
    answer = [mw.quote("AAA", 30), mw.quote("BBB", 0)]
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": answer, "error": None}}))
    assert snapshots(dagster_instance).success

    again = snapshots(dagster_instance)

    assert again.success
    assert len(loopback.requests_to(QUOTE)) == 1  # frozen: not fetched again
    metadata = _metadata(again, "prices")
    assert metadata["reused_existing"] is True
    assert metadata["rejected"] == 1 and metadata["rejected_values"] == {"BBB": "not_positive"}


def test_a_quote_dated_long_before_the_score_date_is_rejected_as_too_old(
    world, dagster_instance, loopback, reply, monkeypatch
):
    """A halted or delisted instrument's last trade, a year old, is not the date's close (a
    provider review found it stored as fresh and scored); ten days old (a market's long
    holiday) it still is."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    _use_yahoo(monkeypatch, loopback, PROVIDER_MAX_REJECTED_FRACTION="0.5")
    ten_days = {**mw.quote("AAA", 30), "regularMarketTime": mw.NOON - 10 * 86_400}
    a_year = {**mw.quote("BBB", 0.3), "regularMarketTime": mw.NOON - 365 * 86_400}
    loopback.script(QUOTE, reply(200, {"quoteResponse": {"result": [ten_days, a_year]}}))

    result = snapshots(dagster_instance)

    assert result.success
    stored = _stored_prices(world)
    assert str(stored["AAA"].price_date) == "2026-11-17" and stored["AAA"].close == Decimal(30)
    assert stored["BBB"].close is None and stored["BBB"].missing_reason == "too_old"
    assert _metadata(result, "prices")["rejected_values"] == {"BBB": "too_old"}
    assert _metrics(world)["prices_rejected_values"] == {"BBB": "too_old"}


def test_rates_dated_long_before_the_score_date_are_not_the_dates(
    world, dagster_instance, loopback, reply, monkeypatch
):
    """A rates table is dated as a whole: a year old, the answer is unusable (the fallback,
    then a recent snapshot; here neither, so the night fails saying why)."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    for key, value in mw.loopback_providers_env(loopback).items():
        monkeypatch.setenv(key, value)
    for proxy in mw.PROXIES:
        monkeypatch.delenv(proxy, raising=False)
    old = {"amount": 1, "base": "USD", "date": "2025-11-27", "rates": {"EUR": 0.5}}
    loopback.script("/v1/latest", reply(200, old))

    result = snapshots(dagster_instance, raise_on_error=False)

    assert not result.success
    (night,) = rows(world, "SELECT status, error_details FROM overnight_job_runs")
    assert night.status == "failed" and night.error_details["stage"] == "exchange_rates"
    assert (
        "the rates are dated 2025-11-27, 365 days before 2026-11-27 (PROVIDER_MAX_DATA_AGE_DAYS "
        "is 10)" in night.error_details["message"]
    )
    assert rows(world, "SELECT * FROM exchange_rate_snapshots") == []


def test_one_bad_rate_of_a_small_answer_never_fails_the_night(
    world, dagster_instance, tmp_path, monkeypatch
):
    """1 of 2 rates rejected is over the default 0.2 share, so the answer is a provider failure
    (SPEC §8): the fallback, then a recent snapshot. With neither, the answer is used with the
    bad rate missing, since one bad value never fails a night (a provider review: the first
    night of a deployment with two currencies failed on one NaN)."""
    fine = f.user(
        world,
        base_currency="EUR",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])],
    )
    f.user(  # needs the rate of JPY
        world,
        base_currency="JPY",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])],
    )
    env = f.provider_files(
        tmp_path / "rates", rates={"EUR": "0.5", "JPY": "NaN"}, prices={"CCC": ("10", "EUR")}
    )
    monkeypatch.setenv("RATES_FILE", env["RATES_FILE"])

    result = snapshots(dagster_instance)

    assert result.success
    stored = rows(
        world,
        "SELECT quote_currency, rate, missing_reason, is_stale FROM exchange_rate_snapshots "
        "WHERE score_date = :d ORDER BY 1",
        d=DATE,
    )
    assert [tuple(r) for r in stored] == [
        ("EUR", Decimal("0.5"), None, False),
        ("JPY", None, "nan", False),
        ("USD", Decimal(1), None, False),
    ]
    metadata = _metadata(result, "exchange_rates")
    assert metadata["last_resort"] is True and metadata["rejected_values"] == {"JPY": "nan"}
    assert "1 of 2 rates rejected, more than the 0.2 allowed" in str(metadata["provider_error"])
    assert not batch(dagster_instance).success  # the JPY user failed, the other is scored
    (scored,) = rows(world, "SELECT DISTINCT user_id::text AS u FROM asset_scores")
    assert scored.u == fine


def test_one_bad_quote_of_a_small_answer_goes_to_a_recent_snapshot_first(
    world, dagster_instance, loopback, reply, monkeypatch
):
    """SPEC §8's order holds: an answer refused for its share of rejected values is replaced
    by a recent snapshot when there is one; the answer with its one bad quote is the last
    resort, used only with none."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    _use_yahoo(monkeypatch, loopback)  # the default share: 0.2
    one_bad = {"quoteResponse": {"result": [mw.quote("AAA", 30), mw.quote("BBB", "abc")]}}
    loopback.script(QUOTE, reply(200, one_bad))

    first = snapshots(dagster_instance)

    assert first.success
    metadata = _metadata(first, "prices")
    assert metadata["last_resort"] is True and metadata["rejected_values"] == {"BBB": "not_numeric"}
    stored = _stored_prices(world)
    assert stored["AAA"].close == Decimal(30) and stored["BBB"].missing_reason == "not_numeric"

    # The next day, the same answer: the day before's snapshot (fresh) is reused, stale.
    next_day = "2026-11-28"
    later = {**one_bad}
    loopback.script(QUOTE, reply(200, later))
    again = snapshots(dagster_instance, partition_key=next_day)
    assert again.success
    metadata = _metadata(again, "prices")
    assert metadata["is_stale"] is True and metadata["stale_from"] == DATE
    assert "last_resort" not in metadata
