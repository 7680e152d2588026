"""Two writes of the same batch at once take turns on the batch's advisory lock, the second
replacing what the first wrote; and `retry-failed`'s choice of batches includes the ones a night
has no outcome for yet."""

import datetime as dt

import pytest
import sqlalchemy as sa

from scoring_pipeline.engine.batch import BatchOutput, score_batch
from scoring_pipeline.store.batch_inputs import load_batch_inputs
from scoring_pipeline.store.batch_rows import prepare_batch
from scoring_pipeline.store.batch_write import write_batch
from scoring_pipeline.store.metric_values import store_metric_values
from scoring_pipeline.store.night.outcomes import batches_to_retry, lock_retries
from scoring_pipeline_tests.concurrency import second_writer_after_first
from scoring_pipeline_tests.scenario import (
    DATE,
    batch,
    rows,
    snapshots,
    users_in_two_currencies,
)

pytestmark = pytest.mark.db

DAY = dt.date.fromisoformat(DATE)


def _scored(world, batch_key: str) -> BatchOutput:
    (job,) = rows(
        world,
        "SELECT correlation_id::text AS c FROM overnight_job_runs "
        "WHERE score_date = :d AND job_type = 'scoring'",
        d=DAY,
    )
    with world.connect() as conn:
        inputs = load_batch_inputs(conn, DAY, batch_key)
    return score_batch(inputs, score_date=DAY, batch=batch_key, job_correlation_id=job.c)


def test_a_second_write_of_the_same_batch_waits_for_the_first_then_replaces_it(
    world, dagster_instance
):
    users_in_two_currencies(world, 2)
    assert snapshots(dagster_instance).success
    outputs = [_scored(world, "b0000") for _ in range(2)]
    # As `persist_batch` does: the metric values in their own transaction, so that only the
    # batch's lock can make the second write wait.
    prepared = [prepare_batch(o, store_metric_values(world, o).revisions) for o in outputs]
    outcome = second_writer_after_first(
        world,
        lambda conn: write_batch(conn, outputs[0], run_id=None, prepared=prepared[0]),
        lambda conn: write_batch(conn, outputs[1], run_id=None, prepared=prepared[1]),
    )
    # Without the lock, the second write's COPY met the first's rows: a unique violation.
    assert outcome is None
    second_calculations = {u.correlation_id for u in outputs[1].succeeded}
    for table in ("asset_scores", "score_history"):
        stored = rows(world, f"SELECT correlation_id::text AS c, symbol FROM {table}")
        assert {r.c for r in stored} == second_calculations, table
        assert len(stored) == sum(len(u.scores) for u in outputs[1].succeeded), table


def test_batches_to_retry_are_the_failed_and_those_with_no_outcome(world, dagster_instance):
    users_in_two_currencies(world, 4)  # batches of 2: b0000 and b0001
    assert snapshots(dagster_instance).success
    with world.connect() as conn:
        assert batches_to_retry(conn, DAY) == ["b0000", "b0001"]
    assert batch(dagster_instance, "b0000").success
    with world.connect() as conn:
        assert batches_to_retry(conn, DAY) == ["b0001"]  # not scored yet: no outcome
    assert batch(dagster_instance, "b0001").success
    with world.connect() as conn:
        assert batches_to_retry(conn, DAY) == []


def test_two_retries_of_one_night_take_turns_and_other_nights_do_not_wait(clean_db):
    """`retry-failed` holds this lock from its check of what is being scored to its backfill's
    launch: a second one of the same night waits, then finds that backfill."""
    taken: list[str] = []
    assert (
        second_writer_after_first(
            clean_db,
            lambda conn: lock_retries(conn, DAY, "us"),
            lambda conn: (lock_retries(conn, DAY, "us"), taken.append("second")),
        )
        is None
    )
    assert taken == ["second"]
    with clean_db.begin() as held:
        lock_retries(held, DAY, "us")
        with clean_db.begin() as other:  # another group's night, another date: no wait
            other.execute(sa.text("SET LOCAL lock_timeout = '1s'"))
            lock_retries(other, DAY, "eu")
            lock_retries(other, DAY + dt.timedelta(days=1), "us")
