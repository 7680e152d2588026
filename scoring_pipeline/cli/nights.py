"""The commands on a score date's night: `score` (in this process), `retry-failed` (through the
running Dagster), and `replay` (one calculation recomputed from its captured inputs).
"""

import argparse
import datetime as dt
import sys

from scoring_pipeline.cli.options import app_engine, chosen_groups, parse_date


def cmd_score(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.in_process import project_warnings_on_stderr, run_night

    # `--date ""` (a script's unset variable) is refused, not taken for today's night.
    score_date = parse_date(args.date) if args.date is not None else dt.datetime.now(dt.UTC).date()
    status = 0
    for group in chosen_groups(args):
        closed = group.closed_reason(score_date)
        if closed is not None:  # the schedule would skip it; an operator may mean it
            print(f"warning: {closed}; scoring it anyway, as asked", file=sys.stderr)
        with project_warnings_on_stderr():
            summary = run_night(score_date, refresh=args.refresh, echo=print, group=group.name)
        for line in summary.lines():
            print(line)
        status = max(status, 1 if summary.status == "failed" else 0)
    return status


def cmd_retry_failed(args: argparse.Namespace) -> int:
    import dagster as dg

    from scoring_pipeline.definitions import defs
    from scoring_pipeline.defs.batches_in_flight import partitions_being_scored
    from scoring_pipeline.defs.partitions import scores_partition_key, scores_partitions_name
    from scoring_pipeline.runtime.dagster_api import DagsterApi
    from scoring_pipeline.store.night.model import find_night
    from scoring_pipeline.store.night.outcomes import batches_to_retry, failed_before_scoring

    score_date = parse_date(args.date)
    api = DagsterApi.from_env(args.url)
    groups = chosen_groups(args)
    engine = app_engine()  # prepares the environment the definitions and the instance read
    asset_graph = defs().resolve_asset_graph()
    nights = 0
    unscored = False
    with dg.DagsterInstance.get() as instance:
        for group in groups:
            with engine.connect() as conn:
                night = find_night(conn, score_date, market_group=group.name)
                if night is None:
                    # Its batches would be refused (no night) and counted as failed by nobody.
                    if len(groups) > 1:  # else the closing line says it
                        print(f"nothing to retry in group {group.name}: {score_date} has no night")
                    continue
                if failed_before_scoring(night):
                    # No batch can score without the inputs that could not be frozen.
                    unscored = True
                    details = night.error_details or {}
                    only = "" if len(groups) == 1 else f" --group {group.name}"
                    print(
                        f"nothing to retry in group {group.name}: the night of {score_date} "
                        f"failed before scoring (stage {details.get('stage')}: "
                        f"{details.get('message')}); once that is fixed, start it again with "
                        f"`scoring-pipeline score --date {score_date}{only}`"
                    )
                    nights += 1
                    continue
                batches = batches_to_retry(conn, score_date, market_group=group.name)
            nights += 1
            if not batches:
                print(
                    f"nothing to retry in group {group.name}: every batch of {score_date} succeeded"
                )
                continue
            keys = {scores_partition_key(score_date, b): b for b in batches}
            # A batch a run or an earlier retry is still scoring is left to it: retrying it now
            # would score it twice at once (each write waits for the other, the result the same).
            busy = partitions_being_scored(instance, group, asset_graph, keys)
            if busy:
                print(
                    f"left to what is scoring them now in group {group.name} "
                    f"({len(busy)} of {len(keys)} batches; run retry-failed again once it ends): "
                    + ", ".join(f"{keys[k]} ({busy[k]})" for k in sorted(busy))
                )
            partitions = [k for k in keys if k not in busy]
            if not partitions:
                continue
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
    if not nights:
        print(
            f"{score_date} has no night"
            + (f" in group {groups[0].name}" if len(groups) == 1 else "")
            + ": `scoring-pipeline status` lists the nights"
        )
        return 1
    return 1 if unscored else 0


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
