"""The commands on a score date's night: `score` (in this process), `retry-failed` (through the
running Dagster), and `replay` (one calculation recomputed from its captured inputs).
"""

import argparse
import datetime as dt
import os
import sys
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from scoring_pipeline.cli.options import app_engine, chosen_groups, parse_date

if TYPE_CHECKING:
    import dagster as dg

    from scoring_pipeline.defs.market_groups.group import MarketGroup
    from scoring_pipeline.runtime.dagster_api import DagsterApi


def cmd_score(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.in_process import refresh_plan, run_night

    # `--date ""` (a script's unset variable) is refused, not taken for today's night.
    score_date = parse_date(args.date) if args.date is not None else dt.datetime.now(dt.UTC).date()
    status = 0
    groups = chosen_groups(args)
    plan = refresh_plan(args.refresh, len(groups), every_group=args.group is None)
    for group, refresh in zip(groups, plan, strict=True):
        closed = group.closed_reason(score_date)
        if closed is not None:  # the schedule would skip it; an operator may mean it
            print(f"warning: {closed}; scoring it anyway, as asked", file=sys.stderr)
        summary = run_night(score_date, refresh=refresh, echo=_progress, group=group.name)
        for line in summary.lines():
            _progress(line)  # the next group's night is scored whoever reads
        if summary.interrupted:
            only = "" if args.group is None else f" --group {group.name}"
            print(
                f"scoring-pipeline: interrupted: the night of {score_date} ({group.name}) is "
                f"{summary.status}, its unscored batches counted failed; re-score them with "
                f"`scoring-pipeline retry-failed --date {score_date}{only}` (services running) "
                f"or `scoring-pipeline score --date {score_date}{only}`",
                file=sys.stderr,
            )
            return 130  # a shell's status for a command stopped by Ctrl-C
        status = max(status, 1 if summary.status == "failed" else 0)
    return status


def _progress(line: str) -> None:
    """A progress line of `score`. A reader gone (`score | head -3`) does not stop the night
    halfway, its later batches unscored and the night left `started`: the night goes on, its
    output to /dev/null."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def cmd_retry_failed(args: argparse.Namespace) -> int:
    import dagster as dg

    from scoring_pipeline.definitions import defs
    from scoring_pipeline.runtime.dagster_api import DagsterApi
    from scoring_pipeline.store.night.outcomes import lock_retries

    score_date = parse_date(args.date)
    api = DagsterApi.from_env(args.url)
    groups = chosen_groups(args)
    engine = app_engine()  # prepares the environment the definitions and the instance read
    asset_graph = defs().resolve_asset_graph()
    found: list[str] = []
    with dg.DagsterInstance.get() as instance:
        for group in groups:
            # Two retry-failed of one night take turns from the check to the launch: the
            # second finds the first's backfill and leaves its batches to it.
            with engine.begin() as conn:
                lock_retries(conn, score_date, group.name)
                found.append(
                    _retry_group(conn, instance, api, asset_graph, group, score_date, len(groups))
                )
    if args.group is None:
        found.extend(_former_groups_nights(engine, score_date, [g.name for g in groups]))
    if not [f for f in found if f != _NO_NIGHT]:
        print(
            f"{score_date} has no night"
            + (f" in group {groups[0].name}" if len(groups) == 1 else "")
            + ": `scoring-pipeline status` lists the nights"
        )
        return 1
    return 1 if _UNSCORED in found else 0


_NO_NIGHT, _UNSCORED, _RETRIED = "no night", "failed before scoring", "retried"


def _former_groups_nights(engine: Any, score_date: dt.date, configured: list[str]) -> list[str]:
    """The date's unfinished nights of groups the deployment no longer configures, said: their
    batches cannot be retried (their assets are gone), so the date is scored anew."""
    from scoring_pipeline.store.night.model import NightStatus, recent_nights
    from scoring_pipeline.store.night.outcomes import failed_before_scoring

    with engine.connect() as conn:
        nights = recent_nights(conn, 1_000, score_date=score_date)
    found = []
    for night in nights:
        if night.market_group in configured:
            continue
        former = (
            f"group {night.market_group}: it is no longer configured (now: {', '.join(configured)})"
        )
        if night.status is NightStatus.COMPLETED:
            # The date has a night, with nothing to retry: not "has no night".
            print(f"nothing to retry in {former}, and its night of {score_date} completed")
            found.append(_RETRIED)
            continue
        if failed_before_scoring(night):
            details = night.error_details or {}
            why = f"failed before scoring (stage {details.get('stage')}: {details.get('message')})"
            fix = "once that is fixed,"
        else:
            why = (
                f"is {night.status.value} with {night.metrics.get('users_failed', 0)} failed users"
            )
            fix = "fix their data, then"
        print(
            f"cannot retry {former}, and its night of {score_date} {why}; {fix} score the date "
            f"with the configured groups: `scoring-pipeline score --date {score_date}`"
        )
        found.append(_UNSCORED)
    return found


def _retry_group(
    conn: Connection,
    instance: "dg.DagsterInstance",
    api: "DagsterApi",
    asset_graph: Any,
    group: "MarketGroup",
    score_date: dt.date,
    groups: int,
) -> str:
    """Backfill the failed batches of one group's night that nothing is scoring now; what was
    found: no night, a night failed before scoring, or one retried (or with nothing to retry)."""
    from scoring_pipeline.defs.batches_in_flight import (
        batch_ranges,
        night_being_started,
        partitions_being_scored,
    )
    from scoring_pipeline.defs.partitions import scores_partition_key, scores_partitions_name
    from scoring_pipeline.store.month_partitions import HISTORY_TABLES, coverage
    from scoring_pipeline.store.night.model import find_night
    from scoring_pipeline.store.night.outcomes import batches_to_retry, failed_before_scoring

    night = find_night(conn, score_date, market_group=group.name)
    if night is None:
        # Its batches would be refused (no night) and counted as failed by nobody.
        if groups > 1:  # else the closing line says it
            print(f"nothing to retry in group {group.name}: {score_date} has no night")
        return _NO_NIGHT
    if failed_before_scoring(night):
        # No batch can score without the inputs that could not be frozen.
        details = night.error_details or {}
        only = "" if groups == 1 else f" --group {group.name}"
        print(
            f"nothing to retry in group {group.name}: the night of {score_date} "
            f"failed before scoring (stage {details.get('stage')}: "
            f"{details.get('message')}); once that is fixed, start it again with "
            f"`scoring-pipeline score --date {score_date}{only}`"
        )
        return _UNSCORED
    pruned = coverage(conn).dropped(score_date, HISTORY_TABLES)
    if pruned:
        # Its history and events are gone: a retry would write its month back for a part of
        # the night only (and register its batches in Dagster again).
        only = "" if groups == 1 else f" --group {group.name}"
        print(
            f"nothing to retry in group {group.name}: the night of {score_date} was pruned (its "
            f"month of {' and '.join(pruned)} was dropped); to score the date anew, "
            f"`scoring-pipeline score --date {score_date}{only}`"
        )
        return _UNSCORED
    starting = night_being_started(instance, night)
    if starting is not None:
        # Its batches have no outcome yet: each would count as failed and be scored twice.
        print(
            f"nothing to retry in group {group.name} yet: the night of {score_date} is still "
            f"being started by {starting}, whose end launches its batches; run retry-failed "
            "again once they have run"
        )
        return _RETRIED
    batches = batches_to_retry(conn, score_date, market_group=group.name)
    if not batches:
        print(f"nothing to retry in group {group.name}: every batch of {score_date} succeeded")
        return _RETRIED
    keys = {scores_partition_key(score_date, b): b for b in batches}
    # A batch a run or an earlier retry is still scoring is left to it: retrying it now
    # would score it twice at once (each write waits for the other, the result the same).
    busy = partitions_being_scored(instance, group, asset_graph, keys)
    if busy:
        print(
            f"left to what is scoring them now in group {group.name} "
            f"({len(busy)} of {len(keys)} batches; run retry-failed again once it ends): "
            + "; ".join(
                f"{batch_ranges(keys[k] for k in busy if busy[k] == scorer)} ({scorer})"
                for scorer in sorted(set(busy.values()))
            )
        )
    partitions = [k for k in keys if k not in busy]
    if not partitions:
        return _RETRIED
    # A night scored before the partitions became per-night batches has none registered.
    for key in partitions:
        api.add_dynamic_partition(scores_partitions_name(group), key)
    backfill_id = api.launch_scores_backfill(
        partitions,
        title=f"retry failed batches of {score_date} ({group.name})",
        asset_path=group.asset_key("scores"),
    )
    print(
        f"backfill {backfill_id}: re-scoring {len(partitions)} "
        f"{'batch' if len(partitions) == 1 else 'batches'} of {score_date} "
        f"in group {group.name}: " + ", ".join(keys[k] for k in partitions)
    )
    return _RETRIED


def cmd_replay(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.replay import replay

    with app_engine().connect() as conn:
        result = replay(conn, args.correlation_id)
    results = result.recomputed["results"]
    print(f"calculation {result.correlation_id} (user {result.user_id}): {len(results)} results")
    stored = result.stored_breakdowns
    if result.reproduced:
        print("replay reproduces SCORES_COMPUTED exactly")
        print(
            f"and the {stored} breakdowns stored for it (current scores and history) are the "
            "recomputed ones"
            if stored
            else "no breakdown stored for it remains (replaced by a later night, or pruned)"
        )
        return 0
    for difference in result.differences[:20]:
        print(f"  {difference}")
    print("replay does NOT reproduce what was stored (SCORES_COMPUTED or the stored breakdowns)")
    return 1
