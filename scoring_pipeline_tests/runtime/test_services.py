"""`scoring-pipeline services` refuses what would break it or a running one: a webserver port
already in use, and a second `services` on the same DAGSTER_HOME (whose workspace file the
first's webserver and daemon reload)."""

import datetime as dt
import socket

import pytest

from scoring_pipeline.errors import ScoringPipelineError
from scoring_pipeline.runtime.services import free_port, private_deployment_env, running_services

pytestmark = [pytest.mark.db, pytest.mark.slow]


def test_a_port_in_use_is_refused_before_any_service_starts(database_url, tmp_path):
    env = private_deployment_env(database_url, tmp_path / "home", tmp_path / "files")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ScoringPipelineError, match=f"port {port} is already in use"):
            with running_services(port=port, workers=1, env=env, timeout=60):
                pass
    # Each service's log is opened as it starts: none was.
    assert list((tmp_path / "home" / "service-logs").glob("*.log")) == []


def test_a_second_services_on_the_same_dagster_home_is_refused_and_the_first_runs_on(
    database_url, tmp_path
):
    env = private_deployment_env(database_url, tmp_path / "home", tmp_path / "files")
    logs = tmp_path / "home" / "service-logs"
    with running_services(port=free_port(), workers=1, env=env) as first:
        workspace = (logs / "workspace.yaml").read_text()
        with pytest.raises(ScoringPipelineError) as refused:
            with running_services(port=free_port(), workers=1, env=dict(env), timeout=60):
                pass
        message = str(refused.value)
        assert f"already runs with DAGSTER_HOME={tmp_path / 'home'}" in message
        assert "stop it first" in message
        # The first's workspace still names its own code server, and every service runs on.
        assert (logs / "workspace.yaml").read_text() == workspace
        assert f"port: {first.code_port}" in workspace
        assert all(first.alive().values())
    # Once the first has stopped, the DAGSTER_HOME is free again.
    with running_services(port=free_port(), workers=1, env=dict(env)) as again:
        assert all(again.alive().values())


def test_a_private_deployment_never_ticks_in_a_run_of_its_own(database_url, tmp_path):
    # With the default 04:00 UTC cron, a CI run across 04:00 had the daemon of the end-to-end
    # tests' deployment start the day's night beside the tests' own (two tests failed: every
    # user scored twice; two nights where one was launched), as it would beside a benchmark.
    from dagster._utils.schedules import cron_string_iterator

    from scoring_pipeline.runtime.services import PRIVATE_CRON

    base = {"OVERNIGHT_JOB_CRON": "0 4 * * *"}  # the operator's, not inherited
    env = private_deployment_env(database_url, tmp_path / "home", tmp_path / "files", base)
    assert env["OVERNIGHT_JOB_CRON"] == PRIVATE_CRON
    start = dt.datetime(2026, 12, 5, 3, 59, tzinfo=dt.UTC).timestamp()
    ticks = cron_string_iterator(start, PRIVATE_CRON, "UTC")
    assert next(ticks).isoformat() == "2027-01-01T04:00:00+00:00"
    # A test of the schedule gives its own.
    cron = {"OVERNIGHT_JOB_CRON": "* * * * *"}
    mine = private_deployment_env(database_url, tmp_path / "h2", tmp_path / "files", base, **cron)
    assert mine["OVERNIGHT_JOB_CRON"] == "* * * * *"
