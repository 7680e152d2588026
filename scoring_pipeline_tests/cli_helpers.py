"""Running the `scoring-pipeline` command as an operator would, on the test database."""

import re
import subprocess
import sys

import pytest

from scoring_pipeline.runtime.services import private_deployment_env

CLI = [sys.executable, "-m", "scoring_pipeline.cli"]


@pytest.fixture
def cli_env(clean_db, database_url, tmp_path):
    env = private_deployment_env(database_url, tmp_path / "dagster_home", tmp_path / "demo")
    return env


def run(env, *args, check=True):
    proc = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=600, cwd=env["DAGSTER_HOME"]
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc


def started(env, *args, stderr=subprocess.PIPE):
    """The command in the background, its stdout (and by default stderr) piped as text."""
    return subprocess.Popen(
        [*CLI, *args],
        env=env,
        cwd=env["DAGSTER_HOME"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def reap(proc: subprocess.Popen) -> None:
    """Kill the command if it still runs (a test failed or timed out while it ran) and reap it,
    its pipes closed: a process left behind failed a later, unrelated test with its
    ResourceWarning."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def summary_value(stdout: str, label: str) -> str:
    match = re.search(rf"^{label}\s+(.+)$", stdout, re.MULTILINE)
    assert match, f"{label!r} not in summary:\n{stdout}"
    return match.group(1).strip()
