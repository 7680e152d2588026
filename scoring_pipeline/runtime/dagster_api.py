"""A small client of the running Dagster webserver's GraphQL API, for operator commands.

Operators recover a night through Dagster itself (its daemon launches the runs); this client only
asks the webserver to do what the UI would: launch a run or a partition backfill, read statuses.
"""

import os
from dataclasses import dataclass
from typing import Any

import httpx

from scoring_pipeline.errors import ScoringPipelineError
from scoring_pipeline.providers.redaction import redact

DEFAULT_URL = "http://127.0.0.1:3000"
LOCATION = "scoring_pipeline"
REPOSITORY = "__repository__"

_LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

_LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on UnauthorizedError { message }
  }
}
"""

_ADD_PARTITION = """
mutation Add($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""


class DagsterApiError(ScoringPipelineError):
    """The Dagster webserver could not be reached or refused the request."""


def is_webserver_url(url: str) -> bool:
    """An http(s) URL with a host: what the webserver's address can be."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def checked_webserver_url(value: str, source: str) -> str:
    """`value` without its trailing slash when it is the webserver's URL; else a
    `DagsterApiError` naming `source` (a password in it shown as ***)."""
    url = value.rstrip("/")
    if not is_webserver_url(url):
        raise DagsterApiError(
            f"{source} {redact(url)!r} is not the Dagster webserver's http(s) URL "
            f"(e.g. {DEFAULT_URL})"
        )
    return url


@dataclass(frozen=True)
class DagsterApi:
    url: str
    timeout: float = 60.0  # seconds for the webserver's answer to each request

    @classmethod
    def from_env(cls, url: str | None = None) -> "DagsterApi":
        """The webserver at `url` (`--url`), else `DAGSTER_WEBSERVER_URL` (empty is unset), else
        the default; a value that is no http(s) URL with a host is refused, naming its source,
        before the command reads or launches anything."""
        if url is not None:
            return cls(checked_webserver_url(url, "--url"))
        given = os.environ.get("DAGSTER_WEBSERVER_URL") or None
        if given is None:
            return cls(DEFAULT_URL)
        return cls(checked_webserver_url(given, "DAGSTER_WEBSERVER_URL"))

    @property
    def shown_url(self) -> str:
        """The URL as errors show it: a password in it (`http://user:secret@host`) as ***."""
        return redact(self.url)

    def query(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            response = httpx.post(
                f"{self.url}/graphql",
                json={"query": document, "variables": variables},
                timeout=self.timeout,
            )
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            # The request reached a webserver that did not answer in time (an overloaded one):
            # it may still carry it out, so this is no "start it".
            raise DagsterApiError(
                f"the Dagster webserver at {self.shown_url} did not answer within "
                f"{self.timeout:g} s ({type(exc).__name__}): it may still carry it out (see its "
                "Runs and Backfills pages); `scoring-pipeline retry-failed` run again leaves the "
                "batches a backfill is scoring to it"
            ) from None
        except httpx.HTTPError as exc:
            raise DagsterApiError(
                f"no Dagster webserver answering at {self.shown_url} ({type(exc).__name__}); "
                "start it with `make ui` or pass --url"
            ) from None
        if response.status_code != 200:
            raise DagsterApiError(f"{self.shown_url}/graphql answered HTTP {response.status_code}")
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise DagsterApiError(f"GraphQL error: {body['errors'][0].get('message')}")
        data: dict[str, Any] = body["data"]
        return data

    def launch_scores_backfill(
        self, partition_names: list[str], *, title: str, asset_path: list[str]
    ) -> str:
        """Backfill the given partitions of a group's `scores` asset (its key's path)."""
        data = self.query(
            _LAUNCH_BACKFILL,
            {
                "params": {
                    "assetSelection": [{"path": asset_path}],
                    "partitionNames": partition_names,
                    "title": title,
                    "tags": [{"key": "scoring/trigger", "value": "retry-failed"}],
                }
            },
        )["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise DagsterApiError(f"backfill refused: {data['__typename']}: {data.get('message')}")
        return str(data["backfillId"])

    def launch_job(self, job_name: str, *, tags: dict[str, str]) -> str:
        """Launch a run of a job (e.g. the snapshots job for a date) through the run queue."""
        data = self.query(
            _LAUNCH_RUN,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": REPOSITORY,
                        "jobName": job_name,
                    },
                    "executionMetadata": {
                        "tags": [{"key": k, "value": v} for k, v in tags.items()]
                    },
                }
            },
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise DagsterApiError(f"launch refused: {data['__typename']}: {data}")
        return str(data["run"]["runId"])

    def add_dynamic_partition(self, partitions_def_name: str, key: str) -> bool:
        """Register a dynamic partition key; False when it was already registered."""
        data = self.query(
            _ADD_PARTITION,
            {
                "repo": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
                "name": partitions_def_name,
                "key": key,
            },
        )["addDynamicPartition"]
        if data["__typename"] == "DuplicateDynamicPartitionError":
            return False
        if data["__typename"] != "AddDynamicPartitionSuccess":
            raise DagsterApiError(f"partition {key} refused: {data.get('message')}")
        return True
