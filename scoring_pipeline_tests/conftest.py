"""Shared fixtures: a fresh PostgreSQL database (embedded by default), migrated, and a Dagster
instance whose storage is that same PostgreSQL database.

`SCORING_TEST_DATABASE_URL` points the suite at a server instead of the embedded default; a fresh
database is created on it for the session and dropped afterwards.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.runtime.dagster_storage import storage_config
from scoring_pipeline.store import db
from scoring_pipeline.store.tables import metadata

pytest_plugins = [
    # Plugins that import another one come after it (assertion rewriting needs the order).
    "scoring_pipeline_tests.scenario",
    "scoring_pipeline_tests.otlp_receiver",
    "scoring_pipeline_tests.e2e",
    "scoring_pipeline_tests.cli_helpers",
]

INPUT_AND_OUTPUT_TABLES = [t.name for t in reversed(metadata.sorted_tables)]


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """`SCORING_TEST_DATABASE_URL`, or an embedded server private to this session."""
    url = os.environ.get("SCORING_TEST_DATABASE_URL", "").strip()
    if url:
        yield url
        return
    # Not under pytest's tmp dirs: those are 0700 and the server runs as its own system user.
    data_dir = Path(tempfile.mkdtemp(prefix="scoring-test-pg-"))
    try:
        yield db.start_embedded_server(data_dir, keep_running=False)
    finally:
        db.stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[tuple[Path, str]]:
    """An embedded server of one test only (to restart, or to see it start fresh): its data
    directory and the URL of its database, whatever `SCORING_TEST_DATABASE_URL` says."""
    data_dir = Path(tempfile.mkdtemp(prefix="scoring-private-pg-"))
    try:
        yield data_dir, db.start_embedded_server(data_dir, keep_running=False)
    finally:
        db.stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


class DatabaseFactory:
    """Creates fresh databases on the test server and drops them at the end of the session."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.created: list[str] = []

    def create(self) -> str:
        url = db.create_database(self.server_url, "scoring_test")
        self.created.append(url)
        return url

    def drop_all(self) -> None:
        for url in self.created:
            db.drop_database(url)


@pytest.fixture(scope="session")
def databases(server_url: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(server_url)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: DatabaseFactory) -> str:
    """A brand-new database for this test session (migrated by the `engine` fixture)."""
    return databases.create()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine_for(database_url)
    db.migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_engine(databases: DatabaseFactory) -> Iterator[Engine]:
    """A brand-new, empty database of one test (not migrated): for the migrations' tests."""
    engine = db.create_engine_for(databases.create())
    yield engine
    engine.dispose()


@pytest.fixture
def clean_db(engine: Engine) -> Engine:
    """The migrated database with every application table emptied."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(INPUT_AND_OUTPUT_TABLES)} RESTART IDENTITY"))
    return engine


@pytest.fixture(scope="session")
def project_instance_config() -> dict[str, Any]:
    """The project's `dagster.yaml`, as the services load it."""
    import yaml

    with open(db.PROJECT_ROOT / "dagster.yaml") as f:
        config: dict[str, Any] = yaml.safe_load(f)
    return config


@pytest.fixture(scope="session")
def dagster_instance(
    database_url: str, project_instance_config: dict[str, Any]
) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance on PostgreSQL storage (the same database, psycopg2 driver), its
    Python loggers routed as the project's `dagster.yaml` routes them."""
    overrides = {
        "storage": storage_config(db.dagster_storage_url(database_url)),
        "python_logs": project_instance_config["python_logs"],
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


@pytest.fixture
def app_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Environment of a process of the app pointed at the test database."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PGTZ", "UTC")
    return database_url
