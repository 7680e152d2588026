"""The run launcher of `dagster.yaml`: dagster-celery's, with a health check that sees a run
worker process that is gone.

dagster-celery judges a run's worker by its Celery task's state. A prefork child that dies is
seen by its Celery main process, which marks the task failed; but when the main process itself
dies (killed, out of memory, its machine's supervisor stopping it), nothing ever updates the
task: it stays STARTED, run monitoring reads "running" forever, and the run and its night stay
`started`. So each run records which process executes it (`WORKER_TAG`: host, pid and the
process's start time, set by the worker as the run starts), and while the task reads STARTED the
launcher checks that this process still exists. It can tell only for a worker on its own host
(the default deployment: `scoring-pipeline services`); for another host it trusts the task.
A run `scoring-pipeline score` executes in its own process has no task: that process is its
worker (the command tags its runs so). When that process is gone, the run is recorded as the
code location's before run monitoring fails it, so the UI can re-execute it.
"""

import socket

import dagster as dg
import psutil
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from scoring_pipeline.runtime.dagster_api import LOCATION, REPOSITORY

WORKER_TAG = "scoring/run_worker"
# What started a run (schedule, cli, retry-failed); `cli`: `scoring-pipeline score`, which
# executes its runs in its own process.
TRIGGER_TAG = "scoring/trigger"
CLI_TRIGGER = "cli"
# Start times are compared to this precision (psutil reads them from /proc in clock ticks).
_SAME_START = 0.05


def worker_identity(pid: int | None = None) -> str:
    """`host/pid/start time` of a process (this one by default): what `WORKER_TAG` holds."""
    process = psutil.Process(pid)
    return f"{socket.gethostname()}/{process.pid}/{process.create_time():.2f}"


def executed_by_score(run: DagsterRun) -> bool:
    """A run `scoring-pipeline score` executed in its own process: the command scores the
    night's batches and records its runs' ends itself, so the sensors leave its runs alone. A
    re-execution of one from the UI keeps its tags but is launched to the run workers, with a
    Celery task, like any other run."""
    return run.tags.get(TRIGGER_TAG) == CLI_TRIGGER and DAGSTER_CELERY_TASK_ID_TAG not in run.tags


# The code location of workspace.yaml, which the webserver and the daemon load.
_CODE_LOCATION = ManagedGrpcPythonEnvCodeLocationOrigin(
    LoadableTargetOrigin(module_name="scoring_pipeline.definitions", attribute="defs"),
    location_name=LOCATION,
)


def record_code_location_origin(instance: dg.DagsterInstance, run: DagsterRun) -> None:
    """Record the code location as the origin of a run `scoring-pipeline score` executed, as
    the runs the webserver and the daemon launch have it, so the UI can re-execute it (its run
    page, the Runs page's bulk action), from failure too: `execute_in_process` records no
    origin, and Dagster refused with "CheckError: Expected non-None value: None". The
    re-execution is launched by name (code location, repository, job); this is how Dagster's
    own `dagster run migrate-repository` moves runs to a code location. It rewrites the run's
    record: only for a run whose process no longer writes it (ended, or gone)."""
    if run.remote_job_origin is not None:
        return
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(_CODE_LOCATION, REPOSITORY), run.job_name)
    instance.run_storage.replace_job_origin(run, origin)


def worker_gone(identity: str | None) -> str | None:
    """Why the process `identity` names no longer runs, or None when it does or this host
    cannot tell (no identity, another host)."""
    try:
        host, pid_text, started_text = (identity or "").rsplit("/", 2)
        pid, started = int(pid_text), float(started_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    gone = f"its run worker process {pid} on {host} is gone"
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > _SAME_START:
            return f"{gone} (pid {pid} is another process now)"
        if process.status() == psutil.STATUS_ZOMBIE:
            return gone
    except psutil.NoSuchProcess:
        return gone
    return None


def score_gone(instance: dg.DagsterInstance, run_id: str | None) -> str | None:
    """Why the `scoring-pipeline score` that executed run `run_id` no longer runs (killed, its
    session lost), or None: it runs, the run is not one `score` executed, or this host cannot
    tell (`worker_gone`)."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None or not executed_by_score(run):
        return None
    return worker_gone(run.tags.get(WORKER_TAG))


class WatchedCeleryRunLauncher(CeleryRunLauncher):
    """dagster-celery's launcher; a STARTED task whose worker process is gone is a failed run,
    and a terminated run is marked CANCELING for its worker to stop it."""

    def terminate(self, run_id: str) -> bool:
        """Mark the run CANCELING (as Dagster's own launchers do), which its run worker watches
        for (`celery_app._interrupt_when_canceled`), then revoke its Celery task as
        dagster-celery does. The revoke alone never reached the worker on the PostgreSQL
        broker (a broadcast it does not deliver), and dagster-celery reports no CANCELING: the
        UI's Terminate answered "success" and the run went on."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        return super().terminate(run_id)

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        """What run monitoring adds to a failed run's message; dagster-celery's raised KeyError
        on a run with no Celery task (the in-process runs of `score`): an ERROR with its
        traceback in daemon.log each time such a run was failed."""
        if DAGSTER_CELERY_TASK_ID_TAG not in run.tags:
            worker = run.tags.get(WORKER_TAG, "unknown")
            return f"executed in its own process by `scoring-pipeline score` ({worker})"
        return super().get_run_worker_debug_info(run, include_container_logs)

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if DAGSTER_CELERY_TASK_ID_TAG not in run.tags:
            # Not launched by this launcher: a run `scoring-pipeline score` executes in its own
            # process (dagster-celery's check raised KeyError on it, each poll, in daemon.log).
            gone = worker_gone(run.tags.get(WORKER_TAG))
            if gone is None:
                return CheckRunHealthResult(WorkerStatus.RUNNING, "executed in its own process")
            # Run monitoring fails it next, as the command's next `score` would have: re-read,
            # so the record rewritten is the latest (its status is untouched by the rewrite).
            latest = self._instance.get_run_by_id(run.run_id)
            if latest is not None and latest.status == dg.DagsterRunStatus.STARTED:
                record_code_location_origin(self._instance, latest)
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"{gone} (the in-process run of `scoring-pipeline score`)"
            )
        health = super().check_run_worker_health(run)
        if health.status != WorkerStatus.RUNNING:
            return health
        gone = worker_gone(run.tags.get(WORKER_TAG))
        if gone is None:
            return health
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"{gone}, its Celery task still reads STARTED (its worker's main process died)",
        )
