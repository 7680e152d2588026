"""Dashboard cache warming: the sensor's cursor over batch outcomes, the cache job on a real
instance, payload contents (portfolio value across currencies, top assets with ties), failed
users left cold, re-scored batches re-warmed, and the `cache_warm` job run."""

import datetime as dt
import logging
from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.cache_warming import (
    CLOSING_LANE,
    LANE_TAG,
    WARM_ATTEMPTS,
    WARM_KEY_TAG,
    dashboard_cache_job,
)
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.sensors import dashboard_cache_sensor
from scoring_pipeline.store.dashboard_cache import (
    WARM_WITHIN_SECONDS,
    PendingBatch,
    PendingWarm,
)
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import (
    DATE,
    batch,
    batches,
    forget_night_keys,
    rows,
    rules,
    snapshots,
)

pytestmark = pytest.mark.db


def _sensor(instance, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"database": build_resources()["database"]}
    )
    return dashboard_cache_sensor(context)


def _warm(instance, request):
    result = dashboard_cache_job.execute_in_process(
        run_config=request.run_config, instance=instance, resources=build_resources()
    )
    assert result.success
    return result


def test_nothing_to_warm_is_a_skip(world, dagster_instance):
    assert isinstance(_sensor(dagster_instance), dg.SkipReason)


def test_each_landed_batch_warms_its_successful_users(world, dagster_instance):
    eur_user = f.user(
        world,
        base_currency="EUR",
        holdings=[("AAA", "USD"), ("CCC", "EUR"), ("DDD", "EUR")],  # DDD has no price
        criteria=[("US_TECH", "stock", rules())],
    )
    bad = f.user(
        world,
        holdings=[("AAA", "USD")],
        criteria=[("US_TECH", "stock", [f.rule("roe", "between", "9", 1)])],
    )
    assert snapshots(dagster_instance).success
    assert not batch(dagster_instance).success  # both users share b0000; one fails
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult) and len(result.run_requests or []) == 1
    request = (result.run_requests or [])[0]
    assert len(request.run_config["ops"]["warm_dashboard_cache"]["config"]["batches"]) >= 1
    _warm(dagster_instance, request)
    cache = {
        r.user_id: r
        for r in rows(
            world,
            "SELECT user_id::text, payload, expires_at - warmed_at AS ttl, correlation_id::text "
            "AS c FROM dashboard_cache",
        )
    }
    assert set(cache) == {eur_user}  # the failed user is not warmed
    payload = cache[eur_user].payload
    # 10 × 30 USD at 0.5 EUR/USD + 10 × 10 EUR = 250 EUR; DDD is unpriced
    assert payload["portfolioValue"] == "250.00"
    assert payload["unpricedSymbols"] == ["DDD"]
    assert payload["baseCurrency"] == "EUR" and payload["scoreDate"] == DATE
    top = payload["topAssets"][0]["assets"]
    assert [a["symbol"] for a in top] == ["AAA", "BBB"]  # 6 beats 1
    assert payload["dataFreshness"]["ratesAsOf"] == DATE
    assert cache[eur_user].ttl == dt.timedelta(hours=24)
    completed = rows(
        world,
        "SELECT correlation_id::text AS c FROM calculation_events WHERE "
        "user_id = :u AND event_type = 'CALC_COMPLETED'",
        u=eur_user,
    )
    assert cache[eur_user].c == completed[-1].c == payload["correlationId"]
    assert isinstance(_sensor(dagster_instance), dg.SkipReason)  # nothing new since
    job = rows(
        world,
        "SELECT status, users_processed FROM overnight_job_runs WHERE job_type = 'cache_warm'",
    )[0]
    assert (job.status, job.users_processed) == ("completed", 1)
    events = rows(
        world,
        "SELECT e.event_type, e.payload FROM calculation_events e JOIN overnight_job_runs j "
        "ON j.correlation_id = e.correlation_id WHERE j.job_type = 'cache_warm' ORDER BY e.id",
    )
    assert [e.event_type for e in events] == ["JOB_STARTED", "JOB_COMPLETED"]
    assert events[1].payload["status"] == "completed" and events[1].payload["usersWarm"] == 1
    assert bad not in cache


def test_rescored_batch_is_warmed_again(world, dagster_instance):
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    first = rows(world, "SELECT correlation_id FROM dashboard_cache WHERE user_id = :u", u=user)
    assert batch(dagster_instance).success
    again = _sensor(dagster_instance)
    assert isinstance(again, dg.SensorResult)
    _warm(dagster_instance, (again.run_requests or [])[0])
    second = rows(world, "SELECT correlation_id FROM dashboard_cache WHERE user_id = :u", u=user)
    assert first[0].correlation_id != second[0].correlation_id


def test_an_older_date_scored_later_counts_its_users_warm(world, dagster_instance):
    # A select-all backfill re-scores older nights after later ones: their users' dashboards
    # keep the later date's scores, and are warm all the same (not "0 warm").
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    older = "2026-11-20"
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    try:
        assert snapshots(dagster_instance, partition_key=older).success
        assert batch(dagster_instance, date=older).success
        _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
        cache = rows(
            world, "SELECT score_date::text AS d FROM dashboard_cache WHERE user_id = :u", u=user
        )
        assert [r.d for r in cache] == [DATE]  # the later date's dashboard is kept
        warm = rows(
            world,
            "SELECT score_date::text AS d, status, users_processed FROM overnight_job_runs "
            "WHERE job_type = 'cache_warm' ORDER BY 1",
        )
        assert [(r.d, r.status, r.users_processed) for r in warm] == [
            (older, "completed", 1),
            (DATE, "completed", 1),
        ]
    finally:
        forget_night_keys(dagster_instance, older)


def test_top_assets_keep_ten_best_with_ties_by_symbol(world, dagster_instance):
    for i in range(12):
        f.instrument(world, f"T{i:02d}", market="US_TECH", currency="USD", roe=str(i % 3))
    user = f.user(
        world,
        holdings=[("AAA", "USD")],
        criteria=[("US_TECH", "stock", [f.rule("roe", "gte", "1", 10)])],
    )
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    payload = rows(world, "SELECT payload FROM dashboard_cache WHERE user_id = :u", u=user)[0]
    assets = payload.payload["topAssets"][0]["assets"]
    assert len(assets) == 10
    scores = [Decimal(a["score"]) for a in assets]
    assert scores == sorted(scores, reverse=True)
    tens = [a["symbol"] for a in assets if a["score"] == "10.0000"]
    assert tens == sorted(tens)


def test_portfolio_value_sums_every_portfolio_and_leaves_ignored_holdings_out(
    world, dagster_instance
):
    """Holdings are read per portfolio (`_holdings`): a user's second portfolio counts, an
    ignored holding does not, and another user's holdings never leak in."""
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    f.user(world, holdings=[("AAA", "USD"), ("CCC", "EUR")])  # not scored: no criteria
    with world.begin() as conn:
        second = conn.execute(
            sa.text(
                "INSERT INTO portfolios (id, user_id, name) "
                "VALUES (gen_random_uuid(), :u, 'Second') RETURNING id"
            ),
            {"u": user},
        ).scalar_one()
        for symbol, currency, quantity, ignored in (
            ("AAA", "USD", "2", False),
            ("CCC", "EUR", "1000", True),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO portfolio_assets (id, portfolio_id, symbol, quantity, currency, "
                    "is_ignored) VALUES (gen_random_uuid(), :p, :s, :q, :c, :i)"
                ),
                {"p": second, "s": symbol, "q": quantity, "c": currency, "i": ignored},
            )
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    payload = rows(world, "SELECT payload FROM dashboard_cache WHERE user_id = :u", u=user)
    # (10 + 2) × 30 USD; the ignored 1,000 CCC and the other user's holdings are left out
    assert payload[0].payload["portfolioValue"] == "360.00"
    assert payload[0].payload["unpricedSymbols"] == []


def test_landed_batches_wait_briefly_to_be_warmed_together_unless_their_night_closed(
    world, dagster_instance
):
    """A run per landed batch cost as much Dagster work as warming several: the sensor waits
    for `WARM_AT_BATCHES` batches or `WARM_WITHIN_SECONDS`, and warms at once when the night
    has no batch left to land."""
    for _ in range(3):  # batches of 2: b0000 (2 users) and b0001 (1 user)
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success
    waiting = _sensor(dagster_instance)
    assert isinstance(waiting, dg.SkipReason)
    assert "1 landed batch(es) wait to be warmed together" in (waiting.skip_message or "")

    # The batch has waited longer than WARM_WITHIN_SECONDS: it is warmed without the other.
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE scoring_batch_results SET updated_at = updated_at - make_interval("
                "secs => :s) WHERE batch_key = 'b0000'"
            ),
            {"s": WARM_WITHIN_SECONDS + 1},
        )
    due = _sensor(dagster_instance)
    assert isinstance(due, dg.SensorResult)
    _warm(dagster_instance, (due.run_requests or [])[0])
    assert len(rows(world, "SELECT 1 FROM dashboard_cache")) == 2

    # The night's last batch lands: it closes the night, and is warmed at once.
    assert batch(dagster_instance, "b0001").success
    last = _sensor(dagster_instance)
    assert isinstance(last, dg.SensorResult)
    tokens = (last.run_requests or [])[0].run_config["ops"]["warm_dashboard_cache"]["config"]
    assert [t.split("|")[2] for t in tokens["batches"]] == ["b0001"]
    _warm(dagster_instance, (last.run_requests or [])[0])
    assert len(rows(world, "SELECT 1 FROM dashboard_cache")) == 3


def test_ten_landed_batches_are_warmed_without_waiting():
    batches = [PendingBatch(dt.date(2026, 11, 27), f"b{i:04d}", i) for i in range(10)]
    assert PendingWarm(batches[:9], oldest_waited_s=0.5).due is False
    assert PendingWarm(batches, oldest_waited_s=0.5).due is True
    assert PendingWarm(batches[:1], oldest_waited_s=0.5, night_closed=True).due is True
    assert PendingWarm([], night_closed=True).due is False


def test_no_second_warm_run_while_one_is_queued_and_a_warmed_batch_is_not_warmed_again(
    world, dagster_instance
):
    """A warm run per tick queued overlapping runs of the same batches faster than one could
    finish (a 100,000-user night queued 70 runs of 200 batches): the sensor waits for the
    queued or running one, and a batch warmed at its latest outcome is skipped."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    request = (_sensor(dagster_instance).run_requests or [])[0]
    queued = dagster_instance.create_run_for_job(dashboard_cache_job, run_config=request.run_config)
    try:
        waiting = _sensor(dagster_instance)
        assert isinstance(waiting, dg.SkipReason)
        assert f"warm run {queued.run_id} is queued or running" in (waiting.skip_message or "")
    finally:
        dagster_instance.report_run_canceled(queued)
    _warm(dagster_instance, request)
    first = rows(world, "SELECT warmed_at FROM dashboard_cache")
    # The same batches again (an overlapping request): nothing is rewritten.
    again = _warm(dagster_instance, request)
    assert again.output_for_node("warm_dashboard_cache") == 0
    assert rows(world, "SELECT warmed_at FROM dashboard_cache") == first


def test_a_nights_last_batches_are_warmed_beside_a_running_warm_run(world, dagster_instance):
    """Once a night has no batch left to land, its last batches do not wait for the warm run
    in flight (which warms the batches it was given, not these): one more run warms them at
    once, outside the one-at-a-time lane, on a run worker the night no longer needs. Never a
    third: two warm runs in flight make the sensor wait."""
    for _ in range(3):  # batches of 2: b0000 (2 users) and b0001 (1 user)
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success
    _aged(world, "b0000")  # it has waited long enough to be warmed alone
    first = (_sensor(dagster_instance).run_requests or [])[0]
    assert LANE_TAG not in first.tags  # the job's own lane
    in_flight = [
        dagster_instance.create_run_for_job(dashboard_cache_job, run_config=first.run_config)
    ]
    try:
        assert batch(dagster_instance, "b0001").success  # the night's last batch: it closes
        closing = _sensor(dagster_instance)
        assert isinstance(closing, dg.SensorResult)
        request = (closing.run_requests or [])[0]
        tokens = request.run_config["ops"]["warm_dashboard_cache"]["config"]["batches"]
        assert [t.split("|")[2] for t in tokens] == ["b0001"]  # not b0000, the other run's
        assert request.tags[LANE_TAG] == CLOSING_LANE
        in_flight.append(
            dagster_instance.create_run_for_job(
                dashboard_cache_job, run_config=request.run_config, tags=request.tags
            )
        )
        # Two warm runs in flight: a batch re-scored now waits for one of them.
        assert batch(dagster_instance, "b0001").success
        waiting = _sensor(dagster_instance)
        assert isinstance(waiting, dg.SkipReason)
        assert "is queued or running" in (waiting.skip_message or "")
    finally:
        for run in in_flight:
            dagster_instance.report_run_canceled(run)
    assert len(in_flight) == 2


def _aged(world, batch_key: str) -> None:
    """As if the batch had waited long enough to be warmed alone."""
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE scoring_batch_results SET updated_at = updated_at - make_interval("
                "secs => :s) WHERE batch_key = :b"
            ),
            {"s": WARM_WITHIN_SECONDS + 1, "b": batch_key},
        )


def test_a_rescored_date_reopens_its_warming_with_a_job_started(world, dagster_instance):
    # The date re-scored on purpose: its first batch is warmed while the other is still being
    # scored, so the completed `cache_warm` night opens again, as the scoring night did.
    for _ in range(3):  # batches of 2: b0000 and b0001
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    events = (
        "SELECT e.event_type, count(*) AS n FROM calculation_events e JOIN overnight_job_runs j "
        "ON j.correlation_id = e.correlation_id WHERE j.job_type = 'cache_warm' GROUP BY 1"
    )
    warming = "SELECT status, started_at FROM overnight_job_runs WHERE job_type = 'cache_warm'"
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success and batch(dagster_instance, "b0001").success
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    first = rows(world, warming)[0]
    assert first.status == "completed"
    assert {r.event_type: r.n for r in rows(world, events)} == {
        "JOB_STARTED": 1,
        "JOB_COMPLETED": 1,
    }
    assert snapshots(dagster_instance).success  # the night restarts
    assert batch(dagster_instance, "b0000").success
    _aged(world, "b0000")
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    reopened = rows(world, warming)[0]
    assert reopened.status == "started" and reopened.started_at > first.started_at
    assert batch(dagster_instance, "b0001").success
    _warm(dagster_instance, (_sensor(dagster_instance).run_requests or [])[0])
    assert rows(world, warming)[0].status == "completed"
    assert {r.event_type: r.n for r in rows(world, events)} == {
        "JOB_STARTED": 2,
        "JOB_COMPLETED": 2,
    }


def _warming(world):
    return rows(
        world,
        "SELECT status, users_processed, users_failed FROM overnight_job_runs "
        "WHERE job_type = 'cache_warm' AND score_date = :d",
        d=DATE,
    )[0]


def _warm_what_is_pending(instance):
    result = _sensor(instance)
    assert isinstance(result, dg.SensorResult), result
    for request in result.run_requests or []:
        _warm(instance, request)


@pytest.mark.parametrize(
    ("quantity", "why"),
    [
        # NUMERIC takes 'NaN': the dashboard read portfolioValue "NaN".
        ("'NaN'", "not a number"),
        # A finite but absurd quantity (a typo in the app): 10^20 × 30 USD does not fit the 20
        # significant digits of the score context to the cent. Quantizing it raised
        # decimal.InvalidOperation out of the warm run, so no dashboard of any of its batches
        # was warmed, and the sensor's next request for the same batches (same run key) was
        # skipped.
        ("1e20", "too large"),
    ],
    ids=["nan", "too-large"],
)
def test_a_holding_whose_value_cannot_be_shown_leaves_only_its_users_dashboard_cold(
    world, dagster_instance, quantity, why
):
    odd = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    fine = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    with world.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE portfolio_assets SET quantity = {quantity} WHERE portfolio_id IN "
                "(SELECT id FROM portfolios WHERE user_id = :u)"
            ),
            {"u": odd},
        )
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests or []
    warmed = _warm(dagster_instance, request)
    cached = rows(world, "SELECT user_id::text AS u, payload FROM dashboard_cache")
    assert [r.u for r in cached] == [fine] and cached[0].payload["portfolioValue"] == "300.00"
    assert tuple(_warming(world)) == ("partial", 1, 1)
    (output,) = [e for e in warmed.all_node_events if e.is_successful_output]
    (failure,) = output.step_output_data.metadata["failed_users"].value
    assert failure["userId"] == odd and why in failure["error"], failure


def _run_as_the_daemon_would(instance, request, dropped_tag=None):
    """Execute a sensor's warm request with the tags the daemon gives its run (its run key)."""
    tags = {k: v for k, v in request.tags.items() if k != dropped_tag}
    return dashboard_cache_job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=build_resources(),
        tags={**tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )


@pytest.fixture
def refuse_dashboard_writes(world):
    """Call it to make the database refuse every dashboard write; never left behind."""
    yield lambda: _refuse_dashboard_writes(world)
    with world.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER IF EXISTS rv_refuse ON dashboard_cache"))


def _refuse_dashboard_writes(world):
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION rv_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN RAISE EXCEPTION 'refused for the test'; END$$"
            )
        )
        conn.execute(sa.text("DROP TRIGGER IF EXISTS rv_refuse ON dashboard_cache"))
        conn.execute(
            sa.text(
                "CREATE TRIGGER rv_refuse BEFORE INSERT ON dashboard_cache "
                "FOR EACH ROW EXECUTE FUNCTION rv_refuse()"
            )
        )


# A run requested by the earlier sensor carries no WARM_KEY_TAG: its run key finds it.
@pytest.mark.parametrize("dropped_tag", [None, WARM_KEY_TAG])
def test_a_warm_run_that_failed_is_retried_and_warms_the_night(
    world, dagster_instance, refuse_dashboard_writes, dropped_tag
):
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    # The database refuses the dashboards' writes for a while (a trigger stands in for a lost
    # server). The sensor asked again for the same batches under the same run key, which
    # Dagster skips once a run used it, whatever became of that run: the night's dashboards
    # stayed cold ("Skipping 1 run for sensor dashboard_cache_sensor already completed with
    # run keys") until another batch landed.
    refuse_dashboard_writes()
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult), result
    (failing,) = result.run_requests or []
    assert not _run_as_the_daemon_would(dagster_instance, failing, dropped_tag).success
    with world.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER rv_refuse ON dashboard_cache"))
    # The database is back: the same batches are asked for again, under a run key Dagster has
    # not seen, and their dashboards are warmed.
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult), result
    (again,) = result.run_requests or []
    assert again.run_key != failing.run_key
    assert again.run_config == failing.run_config
    assert _run_as_the_daemon_would(dagster_instance, again).success
    assert [r.u for r in rows(world, "SELECT user_id::text AS u FROM dashboard_cache")] == [user]
    assert tuple(_warming(world)) == ("completed", 1, 0)


def test_warm_runs_that_keep_failing_are_asked_for_a_few_times_then_named(
    world, dagster_instance, refuse_dashboard_writes
):
    # The database refuses the dashboards' writes (a trigger stands in for a lost server): each
    # failed warm run is asked for again under a new run key, WARM_ATTEMPTS runs in all.
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    refuse_dashboard_writes()
    used: list[str] = []
    for _ in range(WARM_ATTEMPTS):
        result = _sensor(dagster_instance)
        assert isinstance(result, dg.SensorResult), result
        (request,) = result.run_requests or []
        assert request.run_key not in used
        used.append(request.run_key)
        assert not _run_as_the_daemon_would(dagster_instance, request).success
    # As many failed runs as it may take: the sensor says so instead of asking without end.
    skipped = _sensor(dagster_instance)
    assert isinstance(skipped, dg.SkipReason)
    assert f"failed {WARM_ATTEMPTS} times" in (skipped.skip_message or "")
    assert rows(world, "SELECT user_id FROM dashboard_cache") == []
    with world.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER rv_refuse ON dashboard_cache"))
    # Another batch outcome (the batch re-scored) is a new set to warm, under a key of its own.
    assert batch(dagster_instance).success
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests or []
    assert request.run_key not in used
    assert _run_as_the_daemon_would(dagster_instance, request).success
    assert [r.u for r in rows(world, "SELECT user_id::text AS u FROM dashboard_cache")] == [user]


def test_a_batch_that_cannot_be_warmed_does_not_hold_back_the_others(world, dagster_instance):
    """A warm run of two batches, one of which cannot be warmed (the database refuses its
    user's dashboard: an error that is not one user's): the other batch is warmed, the run
    fails with the refused batch's error, and the sensor then asks for that batch alone. The
    batches after a broken one used to stay cold as long as it failed, and for good once its
    runs were spent, until another batch landed."""
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 5)]  # b0000: 1, 2; b0001: 3, 4
    for uid in ids:
        f.user(
            world, user_id=uid, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())]
        )
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    assert batches(dagster_instance, "b0000", "b0001").success
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION rv_refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
                f"IF NEW.user_id = '{ids[0]}' THEN RAISE EXCEPTION 'refused for the test'; "
                "END IF; RETURN NEW; END$$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER rv_refuse_one BEFORE INSERT ON dashboard_cache "
                "FOR EACH ROW EXECUTE FUNCTION rv_refuse_one()"
            )
        )
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests or []
    assert request.tags["scoring/batches"] == "2"
    run = _run_as_the_daemon_would(dagster_instance, request)
    assert not run.success
    warm = {r.u for r in rows(world, "SELECT user_id::text AS u FROM dashboard_cache")}
    assert warm == set(ids[2:])  # b0001's; b0000's transaction was rolled back
    logged = [
        e.message
        for e in dagster_instance.all_logs(run.run_id)
        if e.level == logging.ERROR and "not warmed" in e.message
    ]
    assert any(m.startswith(f"batch b0000 of {DATE} (all) not warmed") for m in logged), logged
    assert any(m.startswith("1 of 2 batch(es) not warmed, the others were") for m in logged)
    with world.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER rv_refuse_one ON dashboard_cache"))
    # Asked again: the broken batch alone, which is now warmed.
    result = _sensor(dagster_instance)
    assert isinstance(result, dg.SensorResult), result
    (again,) = result.run_requests or []
    assert again.tags["scoring/batches"] == "1"
    assert _run_as_the_daemon_would(dagster_instance, again).success
    warm = {r.u for r in rows(world, "SELECT user_id::text AS u FROM dashboard_cache")}
    assert warm == set(ids)


def test_a_dashboard_that_cannot_be_built_is_not_warm_until_it_is(world, dagster_instance):
    # A P/E-only set scores without a conversion, but a JPY dashboard needs a rate the date has
    # not. The user's earlier dashboard of the same date counted as warm, and the warming's
    # failures only ever added up, so that it read `completed` with users_failed 1 once fixed.
    pe_only = [f.rule("pe_ratio", "lt", "15", 10)]
    user = f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", pe_only)])
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    _warm_what_is_pending(dagster_instance)
    assert tuple(_warming(world)) == ("completed", 2, 0)
    for base, expected in (("JPY", ("partial", 1, 1)), ("USD", ("completed", 2, 0))):
        with world.begin() as conn:
            conn.execute(
                sa.text("UPDATE users SET base_currency = :b WHERE id = :u"), {"b": base, "u": user}
            )
        assert batch(dagster_instance).success  # re-scored: warmed again
        _warm_what_is_pending(dagster_instance)
        assert tuple(_warming(world)) == expected, base


def test_a_night_closed_by_the_failure_sensor_closes_its_warming(world, dagster_instance):
    # b0000 lands and is warmed while b0001 is still to come; b0001's run then dies, and the
    # failure sensor closes the night. No warm run follows (nothing of b0001 to warm), so the
    # warming has to close with the night: it stayed `started`.
    from scoring_pipeline.store.night.outcomes import record_batch_run_died

    for _ in range(3):  # two a batch: b0000 and b0001
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success
    _aged(world, "b0000")  # else it waits a few seconds for other batches to warm with
    _warm_what_is_pending(dagster_instance)
    assert _warming(world).status == "started"  # its night is not closed yet
    with world.begin() as conn:
        closed = record_batch_run_died(
            conn, dt.date.fromisoformat(DATE), "b0001", "run-x", "run run-x failure: gone"
        )
    assert closed is not None and closed.value == "partial"
    assert tuple(_warming(world)) == ("completed", 2, 0)
