"""Runs of several batch partitions (a range of a night's keys, as `scoring_batches_sensor`
launches them): each batch lands, shows in the partitions UI and is checked on its own; a batch
that fails fails alone, and a run that dies leaves the batches it landed landed."""

import datetime as dt
import json
import multiprocessing
import time
import uuid
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RESUME_RETRY_TAG, ROOT_RUN_ID_TAG

from scoring_pipeline.cli.status import _completed, _next_step, _took
from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
from scoring_pipeline.defs.assets.prices import prices
from scoring_pipeline.defs.assets.scores import scores
from scoring_pipeline.defs.assets.snapshot import BACKFILL_TAG
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.job_names import BATCH_JOB
from scoring_pipeline.defs.partitions import scores_partition_key, scores_partitions
from scoring_pipeline.defs.sensors import scoring_run_failure_sensor
from scoring_pipeline.runtime.run_launcher import CLI_TRIGGER, TRIGGER_TAG
from scoring_pipeline.store import batch_write
from scoring_pipeline.store.night.closing import failed_users
from scoring_pipeline.store.night.model import find_night
from scoring_pipeline.store.night.opening import tick_skip_reason
from scoring_pipeline.store.night.outcomes import record_batch_run_died
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

KEYS = [scores_partition_key(DATE, b) for b in ("b0000", "b0001", "b0002")]
CHECKS = {"events_invariant", "history_invariant", "current_invariant"}


def _uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _night(world, instance, bad=()):
    """Five users in three batches (two a batch, by id); users in `bad` have invalid rules."""
    for n in range(1, 6):
        rule_set = [f.rule("pe_ratio", "lt", "abc", 10)] if n in bad else rules()
        f.user(
            world,
            user_id=_uid(n),
            holdings=[("AAA", "USD")],
            criteria=[("US_TECH", "stock", rule_set)],
        )
    forget_night_keys(instance)
    assert snapshots(instance).success


def _failure_message(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message  # type: ignore[union-attr]


def _failure_sensor_sees(instance, run_id: str) -> None:
    """Evaluate the failure sensor on the failed run `run_id`, as the daemon does."""
    failure = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="scoring_run_failure_sensor",
        dagster_event=failure.records[0].event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id),
        resources={"database": build_resources()["database"]},
    ).for_run_failure()
    scoring_run_failure_sensor(context)


def _statuses(instance) -> dict[str, str]:
    found = instance.get_status_by_partition(scores.key, KEYS, scores_partitions) or {}
    return {k.split("/")[1]: (v.value if v else "MISSING") for k, v in found.items()}


def _outcomes(world) -> dict[str, tuple[str, str, int]]:
    return {
        r.batch_key: (r.status, r.dagster_run_id, r.users_failed)
        for r in rows(
            world,
            "SELECT batch_key, status, dagster_run_id, users_failed FROM scoring_batch_results "
            "WHERE score_date = :d",
            d=DATE,
        )
    }


def _night_row(world):
    return rows(
        world,
        "SELECT status, users_processed, users_failed FROM overnight_job_runs "
        "WHERE job_type = 'scoring' AND score_date = :d",
        d=DATE,
    )[0]


def test_a_run_of_three_batches_lands_and_checks_each(world, dagster_instance):
    _night(world, dagster_instance)
    result = batches(dagster_instance)
    assert result.success
    materialized = result.asset_materializations_for_node("scores")
    assert sorted(m.partition or "" for m in materialized) == KEYS
    for m in materialized:  # the run's totals, and each batch's own figures under its key
        assert m.metadata["batches_in_run"].value == 3
        assert m.metadata["run_users_success"].value == 5
        per_batch = m.metadata["batches"].value
        assert {k: v["users_success"] for k, v in per_batch.items()} == dict(
            zip(KEYS, [2, 2, 1], strict=True)
        )
    evaluations = result.get_asset_check_evaluations()
    assert {(e.partition, e.check_name) for e in evaluations} == {
        (k, c) for k in KEYS for c in CHECKS
    }
    assert all(e.passed for e in evaluations)
    # each evaluation targets its partition's materialisation of this run
    assert {e.target_materialization_data.run_id for e in evaluations} == {result.run_id}  # type: ignore[union-attr]
    assert _outcomes(world) == {
        b: ("success", result.run_id, 0) for b in ("b0000", "b0001", "b0002")
    }
    night = _night_row(world)
    assert (night.status, night.users_processed, night.users_failed) == ("completed", 5, 0)
    assert _statuses(dagster_instance) == dict.fromkeys(["b0000", "b0001", "b0002"], "MATERIALIZED")


def test_a_batch_with_failed_users_fails_alone_inside_its_run(world, dagster_instance):
    _night(world, dagster_instance, bad=(3,))  # user 3 is in b0001 with user 4
    result = batches(dagster_instance)
    assert not result.success
    message = _failure_message(result)
    assert "1 of 3 batches of this run failed" in message
    assert f"{DATE}/b0001: 1 of 2 users of batch b0001" in message
    materialized = result.asset_materializations_for_node("scores")
    assert {m.partition: m.metadata["users_success"].value for m in materialized} == {
        KEYS[0]: 2,
        KEYS[2]: 1,
    }
    evaluations = result.get_asset_check_evaluations()  # the landed batches' checks
    assert {(e.partition, e.check_name) for e in evaluations} == {
        (k, c) for k in (KEYS[0], KEYS[2]) for c in CHECKS
    }
    assert all(e.passed for e in evaluations)
    assert _statuses(dagster_instance) == {
        "b0000": "MATERIALIZED",
        "b0001": "FAILED",
        "b0002": "MATERIALIZED",
    }
    assert _outcomes(world) == {
        "b0000": ("success", result.run_id, 0),
        "b0001": ("partial", result.run_id, 1),
        "b0002": ("success", result.run_id, 0),
    }
    night = _night_row(world)
    assert (night.status, night.users_failed) == ("partial", 1)

    # The operator fixes the data and re-materialises the failed partition alone.
    with world.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE criteria_versions SET rules = jsonb_set(rules, '{0,value}', '\"15\"') "
            f"WHERE user_id = '{_uid(3)}'"
        )
    assert batch(dagster_instance, "b0001").success
    assert _statuses(dagster_instance) == dict.fromkeys(["b0000", "b0001", "b0002"], "MATERIALIZED")
    assert _night_row(world).status == "completed"


def test_a_range_over_a_key_of_no_night_scores_the_others(world, dagster_instance):
    _night(world, dagster_instance)
    stray = scores_partition_key(DATE, "b0007")  # added by hand, after the night's keys
    dagster_instance.add_dynamic_partitions(scores_partitions.name, [stray])
    try:
        result = batches(dagster_instance, "b0000", "b0007")
    finally:
        dagster_instance.delete_dynamic_partition(scores_partitions.name, stray)
    assert not result.success
    message = _failure_message(result)
    assert f"{stray}: {stray} belongs to no night" in message
    assert {m.partition for m in result.asset_materializations_for_node("scores")} == set(KEYS)
    assert _night_row(world).status == "completed"  # the stray key is no batch of it


def _b0001_write_fails(monkeypatch) -> None:
    """b0001's write fails for good (a lost connection, final: the step is not retried)."""
    real = batch_write.persist_batch

    def persist(engine, output, *, run_id):
        if output.batch_key == "b0001":
            raise dg.Failure("connection to the server was lost", allow_retries=False)
        return real(engine, output, run_id=run_id)

    monkeypatch.setattr("scoring_pipeline.defs.io_managers.persist_batch", persist)


def test_the_failure_sensor_leaves_the_runs_of_score_to_it(world, dagster_instance, monkeypatch):
    """A batch run `scoring-pipeline score` executed in its own process records its end itself
    (it counts what the run did not land failed, then closes the night): the failure sensor,
    which sees it in the code location (the UI can re-execute it), leaves it alone."""
    _night(world, dagster_instance)
    _b0001_write_fails(monkeypatch)
    result = batches(dagster_instance, tags={TRIGGER_TAG: CLI_TRIGGER})
    assert not result.success
    _failure_sensor_sees(dagster_instance, result.run_id)
    assert _outcomes(world) == {"b0000": ("success", result.run_id, 0)}
    assert _night_row(world).status == "started"


def test_a_run_that_dies_mid_range_keeps_what_it_landed(world, dagster_instance, monkeypatch):
    """A write that fails (a lost connection, here a final failure so that the step is not
    retried) stops the run: the batch before it stays materialised and checked; the failure
    sensor then counts the batches the run did not land as failed, and the night closes."""
    _night(world, dagster_instance)
    _b0001_write_fails(monkeypatch)
    result = batches(dagster_instance)
    assert not result.success
    assert [m.partition for m in result.asset_materializations_for_node("scores")] == KEYS[:1]
    assert {e.partition for e in result.get_asset_check_evaluations()} == {KEYS[0]}
    assert _statuses(dagster_instance) == {
        "b0000": "MATERIALIZED",
        "b0001": "FAILED",
        "b0002": "FAILED",
    }
    assert _night_row(world).status == "started"  # two batches have no outcome yet

    _failure_sensor_sees(dagster_instance, result.run_id)
    # b0000's materialisation is the run's own: the sensor reports none of its own (it does
    # for a landed batch only when the run recorded none, its process killed: the e2e test)
    latest = dagster_instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=scores.key, asset_partitions=[KEYS[0]]), limit=1
    ).records
    assert latest[0].event_log_entry.run_id == result.run_id
    assert _outcomes(world) == {
        "b0000": ("success", result.run_id, 0),
        "b0001": ("failed", result.run_id, 2),
        "b0002": ("failed", result.run_id, 1),
    }
    night = _night_row(world)
    assert (night.status, night.users_failed) == ("partial", 3)
    # What `status` says: the run's failure in one line a user, and what to do about it.
    day = dt.date.fromisoformat(DATE)
    with world.connect() as conn:
        found, failed = find_night(conn, day), failed_users(conn, day)
    assert found is not None and {f["stage"] for f in failed} == {"batch"}
    assert all("\n" not in f["error"]["message"] for f in failed)
    # The step's own error, not "Steps failed: ['scores']".
    assert {f["error"]["message"] for f in failed} == {
        f"run {result.run_id} FAILURE: stage scores: connection to the server was lost"
    }
    step = _next_step(found, ["all"], failed)
    assert step.startswith(
        "their batch runs ended without scoring them (stage batch: a worker died, a run was "
        f"cancelled); retry them with `scoring-pipeline retry-failed --date {DATE}`"
    ), step


def test_two_runs_of_a_failed_batch_keep_its_real_errors(world, dagster_instance):
    """Two backfills of a night's failed batches (two tabs): both runs score the batch and fail
    on the same bad user. The failure sensor, on the run whose outcome the other replaced,
    keeps the newer outcome and its real error rather than counting every member failed."""
    _night(world, dagster_instance, bad=(3,))  # user 3 is in b0001 with user 4
    assert not batches(dagster_instance).success  # the night: b0001 partial
    first = batch(dagster_instance, "b0001")
    second = batch(dagster_instance, "b0001")  # created after the first; writes after it
    assert not first.success and not second.success
    for run in (first, second):
        _failure_sensor_sees(dagster_instance, run.run_id)
    assert _outcomes(world)["b0001"] == ("partial", second.run_id, 1)
    [failed] = rows(
        world,
        "SELECT jsonb_array_elements(failed_users) AS u FROM scoring_batch_results "
        "WHERE score_date = :d AND batch_key = 'b0001'",
        d=DATE,
    )
    assert failed.u["userId"] == _uid(3)
    assert failed.u["stage"] != "batch" and "abc" in str(failed.u["error"])
    night = _night_row(world)
    assert (night.status, night.users_failed) == ("partial", 1)


def test_a_run_refused_for_a_group_with_no_night_records_no_outcome(world, dagster_instance):
    """A retry of a group whose night has not started (its batch keys are the date's, from
    another group's night) is refused before it scores; its failure records no outcome, so the
    group's partitions never show a failed night that does not exist."""
    _night(world, dagster_instance)  # the date's night of group `all`, and its membership
    with world.begin() as conn:
        status = record_batch_run_died(
            conn,
            dt.date.fromisoformat(DATE),
            "b0001",
            "a-refused-run",
            "refused",
            market_group="br",
        )
    assert status is None
    assert not rows(world, "SELECT 1 FROM scoring_batch_results WHERE market_group = 'br'")


def test_a_night_closed_again_by_a_retry_keeps_how_long_it_first_took(world, dagster_instance):
    """A night re-closed by a re-scored batch hours later: `completed_at` and
    `total_duration_ms` move, the night's own time (`first_closed_after_ms`) does not, and
    `status` shows both rather than a "took" that grew with the retry."""
    _night(world, dagster_instance, bad=(3,))
    assert not batches(dagster_instance).success  # b0001 partial
    [first] = rows(
        world,
        "SELECT metrics FROM overnight_job_runs WHERE job_type = 'scoring' AND score_date = :d",
        d=DATE,
    )
    took = first.metrics["first_closed_after_ms"]
    assert took == first.metrics["total_duration_ms"]
    with world.begin() as conn:  # as if it had started two hours ago; user 3's rules fixed
        conn.execute(
            sa.text(
                "UPDATE overnight_job_runs SET started_at = started_at - interval '2 hours' "
                "WHERE job_type = 'scoring' AND score_date = :d"
            ),
            {"d": DATE},
        )
        conn.execute(
            sa.text("UPDATE criteria_versions SET rules = CAST(:r AS jsonb) WHERE user_id = :u"),
            {"r": json.dumps(rules()), "u": _uid(3)},
        )
    assert batch(dagster_instance, "b0001").success
    with world.connect() as conn:
        night = find_night(conn, dt.date.fromisoformat(DATE))
    assert night is not None and night.status.value == "completed"
    assert night.metrics["first_closed_after_ms"] == took
    assert night.metrics["total_duration_ms"] >= 2 * 3600 * 1000
    assert _took(night) == f"{took / 1000:.1f} s"
    assert _completed(night).endswith(
        f"(took {took / 1000:.1f} s; closed again 2.0 h after its start)"
    )


def test_a_batch_run_of_a_night_that_failed_before_scoring_keeps_the_nights_error(
    world, dagster_instance, monkeypatch, tmp_path
):
    """The rates could not be frozen, so the night failed at `exchange_rates`. A batch run of
    it (a "failed and missing" backfill, a retry) cannot score: its death must not count every
    member failed, which replaced the night's own error with "run failed" and set
    `users_processed`, so that no schedule tick would start the night again."""
    for n in (1, 2):
        f.user(
            world,
            user_id=_uid(n),
            holdings=[("AAA", "USD")],
            criteria=[("US_TECH", "stock", rules())],
        )
    forget_night_keys(dagster_instance)
    monkeypatch.setenv("RATES_FILE", str(tmp_path / "gone.json"))
    assert not snapshots(dagster_instance, raise_on_error=False).success
    before = rows(
        world,
        "SELECT status, users_processed, error_details FROM overnight_job_runs "
        "WHERE job_type = 'scoring' AND score_date = :d",
        d=DATE,
    )
    assert before[0].status == "failed" and before[0].users_processed == 0
    assert before[0].error_details["stage"] == "exchange_rates"
    with world.begin() as conn:
        status = record_batch_run_died(
            conn, dt.date.fromisoformat(DATE), "b0000", "run-1", "run run-1 failure: Steps failed"
        )
    assert status is not None and status.value == "failed"
    assert _outcomes(world) == {}
    assert (
        rows(
            world,
            "SELECT status, users_processed, error_details FROM overnight_job_runs "
            "WHERE job_type = 'scoring' AND score_date = :d",
            d=DATE,
        )
        == before
    )
    with world.connect() as conn:  # so the schedule may start it again
        assert tick_skip_reason(conn, dt.date.fromisoformat(DATE)) is None


def _calculations(world) -> dict[str, int]:
    """How many calculations each user of the date has (CALC_STARTED events)."""
    return {
        str(r.user_id): r.n
        for r in rows(
            world,
            "SELECT user_id, count(*) AS n FROM calculation_events WHERE score_date = :d "
            "AND event_type = 'CALC_STARTED' GROUP BY user_id",
            d=DATE,
        )
    }


def _run_log(instance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def test_a_step_retried_after_a_lost_connection_keeps_the_batches_it_landed(
    world, dagster_instance, monkeypatch
):
    """The connection is lost in b0001's write: the retry policy runs the step again, which
    scores b0001 and b0002 and keeps b0000 as the first attempt landed it: every user has one
    calculation, not two, and the run's figures still count all three batches."""
    _night(world, dagster_instance)
    real = batch_write.persist_batch
    written: list[str] = []

    def persist(engine, output, *, run_id):
        written.append(output.batch_key)
        if written == ["b0000", "b0001"]:
            raise sa.exc.OperationalError(
                "COPY", {}, Exception("server closed the connection unexpectedly")
            )
        return real(engine, output, run_id=run_id)

    monkeypatch.setattr("scoring_pipeline.defs.io_managers.persist_batch", persist)
    result = batches(dagster_instance)
    assert result.success
    assert written == ["b0000", "b0001", "b0001", "b0002"]
    assert _calculations(world) == {_uid(n): 1 for n in range(1, 6)}
    assert _outcomes(world) == {
        b: ("success", result.run_id, 0) for b in _statuses(dagster_instance)
    }
    assert set(_statuses(dagster_instance).values()) == {"MATERIALIZED"}
    assert _night_row(world).status == "completed"
    kept = f"batch b0000 of {DATE} (all) landed in run {result.run_id}"
    assert any(m.startswith(kept) for m in _run_log(dagster_instance, result.run_id))
    last = result.asset_materializations_for_node("scores")[-1].metadata
    assert last["run_users_success"].value == 5  # type: ignore[attr-defined]
    assert last["batches"].value[KEYS[0]]["landed_by_run"] == result.run_id  # type: ignore[attr-defined,index]


def _batch_job() -> dg.JobDefinition:
    """The code location's batch job, reconstructable (a re-execution needs the job by name)."""
    from scoring_pipeline.definitions import defs

    return defs().resolve_job_def(BATCH_JOB)


def _execute(instance, **kwargs) -> tuple[bool, str]:
    """Run the batch job as the daemon's workers do (success, run id)."""
    with dg.execute_job(
        dg.reconstructable(_batch_job), instance=instance, raise_on_error=False, **kwargs
    ) as result:
        return result.success, result.run_id


def _failed_range_then_fixed(world, instance) -> tuple[dict[str, str], str]:
    """A night's ranged run that failed on b0001 (user 3's bad rules), the rules fixed since:
    the run's tags and id."""
    _night(world, instance, bad=(3,))  # user 3 is in b0001 with user 4
    tags = {
        "dagster/asset_partition_range_start": KEYS[0],
        "dagster/asset_partition_range_end": KEYS[-1],
    }
    ok, failed = _execute(instance, tags=tags)
    assert not ok
    with world.begin() as conn:
        conn.execute(
            sa.text("UPDATE criteria_versions SET rules = CAST(:r AS jsonb) WHERE user_id = :u"),
            {"r": json.dumps(rules()), "u": _uid(3)},
        )
    return tags, failed


def test_a_run_re_executed_from_failure_scores_only_the_batches_that_had_not_landed(
    world, dagster_instance, monkeypatch
):
    """A night's ranged run failed on b0001 (a user's bad rules); once they are fixed, the
    run's page "Re-execute from failure" runs the `scores` step again: it scores b0001 and
    keeps b0000 and b0002, which the failed run landed. "Re-execute all steps" scores all."""
    tags, failed = _failed_range_then_fixed(world, dagster_instance)
    ok, retry = _execute(
        dagster_instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(failed, dagster_instance),
        # what the run page's "From failure" adds to its parent's tags (`execute_job` does not)
        tags={**tags, RESUME_RETRY_TAG: "true"},
    )
    assert ok
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 2, _uid(4): 2, _uid(5): 1}
    assert _outcomes(world) == {
        "b0000": ("success", failed, 0),
        "b0001": ("success", retry, 0),
        "b0002": ("success", failed, 0),
    }
    assert set(_statuses(dagster_instance).values()) == {"MATERIALIZED"}
    assert _night_row(world).status == "completed"

    ok, _ = _execute(
        dagster_instance,
        reexecution_options=dg.ReexecutionOptions(parent_run_id=retry, step_selection=["scores"]),
        tags=tags,
    )
    assert ok
    assert _calculations(world) == {_uid(1): 2, _uid(2): 2, _uid(3): 3, _uid(4): 3, _uid(5): 2}


def _from_failure(instance, tags: dict[str, str], parent: str) -> tuple[bool, str]:
    """The Runs page's *Re-execute from failure* of run `parent` (a run of no re-execution)."""
    return _execute(
        instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(parent, instance),
        # what the UI adds to its parent's tags (`execute_job` does not): the run group's
        tags={**tags, RESUME_RETRY_TAG: "true", ROOT_RUN_ID_TAG: parent, PARENT_RUN_ID_TAG: parent},
    )


def test_a_failed_run_re_executed_from_failure_twice_scores_its_failed_batch_once(
    world, dagster_instance
):
    """The Runs page's *Re-execute … from failure* clicked twice on the same failed run (an
    operator review: the second re-execution scored b0001 again although the first had landed
    it, a third calculation of the same results; with every failed run selected, a failed run
    and its failed re-execution were re-executed side by side and scored the same batches at
    once). A re-execution from failure keeps what any run of its run group landed."""
    tags, failed = _failed_range_then_fixed(world, dagster_instance)
    ok, first = _from_failure(dagster_instance, tags, failed)
    assert ok
    ok, second = _from_failure(dagster_instance, tags, failed)
    assert ok
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 2, _uid(4): 2, _uid(5): 1}
    assert _outcomes(world)["b0001"] == ("success", first, 0)
    kept = f"batch b0001 of {DATE} (all) landed in run {first}"
    second_log = _run_log(dagster_instance, second)
    assert f"{kept} (another re-execution of the same run): not scored again" in second_log
    # The batches the failed run itself landed, as any re-execution of it says.
    parent = f"batch b0000 of {DATE} (all) landed in run {failed}"
    assert f"{parent} (an earlier attempt of this step): not scored again" in second_log
    assert set(_statuses(dagster_instance).values()) == {"MATERIALIZED"}
    assert _night_row(world).status == "completed"


def test_a_re_execution_from_failure_that_fails_again_keeps_the_landed_batches_materialised(
    world, dagster_instance
):
    """A ranged run failed on b0001; re-executed from failure before user 3's rules are fixed,
    it fails again (an operator review: the batches its parent had landed, b0000 and b0002,
    then read Failed in the *Partitions* view, as Dagster reads the partitions a failed run
    planned and did not materialise, and *Failed and missing* re-scored them). The
    re-execution records them again from their outcome."""
    _night(world, dagster_instance, bad=(3,))
    tags = {
        "dagster/asset_partition_range_start": KEYS[0],
        "dagster/asset_partition_range_end": KEYS[-1],
    }
    ok, failed = _execute(dagster_instance, tags=tags)
    assert not ok
    ok, again = _from_failure(dagster_instance, tags, failed)
    assert not ok
    assert _statuses(dagster_instance) == {
        "b0000": "MATERIALIZED",
        "b0001": "FAILED",
        "b0002": "MATERIALIZED",
    }
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 2, _uid(4): 2, _uid(5): 1}
    assert _outcomes(world)["b0000"] == ("success", failed, 0)


def _re_execute_in_a_process(
    instance_ref: Any, start: Any, tags: dict[str, str], parent: str, results: Any
) -> None:
    """In a fresh process (a run worker): re-execute `parent` from failure once the other
    process is ready too (the barrier `start`)."""
    instance = dg.DagsterInstance.from_ref(instance_ref)
    try:
        start.wait(timeout=60)
        results.put(_from_failure(instance, tags, parent))
    finally:
        instance.dispose()


def test_two_re_executions_of_a_failed_run_at_once_score_its_failed_batch_once(
    world, dagster_instance
):
    """The Runs page's bulk *Re-execute … from failure* with a failed run and its failed
    re-execution both selected: two runs re-score the same failed batches side by side (on
    two run workers; they both scored them, a calculation each). They take turns on b0001
    (`scoring_turn`), and the later one keeps what the earlier landed."""
    tags, failed = _failed_range_then_fixed(world, dagster_instance)
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(
            target=_re_execute_in_a_process,
            args=(dagster_instance.get_ref(), start, tags, failed, results),
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    runs = [results.get(timeout=120) for _ in range(2)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [ok for ok, _ in runs] == [True, True]
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 2, _uid(4): 2, _uid(5): 1}
    status, landed_by, _ = _outcomes(world)["b0001"]
    assert status == "success" and landed_by in {run for _, run in runs}
    assert _night_row(world).status == "completed"


def test_a_batch_run_launched_while_its_night_is_being_started_scores_nothing(
    world, dagster_instance
):
    """`retry-failed`, or a "Failed and missing" backfill, while the night's snapshots run is
    still running (an operator review: the batches, with no outcome yet, were all backfilled;
    a run of them failed on "no price snapshot", counted every user failed and closed the night
    `failed`, or scored every user a second time after the night's own runs). Now retry-failed
    leaves the night to its snapshots run, a batch run refuses to score, and its end records
    nothing; once the snapshots run has ended, the night's batches score as usual."""
    from scoring_pipeline.cli.nights import _retry_group
    from scoring_pipeline.definitions import defs
    from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS
    from scoring_pipeline.runtime.dagster_api import DagsterApi
    from scoring_pipeline.store.night.model import merge_metrics

    _night(world, dagster_instance)
    day = dt.date.fromisoformat(DATE)
    with world.connect() as conn:
        night = find_night(conn, day)
    assert night is not None and night.snapshot_run_id is not None
    real = night.snapshot_run_id
    starting = dagster_instance.create_run_for_job(
        defs().resolve_job_def("overnight_snapshots_job"),
        tags={"dagster/partition": DATE},
        status=dg.DagsterRunStatus.STARTED,
    )
    try:
        with world.begin() as conn:
            merge_metrics(conn, day, {"dagster_snapshot_run_id": starting.run_id})
        with world.begin() as conn:
            said = _retry_group(
                conn,
                dagster_instance,
                DagsterApi("http://127.0.0.1:9"),  # never asked: nothing is launched
                defs().resolve_asset_graph(),
                DEFAULT_GROUPS[DEFAULT_GROUP],
                day,
                1,
            )
        assert said == "retried"  # nothing to retry yet, nothing launched

        result = batches(dagster_instance)
        assert not result.success
        assert (
            f"the night of {DATE} (group all) is still being started by run {starting.run_id}: "
            "its batches are launched when that run ends; nothing was scored"
        ) in _failure_message(result)
        assert not rows(world, "SELECT 1 FROM asset_scores")
        _failure_sensor_sees(dagster_instance, result.run_id)
        assert _outcomes(world) == {}
        assert _night_row(world).status == "started"
    finally:
        with world.begin() as conn:
            merge_metrics(conn, day, {"dagster_snapshot_run_id": real})
        dagster_instance.delete_run(starting.run_id)
    done = batches(dagster_instance)  # the night's own run, after its snapshots run ended
    assert done.success
    assert _night_row(world).status == "completed"


def _a_re_score_that_dies(instance, monkeypatch, key: str) -> None:
    """Re-score batch `key` in a run whose write never lands (as a terminated run's is rolled
    back), then let the failure sensor see that run, as the daemon does."""

    def persist(engine, output, *, run_id):
        raise dg.Failure("the run was terminated while writing", allow_retries=False)

    monkeypatch.setattr("scoring_pipeline.defs.io_managers.persist_batch", persist)
    again = batch(instance, key)
    assert not again.success
    _failure_sensor_sees(instance, again.run_id)


def test_a_re_score_of_a_batch_that_succeeded_dying_leaves_its_success(
    world, dagster_instance, monkeypatch
):
    """An optional re-score of a landed batch (its partition re-materialised) that dies, or is
    terminated, before it lands: its write was rolled back, so the batch's users keep the scores
    of its success, which stays its outcome (an operator review: they were counted failed, and
    the completed night went `partial`)."""
    _night(world, dagster_instance)
    night = batches(dagster_instance)
    assert night.success and _night_row(world).status == "completed"
    _a_re_score_that_dies(dagster_instance, monkeypatch, "b0001")
    assert _outcomes(world)["b0001"] == ("success", night.run_id, 0)
    row = _night_row(world)
    assert (row.status, row.users_failed) == ("completed", 0)


def test_a_re_score_of_a_partial_batch_dying_keeps_its_outcome(
    world, dagster_instance, monkeypatch
):
    """A re-score of a batch with a failed user (a "Failed and missing" backfill) cancelled or
    dead before it lands: its write was rolled back, so the batch's other users keep their
    scores and its failed user the real error (a UI review: a backfill cancelled from its page
    counted every member of its 50 unreached batches failed at stage `batch`, 500 users where
    50 had failed, and the failed users' own errors were gone)."""
    _night(world, dagster_instance, bad=(3,))  # user 3 is in b0001 with user 4
    night = batches(dagster_instance)
    assert _outcomes(world)["b0001"] == ("partial", night.run_id, 1)
    _a_re_score_that_dies(dagster_instance, monkeypatch, "b0001")
    assert _outcomes(world)["b0001"] == ("partial", night.run_id, 1)
    (failed,) = rows(
        world,
        "SELECT jsonb_array_elements(failed_users) AS u FROM scoring_batch_results "
        "WHERE score_date = :d AND batch_key = 'b0001'",
        d=DATE,
    )
    assert failed.u["userId"] == _uid(3) and failed.u["stage"] != "batch"
    row = _night_row(world)
    assert (row.status, row.users_failed) == ("partial", 1)


def test_a_re_score_of_a_batch_whose_every_user_failed_dying_keeps_its_outcome(
    world, dagster_instance, monkeypatch
):
    """A batch that landed with every user failed (outcome `failed`, each user's own stage and
    error) re-scored by a run that dies: the outcome stays, as a partial one does; it used to be
    replaced by every member failed at stage `batch` with the dead run's message, the real
    errors gone."""
    _night(world, dagster_instance, bad=(3, 4))  # b0001 holds users 3 and 4
    night = batches(dagster_instance)
    assert _outcomes(world)["b0001"] == ("failed", night.run_id, 2)
    _a_re_score_that_dies(dagster_instance, monkeypatch, "b0001")
    assert _outcomes(world)["b0001"] == ("failed", night.run_id, 2)
    stages = rows(
        world,
        "SELECT e->>'userId' AS u, e->>'stage' AS stage FROM scoring_batch_results, "
        "jsonb_array_elements(failed_users) AS e WHERE score_date = :d AND batch_key = 'b0001'",
        d=DATE,
    )
    assert {r.u for r in stages} == {_uid(3), _uid(4)}
    assert "batch" not in {r.stage for r in stages}
    row = _night_row(world)
    assert (row.status, row.users_failed) == ("partial", 2)


def _shown(instance) -> dict[str, str]:
    """What the partitions view shows of each batch (a wiped asset has no status at all)."""
    found = instance.get_status_by_partition(scores.key, KEYS, scores_partitions) or {}
    return {k.split("/")[1]: (found[k].value if found.get(k) else "MISSING") for k in KEYS}


def _backfill_run(instance, backfill_id: str):
    """A run of a UI backfill over the night's three batches (Dagster tags it with its
    backfill), with its asset checks, which must pass for every batch that landed."""
    return batches(instance, tags={BACKFILL_TAG: backfill_id})


def test_a_failed_and_missing_backfill_after_a_wipe_scores_only_the_failed_batches(
    world, dagster_instance
):
    """The asset's *Wipe materializations* leaves every batch Missing, so *Failed and missing*
    selects every batch of every night (an operator review: it re-scored both nights, every
    user a second time, a completed night turned `partial` by today's criteria). The backfill
    scores only the batches without a success, and records the others again from their
    outcomes, whether another batch of its run fails or not."""
    _night(world, dagster_instance, bad=(3,))  # user 3 is in b0001 with user 4
    night_run = batches(dagster_instance)
    assert not night_run.success
    assert set(_shown(dagster_instance).values()) == {"MATERIALIZED", "FAILED"}
    dagster_instance.wipe_assets([scores.key])
    assert set(_shown(dagster_instance).values()) == {"MISSING"}

    first = _backfill_run(dagster_instance, "wiped-1")
    assert not first.success  # user 3 still fails
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 2, _uid(4): 2, _uid(5): 1}
    assert _shown(dagster_instance) == {
        "b0000": "MATERIALIZED",
        "b0001": "FAILED",
        "b0002": "MATERIALIZED",
    }
    kept = f"batch b0000 of {DATE} (all) landed in run {night_run.run_id} with every user"
    assert any(m.startswith(kept) for m in _run_log(dagster_instance, first.run_id))

    dagster_instance.wipe_assets([scores.key])
    with world.begin() as conn:
        conn.execute(
            sa.text("UPDATE criteria_versions SET rules = CAST(:r AS jsonb) WHERE user_id = :u"),
            {"r": json.dumps(rules()), "u": _uid(3)},
        )
    second = _backfill_run(dagster_instance, "wiped-2")
    assert second.success
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 3, _uid(4): 3, _uid(5): 1}
    assert _outcomes(world) == {
        "b0000": ("success", night_run.run_id, 0),
        "b0001": ("success", second.run_id, 0),
        "b0002": ("success", night_run.run_id, 0),
    }
    assert set(_shown(dagster_instance).values()) == {"MATERIALIZED"}
    assert _night_row(world).status == "completed"

    # Materialised again, a landed batch is re-scored, as any backfill of it re-scores it.
    third = _backfill_run(dagster_instance, "again")
    assert third.success
    assert _calculations(world) == {_uid(1): 2, _uid(2): 2, _uid(3): 4, _uid(4): 4, _uid(5): 2}


def test_a_backfill_of_the_snapshots_and_scores_keeps_the_nights_landed_batches(
    world, dagster_instance
):
    """The asset graph's *Materialize all* with one date typed is a backfill of the snapshot
    assets and `scores`, whose `scores` partitions are then every batch of every night (the
    edge is `AllPartitionMapping`; an operator review: 80 batches of two dates and two groups
    re-scored with today's criteria, one date typed). A backfill of the snapshot assets keeps
    the nights as they are: its `scores` runs record the batches that landed with every user
    scored from their outcomes and score only the others (a failed batch, retried)."""
    _night(world, dagster_instance, bad=(3,))  # user 3 is in b0001 with user 4
    night_run = batches(dagster_instance)
    assert not night_run.success
    with world.begin() as conn:
        conn.execute(
            sa.text("UPDATE criteria_versions SET rules = CAST(:r AS jsonb) WHERE user_id = :u"),
            {"r": json.dumps(rules()), "u": _uid(3)},
        )
    backfill_id = f"graph{uuid.uuid4().hex[:8]}"
    dagster_instance.add_backfill(
        PartitionBackfill(
            backfill_id=backfill_id,
            status=BulkActionStatus.REQUESTED,
            from_failure=False,
            tags={},
            backfill_timestamp=time.time(),
            asset_selection=[active_users.key, exchange_rates.key, prices.key, scores.key],
        )
    )
    try:
        run = _backfill_run(dagster_instance, backfill_id)
    finally:  # nothing in progress left for later tests to see
        done = dagster_instance.get_backfill(backfill_id)
        dagster_instance.update_backfill(done.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    assert run.success
    assert _calculations(world) == {_uid(1): 1, _uid(2): 1, _uid(3): 2, _uid(4): 2, _uid(5): 1}
    assert _outcomes(world) == {
        "b0000": ("success", night_run.run_id, 0),
        "b0001": ("success", run.run_id, 0),
        "b0002": ("success", night_run.run_id, 0),
    }
    assert set(_shown(dagster_instance).values()) == {"MATERIALIZED"}
    assert _night_row(world).status == "completed"
    kept = (
        f"batch b0000 of {DATE} (all) landed in run {night_run.run_id} with every user scored, "
        f"and backfill {backfill_id} also materialises the snapshot assets"
    )
    assert any(m.startswith(kept) for m in _run_log(dagster_instance, run.run_id))

    # A backfill of `scores` alone still re-scores what it selects.
    again = _backfill_run(dagster_instance, "scores-alone")
    assert again.success
    assert _calculations(world) == {_uid(1): 2, _uid(2): 2, _uid(3): 3, _uid(4): 3, _uid(5): 2}
