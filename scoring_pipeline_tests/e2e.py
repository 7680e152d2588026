"""Helpers of the end-to-end tests: real Dagster services on the test database, GraphQL reads."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scoring_pipeline.dagster_api import DagsterApi
from scoring_pipeline.services import (
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
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey
            primaryDimEndKey
            secondaryDim {
              __typename
              ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
            }
          }
        }
      }
    }
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


def partition_statuses(api: DagsterApi, score_date: str) -> dict[str, set[str]]:
    """Batch keys of the date that are materialised / failed, from the webserver (the date is
    the primary dimension, batches the secondary one)."""
    node = api.query(_PARTITIONS, {})["assetNodeOrError"]["assetPartitionStatuses"]
    out: dict[str, set[str]] = {"materialized": set(), "failed": set()}
    for r in node["ranges"]:
        if r["primaryDimStartKey"] <= score_date <= r["primaryDimEndKey"]:
            out["materialized"] |= set(r["secondaryDim"]["materializedPartitions"])
            out["failed"] |= set(r["secondaryDim"]["failedPartitions"])
    out["materialized"] -= out["failed"]
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
