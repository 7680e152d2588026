"""Helpers of the end-to-end tests: real Dagster services on the test database, GraphQL reads."""

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scoring_pipeline.runtime.dagster_api import DagsterApi
from scoring_pipeline.runtime.services import (
    Services,
    free_port,
    private_deployment_env,
    running_services,
)
from scoring_pipeline_tests.otlp_receiver import running_receiver

T = TypeVar("T")

_PARTITIONS = """
query Statuses {
  assetNodeOrError(assetKey: {path: ["scores"]}) {
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions
        }
      }
    }
  }
}
"""

_CHECKS = """
query Checks($check: String!) {
  assetCheckExecutions(assetKey: {path: ["scores"]}, checkName: $check, limit: 500) {
    partition status evaluation { success }
  }
}
"""

_RUNS = """
query Runs($job: String!, $statuses: [RunStatus!]) {
  runsOrError(filter: {pipelineName: $job, statuses: $statuses}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 180.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def let_ticks_pass(schedules: Iterable[tuple[str, str]], window: float = 600.0) -> float:
    """Wait until no tick of `schedules` ((cron, timezone)) is due in the next `window` seconds;
    returns the seconds waited. Call it before the services start: a daemon with no schedule
    history starts each schedule from now (it catches up no earlier tick), so a test's own
    deployment whose schedules tick at real times (market groups' opening times) never starts
    tonight's night beside the test's."""
    from dagster._utils.schedules import cron_string_iterator

    crons = list(schedules)
    waited = 0.0
    while True:
        now = time.time()
        due = [next(cron_string_iterator(now, cron, tz)).timestamp() for cron, tz in crons]
        soon = [t for t in due if t < now + window]
        if not soon:
            return waited
        pause = max(soon) + 5 - now
        time.sleep(pause)
        waited += pause


def partition_statuses(api: DagsterApi, score_date: str | None = None) -> dict[str, set[str]]:
    """`scores` partitions by status, from the webserver: batch keys of `score_date`, or every
    partition key when it is None ("missing" are the registered ones never materialised)."""
    node = api.query(_PARTITIONS, {})["assetNodeOrError"]["assetPartitionStatuses"]
    statuses = {
        "materialized": "materializedPartitions",
        "failed": "failedPartitions",
        "missing": "unmaterializedPartitions",
    }
    out = {name: set(node[field]) for name, field in statuses.items()}
    out["materialized"] -= out["failed"]
    out["missing"] -= out["failed"]  # Dagster lists a failed partition as unmaterialised too
    if score_date is None:
        return out
    prefix = f"{score_date}/"
    return {
        name: {k.removeprefix(prefix) for k in keys if k.startswith(prefix)}
        for name, keys in out.items()
    }


def latest_check_statuses(api: DagsterApi, check: str) -> dict[str, str]:
    """The latest execution status (SUCCEEDED, FAILED, SKIPPED, …) of a `scores` check, per
    partition, from the webserver (what the UI's Checks tab shows). An execution of no
    partition (the Checks tab's "Execute all", refused; one of the session's tests makes one in
    the shared instance) is no batch's."""
    executions = api.query(_CHECKS, {"check": check})["assetCheckExecutions"]
    out: dict[str, str] = {}
    for execution in executions:  # newest first
        if execution["partition"] is not None:
            out.setdefault(execution["partition"], execution["status"])
    return out


def runs(api: DagsterApi, job: str, statuses: list[str] | None = None) -> list[dict[str, Any]]:
    data = api.query(_RUNS, {"job": job, "statuses": statuses})
    results: list[dict[str, Any]] = data["runsOrError"]["results"]
    return results


@pytest.fixture(scope="module")
def services(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The real webserver, daemon and Celery run workers on a temporary DAGSTER_HOME."""
    home = tmp_path_factory.mktemp("dagster_home")
    files = tmp_path_factory.mktemp("provider_files")
    env = private_deployment_env(database_url, home, files, SCORING_BATCH_SIZE="3")
    with running_receiver() as otlp:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.url
        with running_services(
            port=free_port(), workers=2, env=env, log_dir=home / "service-logs"
        ) as svc:
            svc.env = env  # type: ignore[attr-defined]
            svc.files = Path(files)  # type: ignore[attr-defined]
            svc.otlp = otlp  # type: ignore[attr-defined]
            yield svc
