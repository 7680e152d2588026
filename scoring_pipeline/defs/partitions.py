"""The partition definitions, one object per dimension, imported everywhere.

Snapshot assets are daily (one partition per score date). `scores` has one partition per real
batch of a real night, keyed `YYYY-MM-DD/bNNNN`: the snapshots run registers the date's batch
keys when it freezes the membership (and unregisters keys a refreshed membership no longer
uses), so the UI's partitions, "missing" counts and "backfill failed and missing" cover exactly
the batches of started nights — never a cross product of every date with every batch key.
"""

import datetime as dt
from collections.abc import Callable, Iterable

import dagster as dg

from scoring_pipeline.defs.market_groups.group import MarketGroup
from scoring_pipeline.defs.run_tags import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from scoring_pipeline.errors import ScoringPipelineError

SCORE_DATE_START = "2025-01-01"
SCORES_PARTITIONS_NAME = "scoring_night_batches"
_SEPARATOR = "/"

# end_offset=1: the night scores the day that is about to open, so today's partition must exist.
score_date_partitions = dg.DailyPartitionsDefinition(
    start_date=SCORE_DATE_START, timezone="UTC", end_offset=1
)
# A group east of UTC ticks before UTC midnight for its local date (Tokyo's 07:00 is 22:00 UTC
# the day before): its score date is then tomorrow in UTC, which this one also has.
score_dates_ahead_of_utc = dg.DailyPartitionsDefinition(
    start_date=SCORE_DATE_START, timezone="UTC", end_offset=2
)


def score_date_partitions_for(groups: Iterable[MarketGroup]) -> dg.DailyPartitionsDefinition:
    """The snapshot assets' daily partitions for a code location of `groups`: up to tomorrow
    (UTC) when a group's clock can run ahead of UTC, else up to today."""
    if any(group.may_tick_ahead_of_utc() for group in groups):
        return score_dates_ahead_of_utc
    return score_date_partitions


scores_partitions = dg.DynamicPartitionsDefinition(name=SCORES_PARTITIONS_NAME)


def scores_partitions_name(group: MarketGroup) -> str:
    """`scoring_night_batches` for the default group, else `<group>_scoring_night_batches`."""
    return group.qualified(SCORES_PARTITIONS_NAME)


def scores_partitions_for(group: MarketGroup) -> dg.DynamicPartitionsDefinition:
    """A market group's batch partitions: each group's night has its own batches' statuses."""
    if group.is_default:
        return scores_partitions
    return dg.DynamicPartitionsDefinition(name=scores_partitions_name(group))


class NotABatchPartitionError(ScoringPipelineError):
    """A `scores` partition key that is not `YYYY-MM-DD/bNNNN`."""


def scores_partition_key(score_date: str | dt.date, batch: str) -> str:
    """The `scores` partition of one batch of a night: `2026-11-27/b0001`."""
    date = score_date.isoformat() if isinstance(score_date, dt.date) else score_date
    return f"{date}{_SEPARATOR}{batch}"


def parse_scores_partition_key(key: str) -> tuple[dt.date, str]:
    """(score date, batch key) of a `scores` partition key, or a clear error."""
    date, sep, batch = key.partition(_SEPARATOR)
    try:
        score_date = dt.date.fromisoformat(date)
    except ValueError:
        score_date = None
    if not sep or score_date is None or not batch.startswith("b") or not batch[1:].isdigit():
        raise NotABatchPartitionError(
            f"{key!r} is not a scores partition: keys are YYYY-MM-DD/bNNNN, "
            "registered by the date's snapshots run"
        )
    return score_date, batch


def register_night_batches(
    instance: dg.DagsterInstance, score_date: dt.date, batches: list[str], group: MarketGroup
) -> tuple[list[str], list[str]]:
    """Make the date's `scores` partitions of the group exactly its batches; returns (added,
    removed) keys."""
    name = scores_partitions_name(group)
    wanted = [scores_partition_key(score_date, b) for b in batches]
    wanted_keys = set(wanted)
    prefix = scores_partition_key(score_date, "")
    existing = instance.get_dynamic_partitions(name)
    present = set(existing)
    added = [k for k in wanted if k not in present]
    removed = [k for k in existing if k.startswith(prefix) and k not in wanted_keys]
    if added:
        instance.add_dynamic_partitions(name, added)
    remove_night_partitions(instance, group, removed)
    return added, removed


def unregister_night_batches(
    instance: dg.DagsterInstance, score_date: dt.date, group: MarketGroup
) -> list[str]:
    """Remove the date's `scores` partitions of the group (a night that failed for want of its
    inputs: its batches cannot score, and "Failed and missing" would launch them to fail);
    returns the keys removed. Starting the night again registers them anew."""
    prefix = scores_partition_key(score_date, "")
    keys = [
        k
        for k in instance.get_dynamic_partitions(scores_partitions_name(group))
        if k.startswith(prefix)
    ]
    remove_night_partitions(instance, group, keys)
    return keys


def night_runs(
    instance: dg.DagsterInstance,
    group: MarketGroup,
    score_date: str | dt.date,
    batches: list[str],
    per_run: int,
) -> list[list[str]]:
    """The date's batch partition keys cut into runs of at most `per_run` keys, each run keys
    that are consecutive in the partitions definition's order: a ranged run covers every key
    between its first and its last, so a run never spans a key of another night (a refreshed
    membership's later keys are registered after other nights'). A key that is not registered
    gets a run of its own, which fails naming it."""
    order = {
        k: n for n, k in enumerate(instance.get_dynamic_partitions(scores_partitions_name(group)))
    }
    runs: list[list[str]] = []
    previous: int | None = None
    for batch in batches:
        key = scores_partition_key(score_date, batch)
        position = order.get(key)
        follows = position is not None and previous is not None and position == previous + 1
        if runs and follows and len(runs[-1]) < per_run:
            runs[-1].append(key)
        else:
            runs.append([key])
        previous = position
    return runs


def partition_range_keys(
    instance: dg.DagsterInstance, group: MarketGroup, start: str, end: str
) -> list[str]:
    """The group's `scores` partition keys from `start` to `end` (both included), in the
    partitions definition's order: the batches of a ranged run. Empty when either end is not
    a partition (any more)."""
    keys = instance.get_dynamic_partitions(scores_partitions_name(group))
    try:
        first, last = keys.index(start), keys.index(end)
    except ValueError:
        return []
    return list(keys[first : last + 1])


def run_partitions(
    instance: dg.DagsterInstance, run: dg.DagsterRun, group: MarketGroup
) -> list[str]:
    """The partitions a run of the group targeted: its one partition, or every key of its range
    (the days of a ranged run of the daily snapshot assets, a UI backfill's)."""
    partition = run.tags.get(PARTITION_TAG)
    if partition:
        return [partition]
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if not start or not end:
        return []
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError:
        return partition_range_keys(instance, group, start, end)
    return [(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def night_partitions_before(
    instance: dg.DagsterInstance,
    group: MarketGroup,
    first_kept: dt.date,
    has_history: Callable[[dt.date], bool],
) -> list[str]:
    """The group's `scores` partition keys of nights before `first_kept` whose month has no
    `score_history` partition any more (pruned): what `scoring-pipeline prune` removes, so the
    partitions UI lists no night whose history and events are gone, and "backfill failed and
    missing" or a select-all materialisation cannot re-score one. Keys not of the
    `YYYY-MM-DD/bNNNN` form (added by hand) are left alone."""
    stale = []
    for key in instance.get_dynamic_partitions(scores_partitions_name(group)):
        try:
            day, _ = parse_scores_partition_key(key)
        except NotABatchPartitionError:
            continue
        if day < first_kept and not has_history(day):
            stale.append(key)
    return stale


def remove_night_partitions(
    instance: dg.DagsterInstance,
    group: MarketGroup,
    keys: list[str],
    progress: Callable[[int], None] = lambda _done: None,
) -> None:
    """Delete the group's `scores` partition keys (one statement each in Dagster's storage,
    ~1 ms: a month of a 100,000-user deployment is 60,000 keys); `progress` gets the number
    removed every 10,000 keys. The runs and events of those partitions stay in Dagster."""
    name = scores_partitions_name(group)
    for done, key in enumerate(keys, start=1):
        instance.delete_dynamic_partition(name, key)
        if done % 10_000 == 0:
            progress(done)
