"""The password of a Celery URL (`DAGSTER_CELERY_BROKER_URL`, `DAGSTER_CELERY_BACKEND_URL`)
never reaches what the commands print or the run worker's log, whatever shape the URL has."""

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scoring_pipeline.runtime.services import free_port
from scoring_pipeline_tests.cli_helpers import CLI

pytestmark = [pytest.mark.db, pytest.mark.slow]

PASSWORD = "celeryPW-5e0b7a"
VARIABLES = ("DAGSTER_CELERY_BROKER_URL", "DAGSTER_CELERY_BACKEND_URL")


def _until_it_exits(env: dict[str, str], *args: str, timeout: float = 90) -> tuple[int, str]:
    """Run the command; its status and output. One still running after `timeout` (a worker
    that took the URL) is stopped with its process group, and that is a failure."""
    proc = subprocess.Popen(
        [*CLI, *args],
        env=env,
        cwd=env["DAGSTER_HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        logs = _service_logs(Path(env["DAGSTER_HOME"]))
        pytest.fail(f"{args} took the URL and ran on:\n{output[-3000:]}\n{logs[-3000:]}")
    return proc.returncode, output


def _refusals(env: dict[str, str], variable: str, url: str) -> Iterator[str]:
    """What `worker`, then `services`, print as they refuse to start with `variable`=`url`;
    each must exit 2."""
    for command in (["worker", "--concurrency", "1"], ["services", "--port", str(free_port())]):
        status, output = _until_it_exits({**env, variable: url}, *command)
        assert status == 2, (command, output)
        yield output


def _service_logs(home: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (home / "service-logs").glob("*.log"))


@pytest.mark.parametrize(
    "url",
    [
        # One slash short: kombu read it as the host name of its default transport (AMQP).
        f"sqla+postgresql:/postgres:{PASSWORD}@127.0.0.1:5432/scoring",
        # No scheme at all.
        f"postgres:{PASSWORD}@127.0.0.1:5432/scoring",
    ],
)
def test_a_celery_url_with_no_scheme_slashes_is_refused_without_its_password(
    cli_env, clean_db, url
):
    # As the broker, `worker` and `services` took it: the worker's banner read "transport:
    # amqp://guest:**@postgres%3AceleryPW-…%40127.0.0.1…:5672//" and so did each of its
    # "consumer: Cannot connect to …" lines, every few seconds, in worker.log. As the backend,
    # the refusal quoted it twice: the value, and "ModuleNotFoundError: No module named
    # 'postgres:celeryPW-…@127'".
    for variable in VARIABLES:
        for output in _refusals(cli_env, variable, url):
            assert output.startswith(
                f"scoring-pipeline: error: {variable} is not a URL (no scheme://): give "
                "scheme://[user:password@]host[:port]/..."
            ), output
            assert output.count("\n") == 1, output
            assert PASSWORD not in output
            assert PASSWORD not in _service_logs(Path(cli_env["DAGSTER_HOME"]))


def test_a_celery_url_whose_password_holds_an_unencoded_at_sign_is_refused(cli_env, clean_db):
    # `sqla+postgresql://postgres:ab@<rest>@host/db`: SQLAlchemy (the `sqla+` broker, the `db+`
    # backend) ends the password at the first '@' and took "<rest>@host" for the host name:
    # the worker logged "failed to resolve host '<rest>@127.0.0.1'" several times a second
    # (138 lines in 25 s), or, as the backend, in the traceback it exited with.
    tail = "atPW-c4e2b8"
    for variable, scheme in zip(VARIABLES, ("sqla+postgresql", "db+postgresql"), strict=True):
        url = f"{scheme}://postgres:ab@{tail}@127.0.0.1:5432/scoring"
        for output in _refusals(cli_env, variable, url):
            assert output == (
                f"scoring-pipeline: error: {variable} has an '@' in its password or user name: "
                "percent-encode it as %40 (the value is not shown)\n"
            ), output
            assert tail not in _service_logs(Path(cli_env["DAGSTER_HOME"]))


def test_a_refused_celery_url_shows_a_password_with_an_unencoded_slash_as_stars(cli_env, clean_db):
    # `reddis://user:ab/<rest>@host…` (a typo of the transport; a '/' in the password left as
    # it is): `urlsplit` ends the host part at that '/' and finds no password, so the refusal
    # printed the URL as it was, password and all.
    tail = "slashPW-0d7f3a"
    url = f"reddis://someone:ab/{tail}@127.0.0.1:6379/0"
    for variable in VARIABLES:
        for output in _refusals(cli_env, variable, url):
            assert output.startswith(
                f"scoring-pipeline: error: {variable}='reddis://someone:***@127.0.0.1:6379/0': "
                "Celery cannot use it ("
            ), output
            assert output.count("\n") == 1 and tail not in output, output


def test_a_broker_or_backend_that_cannot_be_reached_is_one_line_before_anything_starts(
    cli_env, clean_db
):
    # A broker on a closed port: `services` said "started" while each run worker logged
    # "Connection to broker lost. Trying to re-establish the connection…" several times a
    # second and restarted, and no run the daemon handed to the broker was ever executed.
    closed = f"127.0.0.1:{free_port()}"
    cases = [
        (
            "DAGSTER_CELERY_BROKER_URL",
            f"sqla+postgresql://postgres:{PASSWORD}@{closed}/s",
            "broker",
        ),
        ("DAGSTER_CELERY_BROKER_URL", f"amqp://guest:{PASSWORD}@{closed}//", "broker"),
        (
            "DAGSTER_CELERY_BACKEND_URL",
            f"db+postgresql://postgres:{PASSWORD}@{closed}/s",
            "result backend",
        ),
    ]
    for variable, url, which in cases:
        for output in _refusals(cli_env, variable, url):
            assert output.startswith(
                f"scoring-pipeline: error: {variable}: cannot connect to the Celery {which}: "
            ), output
            assert output.count("\n") == 1 and PASSWORD not in output, output
            assert not (Path(cli_env["DAGSTER_HOME"]) / "service-logs" / "worker.log").exists()
