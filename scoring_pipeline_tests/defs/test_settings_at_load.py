"""A bad provider setting fails where an operator loads the code location, not at night: the
Dagster CLI's `definitions validate` (what the UI and daemon do on load) and `scoring-pipeline
score` both stop with one line naming the variable, before anything runs."""

import os
import subprocess
import sys

import pytest

from scoring_pipeline_tests.cli_helpers import run

pytestmark = pytest.mark.slow


def test_dagster_refuses_to_load_the_code_location(tmp_path):
    # A fresh DAGSTER_HOME: the load itself is what is tested, not an instance's storage.
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "RATES_PROVIDER": "ecb"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "scoring_pipeline.definitions",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "invalid setting RATES_PROVIDER='ecb': is not a known provider" in output


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATES_PROVIDER", "ecb"),
        ("PRICES_BASE_URL", "quotes.example/v7"),
        ("PROVIDER_TIMEOUT_SECONDS", "-3"),
    ],
)
@pytest.mark.db
def test_score_says_it_in_one_line(cli_env, name, value):
    run(cli_env, "migrate")

    proc = run({**cli_env, name: value}, "score", "--date", "2026-11-27", check=False)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"scoring-pipeline: error: invalid setting {name}=")
    assert "Traceback" not in proc.stderr
