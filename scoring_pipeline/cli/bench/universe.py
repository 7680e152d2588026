"""The benchmark's universe: a new database, migrated and filled with generated users, criteria
and instruments, with a work folder and a Dagster deployment of its own.
"""

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from scoring_pipeline.cli.demo_data.load import generate
from scoring_pipeline.runtime.services import private_deployment_env
from scoring_pipeline.store import db


def new_universe(
    users: int,
    seed: int,
    instruments_per_market: int,
    first_date: dt.date,
    server_url: str | None,
    echo: Any,
) -> tuple[str, Engine, Path, dict[str, str]]:
    """A new database on the server of `server_url` (by default the one `DATABASE_URL` or the
    embedded default names), migrated and filled with a generated universe whose fundamentals
    date from before `first_date`; with its work folder (provider files, DAGSTER_HOME) and the
    environment of a deployment of its own. Returns (url, engine, work folder, environment)."""
    url = db.create_database(server_url or db.resolve_database_url(), "scoring_bench")
    engine = db.create_engine_for(url)
    work = Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    try:
        db.migrate(engine)
        with engine.begin() as conn:
            counts = generate(
                conn,
                users=users,
                seed=seed,
                out_dir=work / "provider_files",
                instruments_per_market=instruments_per_market,
                rules_per_set=12,
                today=first_date,
            )
        echo(f"universe: {counts}")
        env = private_deployment_env(url, work / "dagster_home", work / "provider_files")
        db.prepare_dagster_environment(env)
    except BaseException:
        engine.dispose()
        db.drop_database(url)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return url, engine, work, env
