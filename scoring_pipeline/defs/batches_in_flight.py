"""Which of a group's `scores` partitions something is scoring now: a queued or running run (the
night's own, a hand launch, a backfill's), or a backfill still in progress that has yet to launch
theirs. `scoring-pipeline retry-failed` leaves those alone, so running it twice, or while the night
or an earlier retry is still going, never scores a batch twice at once; and `active_users` does
not restart a night while it is being started or scored (`night_in_progress`)."""

from collections.abc import Iterable
from typing import Any

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from scoring_pipeline.defs.job_names import BATCH_JOB
from scoring_pipeline.defs.market_groups.group import MarketGroup
from scoring_pipeline.defs.partitions import parse_scores_partition_key, run_partitions
from scoring_pipeline.defs.run_tags import IN_FLIGHT
from scoring_pipeline.store.night.model import Night, NightStatus

# A run being cancelled may still be writing its batch.
_UNFINISHED = [*IN_FLIGHT, dg.DagsterRunStatus.CANCELING]


def batch_ranges(batches: Iterable[str]) -> str:
    """Batch keys as a reader takes them in: consecutive ones as a range (`b0000..b0009, b0012`;
    a run scores a range), so a message naming two runs' batches stays one short line."""
    numbered = sorted({(int(b[1:]), b) if b[1:].isdigit() else (-1, b) for b in batches})
    spans: list[list[tuple[int, str]]] = []
    for number, key in numbered:
        if spans and number >= 0 and spans[-1][-1][0] == number - 1:
            spans[-1].append((number, key))
        else:
            spans.append([(number, key)])
    return ", ".join(s[0][1] if len(s) == 1 else f"{s[0][1]}..{s[-1][1]}" for s in spans)


def _run_keys(instance: dg.DagsterInstance, group: MarketGroup, run: dg.DagsterRun) -> list[str]:
    """The group's `scores` partitions a run scores: its partition, or its range's."""
    scores = dg.AssetKey(group.asset_key("scores"))
    if run.job_name != group.qualified(BATCH_JOB) and scores not in (run.asset_selection or ()):
        return []
    return run_partitions(instance, run, group)


def _backfill_keys(
    backfill: PartitionBackfill, group: MarketGroup, asset_graph: "BaseAssetGraph[Any]"
) -> list[str]:
    """The group's `scores` partitions an in-progress backfill has yet to launch a run for."""
    if backfill.is_asset_backfill:
        scores = dg.AssetKey(group.asset_key("scores"))
        try:
            data = backfill.get_asset_backfill_data(asset_graph)
        except Exception:  # noqa: BLE001 - written by other definitions: its targets are unknown
            return []
        # What it has launched runs for is the runs' (their statuses are exact; the backfill's
        # own record of what they materialised lags behind them).
        done = data.requested_subset | data.materialized_subset | data.failed_and_downstream_subset
        pending = data.target_subset - done
        return [
            p.partition_key
            for p in pending.iterate_asset_partitions()
            if p.asset_key == scores and p.partition_key is not None
        ]
    # A job backfill (the batch job's partitions page): all of its partitions, done or not.
    origin = backfill.partition_set_origin
    if origin is None or origin.partition_set_name != f"{group.qualified(BATCH_JOB)}_partition_set":
        return []
    return list(backfill.partition_names or [])


def partitions_being_scored(
    instance: dg.DagsterInstance,
    group: MarketGroup,
    asset_graph: "BaseAssetGraph[Any]",
    keys: Iterable[str],
) -> dict[str, str]:
    """Of the group's `scores` partition `keys`, those a queued, running or cancelling run is
    scoring, or a backfill in progress is yet to launch: key -> `run <id>` or `backfill <id>`."""
    wanted = set(keys)
    busy: dict[str, str] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        for key in _run_keys(instance, group, run):
            if key in wanted:
                busy.setdefault(key, f"run {run.run_id}")
    for backfill in instance.get_backfills(status=BulkActionStatus.REQUESTED):
        for key in _backfill_keys(backfill, group, asset_graph):
            if key in wanted:
                busy.setdefault(key, f"backfill {backfill.backfill_id}")
    return busy


def night_in_progress(
    instance: dg.DagsterInstance,
    group: MarketGroup,
    asset_graph: "BaseAssetGraph[Any]",
    *,
    owner_run_id: str | None,
    this_run_id: str,
    keys: Iterable[str],
) -> str | None:
    """Why run `this_run_id` must not (re)start the group's night now, or None: the run that last
    started it (`owner_run_id`) is still queued or running, or some of the night's batch
    partitions `keys` are being scored (`partitions_being_scored`)."""
    if owner_run_id is not None and owner_run_id != this_run_id:
        owner = instance.get_run_by_id(owner_run_id)
        if owner is not None and owner.status in _UNFINISHED:
            return (
                f"run {owner_run_id}, which started it, has not ended yet (it is "
                f"{owner.status.value.lower().replace('_', ' ')})"
            )
    busy = partitions_being_scored(instance, group, asset_graph, keys)
    if not busy:
        return None
    by_scorer: dict[str, list[str]] = {}
    for key in sorted(busy):
        by_scorer.setdefault(busy[key], []).append(parse_scores_partition_key(key)[1])
    shown = "; ".join(
        f"{scorer} scores {batch_ranges(batches)}"
        for scorer, batches in list(by_scorer.items())[:3]
    )
    more = f"; and {len(by_scorer) - 3} more runs or backfills" if len(by_scorer) > 3 else ""
    return f"its batches are being scored ({shown}{more})"


def night_being_started(
    instance: dg.DagsterInstance, night: Night, *, created: float | None = None
) -> str | None:
    """The run starting an open night (its snapshots run) when it has not ended yet, or, with
    `created` (a run's creation time), had not ended when that run was created: `run <id>`,
    else None. A batch of that night scored then would read snapshots not frozen yet (or
    another group's prices of the date), and the night's own batch runs follow its end."""
    snapshot_run_id = night.snapshot_run_id
    if night.status is not NightStatus.STARTED or snapshot_run_id is None:
        return None
    record = instance.get_run_record_by_id(snapshot_run_id)
    if record is None:
        return None
    if record.dagster_run.status in _UNFINISHED:
        return f"run {snapshot_run_id}"
    if created is not None and record.end_time is not None and created < record.end_time:
        return f"run {snapshot_run_id}"
    return None
