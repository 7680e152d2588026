"""The instance storage keeps its run and event-log connections open (one per store, not one per
call as dagster-postgres does), replaces a connection the server dropped, and closes them when
the instance is disposed. Measured on a database of its own, so other tests' connections never
count."""

import threading
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.runtime.dagster_storage import (
    PooledPostgresStorage,
    dispose_engines,
    storage_config,
)
from scoring_pipeline.store import db

pytestmark = pytest.mark.db

CALLS = 25


@pytest.fixture
def own_database(databases: Any) -> Iterator[tuple[str, Engine]]:
    url = databases.create()
    probe = sa.create_engine(db.with_driver(url, db.APP_DRIVER), poolclass=sa.pool.NullPool)
    yield url, probe
    probe.dispose()


def _sessions(probe: Engine) -> int:
    """Connections opened to the probe's database so far (its own excluded, flushed by then)."""
    with probe.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.execute(
                sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def _backends(probe: Engine) -> int:
    """Other client connections to the probe's database open right now (autovacuum workers,
    which also show the database's name, are not connections)."""
    with probe.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )


def _no_backends_left(probe: Engine, timeout: float = 10.0) -> bool:
    """A closed connection's server process ends a moment after the client leaves."""
    deadline = time.monotonic() + timeout
    while _backends(probe):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _storage_calls(instance: dg.DagsterInstance) -> None:
    """What a run and the daemon do over and over: read a run, write an event, read events
    back (run and event-log stores), read sensor and schedule states (schedule store)."""
    run = instance.create_run_for_job(dg.GraphDefinition("g").to_job())  # type: ignore[attr-defined]
    for _ in range(CALLS):
        assert instance.get_run_by_id(run.run_id) is not None
        instance.report_engine_event("probe", run)
        assert instance.all_logs(run.run_id)
        assert instance.all_instigator_state() == []


def _connections_for_calls(probe: Engine, storage: dict[str, Any]) -> int:
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        _storage_calls(instance)  # creates the tables on first use
        before = _sessions(probe)
        _storage_calls(instance)
        return _sessions(probe) - before - 1  # less the probe's own count of `before`


def test_storage_calls_reuse_connections_where_stock_storage_opens_one_each(own_database):
    url, probe = own_database
    storage_url = db.dagster_storage_url(url)
    stock = _connections_for_calls(probe, {"postgres": {"postgres_url": storage_url}})
    pooled = _connections_for_calls(probe, storage_config(storage_url))
    assert stock >= 4 * CALLS  # the contrast: dagster-postgres connects for every call
    assert pooled <= 2


def test_a_dropped_connection_is_replaced_and_all_are_closed_when_the_process_lets_go(
    own_database,
):
    url, probe = own_database
    with dg.instance_for_test(
        overrides={"storage": storage_config(db.dagster_storage_url(url))}
    ) as instance:
        _storage_calls(instance)
        assert _backends(probe) >= 1  # the pooled connections stay open between calls
        with probe.connect() as conn:  # the server drops them (as a restart or failover would)
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        _storage_calls(instance)  # no error: each dead connection is found and replaced
        assert _backends(probe) >= 1
    assert _backends(probe) >= 1  # kept for the process's next instance
    dispose_engines()
    assert _no_backends_left(probe)


def test_later_instances_of_a_process_reuse_its_connections(own_database):
    """Dagster builds an instance per sensor evaluation (in the code server) and per run: after
    the process's first, an instance neither connects anew nor looks for its tables again."""
    url, probe = own_database
    overrides = {"storage": storage_config(db.dagster_storage_url(url))}
    with dg.instance_for_test(overrides=overrides) as first:
        _storage_calls(first)  # creates the tables, opens the pool
    before = _sessions(probe)
    for _ in range(5):
        with dg.instance_for_test(overrides=overrides) as instance:
            _storage_calls(instance)
    assert _sessions(probe) - before - 1 <= 2  # five instances, (almost) no new connection
    dispose_engines()
    assert _no_backends_left(probe)


def test_schema_probes_query_the_catalog_once_per_process(own_database):
    """What the daemon's sensor loop, a dynamic partitions read and an asset check query ask
    about the schema (tables and columns Dagster's migrations add) is asked of the catalog the
    first time only: the answer, once yes, stays yes for the process."""
    url, _probe = own_database
    overrides = {"storage": storage_config(db.dagster_storage_url(url))}
    catalog: list[str] = []

    def probes(instance: dg.DagsterInstance) -> None:
        schedules = instance.schedule_storage
        assert schedules is not None
        assert schedules.has_instigators_table()
        assert schedules.supports_batch_queries  # instigators table and a built index
        instance.all_instigator_state()
        instance.get_dynamic_partitions("some_partitions")
        assert instance.event_log_storage.supports_asset_checks
        instance.get_run_records(limit=1)

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "pg_catalog" in statement or "information_schema" in statement:
            catalog.append(statement)

    with dg.instance_for_test(overrides=overrides) as first:
        probes(first)  # the process's first answers
        engine = first.run_storage._engine  # type: ignore[attr-defined]
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            for _ in range(3):
                with dg.instance_for_test(overrides=overrides) as instance:
                    probes(instance)
            probes(first)
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    dispose_engines()
    assert catalog == []


def test_the_project_instance_config_selects_the_pooled_storage(project_instance_config):
    config = storage_config("postgresql+psycopg2://example/db")
    assert config["custom"]["class"] == PooledPostgresStorage.__name__
    project = project_instance_config
    assert project["storage"]["custom"]["module"] == config["custom"]["module"]
    assert project["storage"]["custom"]["class"] == config["custom"]["class"]


def test_a_config_with_auth_provider_is_refused_not_silently_dropped():
    config = {
        "postgres_db": {"hostname": "db.example", "username": "u", "db_name": "d"},
        "auth_provider": {"aws_rds_iam": {"region": "eu-west-1"}},
    }
    with pytest.raises(ConfigurationError, match="auth_provider"):
        PooledPostgresStorage.from_config_value(None, config)


def test_a_run_worker_process_keeps_one_instance_for_its_runs(own_database, tmp_path, monkeypatch):
    """A Celery run worker process builds its Dagster instance on its first run and runs the next
    ones on it (on its open connections); a forked child builds its own; exiting closes it."""
    import yaml

    from scoring_pipeline.runtime import celery_app

    url, probe = own_database
    (tmp_path / "dagster.yaml").write_text(
        yaml.safe_dump({"storage": storage_config(db.dagster_storage_url(url))})
    )
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setattr(celery_app, "_instance", None)
    first = celery_app.worker_instance()
    _storage_calls(first)  # the first run creates the tables and opens the pools
    before = _sessions(probe)
    for _ in range(3):  # three more runs of this process
        instance = celery_app.worker_instance()
        assert instance is first
        _storage_calls(instance)
    assert _sessions(probe) - before - 1 <= 2  # the runs connected (almost) never again

    celery_app._dispose_instance()  # the process exits
    assert celery_app._instance is None
    assert _no_backends_left(probe)

    # A child forked from a process that had an instance never runs on its parent's.
    monkeypatch.setattr(celery_app, "_instance", (celery_app.os.getpid() + 1, first))
    child = celery_app.worker_instance()
    assert child is not first
    celery_app._dispose_instance()
    assert _no_backends_left(probe)


def test_schema_probes_keep_a_yes_and_ask_a_no_again(own_database, monkeypatch):
    """Dagster asks "does this column exist?" on every run and asset event; the pooled stores
    answer a yes from memory (a migration only ever adds), and ask again after a no."""
    from dagster._core.storage.event_log import sql_event_log
    from dagster._core.storage.runs import sql_run_storage

    from scoring_pipeline.runtime.dagster_storage import _SchemaProbes

    url, _ = own_database
    with dg.instance_for_test(
        overrides={"storage": storage_config(db.dagster_storage_url(url))}
    ) as instance:
        runs, events = instance.run_storage, instance.event_log_storage
        assert runs.has_run_stats_index_cols()
        assert events.has_asset_key_index_cols()

        def no_catalog(*_: Any) -> Any:
            raise AssertionError("the catalog was queried again")

        monkeypatch.setattr(sql_run_storage.db, "inspect", no_catalog)
        monkeypatch.setattr(sql_event_log.db, "inspect", no_catalog)
        assert runs.has_run_stats_index_cols()  # from memory
        assert events.has_asset_key_index_cols()
    with dg.instance_for_test(  # the process's next instance (a sensor evaluation's) knows too
        overrides={"storage": storage_config(db.dagster_storage_url(url))}
    ) as instance:
        assert instance.run_storage.has_run_stats_index_cols()
    monkeypatch.undo()
    dispose_engines()

    answers = iter([False, True, False])
    probes = _SchemaProbes()
    assert not probes.present("col", lambda: next(answers))
    assert probes.present("col", lambda: next(answers))  # asked again: now migrated
    assert probes.present("col", lambda: next(answers))  # kept: not asked a third time


def test_the_project_instance_runs_the_daemons_a_night_needs_and_no_others(
    project_instance_config,
):
    """The daemon schedules, senses, dequeues, monitors runs and runs backfills; it runs no
    declarative-automation or freshness loop (nothing here uses them), and steps capture no
    stdout/stderr (the project's loggers go to the event log instead). A sensor's skipped
    ticks (one a second) are kept a day."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    from scoring_pipeline.defs.cache_warming import dashboard_cache_job

    project = project_instance_config
    settings = {
        k: project[k]
        for k in ("auto_materialize", "freshness", "python_logs", "retention", "concurrency")
    }
    with dg.instance_for_test(overrides=settings) as instance:
        daemons = set(instance.get_required_daemon_types())
        assert {"SENSOR", "BACKFILL", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= daemons
        assert "ASSET" not in daemons and "FRESHNESS_DAEMON" not in daemons
        assert "scoring_pipeline" in instance.get_settings("python_logs")["managed_python_loggers"]
        kept = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        assert kept[TickStatus.SKIPPED] == 1 and kept[TickStatus.SUCCESS] == -1
        # At most one dashboard warm run at a time: the rest of the run slots stay for batches.
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        lane = [limit for limit in limits if limit["key"] == "scoring/lane"]
        assert lane == [{"key": "scoring/lane", "value": "dashboard", "limit": 1}]
        assert dashboard_cache_job.tags["scoring/lane"] == "dashboard"
    assert project["compute_logs"]["class"] == "NoOpComputeLogManager"


def test_a_storage_url_naming_no_driver_serves_the_webserver(own_database):
    """`DAGSTER_PG_URL=postgresql://…` (an operator's own, as the README's table suggests): on
    SQLAlchemy 2.1 that is psycopg 3, and the webserver's instance (`optimize_for_webserver`)
    then found its connections closed, so every page of the UI was an Internal Server Error
    (an operator review). The storage uses psycopg2 whatever the URL names."""
    url, _ = own_database
    bare = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    answers: list[object] = []
    with dg.instance_for_test(overrides={"storage": storage_config(bare)}) as instance:
        instance.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=20)

        def index_page() -> None:  # what the webserver's index page asks first
            try:
                answers.append(instance.run_storage.get_run_storage_id())
            except sa.exc.OperationalError as exc:
                answers.append(exc)

        index_page()
        other = threading.Thread(target=index_page)  # a request on another thread
        other.start()
        other.join()
    assert len(answers) == 2
    assert all(isinstance(a, str) for a in answers), answers
    assert answers[0] == answers[1]


def test_the_webservers_connections_the_server_ended_are_replaced(own_database):
    """The webserver's instance builds a pool of its own (`optimize_for_webserver`): an
    operator review at the limits, with `idle_session_timeout` set on the role, found its kept
    connection ended by the server between two requests, and the next request (a launch from
    `retry-failed`) answered HTTP 500; so after a restart or a `pg_terminate_backend`. Each
    dead connection is now found on checkout and replaced."""
    url, probe = own_database
    with dg.instance_for_test(overrides={"storage": storage_config(url)}) as instance:
        instance.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=20)
        stores = {
            "runs": lambda: instance.run_storage.get_run_storage_id(),
            "event log": lambda: instance.event_log_storage.get_asset_records(),
            "schedules": lambda: instance.schedule_storage.all_instigator_state(),
        }
        for read in stores.values():
            read()
        with probe.connect() as conn:
            ended = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                )
            ).scalar_one()
        assert ended >= 1
        failed = {}
        for name, read in stores.items():
            try:
                read()
            except sa.exc.OperationalError as exc:
                failed[name] = str(exc.orig).splitlines()[0]
    assert failed == {}
