"""The assets and the scores IO manager through `dg.materialize` on a real Dagster instance and
real PostgreSQL: snapshots, batch membership, scores, events, job runs, idempotent re-runs,
isolated per-user failures, empty batch partitions and stale-snapshot reuse."""

import datetime as dt
import json
from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
from scoring_pipeline.defs.assets.prices import prices
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.store.membership import Membership, store_membership
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import DATE, EVENT_ORDER, batch, rows, rules, snapshots

pytestmark = pytest.mark.db


def test_snapshots_freeze_membership_rates_and_prices(world, dagster_instance):
    users = [
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
        for _ in range(3)
    ]
    f.user(world, holdings=[("AAA", "USD")])  # no criteria: skipped, not active
    f.user(world, criteria=[("US_TECH", "stock", rules())])  # no holdings: not active
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())], deleted=True)
    result = snapshots(dagster_instance)
    assert result.success
    membership = rows(
        world, "SELECT user_id::text, batch_key FROM scoring_batches ORDER BY user_id"
    )
    assert [m.user_id for m in membership] == sorted(users)
    assert [m.batch_key for m in membership] == ["b0000", "b0000", "b0001"]
    rates = {
        r.quote_currency: r.rate
        for r in rows(
            world,
            "SELECT quote_currency, rate FROM exchange_rate_snapshots WHERE score_date = :d",
            d=DATE,
        )
    }
    assert rates == {"EUR": Decimal("0.5"), "USD": Decimal("1")} or rates == {"EUR": Decimal("0.5")}
    priced = {
        r.symbol: r.close
        for r in rows(
            world, "SELECT symbol, close FROM price_snapshots WHERE score_date = :d", d=DATE
        )
    }
    # every instrument of the targeted market plus the held symbols; nothing of EU_IND
    assert priced == {"AAA": Decimal("30"), "BBB": Decimal("0.3")}
    registered = set(dagster_instance.get_dynamic_partitions("scoring_night_batches"))
    assert {k for k in registered if k.startswith(DATE)} == {f"{DATE}/b0000", f"{DATE}/b0001"}
    metadata = result.asset_materializations_for_node("active_users")[0].metadata
    assert metadata["users"].value == 3 and metadata["users_skipped_no_criteria"].value == 1


def test_scores_events_and_job_run_for_a_whole_night(world, dagster_instance):
    users = [
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
        for _ in range(3)
    ]
    assert snapshots(dagster_instance).success
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    scores_rows = rows(
        world,
        "SELECT user_id::text, symbol, score, percentage, breakdown FROM asset_scores "
        "JOIN asset_score_breakdowns USING (user_id, symbol) ORDER BY user_id, symbol",
    )
    assert len(scores_rows) == 6
    by_symbol = {r.symbol: r for r in scores_rows if r.user_id == users[0]}
    # AAA: P/E 15 is not < 15? 30/2 = 15 -> not matched; roe 15 >= 10 -> 5; price exists -> 1
    assert by_symbol["AAA"].score == Decimal("6.0000")
    assert by_symbol["AAA"].percentage == Decimal("37.5000")
    # BBB: 0.3 / 0.02 = 15 exactly (floats say 14.999999999999998): not matched
    assert by_symbol["BBB"].score == Decimal("1.0000")
    assert [b["matched"] for b in by_symbol["BBB"].breakdown] == [False, False, True]
    history = rows(world, "SELECT count(*) AS n FROM score_history WHERE score_date = :d", d=DATE)
    assert history[0].n == 6
    for user in users:
        events = rows(
            world,
            "SELECT event_type, correlation_id::text AS c, payload "
            "FROM calculation_events WHERE user_id = :u ORDER BY id",
            u=user,
        )
        assert [e.event_type for e in events] == EVENT_ORDER
        assert len({e.c for e in events}) == 1
        assert events[3].payload["status"] == "success" and events[3].payload["assetCount"] == 2
        assert events[0].payload["userId"] == user and events[0].payload["scoreDate"] == DATE
    job = rows(
        world,
        "SELECT status, users_processed, users_failed, correlation_id::text AS c, "
        "metrics FROM overnight_job_runs WHERE score_date = :d",
        d=DATE,
    )[0]
    assert (job.status, job.users_processed, job.users_failed) == ("completed", 3, 0)
    assert job.metrics["assets_scored"] == 6 and job.metrics["batches_total"] == 2
    assert set(job.metrics["dagster_batch_run_ids"]) == {"b0000", "b0001"}
    assert job.metrics["dagster_snapshot_run_id"]
    job_events = rows(
        world,
        "SELECT event_type, payload FROM calculation_events WHERE user_id IS NULL "
        "AND correlation_id = CAST(:c AS uuid) ORDER BY id",
        c=job.c,
    )
    assert [e.event_type for e in job_events] == ["JOB_STARTED", "JOB_COMPLETED"]
    completed = job_events[1].payload
    assert completed["status"] == "completed" and completed["correlationId"] == job.c
    assert (completed["usersTotal"], completed["usersSuccess"], completed["usersFailed"]) == (
        3,
        3,
        0,
    )
    assert completed["assetsScored"] == 6 and completed["batchesTotal"] == 2
    assert completed["totalDurationMs"] >= 0 and "fetchRatesMs" in completed
    assert all("_" not in key for key in completed)  # camelCase, as every payload (SPEC §5)


def test_a_night_counts_its_membership_once_and_links_its_runs_when_done(world, dagster_instance):
    for _ in range(3):
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success

    def metrics():
        return rows(world, "SELECT metrics FROM overnight_job_runs WHERE score_date = :d", d=DATE)[
            0
        ].metrics

    assert batch(dagster_instance, "b0000").success
    first = metrics()
    assert first["membership_counts"] == {"batches": 2, "users": 3}
    assert first["users_total"] == 3 and "dagster_batch_run_ids" not in first
    # Counted once: a member removed behind the pipeline's back changes no later figure.
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM scoring_batches WHERE score_date = :d AND user_id = (SELECT "
                "user_id FROM scoring_batches WHERE score_date = :d ORDER BY user_id LIMIT 1)"
            ),
            {"d": DATE},
        )
    assert batch(dagster_instance, "b0001").success
    done = metrics()
    assert done["users_total"] == 3 and done["batches_total"] == 2
    assert set(done["dagster_batch_run_ids"]) == {"b0000", "b0001"}
    # Replacing the membership (the only way it changes) drops the kept counts.
    with world.begin() as conn:
        store_membership(conn, dt.date.fromisoformat(DATE), Membership(members=[], users_skipped=0))
    assert "membership_counts" not in metrics()


def test_rematerialising_a_batch_twice_never_duplicates_history(world, dagster_instance):
    users = [
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
        for _ in range(2)
    ]
    assert snapshots(dagster_instance).success
    for _ in range(3):
        assert batch(dagster_instance).success
    history = rows(
        world, "SELECT user_id, symbol, count(*) AS n FROM score_history GROUP BY user_id, symbol"
    )
    assert len(history) == 4 and {h.n for h in history} == {1}
    assert rows(world, "SELECT count(*) AS n FROM asset_scores")[0].n == 4
    for user in users:
        events = rows(
            world,
            "SELECT event_type, correlation_id FROM calculation_events "
            "WHERE user_id = :u ORDER BY id",
            u=user,
        )
        assert [e.event_type for e in events] == EVENT_ORDER * 3
        assert len({e.correlation_id for e in events}) == 3
        current = rows(
            world, "SELECT DISTINCT correlation_id FROM asset_scores WHERE user_id = :u", u=user
        )
        assert current[0].correlation_id == events[-1].correlation_id


def test_bad_users_fail_alone_and_the_night_is_partial(world, dagster_instance):
    good = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    bad_rules = [f.rule("pe_ratio", "lt", "abc", 10)]
    invalid = f.user(
        world,
        holdings=[("AAA", "USD")],
        criteria=[("US_TECH", "stock", bad_rules)],
        user_id="00000000-0000-4000-8000-000000000001",
    )
    no_rate = f.user(
        world,
        base_currency="JPY",
        holdings=[("CCC", "EUR")],
        criteria=[("EU_IND", "stock", [f.rule("revenue", "gt", "10", 10)])],
        user_id="00000000-0000-4000-8000-000000000002",
    )
    assert snapshots(dagster_instance).success
    # both bad users sort first, so they share batch b0000; the good user is in b0001
    first = batch(dagster_instance, "b0000")
    assert not first.success
    failure = [e for e in first.all_events if e.is_step_failure][0]
    assert "2 of 2 users" in failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert batch(dagster_instance, "b0001").success
    statuses = {
        r.user_id: r
        for r in rows(
            world,
            "SELECT user_id::text, event_type, payload FROM calculation_events "
            "WHERE event_type = 'CALC_COMPLETED'",
        )
    }
    assert statuses[good].payload["status"] == "success"
    assert statuses[invalid].payload["status"] == "failed"
    assert "rule" in statuses[invalid].payload["error"]["message"]
    assert statuses[no_rate].payload["error"]["type"] == "MissingRateError"
    assert "JPY" in statuses[no_rate].payload["error"]["message"]
    types = [
        r.event_type
        for r in rows(
            world,
            "SELECT event_type FROM calculation_events WHERE user_id = :u ORDER BY id",
            u=no_rate,
        )
    ]
    assert types == ["CALC_STARTED", "INPUTS_CAPTURED", "CALC_COMPLETED"]
    assert not rows(
        world, "SELECT 1 FROM asset_scores WHERE user_id IN (:a, :b)", a=invalid, b=no_rate
    )
    job = rows(world, "SELECT status, users_failed, error_details FROM overnight_job_runs")[0]
    assert job.status == "partial" and job.users_failed == 2
    failed_ids = {e["userId"] for e in job.error_details["failedUsers"]}
    assert failed_ids == {invalid, no_rate}


def test_snapshots_are_reused_unless_refreshed(world, dagster_instance, tmp_path, monkeypatch):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    env = f.provider_files(
        tmp_path / "new", rates={"EUR": "0.75"}, prices={"AAA": ("99", "USD"), "BBB": ("1", "USD")}
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert snapshots(dagster_instance).success  # a later run of the date: frozen inputs
    rate = rows(world, "SELECT rate FROM exchange_rate_snapshots WHERE quote_currency = 'EUR'")
    assert rate[0].rate == Decimal("0.5")
    refresh = {
        "ops": {
            n: {"config": {"refresh": True}} for n in ("active_users", "exchange_rates", "prices")
        }
    }
    assert snapshots(dagster_instance, run_config=refresh).success
    rate = rows(world, "SELECT rate FROM exchange_rate_snapshots WHERE quote_currency = 'EUR'")
    assert rate[0].rate == Decimal("0.75")


def test_stale_snapshot_reused_when_every_provider_fails(world, dagster_instance, monkeypatch):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success  # DATE has a fresh snapshot
    monkeypatch.setenv("RATES_FILE", "/nonexistent/rates.json")
    monkeypatch.setenv("PRICES_FILE", "/nonexistent/prices.csv")
    later = (dt.date.fromisoformat(DATE) + dt.timedelta(days=1)).isoformat()
    result = dg.materialize(
        [active_users, exchange_rates, prices],
        partition_key=later,
        instance=dagster_instance,
        resources=build_resources(),
    )
    assert result.success
    stale = rows(
        world, "SELECT is_stale FROM exchange_rate_snapshots WHERE score_date = :d", d=later
    )
    assert stale and all(r.is_stale for r in stale)
    stale_prices = rows(
        world, "SELECT is_stale FROM price_snapshots WHERE score_date = :d", d=later
    )
    assert stale_prices and all(r.is_stale for r in stale_prices)
    metadata = result.asset_materializations_for_node("exchange_rates")[0].metadata
    assert metadata["is_stale"].value is True and metadata["stale_from"].value == DATE
    job = rows(world, "SELECT metrics FROM overnight_job_runs WHERE score_date = :d", d=later)
    assert job[0].metrics["rates_stale"] is True
    # The reused prices are counted (status read "1 of 0 needed symbols" before).
    prices_metadata = result.asset_materializations_for_node("prices")[0].metadata
    assert prices_metadata["symbols"].value == len(stale_prices) > 0
    assert job[0].metrics["prices_symbols"] == len(stale_prices)
    # An earlier date has no snapshot before it: the night fails clearly, nothing is scored.
    earlier = (dt.date.fromisoformat(DATE) - dt.timedelta(days=10)).isoformat()
    result = dg.materialize(
        [active_users, exchange_rates, prices],
        partition_key=earlier,
        instance=dagster_instance,
        resources=build_resources(),
        raise_on_error=False,
    )
    assert not result.success
    job = rows(
        world,
        "SELECT status, error_details FROM overnight_job_runs WHERE score_date = :d",
        d=earlier,
    )[0]
    assert job.status == "failed" and "no rates snapshot" in json.dumps(job.error_details)


def test_a_batch_whose_date_has_no_snapshot_fails_at_once_without_retries(world, dagster_instance):
    """Its night was opened (`active_users`) but the rates and prices were never taken: a
    retry of the step would find no snapshot either (an operator review saw three, 22 s)."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    opened = dg.materialize(
        [active_users], partition_key=DATE, instance=dagster_instance, resources=build_resources()
    )
    assert opened.success

    result = batch(dagster_instance)

    assert not result.success
    types = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in types and types.count("STEP_FAILURE") == 1
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert f"no exchange-rate snapshot for {DATE}: materialise the date's snapshots" in str(
        failure.step_failure_data.user_failure_data.description
    )


def test_a_stale_copy_is_not_reused_as_a_snapshot_of_its_own_date(
    world, dagster_instance, monkeypatch
):
    """Providers down for days in a row: each date reuses the last snapshot fetched (its age
    is that date's), not the day before's stale copy of it, so the data ages out after
    `SNAPSHOT_MAX_AGE_DAYS` (3) and the night then fails (found by a provider review: a week
    of stale copies of copies scored on week-old prices)."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success  # DATE has a fresh snapshot
    monkeypatch.setenv("RATES_FILE", "/nonexistent/rates.json")
    monkeypatch.setenv("PRICES_FILE", "/nonexistent/prices.csv")
    day = dt.date.fromisoformat(DATE)
    for after in (1, 2, 3):
        later = (day + dt.timedelta(days=after)).isoformat()
        result = snapshots(dagster_instance, partition_key=later)
        assert result.success, later
        for asset in ("exchange_rates", "prices"):
            metadata = result.asset_materializations_for_node(asset)[0].metadata
            assert metadata["is_stale"].value is True
            assert metadata["stale_from"].value == DATE, (later, asset)
    too_old = (day + dt.timedelta(days=4)).isoformat()
    result = snapshots(dagster_instance, partition_key=too_old, raise_on_error=False)
    assert not result.success
    job = rows(
        world,
        "SELECT status, error_details FROM overnight_job_runs WHERE score_date = :d",
        d=too_old,
    )[0]
    assert job.status == "failed"
    assert "no rates snapshot of the last 3 days exists to reuse" in job.error_details["message"]


def test_hostile_symbols_and_names_are_stored_exactly(world, dagster_instance):
    symbol = "Q'\"; DROP TABLE users;--\t\\N\nü€"
    f.instrument(world, symbol, market="US_TECH", currency="USD", eps="1", roe="20")
    with world.begin() as conn:
        conn.execute(
            sa.text("UPDATE instruments SET name = :n WHERE symbol = :s"),
            {"n": "Ünïcødé \\ ; '--", "s": symbol},
        )
    user = f.user(world, holdings=[(symbol, "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    stored = rows(
        world, "SELECT symbol, score FROM asset_scores WHERE user_id = :u ORDER BY symbol", u=user
    )
    assert symbol in [r.symbol for r in stored]
    history = rows(world, "SELECT symbol FROM score_history WHERE user_id = :u", u=user)
    assert symbol in [r.symbol for r in history]
    events = rows(
        world,
        "SELECT payload FROM calculation_events WHERE user_id = :u "
        "AND event_type = 'SCORES_COMPUTED'",
        u=user,
    )
    assert symbol in [r["assetId"] for r in events[0].payload["results"]]
    assert rows(world, "SELECT count(*) AS n FROM users")[0].n == 1  # nothing was executed


def test_members_deleted_after_the_membership_was_frozen_are_counted_skipped(
    world, dagster_instance
):
    """`demo-data` (or any delete) after the date's membership was frozen: the members whose user
    row is gone are counted skipped, so the night's figures add up (they counted nowhere: a
    re-score of the date after `demo-data` read "200 in all: 0 scored, 0 failed, 0 skipped")."""
    users = [
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
        for _ in range(3)
    ]
    assert snapshots(dagster_instance).success
    gone = sorted(users)[:2]  # both in b0000
    with world.begin() as conn:  # what demo-data's TRUNCATE … CASCADE does to them
        for sql in (
            "DELETE FROM portfolio_assets WHERE portfolio_id IN "
            "(SELECT id FROM portfolios WHERE user_id = ANY(CAST(:u AS uuid[])))",
            "DELETE FROM portfolios WHERE user_id = ANY(CAST(:u AS uuid[]))",
            "DELETE FROM criteria_versions WHERE user_id = ANY(CAST(:u AS uuid[]))",
            "DELETE FROM users WHERE id = ANY(CAST(:u AS uuid[]))",
        ):
            conn.execute(sa.text(sql), {"u": gone})
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    outcome = rows(
        world,
        "SELECT users_total, users_success, users_failed, users_skipped "
        "FROM scoring_batch_results WHERE score_date = :d AND batch_key = 'b0000'",
        d=DATE,
    )[0]
    assert tuple(outcome) == (2, 0, 0, 2)
    job = rows(
        world,
        "SELECT status, users_processed, users_failed, metrics FROM overnight_job_runs "
        "WHERE score_date = :d AND job_type = 'scoring'",
        d=DATE,
    )[0]
    assert job.status == "completed"
    figures = {k: job.metrics[k] for k in ("users_total", "users_success", "users_skipped")}
    assert figures == {"users_total": 3, "users_success": 1, "users_skipped": 2}
