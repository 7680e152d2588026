"""The Celery app of the run workers: warm processes that execute Dagster runs.

`dagster.yaml` sets Dagster's `CeleryRunLauncher`; the daemon hands each run to this app's
`execute_job` task, and a worker (`scoring-pipeline worker`) runs it in a pre-forked process that
already imported Dagster and the code location, instead of a fresh process per run. The broker
and result backend default to the application's PostgreSQL (no other server needed);
`DAGSTER_CELERY_BROKER_URL` / `DAGSTER_CELERY_BACKEND_URL` point them at Redis or RabbitMQ.
"""

import os
from typing import Any

from celery import Celery

from scoring_pipeline.store.db import prepare_dagster_environment

QUEUE = "dagster"
# How often an idle worker looks for a run in the PostgreSQL broker table. kombu's default (1 s)
# leaves a worker idle for half a second on average between two runs of a night.
BROKER_POLL_SECONDS = 0.1


def broker_urls() -> tuple[str, str]:
    """(broker, result backend), as `prepare_dagster_environment` resolved them."""
    prepare_dagster_environment()
    return os.environ["DAGSTER_CELERY_BROKER_URL"], os.environ["DAGSTER_CELERY_BACKEND_URL"]


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


def make_worker_app() -> Celery:
    from celery.signals import worker_process_init
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

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
    create_execute_job_task(app)
    create_resume_job_task(app)
    worker_process_init.connect(_warm_process, weak=False)
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
