"""The run launcher's health check (`runtime/run_launcher.py`): a run whose Celery task still
reads STARTED but whose worker process is gone is reported failed, so run monitoring fails it and
the failure sensor closes its night (the worker's main process killed left it `started`). And
the run worker (`runtime/celery_app.py`) does not execute a run whose backfill was cancelled
while the run waited for it."""

import logging
import os
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus
from dagster_celery.launcher import DAGSTER_CELERY_TASK_ID_TAG

from scoring_pipeline.runtime import celery_app
from scoring_pipeline.runtime.dagster_storage import storage_config
from scoring_pipeline.runtime.run_launcher import (
    WORKER_TAG,
    WatchedCeleryRunLauncher,
    worker_gone,
    worker_identity,
)
from scoring_pipeline.store.db import dagster_storage_url
from scoring_pipeline_tests.cli_helpers import reap

pytestmark = pytest.mark.db


@dg.op
def _noop() -> None:
    pass


@dg.job
def _a_job() -> None:
    _noop()


HOST = worker_identity().split("/")[0]


def _failed_once_killed(launcher, run, process: subprocess.Popen) -> str:
    """Kill `process`, the run's worker: the health check then reports the run failed (why)."""
    process.kill()
    process.wait()
    health = launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED
    return str(health.msg)


def test_a_started_task_whose_worker_process_is_gone_is_a_failed_run(
    database_url, dagster_instance
):
    backend = f"db+{dagster_storage_url(database_url)}"
    launcher = WatchedCeleryRunLauncher(
        default_queue="dagster", broker="memory://", backend=backend
    )
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    task_id = str(uuid.uuid4())
    run = dagster_instance.create_run_for_job(
        _a_job,
        tags={DAGSTER_CELERY_TASK_ID_TAG: task_id, WORKER_TAG: worker_identity(worker.pid)},
        status=dg.DagsterRunStatus.STARTED,
    )
    elsewhere = dagster_instance.create_run_for_job(
        _a_job,
        tags={DAGSTER_CELERY_TASK_ID_TAG: task_id, WORKER_TAG: "another-host/1/1.00"},
        status=dg.DagsterRunStatus.STARTED,
    )
    try:
        launcher.celery.backend.store_result(task_id, None, "STARTED")  # as the worker does
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert _failed_once_killed(launcher, run, worker) == (
            f"its run worker process {worker.pid} on {HOST} is gone, "
            "its Celery task still reads STARTED (its worker's main process died)"
        )
        # A worker on another host: this one cannot tell, so the task's state stands.
        assert launcher.check_run_worker_health(elsewhere).status == WorkerStatus.RUNNING
        # A task that ended says so whatever the process: the health check asks no more.
        launcher.celery.backend.store_result(task_id, 0, "SUCCESS")
        assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS
    finally:
        reap(worker)
        launcher.celery.backend.forget(task_id)
        for r in (run, elsewhere):
            dagster_instance.delete_run(r.run_id)


def test_a_process_with_the_same_pid_but_another_start_is_not_the_worker():
    me = worker_identity()
    host, pid, started = me.rsplit("/", 2)
    assert worker_gone(me) is None
    assert worker_gone(f"{host}/{pid}/{float(started) - 60:.2f}") == (
        f"its run worker process {pid} on {host} is gone (pid {pid} is another process now)"
    )
    assert worker_gone(None) is None and worker_gone("not an identity") is None


def test_a_run_executed_in_its_own_process_is_watched_by_that_process(
    database_url, dagster_instance
):
    """`scoring-pipeline score` executes its runs in its own process, with no Celery task (an
    operator review: dagster-celery's check raised KeyError on them, an ERROR with a traceback
    in daemon.log every poll while `score` ran beside the services). The process that runs them
    is their worker: running, they are; gone, they failed."""
    backend = f"db+{dagster_storage_url(database_url)}"
    launcher = WatchedCeleryRunLauncher(
        default_queue="dagster", broker="memory://", backend=backend
    )
    command = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    run = dagster_instance.create_run_for_job(
        _a_job,
        tags={WORKER_TAG: worker_identity(command.pid)},
        status=dg.DagsterRunStatus.STARTED,
    )
    untagged = dagster_instance.create_run_for_job(_a_job, status=dg.DagsterRunStatus.STARTED)
    try:
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert launcher.check_run_worker_health(untagged).status == WorkerStatus.RUNNING
        launcher.register_instance(dagster_instance)
        assert _failed_once_killed(launcher, run, command) == (
            f"its run worker process {command.pid} on {HOST} is gone "
            "(the in-process run of `scoring-pipeline score`)"
        )
    finally:
        reap(command)
        for r in (run, untagged):
            dagster_instance.delete_run(r.run_id)


def test_run_monitoring_fails_a_killed_score_run_as_the_code_locations(
    database_url, project_instance_config, caplog
):
    """A `score` killed mid-run, its run failed by the services' run monitoring before any
    next `score` saw it (a review: that run kept no origin, so the UI could not re-execute it,
    the run page had no *Re-execute* and the bulk action answered HTTP 500). Dagster's own
    monitoring pass, with the project's launcher, fails it and it names the code location;
    its status and tags are the failed run's. The monitor logs no error doing it (it logged
    dagster-celery's KeyError for the run's missing Celery task, with its traceback)."""
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    from scoring_pipeline.runtime.dagster_api import LOCATION, REPOSITORY
    from scoring_pipeline.runtime.run_launcher import CLI_TRIGGER, TRIGGER_TAG

    backend = f"db+{dagster_storage_url(database_url)}"
    overrides = {
        "storage": storage_config(dagster_storage_url(database_url)),
        "run_launcher": {
            "module": "scoring_pipeline.runtime.run_launcher",
            "class": "WatchedCeleryRunLauncher",
            "config": {"default_queue": "dagster", "broker": "memory://", "backend": backend},
        },
        "run_monitoring": project_instance_config["run_monitoring"],
    }
    command = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with dg.instance_for_test(overrides=overrides) as instance:
        tags = {WORKER_TAG: worker_identity(command.pid), TRIGGER_TAG: CLI_TRIGGER}
        run = instance.create_run_for_job(_a_job, tags=tags, status=dg.DagsterRunStatus.STARTED)
        try:
            assert run.remote_job_origin is None  # as `execute_in_process` records it
            monitor = logging.getLogger("test-run-monitoring")
            monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), monitor)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            assert instance.get_run_by_id(run.run_id).remote_job_origin is None

            command.kill()
            command.wait()
            monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id), monitor)
            failed = instance.get_run_by_id(run.run_id)
            assert failed.status == dg.DagsterRunStatus.FAILURE
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors == []
            failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            why = f"executed in its own process by `scoring-pipeline score` ({tags[WORKER_TAG]})"
            assert why in failure[-1].message
            origin = failed.remote_job_origin
            assert origin is not None and origin.job_name == _a_job.name
            assert origin.repository_origin.repository_name == REPOSITORY
            assert origin.repository_origin.code_location_origin.location_name == LOCATION
            assert failed.tags[TRIGGER_TAG] == CLI_TRIGGER
            # Listed among the failed runs too (the runs table's status), as the Runs page does.
            failures = dg.RunsFilter(run_ids=[run.run_id], statuses=[dg.DagsterRunStatus.FAILURE])
            assert [r.run_id for r in instance.get_runs(failures)] == [run.run_id]
        finally:
            reap(command)
            instance.delete_run(run.run_id)


def test_a_run_of_a_backfill_cancelled_while_it_waited_for_a_worker_is_not_executed(
    dagster_instance, monkeypatch
):
    """The backfill page's *Cancel backfill* terminates the backfill's queued and started runs,
    not those still STARTING, handed to the broker and waiting for a free run worker (a UI
    review: 5 runs, 50 batches, were scored after the cancel, the last 34 s after it). A worker
    that picks up such a run marks it canceled instead of executing it; a run of a backfill
    still going, or of none, is executed."""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    monkeypatch.setattr(celery_app, "_instance", (os.getpid(), dagster_instance))
    executed: list[str] = []

    def body(*, run_id: str, **_: object) -> int:
        executed.append(run_id)
        return 0

    def handed_to_a_worker(backfill_status: BulkActionStatus | None) -> dg.DagsterRun:
        tags = {}
        if backfill_status is not None:
            backfill_id = uuid.uuid4().hex[:8]
            dagster_instance.add_backfill(
                PartitionBackfill(
                    backfill_id=backfill_id,
                    status=backfill_status,
                    from_failure=False,
                    tags={},
                    backfill_timestamp=time.time(),
                )
            )
            tags = {"dagster/backfill": backfill_id}
        run = dagster_instance.create_run_for_job(
            _a_job, tags=tags, status=dg.DagsterRunStatus.STARTING
        )
        args = SimpleNamespace(run_id=run.run_id, set_exit_code_on_failure=True)
        assert celery_app._on_kept_instance(body, args) == 0
        return run

    runs = {
        status: handed_to_a_worker(status)
        for status in (BulkActionStatus.CANCELING, BulkActionStatus.CANCELED)
    }
    going = handed_to_a_worker(BulkActionStatus.REQUESTED)
    alone = handed_to_a_worker(None)
    try:
        assert executed == [going.run_id, alone.run_id]
        for run in runs.values():
            after = dagster_instance.get_run_by_id(run.run_id)
            assert after is not None and after.status == dg.DagsterRunStatus.CANCELED
            messages = [
                e.message
                for e in dagster_instance.all_logs(
                    run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED
                )
            ]
            assert messages == [
                f"Not started: backfill {run.tags['dagster/backfill']} was cancelled while "
                "this run waited for a run worker"
            ]
    finally:
        for run in [*runs.values(), going, alone]:
            dagster_instance.delete_run(run.run_id)
