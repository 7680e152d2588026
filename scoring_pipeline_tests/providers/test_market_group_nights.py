"""Three market groups scoring one date (SPEC §6 per-market nights), on real PostgreSQL, a real
Dagster instance and providers over loopback HTTP: the date's rates are requested once, each
group requests only the prices the date lacks, each group scores only its markets' criteria sets,
no group deletes another's rows, each closes its own night with its own figures, and the scores
equal those of the single default night over the same universe."""

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.market_groups.config import GROUPS_FILE_VARIABLE
from scoring_pipeline.defs.market_groups.group import GROUP_TAG
from scoring_pipeline.defs.nights import build_nights
from scoring_pipeline.defs.partitions import scores_partition_key
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests import market_world as mw
from scoring_pipeline_tests.scenario import (
    DATE,
    batch,
    refused_before_any_step,
    rows,
    rules,
    snapshots,
)

pytestmark = pytest.mark.db

PRICES = {"AAA": (30, "USD"), "BBB": (0.3, "USD"), "PPP": (12, "BRL"), "CCC": (10, "EUR")}


@pytest.fixture
def three_markets(clean_db, app_env, tmp_path: Path, monkeypatch, loopback, reply):
    engine = clean_db
    # BBB: a P/E of 15 and a low ROE, unlike AAA.
    mw.three_markets(engine, PRICES, {"BBB": {"eps": "0.02", "roe": "5"}})
    path = tmp_path / "groups.toml"
    path.write_text(mw.THREE_GROUPS)
    mw.script_providers(loopback, reply, PRICES, {"EUR": 0.5, "BRL": 5})
    env = {
        **mw.loopback_providers_env(loopback),
        GROUPS_FILE_VARIABLE: str(path),
        "SCORING_BATCH_SIZE": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for proxy in mw.PROXIES:
        monkeypatch.delenv(proxy, raising=False)
    return engine


def _group_night(instance, nights, name: str) -> None:
    """What the group's schedule and sensor do: its snapshots run, then every batch."""
    night = nights.nights[name]
    result = dg.materialize(
        [nights.active_users, nights.exchange_rates, night.prices],
        partition_key=DATE,
        instance=instance,
        resources=build_resources(),
        tags={GROUP_TAG: name},
    )
    assert result.success
    for key in instance.get_dynamic_partitions(night.scores.partitions_def.name):
        if not key.startswith(DATE):
            continue
        scored = dg.materialize(
            [night.scores, night.checks],
            partition_key=key,
            instance=instance,
            resources=build_resources(),
            tags={GROUP_TAG: name},
        )
        assert scored.success
        for evaluation in scored.get_asset_check_evaluations():
            assert evaluation.passed, (name, key, evaluation.metadata)


def _batches_requested(nights, instance, result) -> list[dg.RunRequest]:
    """What the code location's `scoring_batches_sensor` requests after a run succeeded."""
    from scoring_pipeline.defs.sensors import build_sensors

    (sensor,) = [s for s in build_sensors(nights) if s.name == "scoring_batches_sensor"]
    resources = build_resources()
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"database": resources["database"], "settings": resources["settings"]},
    )
    return sensor(context)


def _us_and_eu_user(engine) -> str:
    """A user holding AAA with criteria sets in US_TECH and in EU_IND."""
    return f.user(
        engine,
        holdings=[("AAA", "USD")],
        criteria=[
            ("US_TECH", "stock", rules()),
            ("EU_IND", "stock", [f.rule("revenue", "gt", "100", 3)]),
        ],
    )


def _scores(engine) -> dict[tuple[str, str], tuple[object, ...]]:
    return {
        (str(r.user_id), r.symbol): (r.score, r.outcomes, str(r.criteria_version_id), r.cid)
        for r in rows(
            engine,
            "SELECT user_id, symbol, score, outcomes, criteria_version_id, "
            "correlation_id::text AS cid FROM asset_scores",
        )
    }


def test_three_groups_score_one_date_each_its_own_markets(
    three_markets, dagster_instance, loopback
):
    engine = three_markets
    us_eu = _us_and_eu_user(engine)
    br = f.user(
        engine,
        base_currency="BRL",
        holdings=[("PPP", "BRL"), ("AAA", "USD")],
        criteria=[("BR_BANKS", "stock", rules())],
    )
    us_only = f.user(
        engine,
        base_currency="EUR",
        holdings=[("CCC", "EUR")],
        criteria=[("US_TECH", "stock", rules())],
    )
    nights = build_nights(_groups())

    # The day's order: Berlin opens first, then São Paulo, then New York.
    _group_night(dagster_instance, nights, "eu")
    eu_rows = _scores(engine)
    assert {k[1] for k in eu_rows} == {"CCC"} and {k[0] for k in eu_rows} == {us_eu}
    _group_night(dagster_instance, nights, "br")
    _group_night(dagster_instance, nights, "us")

    # Rates once for the date; each group one price request, for the symbols the date lacked.
    assert len(loopback.requests_to(mw.LATEST)) == 1
    asked = [r.query["symbols"][0].split(",") for r in loopback.requests_to(mw.QUOTE)]
    assert [sorted(a) for a in asked] == [["AAA", "CCC"], ["PPP"], ["BBB"]]

    final = _scores(engine)
    # Every group's rows are there: the later groups deleted nothing of the earlier ones'.
    for key, value in eu_rows.items():
        assert final[key] == value
    assert {s for (u, s) in final if u == us_eu} == {"AAA", "BBB", "CCC"}
    assert {s for (u, s) in final if u == br} == {"PPP"}
    assert {s for (u, s) in final if u == us_only} == {"AAA", "BBB"}

    runs = {
        r.market_group: r
        for r in rows(
            engine,
            "SELECT market_group, status, users_processed, metrics FROM overnight_job_runs "
            "WHERE job_type = 'scoring' AND score_date = :d",
            d=DATE,
        )
    }
    assert set(runs) == {"us", "br", "eu"}
    assert {g: r.status for g, r in runs.items()} == dict.fromkeys(runs, "completed")
    assert {g: r.metrics["users_total"] for g, r in runs.items()} == {"us": 2, "br": 1, "eu": 1}
    assert {g: r.metrics["assets_scored"] for g, r in runs.items()} == {"us": 4, "br": 1, "eu": 1}
    assert runs["us"].metrics["markets"] == ["US_TECH"]
    events = rows(
        engine,
        "SELECT payload->>'marketGroup' AS g FROM calculation_events "
        "WHERE event_type = 'JOB_STARTED' AND score_date = :d",
        d=DATE,
    )
    assert sorted(e.g for e in events) == ["br", "eu", "us"]

    # The reference: the single default night over every market, on the same frozen inputs,
    # scores each (user, symbol) exactly as the group that owns the symbol's market did.
    grouped = {k: v[:3] for k, v in final.items()}
    snapshots(dagster_instance)
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    assert {k: v[:3] for k, v in _scores(engine).items()} == grouped
    assert len(loopback.requests_to(mw.LATEST)) == 1 and len(loopback.requests_to(mw.QUOTE)) == 3


def test_re_scoring_one_group_replaces_only_its_markets(three_markets, dagster_instance):
    engine = three_markets
    user = _us_and_eu_user(engine)
    nights = build_nights(_groups())
    _group_night(dagster_instance, nights, "us")
    _group_night(dagster_instance, nights, "eu")
    before = _scores(engine)
    # The US batch again (a retry or backfill of us/scores): only US rows get new calculations.
    again = dg.materialize(
        [nights.nights["us"].scores],
        partition_key=scores_partition_key(DATE, "b0000"),
        instance=dagster_instance,
        resources=build_resources(),
    )
    assert again.success
    after = _scores(engine)
    assert set(after) == set(before)
    assert after[(user, "CCC")] == before[(user, "CCC")]
    assert after[(user, "AAA")][:3] == before[(user, "AAA")][:3]
    assert after[(user, "AAA")][3] != before[(user, "AAA")][3]
    history = rows(
        engine,
        "SELECT symbol, count(*) AS n FROM score_history WHERE score_date = :d GROUP BY symbol",
        d=DATE,
    )
    assert {r.symbol: r.n for r in history} == {"AAA": 1, "BBB": 1, "CCC": 1}


def test_an_open_day_tick_starts_the_group_night_in_its_own_job(three_markets, dagster_instance):
    from scoring_pipeline.definitions import defs

    definitions = defs()
    schedule = definitions.resolve_schedule_def("br_overnight_scoring_schedule")
    tick = dt.datetime(2026, 11, 27, 8, 0, tzinfo=ZoneInfo("America/Sao_Paulo"))
    with dg.build_schedule_context(
        instance=dagster_instance,
        scheduled_execution_time=tick,
        repository_def=definitions.get_repository_def(),
        resources={"database": build_resources()["database"]},
    ) as context:
        result = schedule.evaluate_tick(context)
    (request,) = result.run_requests or []
    assert request.partition_key == DATE
    assert request.tags[GROUP_TAG] == "br"
    assert schedule.job_name == "br_overnight_snapshots_job"
    # A tick evaluated after its time (daemon downtime, catch-up) says how late it launched.
    assert request.tags["scoring/scheduled_for"] == "2026-11-27T08:00:00-03:00"
    assert int(request.tags["scoring/launched_late_s"]) > 24 * 3600


def _groups():
    from scoring_pipeline.definitions import market_groups

    return market_groups()


def test_the_groups_are_read_from_the_file_at_load(three_markets):
    from scoring_pipeline.definitions import defs

    definitions = defs()
    names = {s.name for s in definitions.schedules}
    assert names == {
        "us_overnight_scoring_schedule",
        "br_overnight_scoring_schedule",
        "eu_overnight_scoring_schedule",
    }
    assert json.dumps(sorted(a.key.to_user_string() for a in definitions.assets)) == json.dumps(
        sorted(
            ["active_users", "exchange_rates"]
            + [f"{g}/{a}" for g in ("us", "br", "eu") for a in ("prices", "scores")]
        )
    )


def test_a_group_whose_prices_provider_is_down_reuses_only_its_own_symbols(
    three_markets, dagster_instance, loopback, reply
):
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    with engine.begin() as conn:
        # Yesterday's prices of every symbol; today's CCC already taken by Berlin's night.
        for date, symbol, close, currency in (
            ("2026-11-26", "AAA", "29", "USD"),
            ("2026-11-26", "BBB", "0.29", "USD"),
            ("2026-11-26", "CCC", "9", "EUR"),
            (DATE, "CCC", "10", "EUR"),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO price_snapshots (score_date, symbol, close, currency, "
                    "price_date, source, fetched_at) VALUES (:d, :s, :c, :cu, :d, 'yahoo', now())"
                ),
                {"d": date, "s": symbol, "c": close, "cu": currency},
            )
    loopback.script(mw.QUOTE, reply(500))
    nights = build_nights(_groups())
    us = nights.nights["us"]
    result = dg.materialize(
        [nights.active_users, nights.exchange_rates, us.prices],
        partition_key=DATE,
        instance=dagster_instance,
        resources=build_resources(),
        tags={GROUP_TAG: "us"},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("us__prices")[0].metadata
    assert metadata["is_stale"].value is True and metadata["stale_from"].value == "2026-11-26"
    stored = {
        r.symbol: (str(r.close), r.is_stale)
        for r in rows(
            engine,
            "SELECT symbol, close, is_stale FROM price_snapshots WHERE score_date = :d",
            d=DATE,
        )
    }
    # New York's symbols from yesterday, flagged stale; Berlin's CCC of today untouched.
    assert stored == {
        "AAA": ("29", True),
        "BBB": ("0.29", True),
        "CCC": ("10", False),
    }


def _stored_prices(engine, *prices) -> None:
    with engine.begin() as conn:
        for date, symbol, close, currency in prices:
            conn.execute(
                sa.text(
                    "INSERT INTO price_snapshots (score_date, symbol, close, currency, "
                    "price_date, source, fetched_at) VALUES (:d, :s, :c, :cu, :d, 'yahoo', now())"
                ),
                {"d": date, "s": symbol, "c": close, "cu": currency},
            )


def test_a_groups_stale_prices_come_from_a_date_that_priced_its_market(
    three_markets, dagster_instance, loopback, reply
):
    """Berlin's provider is down. The day before has only New York's AAA (Berlin had no night
    then); two days before has Berlin's CCC. The stale reuse takes the latter: the former
    copied nothing of Berlin's, the prices step passed stale and every batch then failed
    with "no price snapshot … materialise the date's snapshots" (a provider review)."""
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    _stored_prices(engine, ("2026-11-25", "CCC", "9", "EUR"), ("2026-11-26", "AAA", "29", "USD"))
    loopback.script(mw.QUOTE, reply(500))
    nights = build_nights(_groups())

    _group_night(dagster_instance, nights, "eu")  # its batches score and pass their checks

    stored = rows(
        engine,
        "SELECT symbol, close, is_stale FROM price_snapshots WHERE score_date = :d",
        d=DATE,
    )
    assert {r.symbol: (str(r.close), r.is_stale) for r in stored} == {"CCC": ("9", True)}
    night = rows(engine, "SELECT status, metrics FROM overnight_job_runs WHERE market_group = 'eu'")
    assert night[0].status == "completed" and night[0].metrics["prices_stale"] is True
    assert {r.symbol for r in rows(engine, "SELECT symbol FROM asset_scores")} == {"CCC"}

    # Four days later, nothing of Berlin's market is recent enough: the night fails, naming it.
    later = "2026-11-29"
    failed = dg.materialize(
        [nights.active_users, nights.exchange_rates, nights.nights["eu"].prices],
        partition_key=later,
        instance=dagster_instance,
        resources=build_resources(),
        tags={GROUP_TAG: "eu"},
        raise_on_error=False,
    )
    assert not failed.success
    (night,) = rows(
        engine,
        "SELECT status, error_details FROM overnight_job_runs WHERE score_date = :d",
        d=later,
    )
    assert night.status == "failed" and night.error_details["stage"] == "prices"
    assert (
        "no prices snapshot of the last 3 days with a price of the instruments of EU_IND "
        "exists to reuse"
    ) in night.error_details["message"]


def test_a_group_asks_again_for_its_own_symbols_another_groups_night_stored_as_missing(
    three_markets, dagster_instance, loopback, reply
):
    """Berlin's night asks for AAA too (a Berlin user holds it), and the provider leaves it out
    then: New York's night must ask for it again, not reuse "not returned" for its own market."""
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    without_aaa = [mw.quote(s, p, c) for s, (p, c) in PRICES.items() if s != "AAA"]
    loopback.script(mw.QUOTE, reply(200, {"quoteResponse": {"result": without_aaa, "error": None}}))
    nights = build_nights(_groups())

    def prices_of(name: str) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [nights.active_users, nights.exchange_rates, nights.nights[name].prices],
            partition_key=DATE,
            instance=dagster_instance,
            resources=build_resources(),
            tags={GROUP_TAG: name},
        )
        assert result.success
        return result

    prices_of("eu")
    (aaa,) = rows(engine, "SELECT close FROM price_snapshots WHERE symbol = 'AAA'")
    assert aaa.close is None  # Berlin's night stored it as not returned
    mw.script_providers(loopback, reply, PRICES, {"EUR": 0.5, "BRL": 5})
    prices_of("us")
    (aaa,) = rows(engine, "SELECT close FROM price_snapshots WHERE symbol = 'AAA'")
    assert aaa.close == 30  # New York's own symbol, asked again and priced
    asked = [r for r in loopback.requests_to(mw.QUOTE)]
    assert "AAA" in str(asked[-1]), asked[-1]


def _prices_alone(nights, instance, name: str, run_config=None) -> dg.ExecuteInProcessResult:
    """A run of a group's prices alone (no night started by it), failed or not."""
    return _group_run([nights.nights[name].prices], instance, name, run_config)


def _prices_of(nights, instance, name: str, run_config=None) -> dg.ExecuteInProcessResult:
    """A group's snapshots run (its night's start), failed or not."""
    assets = [nights.active_users, nights.exchange_rates, nights.nights[name].prices]
    return _group_run(assets, instance, name, run_config)


def _group_run(assets, instance, name: str, run_config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        partition_key=DATE,
        instance=instance,
        resources=build_resources(),
        tags={GROUP_TAG: name},
        raise_on_error=False,
        run_config=run_config,
    )


def test_an_answer_without_any_of_the_groups_own_instruments_is_not_usable(
    three_markets, dagster_instance, loopback, reply
):
    """Berlin's night asks for CCC (its market) and AAA (held by its user): an answer with AAA
    alone is not empty, yet it prices none of Berlin's market, so it must not close the night
    `completed` with every EU_IND asset unpriced."""
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    only_aaa = [mw.quote("AAA", 30)]
    loopback.script(mw.QUOTE, reply(200, {"quoteResponse": {"result": only_aaa, "error": None}}))

    result = _prices_of(build_nights(_groups()), dagster_instance, "eu")

    assert not result.success
    (night,) = rows(
        engine,
        "SELECT status, error_details FROM overnight_job_runs WHERE job_type = 'scoring' "
        "AND market_group = 'eu'",
    )
    assert night.status == "failed" and night.error_details["stage"] == "prices"
    assert "EU_IND" in night.error_details["message"], night.error_details
    assert rows(engine, "SELECT symbol FROM price_snapshots") == []
    from scoring_pipeline.cli.status import _detail
    from scoring_pipeline.store.month_partitions import coverage
    from scoring_pipeline.store.night.model import find_night

    with engine.connect() as conn:
        failed = find_night(conn, dt.date.fromisoformat(DATE), market_group="eu")
        months = coverage(conn)
    assert failed is not None
    lines = _detail(failed, None, [], ["us", "br", "eu"], months)
    assert "batches         1 (none scored: the night failed before its batches)" in lines
    assert any(
        line.startswith("error           stage prices: every prices provider failed")
        for line in lines
    ), lines


def test_the_fallback_answers_for_a_group_whose_primary_left_out_its_market(
    three_markets, dagster_instance, loopback, reply, monkeypatch, tmp_path
):
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    files = f.provider_files(
        tmp_path / "fallback",
        rates={"EUR": "0.5"},
        prices={"AAA": ("31", "USD"), "CCC": ("11", "EUR")},
    )
    monkeypatch.setenv("PRICES_FALLBACK_PROVIDER", "file")
    monkeypatch.setenv("PRICES_FILE", files["PRICES_FILE"])
    only_aaa = [mw.quote("AAA", 30)]
    loopback.script(mw.QUOTE, reply(200, {"quoteResponse": {"result": only_aaa, "error": None}}))

    result = _prices_of(build_nights(_groups()), dagster_instance, "eu")

    assert result.success
    stored = {
        r.symbol: (str(r.close), r.source)
        for r in rows(engine, "SELECT symbol, close, source FROM price_snapshots")
    }
    assert stored == {"AAA": ("31", "file"), "CCC": ("11", "file")}
    metadata = result.asset_materializations_for_node("eu__prices")[0].metadata
    assert metadata["source"].value == "file" and metadata["unpriced"].value == 0


def test_a_groups_night_counts_its_unpriced_symbols(
    three_markets, dagster_instance, loopback, reply
):
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    without_bbb = [mw.quote("AAA", 30)]
    loopback.script(mw.QUOTE, reply(200, {"quoteResponse": {"result": without_bbb, "error": None}}))

    result = _prices_of(build_nights(_groups()), dagster_instance, "us")

    assert result.success
    metadata = result.asset_materializations_for_node("us__prices")[0].metadata
    assert metadata["unpriced"].value == 1
    (night,) = rows(
        engine,
        "SELECT metrics FROM overnight_job_runs WHERE job_type = 'scoring' AND market_group = 'us'",
    )
    assert night.metrics["prices_unpriced"] == 1
    assert night.metrics["prices_unpriced_rejected"] == 0  # left out, not refused
    from scoring_pipeline.cli.status import _prices_line
    from scoring_pipeline.store.night.model import find_night

    with engine.connect() as conn:
        us = find_night(conn, dt.date.fromisoformat(DATE), market_group="us")
    assert us is not None
    assert _prices_line(us) == [
        "prices          1 of 2 needed symbols without a price (BBB): 1 not returned by the "
        "provider, 0 refused as invalid"
    ]


def test_a_groups_snapshot_assets_materialised_from_the_asset_graph_start_its_night(
    three_markets, dagster_instance
):
    """The Catalog's Materialize of `active_users`, `exchange_rates` and `us/prices` (Dagster's
    implicit asset job: no group tag) starts New York's night, as its snapshots job does, and
    the group's sensor launches its batches; a selection of two groups' prices starts neither."""
    engine = three_markets
    for _ in range(3):
        f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    nights = build_nights(_groups())

    def materialize(*prices):
        # As the Catalog's Materialize does: a run of the selected assets, no tag of ours.
        assets = [nights.active_users, nights.exchange_rates, *prices]
        return dg.materialize(
            [*nights.assets()],
            selection=[a.key for a in assets],
            partition_key=DATE,
            instance=dagster_instance,
            resources=build_resources(),
            raise_on_error=False,
        )

    result = materialize(nights.nights["us"].prices)
    assert result.success
    (night,) = rows(
        engine,
        "SELECT market_group, status, metrics->>'dagster_snapshot_run_id' AS run_id "
        "FROM overnight_job_runs WHERE job_type = 'scoring'",
    )
    assert (night.market_group, night.status, night.run_id) == ("us", "started", result.run_id)
    requests = _batches_requested(nights, dagster_instance, result)
    assert [r.job_name for r in requests] == [nights.nights["us"].batch_job.name]
    assert requests[0].tags["dagster/asset_partition_range_start"] == scores_partition_key(
        DATE, "b0000"
    )

    both = materialize(nights.nights["us"].prices, nights.nights["eu"].prices)
    assert not both.success
    (failure,) = [e for e in both.get_step_failure_events() if e.step_key == "active_users"]
    assert (
        "this run materialises the assets of groups us, eu: a run starts the night of one "
        "group. Materialise active_users and exchange_rates with one group's prices, or launch "
        "us_overnight_snapshots_job and eu_overnight_snapshots_job for the date"
        == str(failure.step_failure_data.user_failure_data.description)
    )
    assert [
        r.market_group
        for r in rows(
            engine, "SELECT market_group FROM overnight_job_runs WHERE job_type = 'scoring'"
        )
    ] == ["us"]


def test_a_groups_refresh_keeps_the_membership_other_groups_nights_use(
    three_markets, dagster_instance, caplog
):
    """`score --date D --group us --refresh` (status's advice when the rates lack a currency)
    re-fetches the inputs; recomputing the date's shared membership would delete Berlin's
    batch outcomes of the date and re-batch its users under its finished night."""
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    nights = build_nights(_groups())
    _group_night(dagster_instance, nights, "eu")
    outcomes = "SELECT score_date, batch_key, market_group FROM scoring_batch_results ORDER BY 2"
    membership = "SELECT user_id, batch_key FROM scoring_batches ORDER BY 1"
    eu_outcomes, before = rows(engine, outcomes), rows(engine, membership)
    assert eu_outcomes and before
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])

    refresh = {"config": {"refresh": True}}
    result = _prices_of(
        nights,
        dagster_instance,
        "us",
        {"ops": {"active_users": refresh, "exchange_rates": refresh, "us__prices": refresh}},
    )

    assert result.success
    assert rows(engine, outcomes) == eu_outcomes and rows(engine, membership) == before
    metadata = result.asset_materializations_for_node("active_users")[0].metadata
    assert metadata["membership_reused"].value is True
    assert metadata["membership_kept_for"].value == ["eu"]
    # Said through the project's logger: in the run's log, and on `score --refresh`'s stderr.
    (kept,) = [r for r in caplog.records if r.name == "scoring_pipeline.membership"]
    assert (
        f"refresh: the membership of {DATE} is kept, not recomputed: the nights of eu of that "
        "date use it"
    ) in kept.getMessage()
    assert (
        rows(engine, "SELECT status FROM overnight_job_runs WHERE market_group = 'eu'")[0].status
        == "completed"
    )

    # `score --refresh` over every group replaces it (its later groups' nights are re-scored
    # by the same command): the user added since is a member, eu's outcomes are gone.
    replace = {"config": {"refresh": True, "replace_membership": True}}
    again = _prices_of(nights, dagster_instance, "us", {"ops": {"active_users": replace}})
    assert again.success
    assert (
        f"refresh: the membership of {DATE} is recomputed; the nights of eu of that date used it"
        in caplog.text
    )
    assert len(rows(engine, membership)) == len(before) + 1
    assert rows(engine, outcomes) == []


def test_an_empty_membership_is_kept_by_the_dates_later_group_nights(
    three_markets, dagster_instance, caplog
):
    """Berlin's night of a date found no active user: its membership is empty and its night
    closed `completed` with no batch. A user made active since must not be batched under that
    date by New York's later night (Berlin's completed night would then have batches with no
    outcome): an empty membership is frozen like any other, for the groups and on refresh."""
    engine = three_markets
    nights = build_nights(_groups())
    _group_night(dagster_instance, nights, "eu")
    nights_sql = "SELECT market_group, status FROM overnight_job_runs ORDER BY 1"
    assert [tuple(r) for r in rows(engine, nights_sql)] == [("eu", "completed")]
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])

    us = _prices_of(nights, dagster_instance, "us")
    assert us.success
    metadata = us.asset_materializations_for_node("active_users")[0].metadata
    assert metadata["membership_reused"].value is True and metadata["batches"].value == 0
    assert rows(engine, "SELECT user_id FROM scoring_batches") == []
    assert [tuple(r) for r in rows(engine, nights_sql)] == [
        ("eu", "completed"),
        ("us", "completed"),
    ]

    refresh = {"config": {"refresh": True}}
    again = _prices_of(nights, dagster_instance, "us", {"ops": {"active_users": refresh}})
    assert again.success
    assert rows(engine, "SELECT user_id FROM scoring_batches") == []
    assert again.asset_materializations_for_node("active_users")[0].metadata[
        "membership_kept_for"
    ].value == ["eu"]
    assert f"refresh: the membership of {DATE} is kept" in caplog.text


def test_a_retry_after_a_market_moved_groups_scores_the_markets_its_night_opened_with(
    three_markets, dagster_instance
):
    """EU_IND moves from eu to us after the date's nights: a retry of us's night of that date
    scores US_TECH alone, as the night did, and leaves eu's EU_IND rows of the date alone."""
    engine = three_markets
    user = _us_and_eu_user(engine)
    groups = {g.name: g for g in _groups()}
    nights = build_nights(list(groups.values()))
    _group_night(dagster_instance, nights, "us")
    _group_night(dagster_instance, nights, "eu")
    before = _scores(engine)
    moved = build_nights([replace(groups["us"], markets=("EU_IND", "US_TECH")), groups["br"]])

    again = dg.materialize(
        [moved.nights["us"].scores, moved.nights["us"].checks],
        partition_key=scores_partition_key(DATE, "b0000"),
        instance=dagster_instance,
        resources=build_resources(),
    )

    assert again.success
    for evaluation in again.get_asset_check_evaluations():
        assert evaluation.passed, evaluation.metadata
    after = _scores(engine)
    assert set(after) == set(before)
    assert after[(user, "CCC")] == before[(user, "CCC")]  # eu's row, not re-scored by us
    assert after[(user, "AAA")][3] != before[(user, "AAA")][3]  # us's own, re-scored
    (night,) = rows(
        engine,
        "SELECT users_processed, metrics->'markets' AS markets FROM overnight_job_runs "
        "WHERE job_type = 'scoring' AND market_group = 'us'",
    )
    assert night.markets == ["US_TECH"] and night.users_processed == 1


def test_a_night_started_by_a_group_removed_since_fails_saying_so(three_markets, dagster_instance):
    """Berlin's snapshots run succeeds, then the deployment reloads without group eu: no batch
    of its night can run, so the night fails saying why, rather than stay `started` with the
    schedule's skip reason saying its batches are still running."""
    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    groups = {g.name: g for g in _groups()}
    started = _prices_of(build_nights(list(groups.values())), dagster_instance, "eu")
    assert started.success
    without_eu = build_nights([groups["us"], groups["br"]])

    assert _batches_requested(without_eu, dagster_instance, started) == []

    (night,) = rows(
        engine,
        "SELECT status, error_details FROM overnight_job_runs WHERE market_group = 'eu'",
    )
    assert night.status == "failed", night
    assert night.error_details["message"] == (
        "group eu is no longer configured (now: us, br): its batches cannot be launched; "
        f"score {DATE} with the configured groups (`scoring-pipeline score --date {DATE}`)"
    )


def test_the_hints_of_a_groups_night_name_its_group(three_markets, dagster_instance):
    """What an operator is told to do for group us's night names us: its commands carry
    `--group us`, its UI asset is `us/scores`, its job `us_overnight_snapshots_job`."""
    from scoring_pipeline.cli.status import _next_step
    from scoring_pipeline.store.night.model import find_night
    from scoring_pipeline.store.night.opening import tick_skip_reason

    engine = three_markets
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    nights = build_nights(_groups())
    prices_alone = _prices_alone(nights, dagster_instance, "us")
    (failure,) = prices_alone.get_step_failure_events()
    assert (
        f"launching us_overnight_snapshots_job for that one date (a launch, not a backfill over "
        f"dates), or `scoring-pipeline score --date {DATE} --group us`"
    ) in str(failure.step_failure_data.user_failure_data.description)
    _group_night(dagster_instance, nights, "us")
    # São Paulo's prices alone on that date: New York's night is no night of br's.
    br_alone = _prices_alone(nights, dagster_instance, "br")
    (failure,) = br_alone.get_step_failure_events()
    assert str(failure.step_failure_data.user_failure_data.description).startswith(
        f"{DATE} has no night of group br: "
    )
    with engine.connect() as conn:
        reason = tick_skip_reason(conn, dt.date.fromisoformat(DATE), market_group="us")
        night = find_night(conn, dt.date.fromisoformat(DATE), market_group="us")
    assert reason is not None and reason.endswith(
        f"re-score it on purpose with `scoring-pipeline score --date {DATE} --group us` or "
        f"retry its failed batches with `scoring-pipeline retry-failed --date {DATE} --group us`"
    )
    assert night is not None
    step = _next_step(night, ["us", "br", "eu"], [{"stage": "criteria_validation"}])
    assert f"`scoring-pipeline retry-failed --date {DATE} --group us`" in step
    assert "asset us/scores → Partitions → Materialize… → Failed and missing" in step


def test_a_group_asking_again_only_for_its_unpriced_symbols_may_get_none_of_them(
    three_markets, dagster_instance, loopback, reply
):
    """New York's night stores CCC (held by its user) unpriced; Berlin's night asks again for
    CCC alone, and the provider still has no quote: the rest of Berlin's market is priced
    (EEE, stored by New York's night), so the answer is usable and Berlin's night goes on."""
    engine = three_markets
    f.instrument(engine, "EEE", market="EU_IND", currency="EUR", eps="1", revenue="1000000")
    f.user(
        engine,
        holdings=[("CCC", "EUR"), ("EEE", "EUR")],
        criteria=[("US_TECH", "stock", rules())],
    )
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    no_ccc = [mw.quote(s, p, c) for s, (p, c) in PRICES.items() if s != "CCC"]
    no_ccc.append(mw.quote("EEE", 20, "EUR"))
    loopback.script(mw.QUOTE, reply(200, {"quoteResponse": {"result": no_ccc, "error": None}}))
    nights = build_nights(_groups())
    assert _prices_of(nights, dagster_instance, "us").success

    eu = _prices_of(nights, dagster_instance, "eu")

    assert eu.success
    asked = [r.query["symbols"][0] for r in loopback.requests_to(mw.QUOTE)]
    assert asked[-1] == "CCC"  # Berlin's own symbol stored unpriced, asked again
    metadata = eu.asset_materializations_for_node("eu__prices")[0].metadata
    assert metadata["unpriced"].value == 1


def test_a_group_whose_market_keeps_prices_may_get_nothing_for_a_held_symbol_never_quoted(
    three_markets, dagster_instance, loopback, reply
):
    """São Paulo's night stores AAA and BBB (its user holds them); New York's night then asks
    only for XYZ, which its user holds and no provider quotes: an empty answer, yet its market
    keeps its prices, so its night goes on (as it would had it run first)."""
    engine = three_markets
    f.user(
        engine,
        base_currency="BRL",
        holdings=[("AAA", "USD"), ("BBB", "USD")],
        criteria=[("BR_BANKS", "stock", rules())],
    )
    f.user(
        engine, holdings=[("AAA", "USD"), ("XYZ", "USD")], criteria=[("US_TECH", "stock", rules())]
    )
    nights = build_nights(_groups())
    assert _prices_of(nights, dagster_instance, "br").success

    us = _prices_of(nights, dagster_instance, "us")

    assert us.success
    asked = [r.query["symbols"][0] for r in loopback.requests_to(mw.QUOTE)]
    assert asked[-1] == "XYZ"
    (xyz,) = rows(engine, "SELECT close, missing_reason FROM price_snapshots WHERE symbol = 'XYZ'")
    assert (xyz.close, xyz.missing_reason) == (None, "not_returned")


def test_a_groups_refresh_fetches_its_own_markets_prices_not_those_of_other_markets(
    three_markets, dagster_instance, loopback, reply
):
    """New York's user holds CCC (Berlin's market): a refresh of New York's prices fetches its
    own instruments again, not CCC, whose price Berlin's finished night of the date scored with."""
    engine = three_markets
    f.user(engine, holdings=[("CCC", "EUR")], criteria=[("US_TECH", "stock", rules())])
    f.user(engine, holdings=[("AAA", "USD")], criteria=[("EU_IND", "stock", rules())])
    nights = build_nights(_groups())
    _group_night(dagster_instance, nights, "us")
    _group_night(dagster_instance, nights, "eu")
    later = {"AAA": (31, "USD"), "BBB": (0.31, "USD"), "CCC": (11, "EUR")}
    mw.script_providers(loopback, reply, later, {"EUR": 0.5, "BRL": 5})

    refresh = {"ops": {"us__prices": {"config": {"refresh": True}}}}
    refreshed = _prices_alone(nights, dagster_instance, "us", refresh)

    assert refreshed.success
    asked = [r.query["symbols"][0].split(",") for r in loopback.requests_to(mw.QUOTE)]
    assert sorted(asked[-1]) == ["AAA", "BBB"]
    closes = {
        r.symbol: str(r.close) for r in rows(engine, "SELECT symbol, close FROM price_snapshots")
    }
    assert closes == {"AAA": "31", "BBB": "0.31", "CCC": "10"}


def test_a_groups_snapshots_run_launched_with_no_partition_names_its_group(
    three_markets, dagster_instance
):
    """The launchpad's *Launch run* of `us_overnight_snapshots_job` with no partition: the
    failure's command starts that group's night (an operator review: it said `score --date D`,
    which starts every group's night of the date)."""
    nights = build_nights(_groups())
    result = dg.materialize(
        [nights.active_users, nights.exchange_rates, nights.nights["us"].prices],
        instance=dagster_instance,
        resources=build_resources(),
        tags={GROUP_TAG: "us"},
        raise_on_error=False,
    )
    try:
        assert not result.success
        failure = result.failure_data_for_node("active_users")
        description = (failure.user_failure_data.description if failure else None) or ""
        assert "no partition" in description, description
        assert "--group us`" in description, description
    finally:
        dagster_instance.delete_run(result.run_id)


def test_a_groups_batch_run_launched_with_no_partition_names_its_group(
    three_markets, dagster_instance
):
    """The launchpad's *Launch run* of `us_scoring_batch_job` with no partition fails saying
    how to re-score that group's batches, not with Dagster's partition error."""
    nights = build_nights(_groups())
    us = nights.nights["us"]
    job = dg.Definitions(
        assets=[us.scores], jobs=[us.batch_job], resources=build_resources()
    ).resolve_job_def(us.batch_job.name)
    result = job.execute_in_process(instance=dagster_instance, raise_on_error=False)
    try:
        assert not result.success
        message = refused_before_any_step(result)
        assert f"{us.batch_job.name} was launched with no partition" in message, message
        assert "retry-failed --date 2026-11-27 --group us`" in message, message
    finally:
        dagster_instance.delete_run(result.run_id)
