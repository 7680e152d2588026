"""The Celery app of the run workers: warm processes that execute Dagster runs.

`dagster.yaml` sets dagster-celery's launcher (`run_launcher.WatchedCeleryRunLauncher`); the
daemon hands each run to this app's
`execute_job` task, and a worker (`scoring-pipeline worker`) runs it in a pre-forked process that
already imported Dagster and the code location, instead of a fresh process per run. The broker
and result backend default to the application's PostgreSQL (no other server needed);
`DAGSTER_CELERY_BROKER_URL` / `DAGSTER_CELERY_BACKEND_URL` point them at Redis or RabbitMQ.

The tasks are dagster-celery's (same names, same arguments, same run body), except that a worker
process keeps one Dagster instance for all its runs: dagster-celery builds the instance anew for
every run (storage config, schema reflection, new connections), about a tenth of a run worker's
busy time in a night of short batch runs, and PostgreSQL backends started for each.
"""

import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery
from dagster import DagsterInstance

if TYPE_CHECKING:
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs

from scoring_pipeline.store.db import prepare_dagster_environment, unencoded_at_sign

logger = logging.getLogger("scoring_pipeline.runtime")

QUEUE = "dagster"
# How often an idle worker looks for a run in the PostgreSQL broker table. kombu's default (1 s)
# leaves a worker idle for half a second on average between two runs of a night.
BROKER_POLL_SECONDS = 0.1


def broker_urls() -> tuple[str, str]:
    """(broker, result backend), as `prepare_dagster_environment` resolved them."""
    prepare_dagster_environment()
    return os.environ["DAGSTER_CELERY_BROKER_URL"], os.environ["DAGSTER_CELERY_BACKEND_URL"]


def check_celery_urls() -> None:
    """The broker's and result backend's URLs must be ones Celery can load (a known transport,
    its client library installed): else one line naming the variable, before a service starts,
    not each service's traceback ("'NoneType' object has no attribute 'Redis'" for a Redis URL
    without the `redis` package)."""
    from celery.app.backends import by_url
    from kombu.connection import Connection

    from scoring_pipeline.errors import ConfigurationError
    from scoring_pipeline.providers.redaction import redact

    broker, backend = broker_urls()
    for variable, url, load in (
        ("DAGSTER_CELERY_BROKER_URL", broker, lambda u: Connection(u).transport),  # type: ignore[no-untyped-call]
        ("DAGSTER_CELERY_BACKEND_URL", backend, by_url),
    ):
        if "://" not in url:
            # kombu takes such a value for the host name of its default transport (AMQP), and
            # the worker printed it, password and all, in its banner and in every "Cannot
            # connect to amqp://guest:**@<the value>" line; Celery, for a backend module's name,
            # in its error. No URL form to redact a password from: the value is not shown.
            raise ConfigurationError(
                f"{variable} is not a URL (no scheme://): give "
                "scheme://[user:password@]host[:port]/... (its value is not shown: it may hold "
                "a password)"
            )
        if _netloc(url).count("@") > 1:
            # A password's '@' left as it is: SQLAlchemy (the `sqla+` broker, the `db+`
            # backend) ends the password at the first '@' and takes the rest for the host, and
            # the worker logged "failed to resolve host '<rest of the password>@…'" several
            # times a second.
            raise unencoded_at_sign(variable)
        try:
            load(url)
        except Exception as exc:  # kombu and celery raise KeyError, ImportError, AttributeError
            reason = _reason(f"{type(exc).__name__}: {exc}", url)
            if url.startswith(("redis:", "rediss:")):
                reason += "; Redis needs its client: `.venv/bin/pip install redis`"
            raise ConfigurationError(
                f"{variable}={redact(url, [_password(url)])!r}: Celery cannot use it ({reason})"
            ) from None
        _check_reachable(variable, url)


def _check_reachable(variable: str, url: str) -> None:
    """Connect once to the broker (a database's `sqla+`, or kombu's: AMQP, Redis) and to a
    result backend on a database (`db+`) or Redis: one that cannot be reached is one line
    naming the variable. The services said "started" while each run worker logged "Connection
    to broker lost" several times a second and restarted, and no run the daemon handed to the
    broker was ever executed."""
    from kombu.connection import Connection

    from scoring_pipeline.errors import ConfigurationError
    from scoring_pipeline.store.db import check_connects

    which = "broker" if variable == "DAGSTER_CELERY_BROKER_URL" else "result backend"
    where = f"{variable}: cannot connect to the Celery {which}"
    scheme = url.split("://", 1)[0]
    if scheme.startswith(("sqla+", "db+")):
        check_connects(url.split("+", 1)[1], where)
    elif which == "broker" or scheme in ("redis", "rediss"):  # kombu's (AMQP, Redis, …)
        try:
            with Connection(url, connect_timeout=10) as conn:  # type: ignore[no-untyped-call]
                conn.ensure_connection(max_retries=1)
        except Exception as exc:  # noqa: BLE001 - kombu's OperationalError, redis's errors
            raise ConfigurationError(f"{where}: {_reason(str(exc), url)}") from None


def _reason(message: str, url: str) -> str:
    """A library's error on one line; it may quote the URL, so redacted as the URL itself is."""
    from scoring_pipeline.providers.redaction import redact

    return redact(" ".join(message.split()), [_password(url)])


def _password(url: str) -> str | None:
    """The URL's password as written in it, up to the last '@': also one with a '/', '?' or
    '#' left unencoded, where `urlsplit` ends the host part early and finds no password (the
    refusal printed such a password whole)."""
    _, scheme_end, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return password if scheme_end and at and colon and password else None


def _netloc(url: str) -> str:
    """What is between `scheme://` and the path: user, password, host and port."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).netloc
    except ValueError:
        return ""


# The SQLAlchemy transport passes transport options to create_engine: dagster-celery's defaults
# (retry knobs meant for AMQP) must not reach it.
# The code location every run loads first (workspace.yaml, `[tool.dagster]` in pyproject.toml).
CODE_LOCATION_MODULE = "scoring_pipeline.definitions"

CONFIG_SOURCE: dict[str, Any] = {
    "broker_transport_options": {},
    "worker_prefetch_multiplier": 1,
    "task_acks_late": False,
    "broker_connection_retry_on_startup": True,
    "result_extended": True,
    # What a run prints (its console logger's events, Python warnings) reaches the worker's log
    # through Celery's redirect of the pool processes' stdout and stderr, at this level: INFO,
    # not Celery's WARNING, which labelled every Dagster event of every run a warning. The
    # worker logs at INFO (`services.worker_command`), so those lines are kept.
    "worker_redirect_stdouts_level": "INFO",
}


def _warm_process(**_: Any) -> None:
    """In each pre-forked worker process, before its first run: import the code location, then
    move everything imported so far out of the garbage collector's sight (`gc.freeze`), so the
    collections a run triggers scan the run's own objects, not Dagster's whole module heap."""
    import gc
    import importlib

    # By name, as Dagster itself loads the code location: the runtime sits below the definitions.
    importlib.import_module(CODE_LOCATION_MODULE)
    gc.collect()
    gc.freeze()


_instance: tuple[int, DagsterInstance] | None = None


def worker_instance() -> DagsterInstance:
    """This worker process's Dagster instance: made on its first run, kept for the next ones
    (its storage pools its connections, so later runs start on open connections)."""
    global _instance
    if _instance is None or _instance[0] != os.getpid():  # never a forked parent's instance
        _instance = (os.getpid(), DagsterInstance.get())
    return _instance[1]


def _dispose_instance(**_: Any) -> None:
    """When a worker process exits: close its instance and its storage's connections."""
    from scoring_pipeline.runtime.dagster_storage import dispose_engines

    global _instance
    if _instance is not None and _instance[0] == os.getpid():
        _instance[1].dispose()
    _instance = None
    dispose_engines()


def _discard(_event: Any) -> None:
    """Run events are already in the event log; the task returns only the exit code."""


# How often a run's worker looks whether the run was terminated, and after how many polls a
# run still going is interrupted again.
CANCEL_POLL_SECONDS = 1.0
INTERRUPT_AGAIN_POLLS = 2


def _interrupt_when_canceled(instance: DagsterInstance, run_id: str, done: threading.Event) -> None:
    """Interrupt this process's main thread (the run's) once the run reads CANCELING or
    CANCELED, as Dagster's own run workers do on a termination, and again every 2 s while it
    still runs: dagster-celery terminates by a Celery revoke, a broadcast the PostgreSQL broker
    never delivers, so the UI's Terminate left the run going, and a forced one (marked CANCELED
    at once) left it writing. The batch being written rolls back (`batch_write._roll_back`),
    the scores IO manager fails its step without a retry and the run ends canceled. Outside a
    run, the pool process ignores SIGINT (Celery's setting)."""
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster_shared.ipc import send_interrupt

    stopping = (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)
    polls_since_interrupt: int | None = None
    while not done.wait(CANCEL_POLL_SECONDS):
        if polls_since_interrupt is not None:
            polls_since_interrupt += 1
            if polls_since_interrupt < INTERRUPT_AGAIN_POLLS:
                continue  # give the run time to unwind before interrupting it again
        try:
            run = instance.get_run_by_id(run_id)
        except Exception:  # the storage briefly unreachable: look again at the next poll
            logger.warning("run %s: could not read its status to see a termination", run_id)
            continue
        if run is None or run.status not in stopping or done.is_set():
            continue
        if polls_since_interrupt is None:
            logger.info("run %s is %s: interrupting it", run_id, run.status.value)
        send_interrupt()
        polls_since_interrupt = 0


def _of_a_canceled_backfill(instance: DagsterInstance, run_id: str) -> bool:
    """Mark canceled, instead of executing, a run handed to this worker after its backfill was
    cancelled. Dagster's cancellation terminates a backfill's queued and started runs and then
    waits for the others: a run still STARTING (dequeued, waiting in the broker for a free
    worker) is not terminated, so every such run (up to the instance's 8 at once, 10 batches
    each) went on to score after the backfill page's *Cancel backfill*."""
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    run = instance.get_run_by_id(run_id)
    if run is None or run.status != DagsterRunStatus.STARTING:
        return False
    backfill_id = run.tags.get(BACKFILL_ID_TAG)
    backfill = instance.get_backfill(backfill_id) if backfill_id else None
    if backfill is None or backfill.status not in (
        BulkActionStatus.CANCELING,
        BulkActionStatus.CANCELED,
    ):
        return False
    message = (
        f"Not started: backfill {backfill_id} was cancelled while this run waited for a run worker"
    )
    logger.info("run %s: %s", run_id, message)
    instance.report_run_canceling(run, message=message)
    instance.report_run_canceled(run, message=message)
    return True


def _on_kept_instance(body: Any, args: "ExecuteRunArgs | ResumeRunArgs") -> int:
    """A dagster-celery task's body (`_execute_run_command_body` or `_resume_run_command_body`)
    on this process's kept instance, the run tagged with this process first: the launcher's
    health check finds a run whose worker is gone by it (`run_launcher`). While it runs, a
    thread watches for its termination (`_interrupt_when_canceled`). A run of a backfill cancelled
    while it waited for a worker is not executed (`_of_a_canceled_backfill`)."""
    from scoring_pipeline.runtime.run_launcher import WORKER_TAG, worker_identity

    instance = worker_instance()
    if _of_a_canceled_backfill(instance, args.run_id):
        return 0
    instance.add_run_tags(args.run_id, {WORKER_TAG: worker_identity()})
    done = threading.Event()
    watcher = threading.Thread(
        target=_interrupt_when_canceled,
        args=(instance, args.run_id, done),
        name=f"cancel-watch-{args.run_id[:8]}",
        daemon=True,
    )
    watcher.start()
    try:
        return int(
            body(
                run_id=args.run_id,
                instance=instance,
                write_stream_fn=_discard,
                set_exit_code_on_failure=args.set_exit_code_on_failure is not False,
            )
        )
    finally:
        done.set()
        watcher.join()


def _register_tasks(app: Celery) -> None:
    """dagster-celery's execute and resume tasks, on this process's kept instance. The launcher
    sends each task's arguments by keyword: the parameter names are dagster-celery's."""
    from dagster._cli.api import _execute_run_command_body, _resume_run_command_body
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
    from dagster._serdes import unpack_value
    from dagster_celery.config import TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME

    @app.task(bind=True, name=TASK_EXECUTE_JOB_NAME, track_started=True)  # type: ignore[untyped-decorator]
    def execute_job(_task: Any, execute_job_args_packed: Any) -> int:
        args = unpack_value(val=execute_job_args_packed, as_type=ExecuteRunArgs)
        return _on_kept_instance(_execute_run_command_body, args)

    @app.task(bind=True, name=TASK_RESUME_JOB_NAME, track_started=True)  # type: ignore[untyped-decorator]
    def resume_job(_task: Any, resume_job_args_packed: Any) -> int:
        args = unpack_value(val=resume_job_args_packed, as_type=ResumeRunArgs)
        return _on_kept_instance(_resume_run_command_body, args)


# A Dagster event a run's console logger prints at DEBUG (RUN_START, STEP_OUTPUT, HANDLED_OUTPUT,
# each materialisation and check evaluation: ~40 lines a run), as it reaches Celery's redirect.
_DAGSTER_DEBUG = re.compile(r"\S+ \S+ [+-]\d{4} - dagster - DEBUG - ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class WithoutDagsterDebug(logging.Filter):
    """Keeps Dagster's DEBUG events out of the worker's log: every one is in the run's event
    log (its page in the UI), and Dagster builds a run's console logger at DEBUG unless the
    run's config says otherwise. What a run prints at INFO and above stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _DAGSTER_DEBUG.match(_ANSI.sub("", record.getMessage())) is None


def make_worker_app() -> Celery:
    from celery.signals import worker_process_init, worker_process_shutdown
    from dagster_celery.make_app import make_app

    # The worker logs at INFO; Alembic's INFO lines ("setup plugin …", seven per process, when a
    # first run checks the schema's revision) say nothing to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("celery.redirected").addFilter(WithoutDagsterDebug())
    broker, backend = broker_urls()
    if broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as sqla_transport

        # Set on the class: this transport hands its transport options to create_engine, so
        # `polling_interval` cannot go there. Only consumers poll; this is a worker process.
        sqla_transport.Transport.polling_interval = BROKER_POLL_SECONDS
    app = make_app(  # type: ignore[no-untyped-call]
        app_args={
            "broker": broker,
            "backend": backend,
            "include": [],
            "config_source": CONFIG_SOURCE,
            "task_default_queue": QUEUE,
        }
    )
    app.conf.update(CONFIG_SOURCE)
    _register_tasks(app)
    worker_process_init.connect(_warm_process, weak=False)
    worker_process_shutdown.connect(_dispose_instance, weak=False)
    return app


# `celery -A scoring_pipeline.runtime.celery_app worker` finds the app here; built on first
# attribute use so importing this module stays free of side effects.
def __getattr__(name: str) -> Any:
    if name == "app":
        global _app
        if _app is None:
            _app = make_worker_app()
        return _app
    raise AttributeError(name)


_app: Celery | None = None
