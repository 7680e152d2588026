"""The database restarted in the middle of a batch: the step retries and completes, no duplicates.

The test has a PostgreSQL server of its own (embedded, whatever `SCORING_TEST_DATABASE_URL`
says: a shared server is not ours to restart), holding both the app tables and the Dagster
instance's storage, as a deployment does. A second session holds an exclusive lock on
`asset_scores`, so the batch's write transaction is provably in flight (waiting on the lock)
when the server is restarted under it; the restart kills every session, the step's
`RetryPolicy` runs the batch again once the server is back, and the invariants of SPEC §5 hold.
"""

import contextlib
import threading
import time
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from scoring_pipeline.runtime.dagster_storage import storage_config
from scoring_pipeline.store import db
from scoring_pipeline_tests.invariants import (
    assert_event_invariants,
    assert_history_unique,
    assert_scores_match_last_success,
    job_run,
)
from scoring_pipeline_tests.scenario import (
    batch,
    build_world,
    rows,
    snapshots,
    users_in_two_currencies,
)

WAITING_WRITE = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE 'scoring-pipeline:%' AND wait_event_type = 'Lock' "
    "AND query ILIKE '%asset_scores%'"
)


class RestartDuringWrite(threading.Thread):
    """Holds `asset_scores` locked until a batch write waits on it, then restarts the server."""

    def __init__(self, url: str, data_dir: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.data_dir = url, data_dir
        self.locked = threading.Event()
        self.restarted_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        engine = db.create_engine_for(self.url, poolclass=sa.pool.NullPool)
        holder = engine.connect()
        try:
            holder.execute(sa.text("LOCK TABLE asset_scores IN ACCESS EXCLUSIVE MODE"))
            self.locked.set()
            with engine.connect() as watcher:
                deadline = time.monotonic() + 60
                while not watcher.execute(sa.text(WAITING_WRITE)).all():
                    # pg_stat_activity is read once per transaction: a new one per look.
                    watcher.rollback()
                    if time.monotonic() > deadline:
                        raise TimeoutError("no batch write reached asset_scores")
                    time.sleep(0.05)
            db.pg_ctl(self.data_dir, "restart", "-m", "fast")  # kills the lock holder too
            self.restarted_at = time.monotonic()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            # Without a restart the lock is released here, so the batch (and the test) go on.
            with contextlib.suppress(sa.exc.DBAPIError):
                holder.close()
            engine.dispose()


def test_a_database_restart_mid_batch_retries_the_step(private_server, tmp_path, monkeypatch):
    data_dir, server_url = private_server
    url = db.create_database(server_url, "scoring_restart")
    engine = db.create_engine_for(url)
    try:
        db.migrate(engine)
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("PGTZ", "UTC")
        world = build_world(engine, tmp_path, monkeypatch)
        users = users_in_two_currencies(world, 2)  # one batch of 2
        overrides = {"storage": storage_config(db.dagster_storage_url(url))}
        with dg.instance_for_test(overrides=overrides) as instance:
            assert snapshots(instance).success
            fault = RestartDuringWrite(url, data_dir)
            fault.start()
            assert fault.locked.wait(60)
            result = batch(instance)
            fault.join(timeout=120)
            assert fault.error is None, fault.error
            assert fault.restarted_at is not None

            # The first attempt died with the server; the retry policy ran the step again.
            types = [e.event_type_value for e in result.all_events]
            assert "STEP_UP_FOR_RETRY" in types and "STEP_RESTARTED" in types, types
            assert result.success, [e.message for e in result.all_events if e.is_failure]

        # Nothing of the killed attempt survives; the retry wrote everything exactly once.
        calculations = assert_event_invariants(world)
        assert set(calculations) == set(users)
        for user in users:
            assert len(calculations[user]) == 1
            assert calculations[user][0][-1].payload["status"] == "success"
        assert_history_unique(world)
        assert_scores_match_last_success(world)
        assert rows(world, "SELECT count(*) AS n FROM asset_scores")[0].n == 4 * len(users)
        assert rows(world, "SELECT count(*) AS n FROM score_history")[0].n == 4 * len(users)
        outcome = rows(
            world,
            "SELECT batch_key, status, users_success, users_failed FROM scoring_batch_results",
        )
        assert [tuple(o) for o in outcome] == [("b0000", "success", 2, 0)]
        job = job_run(world)
        assert (job.status, job.users_processed, job.users_failed) == ("completed", 2, 0)
    finally:
        engine.dispose()
        db.drop_database(url)
