"""The nightly schedule (cron and timezone from the environment, ticks → score date) and the
sensor that launches every batch of a date once its snapshots run has succeeded."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from scoring_pipeline.definitions import defs
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.partitions import scores_partition_key
from scoring_pipeline.runtime.run_launcher import CLI_TRIGGER, TRIGGER_TAG
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import batches_requested, forget_night_keys


def _schedule_resources():
    resources = build_resources()
    return {key: resources[key] for key in ("database", "settings")}


def test_default_schedule_is_4am_utc():
    schedule = defs().resolve_schedule_def("overnight_scoring_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 4 * * *", "UTC")


# Schedule tests evaluate on the session's instance: a second test instance created and disposed
# mid-session leaves Dagster's context-local defs-state storage pointing at a dead instance.
@pytest.mark.db
def test_schedule_uses_overnight_job_cron_and_timezone(
    monkeypatch, clean_db, app_env, dagster_instance
):
    monkeypatch.setenv("OVERNIGHT_JOB_CRON", "30 2 * * 1-5")
    monkeypatch.setenv("OVERNIGHT_JOB_TIMEZONE", "America/Sao_Paulo")
    d = defs()
    schedule = d.resolve_schedule_def("overnight_scoring_schedule")
    assert schedule.cron_schedule == "30 2 * * 1-5"
    assert schedule.execution_timezone == "America/Sao_Paulo"
    tick = dt.datetime(2026, 11, 27, 2, 30, tzinfo=ZoneInfo("America/Sao_Paulo"))
    with dg.build_schedule_context(
        instance=dagster_instance,
        scheduled_execution_time=tick,
        repository_def=d.get_repository_def(),
        resources=_schedule_resources(),
    ) as context:
        request = schedule.evaluate_tick(context).run_requests
    assert request is not None and len(request) == 1
    assert request[0].partition_key == "2026-11-27"
    assert request[0].run_key == "night-2026-11-27"
    assert request[0].job_name in (None, "overnight_snapshots_job")


@pytest.mark.db
def test_schedule_tick_late_in_the_day_keeps_its_local_date(
    monkeypatch, clean_db, app_env, dagster_instance
):
    monkeypatch.setenv("OVERNIGHT_JOB_CRON", "0 23 * * *")
    monkeypatch.setenv("OVERNIGHT_JOB_TIMEZONE", "America/New_York")
    d = defs()
    schedule = d.resolve_schedule_def("overnight_scoring_schedule")
    tick = dt.datetime(2026, 11, 27, 23, 0, tzinfo=ZoneInfo("America/New_York"))  # 04:00 UTC
    with dg.build_schedule_context(
        instance=dagster_instance,
        scheduled_execution_time=tick,
        repository_def=d.get_repository_def(),
        resources=_schedule_resources(),
    ) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert requests is not None and requests[0].partition_key == "2026-11-27"


@pytest.mark.db
@pytest.mark.parametrize(
    ("per_run", "runs"),
    [
        (None, [("b0000", "b0002")]),  # the default, 10 a run
        ("2", [("b0000", "b0001"), ("b0002", "b0002")]),
        ("1", [("b0000", "b0000"), ("b0001", "b0001"), ("b0002", "b0002")]),
    ],
)
def test_sensor_requests_the_nights_batches_after_snapshots(
    clean_db, app_env, tmp_path, monkeypatch, dagster_instance, per_run, runs
):
    _sensor_world(clean_db, tmp_path, monkeypatch, users=5)
    if per_run is not None:
        monkeypatch.setenv("SCORING_BATCHES_PER_RUN", per_run)
    # Earlier tests of the shared instance registered some of the date's keys among other
    # dates'; this night's keys are registered afresh, consecutively.
    forget_night_keys(dagster_instance, "2026-11-27")
    job = defs().resolve_job_def("overnight_snapshots_job")
    result = job.execute_in_process(partition_key="2026-11-27", instance=dagster_instance)
    requests = batches_requested(dagster_instance, result)
    key = lambda b: scores_partition_key("2026-11-27", b)  # noqa: E731
    assert [_targets(r) for r in requests] == [(key(a), key(b)) for a, b in runs]
    assert len({r.run_key for r in requests}) == len(runs)
    for request in requests:  # one batch: its partition, as a UI launch; more: a range
        first, last = _targets(request)
        assert (request.partition_key == first) == (first == last)
        assert request.tags.get("scoring/batches") == (
            None if first == last else "2" if per_run else "3"
        )
        expected_range = f"{first.split('/')[1]}..{last.split('/')[1]}"
        assert request.tags.get("scoring/batch_range") == (
            None if first == last else expected_range
        )


@pytest.mark.db
def test_sensor_leaves_the_nights_of_score_to_it_but_not_their_re_executions(
    clean_db, app_env, tmp_path, monkeypatch, dagster_instance
):
    """`scoring-pipeline score` scores a night's batches itself: its snapshots run (executed in
    its own process, tagged `cli`) launches none, though the UI sees it in the code location
    (it can be re-executed). A re-execution of it from the UI keeps its tags but is launched to
    the run workers (a Celery task): the night's batches are then the sensor's."""
    _sensor_world(clean_db, tmp_path, monkeypatch, users=3)
    forget_night_keys(dagster_instance, "2026-11-27")
    job = defs().resolve_job_def("overnight_snapshots_job")
    cli = {TRIGGER_TAG: CLI_TRIGGER}
    result = job.execute_in_process(partition_key="2026-11-27", instance=dagster_instance, tags=cli)
    assert batches_requested(dagster_instance, result) == []
    relaunched = job.execute_in_process(
        partition_key="2026-11-27",
        instance=dagster_instance,
        tags={**cli, DAGSTER_CELERY_TASK_ID_TAG: "a-task"},
    )
    key = lambda b: scores_partition_key("2026-11-27", b)  # noqa: E731
    requests = batches_requested(dagster_instance, relaunched)
    assert [_targets(r) for r in requests] == [(key("b0000"), key("b0001"))]


def _targets(request: dg.RunRequest) -> tuple[str, str]:
    """(first, last) partition a run request targets."""
    if request.partition_key:
        return request.partition_key, request.partition_key
    return (
        request.tags["dagster/asset_partition_range_start"],
        request.tags["dagster/asset_partition_range_end"],
    )


def test_a_run_never_spans_keys_of_another_night(dagster_instance):
    """Keys registered later (a refreshed membership's new batch, after another night's keys)
    start a run of their own: a range covers every key between its ends."""
    from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS
    from scoring_pipeline.defs.partitions import night_runs, register_night_batches

    group = DEFAULT_GROUPS[DEFAULT_GROUP]
    first, second = dt.date(2031, 3, 2), dt.date(2031, 3, 3)  # dates no other test registers
    register_night_batches(dagster_instance, first, ["b0000", "b0001"], group)
    register_night_batches(dagster_instance, second, ["b0000", "b0001", "b0002"], group)
    register_night_batches(dagster_instance, first, ["b0000", "b0001", "b0002", "b0003"], group)
    runs = night_runs(
        dagster_instance, group, first, ["b0000", "b0001", "b0002", "b0003", "b0009"], 3
    )
    k = lambda b: scores_partition_key(first, b)  # noqa: E731
    assert runs == [[k("b0000"), k("b0001")], [k("b0002"), k("b0003")], [k("b0009")]]
    assert night_runs(dagster_instance, group, second, ["b0000", "b0001", "b0002"], 2) == [
        [scores_partition_key(second, "b0000"), scores_partition_key(second, "b0001")],
        [scores_partition_key(second, "b0002")],
    ]


@pytest.mark.db
def test_sensor_follows_a_night_started_from_the_asset_graph(
    clean_db, app_env, tmp_path, monkeypatch, dagster_instance
):
    """Materialising the snapshot assets of a date from the asset graph (Dagster's implicit
    asset job) starts the night as its job does: the sensor launches its batches. A run that
    started no night (the prices alone, a backfill) launches none."""
    from scoring_pipeline.defs.assets.active_users import active_users
    from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
    from scoring_pipeline.defs.assets.prices import prices

    date = "2026-11-25"
    _sensor_world(clean_db, tmp_path, monkeypatch, users=3)
    forget_night_keys(dagster_instance, date)
    resources = build_resources()

    def requests_after(assets, **kwargs):
        result = dg.materialize(
            assets, partition_key=date, instance=dagster_instance, resources=resources, **kwargs
        )
        assert result.success
        return batches_requested(dagster_instance, result)

    started = requests_after([active_users, exchange_rates, prices])
    key = lambda b: scores_partition_key(date, b)  # noqa: E731
    assert [_targets(r) for r in started] == [(key("b0000"), key("b0001"))]
    assert requests_after([prices]) == []  # re-fetching a night's prices starts nothing
    backfill = {"dagster/backfill": "selectall"}
    assert requests_after([active_users, exchange_rates, prices], tags=backfill) == []


def _sensor_world(engine, tmp_path, monkeypatch, *, users: int) -> None:
    """One US instrument, provider files for it, batches of 2, `users` users scoring it."""
    f.market(engine, "US")
    f.instrument(engine, "AAA", market="US", currency="USD", eps="1")
    for key, value in f.provider_files(
        tmp_path, rates={"EUR": "0.9"}, prices={"AAA": ("10", "USD")}
    ).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SCORING_BATCH_SIZE", "2")
    for _ in range(users):
        f.user(
            engine,
            holdings=[("AAA", "USD")],
            criteria=[("US", "stock", [f.rule("pe_ratio", "lt", "20", 5)])],
        )
