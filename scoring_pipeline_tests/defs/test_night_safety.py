"""A night in an operator's hands (SPEC §6 "A night's lifecycle"): schedule ticks are idempotent
per night, `scores` partitions are exactly the batches of started nights, a partition that
belongs to no night never opens one, and the asset checks catch a corrupted batch."""

import datetime as dt
import os
import uuid
import warnings
from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG

from scoring_pipeline.definitions import defs
from scoring_pipeline.defs.assets.scores import scores
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.partitions import SCORES_PARTITIONS_NAME, scores_partition_key
from scoring_pipeline.store.batch_invariants import SUCCESS_EVENTS
from scoring_pipeline.store.membership import batch_keys_text, has_batch
from scoring_pipeline.store.night.opening import fail_night, open_night
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import (
    DATE,
    batch,
    batches_requested,
    forget_night_keys,
    refused_before_any_step,
    rows,
    rules,
    snapshots,
)

pytestmark = pytest.mark.db


def _schedule_resources():
    resources = build_resources()
    return {key: resources[key] for key in ("database", "settings")}


def _users(world, count):
    return [
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
        for _ in range(count)
    ]


def _tick(instance, date, *, at=None):
    """The schedule's tick of `date` at 04:00 UTC, or at the time `at`."""
    d = defs()
    schedule = d.resolve_schedule_def("overnight_scoring_schedule")
    # As a context manager: the evaluation opens its own instance from the ref, and must close it.
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=at or dt.datetime.fromisoformat(f"{date}T04:00:00+00:00"),
        repository_def=d.get_repository_def(),
        resources=_schedule_resources(),
    ) as context:
        return schedule.evaluate_tick(context)


def _night_events(world, date):
    return [
        (r.event_type, r.payload.get("status"))
        for r in rows(
            world,
            "SELECT e.event_type, e.payload FROM calculation_events e "
            "JOIN overnight_job_runs j ON j.correlation_id = e.correlation_id "
            "WHERE j.score_date = :d AND j.job_type = 'scoring' ORDER BY e.id",
            d=date,
        )
    ]


def test_a_second_tick_on_the_same_date_is_skipped_naming_the_night(world, dagster_instance):
    _users(world, 3)
    first = _tick(dagster_instance, DATE)
    assert first.run_requests and first.run_requests[0].partition_key == DATE
    assert snapshots(dagster_instance).success  # what the first tick's run does
    started = _tick(dagster_instance, DATE)
    assert not started.run_requests
    assert started.skip_message and f"scoring night {DATE} (all) is started" in (
        started.skip_message
    )
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    for _ in range(3):  # a cron firing every minute, or the daemon catching up missed ticks
        skipped = _tick(dagster_instance, DATE)
        assert not skipped.run_requests
        assert skipped.skip_message and "is completed" in skipped.skip_message
    assert _night_events(world, DATE) == [("JOB_STARTED", None), ("JOB_COMPLETED", "completed")]
    calculations = rows(
        world,
        "SELECT user_id, count(*) AS n FROM calculation_events "
        "WHERE event_type = 'CALC_STARTED' GROUP BY user_id",
    )
    assert [r.n for r in calculations] == [1, 1, 1]  # one calculation per user
    # Its batches re-materialised from the UI with the same outcome: the night's figures are
    # the same, so it is not closed again (a JOB_COMPLETED a batch, each with new timings).
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    assert _night_events(world, DATE) == [("JOB_STARTED", None), ("JOB_COMPLETED", "completed")]


def test_a_night_failed_after_it_closed_closes_again_when_its_batches_are_re_scored(
    world, dagster_instance
):
    """A finished night marked failed since (a refresh of its inputs whose providers were down):
    re-scoring its batches with the same results closes it again, `completed`, not left
    `failed` because its figures did not change."""
    _users(world, 3)
    assert snapshots(dagster_instance).success
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    with world.begin() as conn:
        fail_night(conn, dt.date.fromisoformat(DATE), stage="prices", error="providers down")
    for key in ("b0000", "b0001"):
        assert batch(dagster_instance, key).success
    (night,) = rows(
        world,
        "SELECT status FROM overnight_job_runs WHERE job_type = 'scoring' AND score_date = :d",
        d=DATE,
    )
    assert night.status == "completed"


def test_a_tick_restarts_a_night_that_failed_before_scoring_only(world, dagster_instance):
    _users(world, 1)
    date = "2026-10-05"
    with world.begin() as conn:
        open_night(conn, dt.date.fromisoformat(date))
        fail_night(
            conn, dt.date.fromisoformat(date), stage="exchange_rates", error="providers down"
        )
    again = _tick(dagster_instance, date)
    assert again.run_requests and again.run_requests[0].partition_key == date
    # A night that failed after scoring users is the operator's to retry, not the schedule's.
    with world.begin() as conn:
        conn.execute(
            sa.text("UPDATE overnight_job_runs SET users_processed = 2 WHERE score_date = :d"),
            {"d": date},
        )
    skipped = _tick(dagster_instance, date)
    assert not skipped.run_requests and "is failed" in (skipped.skip_message or "")


def test_a_tick_is_skipped_while_the_dates_snapshots_run_is_in_flight(world, dagster_instance):
    date = "2026-10-06"
    job = defs().resolve_job_def("overnight_snapshots_job")
    queued = dagster_instance.create_run_for_job(
        job,
        run_config={},
        tags={"dagster/partition": date},
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    try:
        skipped = _tick(dagster_instance, date)
        assert not skipped.run_requests
        assert queued.run_id in (skipped.skip_message or "")
    finally:
        dagster_instance.report_run_canceled(queued)
    assert _tick(dagster_instance, date).run_requests


def test_a_run_never_submitted_does_not_hold_the_ticks_back(world, dagster_instance):
    # Created NOT_STARTED and never queued (the process that made it died first): after a few
    # minutes it is no run in flight, or no later tick of its date would start the night.
    date = "2026-10-05"
    job = defs().resolve_job_def("overnight_snapshots_job")
    stuck = dagster_instance.create_run_for_job(
        job, run_config={}, tags={"dagster/partition": date}, status=dg.DagsterRunStatus.NOT_STARTED
    )
    try:
        assert not _tick(dagster_instance, date).run_requests  # just created: it may start yet
        with world.begin() as conn:  # the same database holds the Dagster storage
            conn.execute(
                sa.text(
                    "UPDATE runs SET create_timestamp = create_timestamp - interval '6 minutes' "
                    "WHERE run_id = :r"
                ),
                {"r": stuck.run_id},
            )
        assert _tick(dagster_instance, date).run_requests
    finally:
        dagster_instance.delete_run(stuck.run_id)


@pytest.mark.parametrize("date", ["2025-03-03", DATE])
def test_a_partition_of_no_night_opens_none(world, dagster_instance, date):
    _users(world, 1)
    if date == DATE:
        assert snapshots(dagster_instance).success  # a night whose batches are b0000 only
    before = rows(world, "SELECT job_type, status, completed_at FROM overnight_job_runs")
    key = scores_partition_key(date, "b0042")
    dagster_instance.add_dynamic_partitions(SCORES_PARTITIONS_NAME, [key])  # as the UI allows
    try:
        result = batch(dagster_instance, "b0042", date=date)
    finally:
        dagster_instance.delete_dynamic_partition(SCORES_PARTITIONS_NAME, key)
    assert not result.success
    failure = result.failure_data_for_node("scores")
    description = failure.user_failure_data.description if failure is not None else ""
    assert "belongs to no night" in (description or "")
    if date == DATE:
        assert f"the night of {DATE} has batches b0000;" in (description or "")
    assert rows(world, "SELECT job_type, status, completed_at FROM overnight_job_runs") == before
    assert not rows(world, "SELECT 1 FROM calculation_events WHERE user_id IS NOT NULL")


def test_a_night_that_failed_for_want_of_its_inputs_leaves_no_batches_to_backfill(
    world, dagster_instance, monkeypatch
):
    # Its batches read Missing for good, and the UI's "Failed and missing" (the README's
    # retry) launched them with the night's real failures: each failed at once, "no
    # exchange-rate snapshot for D", and the backfill ended failed.
    date = "2026-10-13"
    _users(world, 5)
    rates_file = os.environ["RATES_FILE"]
    monkeypatch.setenv("RATES_FILE", "/nonexistent/rates.json")  # the only provider is down
    assert not snapshots(dagster_instance, partition_key=date, raise_on_error=False).success
    night = rows(world, "SELECT status FROM overnight_job_runs WHERE score_date = :d", d=date)
    assert [r.status for r in night] == ["failed"]
    keys = dagster_instance.get_dynamic_partitions(SCORES_PARTITIONS_NAME)
    assert [k for k in keys if k.startswith(f"{date}/")] == []
    # Started again once the provider answers, the night registers its batches anew.
    monkeypatch.setenv("RATES_FILE", rates_file)
    assert snapshots(dagster_instance, partition_key=date).success
    keys = dagster_instance.get_dynamic_partitions(SCORES_PARTITIONS_NAME)
    assert [k for k in keys if k.startswith(f"{date}/")] == [
        scores_partition_key(date, b) for b in ("b0000", "b0001", "b0002")
    ]


def test_scores_partitions_are_the_batches_of_started_nights(world, dagster_instance):
    date = "2026-10-07"
    for _ in range(5):
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    bad = f.user(
        world,
        holdings=[("AAA", "USD")],
        criteria=[("US_TECH", "stock", [{**f.rule("roe", "gt", "1", 1), "operator": "nope"}])],
    )
    assert snapshots(dagster_instance, partition_key=date).success
    keys = [k for k in dagster_instance.get_dynamic_partitions(SCORES_PARTITIONS_NAME)]
    ours = [k for k in keys if k.startswith(date)]
    assert ours == [scores_partition_key(date, b) for b in ("b0000", "b0001", "b0002")]
    assert not [k for k in keys if "/" not in k]  # no bare batch key shared by every date
    results = {b: batch(dagster_instance, b, date=date) for b in ("b0000", "b0001", "b0002")}
    bad_batch = rows(world, "SELECT batch_key FROM scoring_batches WHERE user_id = :u", u=bad)
    statuses = dagster_instance.get_status_by_partition(
        scores.key, ours, dg.DynamicPartitionsDefinition(name=SCORES_PARTITIONS_NAME)
    )
    failed = sorted(k for k, s in statuses.items() if s == dg.AssetPartitionStatus.FAILED)
    missing = [k for k in ours if k not in statuses]
    assert failed == [scores_partition_key(date, bad_batch[0].batch_key)]
    assert not results[bad_batch[0].batch_key].success
    assert missing == []
    # A refreshed membership with fewer batches unregisters the keys it no longer uses.
    with world.begin() as conn:
        conn.execute(sa.text("UPDATE users SET deleted_at = now() WHERE id <> :u"), {"u": bad})
    refresh = {"ops": {"active_users": {"config": {"refresh": True}}}}
    assert snapshots(dagster_instance, partition_key=date, run_config=refresh).success
    ours = [
        k
        for k in dagster_instance.get_dynamic_partitions(SCORES_PARTITIONS_NAME)
        if k.startswith(date)
    ]
    assert ours == [scores_partition_key(date, "b0000")]


def _check_results(instance, key):
    """Only the checks of one partition (as the UI's "Execute checks" does): nothing re-scored."""
    job = defs().resolve_job_def("scoring_batch_job")
    checks_only = job.get_subset(
        asset_selection=set(),
        asset_check_selection=set(job.asset_layer.asset_graph.asset_check_keys),
    )
    result = checks_only.execute_in_process(partition_key=key, instance=instance)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.parametrize(
    ("corruption", "broken", "violation"),
    [
        (
            "UPDATE score_history SET score = score + 1 WHERE symbol = 'AAA'",
            "history_invariant",
            {"symbol": "AAA", "expected_rows": 1, "stored_rows": 1, "equal": False},
        ),
        (
            "INSERT INTO score_history SELECT user_id, 'ZZZ', score_date, criteria_version_id, "
            "score, correlation_id, calculated_at FROM score_history WHERE symbol = 'AAA'",
            "history_invariant",
            {"symbol": "ZZZ", "expected_rows": 0, "stored_rows": 1, "equal": False},
        ),
        (
            "DELETE FROM calculation_events WHERE event_type = 'INPUTS_CAPTURED'",
            "events_invariant",
            {
                "expected": "success",
                "events": ["CALC_STARTED", "SCORES_COMPUTED", "CALC_COMPLETED"],
            },
        ),
        (
            "UPDATE asset_scores SET percentage = 0 WHERE symbol = 'BBB'",
            "current_invariant",
            {"symbol": "BBB"},
        ),
        (
            "DELETE FROM asset_scores WHERE symbol = 'AAA'",
            "current_invariant",
            {"symbol": "AAA", "stored_score": None},
        ),
        (
            "UPDATE score_history SET outcomes = translate(outcomes, 'mu', 'um') "
            "WHERE symbol = 'AAA'",
            "history_invariant",
            {"symbol": "AAA", "expected_rows": 1, "stored_rows": 1, "equal": False},
        ),
        (
            "UPDATE score_history SET correlation_id = gen_random_uuid() WHERE symbol = 'AAA'",
            "history_invariant",
            {"symbol": "AAA", "expected_rows": 1, "stored_rows": 1, "equal": False},
        ),
        (
            "UPDATE score_history SET criteria_version_id = gen_random_uuid() WHERE symbol = 'AAA'",
            "history_invariant",
            {"symbol": "AAA", "expected_rows": 1, "stored_rows": 1, "equal": False},
        ),
        (
            "UPDATE asset_scores SET outcomes = translate(outcomes, 'mu', 'um') "
            "WHERE symbol = 'BBB'",
            "current_invariant",
            {"symbol": "BBB"},
        ),
        (
            "UPDATE asset_scores SET max_possible_score = max_possible_score + 1 "
            "WHERE symbol = 'BBB'",
            "current_invariant",
            {"symbol": "BBB"},
        ),
        (
            "UPDATE asset_scores SET correlation_id = gen_random_uuid() WHERE symbol = 'BBB'",
            "current_invariant",
            {"symbol": "BBB"},
        ),
        (
            "UPDATE calculation_events SET payload = jsonb_set(payload, '{status}', "
            "'\"failed\"') WHERE event_type = 'CALC_COMPLETED'",
            "events_invariant",
            {"expected": "success", "statuses": ["failed"]},
        ),
        (  # one event of each calculation filed under another user
            "UPDATE calculation_events SET user_id = gen_random_uuid() "
            "WHERE event_type = 'SCORES_COMPUTED'",
            "events_invariant",
            {"expected": "success", "events": SUCCESS_EVENTS},
        ),
        (  # a partial event set of another calculation of the users' on that date
            "INSERT INTO calculation_events (correlation_id, user_id, event_type, payload, "
            "score_date) SELECT gen_random_uuid(), user_id, 'CALC_STARTED', '{}', score_date "
            "FROM calculation_events WHERE event_type = 'CALC_STARTED'",
            "events_invariant",
            {"expected": "a complete set (not in the outcome)", "events": ["CALC_STARTED"]},
        ),
    ],
)
def test_asset_checks_fail_on_a_corrupted_batch(
    world, dagster_instance, corruption, broken, violation
):
    _users(world, 2)
    assert snapshots(dagster_instance).success
    result = batch(dagster_instance, "b0000")  # its checks pass (asserted by `batch`)
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        "events_invariant",
        "history_invariant",
        "current_invariant",
    }
    with world.begin() as conn:
        conn.execute(sa.text(corruption))
    evaluations = _check_results(dagster_instance, scores_partition_key(DATE, "b0000"))
    failed = {name for name, e in evaluations.items() if not e.passed}
    assert failed == {broken}
    assert evaluations[broken].severity == dg.AssetCheckSeverity.ERROR
    violations = evaluations[broken].metadata["violations"].value
    assert len(violations) == 2  # one per user, each named with its own columns
    for found in violations:
        assert {k: found.get(k) for k in violation} == violation, found
    if broken == "current_invariant":
        # The calculation's score beside the stored one, as exact text: equal when only the
        # percentage was corrupted, absent when the row was deleted.
        assert {tuple(v) for v in violations} == {
            ("user_id", "symbol", "expected_score", "stored_score")
        }
        for v in violations:
            assert Decimal(v["expected_score"]).as_tuple().exponent == -4
            assert v["stored_score"] == (v["expected_score"] if v["symbol"] == "BBB" else None)


def test_asset_checks_read_the_compact_breakdown_of_events_recorded_before_2026_12_04(
    world, dagster_instance
):
    """SCORES_COMPUTED carries the compact breakdown under `breakdown` (SPEC §5); events recorded
    until 2026-12-04 carry it under `outcomes`. A batch re-checked later is compared under
    either key: its checks pass, and a changed outcome in the older form is still caught."""
    _users(world, 2)
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success
    to_outcomes = (
        "UPDATE calculation_events SET payload = jsonb_set(payload, '{results}', ("
        "SELECT jsonb_agg((r - 'breakdown') || jsonb_build_object('outcomes', VALUE) "
        "ORDER BY n) FROM jsonb_array_elements(payload->'results') WITH ORDINALITY AS x(r, n))) "
        "WHERE event_type = 'SCORES_COMPUTED'"
    )
    key = scores_partition_key(DATE, "b0000")
    with world.begin() as conn:
        conn.execute(sa.text(to_outcomes.replace("VALUE", "r->'breakdown'")))
    evaluations = _check_results(dagster_instance, key)
    assert {name for name, e in evaluations.items() if not e.passed} == set()
    with world.begin() as conn:  # the outcomes of every result changed
        conn.execute(
            sa.text(
                to_outcomes.replace("r - 'breakdown'", "r - 'outcomes'").replace(
                    "VALUE", "translate(r->>'outcomes', 'mu', 'um')"
                )
            )
        )
    evaluations = _check_results(dagster_instance, key)
    assert {name for name, e in evaluations.items() if not e.passed} == {
        "history_invariant",
        "current_invariant",
    }


def test_asset_checks_fail_on_a_batch_whose_outcome_is_gone(world, dagster_instance):
    """Everything the checks compare hangs on the batch's outcome: with none, they cannot pass
    by checking nothing."""
    _users(world, 2)
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance, "b0000").success
    with world.begin() as conn:
        conn.execute(sa.text("DELETE FROM scoring_batch_results"))
    evaluations = _check_results(dagster_instance, scores_partition_key(DATE, "b0000"))
    assert {name for name, e in evaluations.items() if not e.passed} == {"events_invariant"}
    assert evaluations["events_invariant"].metadata["violations"].value == [
        {"batch": "b0000", "error": "no outcome recorded for the batch"}
    ]


def test_the_events_invariant_of_a_failed_calculation(world, dagster_instance):
    """A batch with a failed user fails its step, so Dagster skips its checks until it is
    re-scored; the invariant itself still holds a failed calculation to its event set."""
    from scoring_pipeline.store.batch_invariants import check_batch

    good = _users(world, 1)[0]
    bad = f.user(  # in b0000 with the good one (batches of 2)
        world,
        holdings=[("AAA", "USD")],
        criteria=[("US_TECH", "stock", [f.rule("pe_ratio", "lt", "x", 1)])],
    )
    assert snapshots(dagster_instance).success
    assert not batch(dagster_instance, "b0000").success  # the bad user's criteria fail

    def events_report():
        with world.connect() as conn:
            return next(r for r in check_batch(conn, dt.date.fromisoformat(DATE), "b0000"))

    report = events_report()
    assert report.name == "events" and report.calculations == 2 and report.holds
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM calculation_events WHERE user_id = :u "
                "AND event_type = 'CALC_COMPLETED'"
            ),
            {"u": bad},
        )
    (violation,) = events_report().violations
    assert violation["userId"] == bad and violation["expected"] == "failed"
    assert violation["events"] == ["CALC_STARTED"]  # validated before inputs are captured
    assert good not in {v["userId"] for v in events_report().violations}


def test_a_night_of_many_batches_is_named_by_its_first_and_last(world):
    day = dt.date(2026, 10, 7)
    users = [f.user(world) for _ in range(8)]
    with world.begin() as conn:
        for i, user in enumerate(users):
            conn.execute(
                sa.text(
                    "INSERT INTO scoring_batches (score_date, user_id, batch_key) "
                    "VALUES (:d, :u, :b)"
                ),
                {"d": day, "u": user, "b": f"b{i:04d}"},
            )
        assert batch_keys_text(conn, day) == "b0000 to b0007 (8 batches)"
        assert has_batch(conn, day, "b0007") and not has_batch(conn, day, "b0008")
        assert batch_keys_text(conn, dt.date(2026, 10, 8)) == "none"


def test_batches_a_run_or_a_backfill_is_still_scoring_are_found(dagster_instance):
    """What `retry-failed` leaves alone: the partition of a run not started yet, a running
    ranged run's batches, a backfill's batches not launched yet; not a finished run's, nor
    another job's."""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    from scoring_pipeline.defs.batches_in_flight import partitions_being_scored
    from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS
    from scoring_pipeline.defs.run_tags import RANGE_END_TAG, RANGE_START_TAG

    date = "2026-10-07"
    keys = [scores_partition_key(date, f"b{n:04d}") for n in range(7)]
    d = defs()
    job = d.resolve_job_def("scoring_batch_job")
    group = DEFAULT_GROUPS[DEFAULT_GROUP]
    graph = d.resolve_asset_graph()
    dagster_instance.add_dynamic_partitions(SCORES_PARTITIONS_NAME, keys)
    queued = dagster_instance.create_run_for_job(
        job, tags={"dagster/partition": keys[1]}, status=dg.DagsterRunStatus.NOT_STARTED
    )
    ranged = dagster_instance.create_run_for_job(
        job,
        tags={RANGE_START_TAG: keys[2], RANGE_END_TAG: keys[3]},
        status=dg.DagsterRunStatus.STARTED,
    )
    ended = dagster_instance.create_run_for_job(
        job, tags={"dagster/partition": keys[4]}, status=dg.DagsterRunStatus.FAILURE
    )
    other = dagster_instance.create_run_for_job(
        d.resolve_job_def("dashboard_cache_job"),
        run_config={"ops": {"warm_dashboard_cache": {"config": {"batches": []}}}},
        tags={"dagster/partition": keys[5]},
        status=dg.DagsterRunStatus.STARTED,
    )
    backfill_id = f"retrytest{uuid.uuid4().hex[:8]}"
    # As the webserver makes a UI backfill (whose code still calls a deprecated selection).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Function `AssetSelection.sources`", DeprecationWarning)
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=graph,
            partition_names=[keys[0], keys[1]],
            asset_selection=[dg.AssetKey("scores")],
            backfill_timestamp=dt.datetime.now(dt.UTC).timestamp(),
            tags={},
            dynamic_partitions_store=dagster_instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        )
    dagster_instance.add_backfill(backfill)
    try:
        busy = partitions_being_scored(dagster_instance, group, graph, keys)
        assert busy == {
            keys[0]: f"backfill {backfill_id}",
            keys[1]: f"run {queued.run_id}",
            keys[2]: f"run {ranged.run_id}",
            keys[3]: f"run {ranged.run_id}",
        }
        # A backfill that ended, and runs that ended, hold nothing back.
        dagster_instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))
        for run in (queued, ranged, other):
            dagster_instance.report_run_canceled(run)
        assert partitions_being_scored(dagster_instance, group, graph, keys) == {}
    finally:
        # Nothing left in the session's instance for later tests (and their daemons) to see.
        if dagster_instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED:
            dagster_instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))
        for run in (queued, ranged, other, ended):
            dagster_instance.delete_run(run.run_id)
        for key in keys:
            dagster_instance.delete_dynamic_partition(SCORES_PARTITIONS_NAME, key)


def test_a_backfill_of_the_snapshots_starts_no_night(world, dagster_instance):
    """The UI's "Materialize all" over every date is a backfill: a date never scored is refused
    before anything is fetched or stored, and a started night is never restarted by it. The
    prices alone are refused on such a date even launched by hand (they were an empty
    "materialisation" of nothing)."""
    from scoring_pipeline.defs.assets.prices import prices

    _users(world, 2)
    backfill = {"dagster/backfill": "selectall"}
    nights = "SELECT score_date::text AS d, status FROM overnight_job_runs ORDER BY 1"
    inputs = (
        "SELECT (SELECT count(*) FROM scoring_batches WHERE score_date = :d) "
        "+ (SELECT count(*) FROM price_snapshots WHERE score_date = :d) "
        "+ (SELECT count(*) FROM exchange_rate_snapshots WHERE score_date = :d) AS n"
    )
    old = "2025-02-03"
    refused = snapshots(dagster_instance, partition_key=old, tags=backfill, raise_on_error=False)
    assert not refused.success
    failure = refused.failure_data_for_node("active_users")
    description = failure.user_failure_data.description if failure is not None else ""
    assert f"{old} has no night" in (description or "")
    for tags in (backfill, {}):  # the prices alone, in a backfill or launched by hand
        alone = dg.materialize(
            [prices],
            partition_key=old,
            instance=dagster_instance,
            resources=build_resources(),
            tags=tags,
            raise_on_error=False,
        )
        failure = alone.failure_data_for_node("prices")
        description = failure.user_failure_data.description if failure is not None else ""
        assert not alone.success and f"{old} has no night" in (description or "")
    assert rows(world, nights) == []
    assert rows(world, inputs, d=old)[0].n == 0

    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success
    closed = rows(world, nights)
    assert [r.status for r in closed] == ["completed"]
    events = "SELECT count(*) AS n FROM calculation_events WHERE event_type = 'JOB_STARTED'"
    started = rows(world, events)[0].n
    kept = snapshots(dagster_instance, tags=backfill)
    assert kept.success  # the frozen inputs, kept
    assert rows(world, nights) == closed and rows(world, events)[0].n == started
    # Its run re-executed from its run page (which drops the backfill's tag): still a backfill's
    # (an operator review: it restarted the night, and every user was scored again).
    for parent, day in ((kept.run_id, DATE), (refused.run_id, old)):
        again = snapshots(
            dagster_instance,
            partition_key=day,
            tags={ROOT_RUN_ID_TAG: parent, PARENT_RUN_ID_TAG: parent},
            raise_on_error=False,
        )
        assert again.success == (day == DATE)
    assert rows(world, nights) == closed and rows(world, events)[0].n == started
    assert rows(world, inputs, d=old)[0].n == 0


def test_a_night_being_started_or_scored_is_not_restarted(world, dagster_instance):
    """A second launch of a date's snapshots (another tab, `score --date` during the night)
    while the night's batches are being scored, or while the run that started it is still
    running, is refused: no second JOB_STARTED, no batch scored twice, and its failure does not
    fail the night. Once nothing works on the night, a launch restarts it, and only that run's
    success launches batches."""
    from scoring_pipeline.store.night.model import find_night, merge_metrics
    from scoring_pipeline.store.night.outcomes import record_snapshots_run_died

    _users(world, 2)
    d = defs()
    forget_night_keys(dagster_instance)
    first = snapshots(dagster_instance)
    events = "SELECT count(*) AS n FROM calculation_events WHERE event_type = 'JOB_STARTED'"
    assert rows(world, events)[0].n == 1
    made: list[str] = []
    try:
        scoring = dagster_instance.create_run_for_job(
            d.resolve_job_def("scoring_batch_job"),
            tags={"dagster/partition": scores_partition_key(DATE, "b0000")},
            status=dg.DagsterRunStatus.STARTED,
        )
        made.append(scoring.run_id)
        refused = snapshots(dagster_instance, raise_on_error=False)
        made.append(refused.run_id)
        failure = refused.failure_data_for_node("active_users")
        description = failure.user_failure_data.description if failure is not None else ""
        assert "was not restarted: its batches are being scored" in (description or "")
        assert f"(run {scoring.run_id} scores b0000)" in (description or "")
        assert rows(world, events)[0].n == 1
        with world.begin() as conn:
            # What the failure sensor does with the refused run: nothing, it is not the night's.
            assert not record_snapshots_run_died(
                conn, dt.date.fromisoformat(DATE), "refused", run_id=refused.run_id
            )
            night = find_night(conn, dt.date.fromisoformat(DATE))
        assert night is not None and night.status.value == "started"
        assert night.snapshot_run_id == first.run_id
        dagster_instance.report_run_canceled(scoring)

        # The run that started the night is still running (two launches at once).
        starting = dagster_instance.create_run_for_job(
            d.resolve_job_def("overnight_snapshots_job"),
            tags={"dagster/partition": DATE},
            status=dg.DagsterRunStatus.STARTED,
        )
        made.append(starting.run_id)
        with world.begin() as conn:
            merge_metrics(
                conn,
                dt.date.fromisoformat(DATE),
                {"dagster_snapshot_run_id": starting.run_id},
            )
        refused = snapshots(dagster_instance, raise_on_error=False)
        made.append(refused.run_id)
        failure = refused.failure_data_for_node("active_users")
        description = failure.user_failure_data.description if failure is not None else ""
        assert f"run {starting.run_id}, which started it, has not ended yet (it is started)" in (
            description or ""
        )
        dagster_instance.report_run_canceled(starting)

        # Nothing works on the night any more: a launch restarts it, and owns it.
        again = snapshots(dagster_instance)
        made.append(again.run_id)
        assert rows(world, events)[0].n == 2
        assert batches_requested(dagster_instance, first) == []  # superseded
        assert [r.partition_key for r in batches_requested(dagster_instance, again)] == [
            scores_partition_key(DATE, "b0000")
        ]
        with world.begin() as conn:  # its own failure would fail the night
            assert record_snapshots_run_died(
                conn, dt.date.fromisoformat(DATE), "died", run_id=again.run_id
            )
    finally:
        for run_id in made:
            dagster_instance.delete_run(run_id)
        forget_night_keys(dagster_instance)


def test_the_checks_run_alone_without_a_partition_say_how_to_check_a_batch(dagster_instance):
    # The Checks tab's "Execute all": the checks alone, in a run with no partition.
    from scoring_pipeline.defs.checks import scores_invariants

    result = dg.materialize(
        [scores, scores_invariants],
        selection=dg.AssetSelection.checks_for_assets(scores),
        instance=dagster_instance,
        resources=build_resources(),
        raise_on_error=False,
    )
    try:
        assert not result.success
        failure = result.failure_data_for_node("scores_invariants")
        description = failure.user_failure_data.description if failure is not None else ""
        assert "run per batch partition, and this run has none" in (description or "")
        assert "Materialize" in (description or "")
    finally:
        dagster_instance.delete_run(result.run_id)


def test_a_snapshots_run_launched_with_no_partition_says_how_to_start_a_night(dagster_instance):
    # The launchpad's *Launch run* of the snapshots job with no partition selected (an operator
    # review: it failed with Dagster's "Cannot access partition_key for a non-partitioned run").
    from scoring_pipeline.defs.assets.active_users import active_users
    from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
    from scoring_pipeline.defs.assets.prices import prices

    result = dg.materialize(
        [active_users, exchange_rates, prices],
        instance=dagster_instance,
        resources=build_resources(),
        raise_on_error=False,
    )
    try:
        assert not result.success
        failure = result.failure_data_for_node("active_users")
        description = (failure.user_failure_data.description if failure else None) or ""
        assert "no partition" in description and "score --date" in description, description
    finally:
        dagster_instance.delete_run(result.run_id)


def test_a_batch_run_launched_with_no_partition_says_how_to_score_batches(world, dagster_instance):
    """The launchpad's *Launch run* of the batch job with no partition selected, on a date whose
    snapshots are materialised: Dagster reads their versions for the run's partitions before
    the asset's code runs, and failed with "Cannot access partition_key for a non-partitioned
    run" (docs/hardening.md). The scores IO manager refuses the run as it starts, saying how
    to score batches."""
    _users(world, 2)
    assert snapshots(dagster_instance).success
    job = defs().resolve_job_def("scoring_batch_job")
    result = job.execute_in_process(instance=dagster_instance, raise_on_error=False)
    try:
        assert not result.success
        message = refused_before_any_step(result)
        assert "scoring_batch_job was launched with no partition" in message, message
        assert "retry-failed --date 2026-11-27`" in message, message
    finally:
        dagster_instance.delete_run(result.run_id)


def test_a_tick_previewed_before_its_time_starts_no_night(world, dagster_instance):
    """The schedule's "Preview tick result" evaluates any tick, tomorrow's included, and its
    "Launch all" launches what it requested (an operator review: tomorrow's night was started
    at once on today's prices, and the real tick then skipped it as started). A tick whose time
    has not come is skipped saying so; once it has, it starts the night."""
    _users(world, 2)
    now = dt.datetime.now(dt.UTC)
    for tick, due in ((now + dt.timedelta(hours=2), False), (now - dt.timedelta(hours=2), True)):
        result = _tick(dagster_instance, None, at=tick)
        if due:
            (request,) = result.run_requests or []
            assert request.partition_key == tick.date().isoformat()
        else:
            assert not result.run_requests
            assert result.skip_message and "has not come yet" in result.skip_message
    assert not rows(world, "SELECT 1 FROM overnight_job_runs")


def test_the_batches_being_scored_are_named_as_ranges():
    """An operator review: `score --date D` during D's night named each of two runs' ten batches
    one by one, and the command's one-line error was cut at 500 characters in the middle of
    its advice ("… re-scores only failed b"). A run scores a range: it is named as one."""
    from scoring_pipeline.defs.batches_in_flight import batch_ranges

    run = [f"b{n:04d}" for n in range(20, 30)]
    assert batch_ranges(run) == "b0020..b0029"
    assert batch_ranges(["b0008", "b0000", "b0001", "b0002", "b0005", "b0007"]) == (
        "b0000..b0002, b0005, b0007..b0008"
    )
    assert batch_ranges(["b0000"]) == "b0000"
