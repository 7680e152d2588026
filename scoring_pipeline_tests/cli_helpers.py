"""Running the `scoring-pipeline` command as an operator would, on the test database."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from scoring_pipeline.db import PROJECT_ROOT

CLI = [sys.executable, "-m", "scoring_pipeline.cli"]


@pytest.fixture
def cli_env(clean_db, database_url, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATES_", "PRICES_"))}
    env.update(
        DATABASE_URL=database_url,
        DAGSTER_HOME=str(home),
        PGTZ="UTC",
        RATES_PROVIDER="file",
        RATES_FILE=str(tmp_path / "demo" / "rates.json"),
        PRICES_PROVIDER="file",
        PRICES_FILE=str(tmp_path / "demo" / "prices.csv"),
    )
    env.pop("DAGSTER_PG_URL", None)
    return env


def run(env, *args, check=True):
    proc = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=600, cwd=env["DAGSTER_HOME"]
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc


def summary_value(stdout: str, label: str) -> str:
    match = re.search(rf"^{label}\s+(.+)$", stdout, re.MULTILINE)
    assert match, f"{label!r} not in summary:\n{stdout}"
    return match.group(1).strip()
