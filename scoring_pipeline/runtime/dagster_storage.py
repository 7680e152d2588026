"""Dagster's PostgreSQL instance storage, with its connections kept open.

dagster-postgres opens a new connection for every storage call (`NullPool`: "not holding any
connections open"), and closes it after. A night of many short runs makes thousands of them:
the 10,000-user benchmark opened ~140 connections a second, each a new PostgreSQL backend
process (~2 ms of server CPU to start, and cold catalog caches for its first queries) on a
2-core machine that also runs the COPYs. This storage is the same one, except that each of its
stores (runs, event log, schedules and sensor ticks) pools its connections, as dagster-webserver
already does for itself (`optimize_for_webserver`):

- one engine per process and database, shared by its stores and by every instance the process
  builds (Dagster builds one per run, and one per sensor evaluation in the code server): two
  connections kept open, a few more opened while threads overlap (the daemon's) and closed once
  idle again; a process's first instance checks that the tables exist, later ones don't;
- `pool_pre_ping`: a connection the server dropped (a restart, a failover) is found on checkout
  and replaced, never handed to Dagster;
- connections recycled after an hour, and closed when the process exits (`dispose_engines`,
  which a Celery run worker process calls on its way out), not when an instance is disposed.

In a 1,000-user night: 3,464 connections with the stock storage, 815 with pooled run and event
stores, 380 with all three pooled (an engine per store and instance), 247 once each run worker
process kept its instance; see docs/design.md for the figure with one engine per process.

The stores also remember the schema probes Dagster repeats on every run event and asset event
("does `runs` have `start_time`?", "does `asset_keys` have `cached_status_data`?"): each is a
catalog reflection query, and their answers only go from no to yes (when `dagster instance
migrate` adds the column). So a yes is kept for the process's life and a no is asked again.

`dagster.yaml` selects it with `storage: custom:`; its config is that of `storage: postgres:`
except `auth_provider` (dagster-postgres's token authentication, e.g. cloud IAM): the pooled
stores are built from a URL and take no token provider, so a config naming one is refused at
load rather than silently connecting without it.

Delete this module when dagster-postgres makes its pool configurable in `dagster.yaml`: upstream
issue https://github.com/dagster-io/dagster/issues/33935 and its pull request
https://github.com/dagster-io/dagster/pull/33936 (open as of dagster-postgres 0.29.27); the cost
of a connection per call is https://github.com/dagster-io/dagster/issues/20325.
"""

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage, PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, pg_url_from_config, set_pg_statement_timeout
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.store.db import dagster_storage_url

POOL_SIZE = 2  # connections the process keeps open
MAX_OVERFLOW = 12  # more, opened only while calls overlap (the daemon's threads)
POOL_RECYCLE_SECONDS = 3600


class _SchemaProbes:
    """The yes answers of the schema probes (a column or table a migration added)."""

    def __init__(self) -> None:
        self._present: set[str] = set()

    def present(self, name: str, probe: Callable[[], bool]) -> bool:
        if name in self._present:
            return True
        found = probe()
        if found:
            self._present.add(name)
        return found


@dataclass
class _ProcessStorage:
    """What every instance a process builds shares (Dagster builds one per run, and one per
    sensor evaluation in the code server, each of which would otherwise connect anew)."""

    engines: dict[str, Engine] = field(default_factory=dict)  # by URL
    tables_checked: set[str] = field(default_factory=set)  # URLs an earlier instance checked
    probes: _SchemaProbes = field(default_factory=_SchemaProbes)


_lock = threading.Lock()
_by_process: dict[int, _ProcessStorage] = {}  # by pid: a forked child never uses its parent's


def _this_process() -> _ProcessStorage:
    with _lock:
        return _by_process.setdefault(os.getpid(), _ProcessStorage())


def pooled_engine(postgres_url: str) -> Engine:
    """This process's pooled engine for the URL (made on first use)."""
    engines = _this_process().engines
    with _lock:
        engine = engines.get(postgres_url)
        if engine is None:
            engine = engines[postgres_url] = create_pg_engine(
                postgres_url,
                isolation_level="AUTOCOMMIT",
                pool_size=POOL_SIZE,
                max_overflow=MAX_OVERFLOW,
                pool_pre_ping=True,
                pool_recycle=POOL_RECYCLE_SECONDS,
            )
    return engine


def dispose_engines() -> None:
    """Close this process's pooled connections (a process that exits, a test that checks)."""
    with _lock:
        mine = _by_process.pop(os.getpid(), None)
    for engine in mine.engines.values() if mine else ():
        engine.dispose()


class _WebserverPool:
    """`optimize_for_webserver` as dagster-postgres has it (the webserver's own pool: one
    connection kept, Dagster's statement timeout), with `pool_pre_ping`: without it a
    connection the server ended (`idle_session_timeout`, a restart, `pg_terminate_backend`)
    was handed to the next request, which answered HTTP 500 (a launch from `retry-failed` or
    the benchmark, a page of the UI), once per dead connection."""

    postgres_url: str
    _engine: Engine

    def optimize_for_webserver(
        self, statement_timeout: int, pool_recycle: int, max_overflow: int
    ) -> None:
        kwargs: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "pool_size": 1,
            "pool_recycle": pool_recycle,
            "max_overflow": max_overflow,
            "pool_pre_ping": True,
        }
        options = self._engine.url.query.get("options")
        if options:
            kwargs["connect_args"] = {"options": options}
        self._engine = create_pg_engine(self.postgres_url, None, **kwargs)
        event.listen(
            self._engine,
            "connect",
            lambda connection, _: set_pg_statement_timeout(connection, statement_timeout),
        )


# The stores keep their engine in `_engine` (dagster-postgres 0.29, pinned with dagster), and
# `optimize_for_webserver` swaps it the same way.
class PooledScheduleStorage(_WebserverPool, PostgresScheduleStorage):
    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True) -> None:
        self._probes = _this_process().probes  # the parent's constructor already probes
        super().__init__(postgres_url, should_autocreate_tables)
        self._engine = pooled_engine(postgres_url)

    # The daemon's sensor and schedule loops ask these on every tick of every sensor (a catalog
    # query each): ~8 % of the daemon's busy time in a night, before they were remembered.
    def has_instigators_table(self) -> bool:
        return self._probes.present("instigators", super().has_instigators_table)

    def _has_instigators_table(self, conn: Connection) -> bool:
        stock = super()._has_instigators_table
        return self._probes.present("instigators", lambda: stock(conn))

    def has_secondary_index_table(self) -> bool:
        return self._probes.present("secondary_indexes", super().has_secondary_index_table)

    def has_built_index(self, migration_name: str) -> bool:
        stock = super().has_built_index
        return self._probes.present(f"index {migration_name}", lambda: stock(migration_name))


class PooledRunStorage(_WebserverPool, PostgresRunStorage):
    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        schedule_storage: PooledScheduleStorage | None = None,
    ) -> None:
        self._probes = _this_process().probes  # the parent's constructor already probes
        super().__init__(postgres_url, should_autocreate_tables)
        self._engine = pooled_engine(postgres_url)
        # Dagster disposes the run and event-log stores with the instance, never the schedule
        # store: the run store takes it along.
        self._schedule_storage = schedule_storage

    def has_run_stats_index_cols(self) -> bool:
        return self._probes.present("run_stats", super().has_run_stats_index_cols)

    def has_backfill_id_column(self) -> bool:
        return self._probes.present("backfill_id", super().has_backfill_id_column)

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._probes.present("selector_id", super().has_bulk_actions_selector_cols)

    def has_bulk_action_job_name_column(self) -> bool:
        return self._probes.present("job_name", super().has_bulk_action_job_name_column)

    def has_backfill_tags_table(self) -> bool:
        return self._probes.present("backfill_tags", super().has_backfill_tags_table)

    def dispose(self) -> None:
        # The engine is the process's (`dispose_engines`); the schedule store's dispose is
        # called here because Dagster never calls it.
        super().dispose()
        if self._schedule_storage is not None:
            self._schedule_storage.dispose()


class PooledEventLogStorage(_WebserverPool, PostgresEventLogStorage):
    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True) -> None:
        self._probes = _this_process().probes  # the parent's constructor already probes
        super().__init__(postgres_url, should_autocreate_tables)
        self._engine = pooled_engine(postgres_url)

    def has_table(self, table_name: str) -> bool:
        # Asked before every dynamic partitions read (`dynamic_partitions`) and asset check
        # query (`asset_check_executions`), among others.
        stock = super().has_table
        return self._probes.present(f"table {table_name}", lambda: stock(table_name))

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        stock = super()._has_asset_key_col_on_connection
        return self._probes.present(f"asset_keys.{column_name}", lambda: stock(conn, column_name))


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` whose run, event-log and schedule stores pool their connections."""

    def __init__(
        self, postgres_url: str, should_autocreate_tables: bool = True, inst_data: Any = None
    ) -> None:
        # psycopg2, whatever the URL names (or `postgres_db:` builds): on SQLAlchemy 2.1 a bare
        # `postgresql://` is psycopg 3, whose connections the webserver's pool
        # (`optimize_for_webserver`) finds closed: every page was an Internal Server Error.
        postgres_url = dagster_storage_url(postgres_url, variable="DAGSTER_PG_URL")
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        # The stores look for their tables (a catalog query each) only in the process's first
        # instance: later ones, a sensor evaluation's, find them there.
        checked = _this_process().tables_checked
        check_tables = should_autocreate_tables and postgres_url not in checked
        self._schedule_storage = PooledScheduleStorage(postgres_url, check_tables)
        self._run_storage = PooledRunStorage(
            postgres_url, check_tables, schedule_storage=self._schedule_storage
        )
        self._event_log_storage = PooledEventLogStorage(postgres_url, check_tables)
        if check_tables:
            checked.add(postgres_url)
        # DagsterStorage.__init__, skipping DagsterPostgresStorage.__init__ (the stock stores).
        super(DagsterPostgresStorage, self).__init__()  # type: ignore[no-untyped-call]

    @classmethod
    def from_config_value(
        cls, inst_data: Any, config_value: Mapping[str, Any]
    ) -> "PooledPostgresStorage":
        if config_value.get("auth_provider") is not None:
            raise ConfigurationError(
                "the pooled Dagster storage does not support `auth_provider`; use the stock "
                "`storage: postgres:` in dagster.yaml for token authentication"
            )
        return cls(
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
        )


def storage_config(postgres_url: str) -> dict[str, Any]:
    """The instance's `storage:` block for this storage (as `dagster.yaml` has it, with a URL)."""
    return {
        "custom": {
            "module": __name__,
            "class": PooledPostgresStorage.__name__,
            "config": {"postgres_url": postgres_url},
        }
    }
