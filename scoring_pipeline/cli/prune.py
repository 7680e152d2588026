"""`scoring-pipeline prune`: list, then (with `--yes`) detach and drop whole old months of
history, events and metric values, and remove their nights' `scores` partitions from Dagster."""

import argparse
import datetime as dt
from typing import TYPE_CHECKING

from scoring_pipeline.cli.console import count_of, say
from scoring_pipeline.cli.options import app_engine, parse_date
from scoring_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    import dagster as dg
    from sqlalchemy.engine import Connection

    from scoring_pipeline.store.month_partitions import Partition


def _print_prune_plan(
    before: dt.date, doomed: list["Partition"], kept: list["Partition"], stale: dict[str, list[str]]
) -> None:
    """What `prune` would drop: whole months, and Dagster's `scores` partitions of their nights."""
    for p in kept:
        print(f"kept {p.name}: current scores of {p.start:%Y-%m} still show its values")
    if doomed:
        months = count_of(len(doomed), "month partition holds", "month partitions hold")
        print(f"{months} only days before {before}:")
    for p in doomed:
        rows = f"{p.rows:,}" if p.rows_exact else f"~{p.rows:,}"
        last = p.end - dt.timedelta(days=1)  # the partition's bound is the next month's first day
        print(f"  {p.name:<36} {p.start} .. {last}  {rows} rows  {p.bytes / 1e6:,.1f} MB")
    if len(doomed) > 1:
        print(f"  in all{'':<30} {'':<24}  {_rows_and_size(doomed, '  ')}")
    if any(stale.values()):
        print("Dagster's `scores` partitions of nights in those months (or pruned before):")
    for name, keys in stale.items():
        if keys:
            oldest, newest = min(keys)[:10], max(keys)[:10]
            nights = (
                f"the night {oldest}" if oldest == newest else f"the nights {oldest} .. {newest}"
            )
            print(f"  group {name}: {count_of(len(keys), 'batch', 'batches')} of {nights}")


def _rows_and_size(months: list["Partition"], between: str = ", ") -> str:
    """The rows and disk size of month partitions ("~" when a row count is the planner's)."""
    rows = sum(p.rows for p in months)
    about = "" if all(p.rows_exact for p in months) else "~"
    return f"{about}{rows:,} rows{between}{sum(p.bytes for p in months) / 1e6:,.1f} MB"


def _print_current_scores_losing_history(conn: "Connection", doomed: list["Partition"]) -> None:
    """Current scores dated in a month whose history goes: they still show (with their metric
    values, which are kept), but their calculations can no longer be replayed."""
    import sqlalchemy as sa

    months = [p for p in doomed if p.table == "calculation_events"]
    if not months:
        return
    dated = " OR ".join(f"(score_date >= :s{i} AND score_date < :e{i})" for i in range(len(months)))
    params = {k: v for i, p in enumerate(months) for k, v in ((f"s{i}", p.start), (f"e{i}", p.end))}
    found = conn.execute(
        sa.text(
            f"SELECT count(*) AS n, count(DISTINCT user_id) AS u FROM asset_scores WHERE {dated}"
        ),
        params,
    ).one()
    if found.n:
        print(
            f"{count_of(found.n, 'current score', 'current scores')} of "
            f"{count_of(found.u, 'user', 'users')} are dated in those months (not scored since): "
            "they keep showing, but their calculations can no longer be replayed"
        )


def _nights_being_scored_before(
    conn: "Connection", instance: "dg.DagsterInstance", first_kept: dt.date, *, dropping: bool
) -> str | None:
    """Why `prune` must not drop the months before `first_kept` now: a run (a night's batch or
    snapshots, a retry, a backfill) is scoring one of their dates, so the rest of its night
    would find its month and its `scores` partitions gone. None when nothing is. The runs of a
    killed `score` are not scoring anything: when `dropping`, they are failed first, as `score`
    and `demo-data` do; a listing only leaves them out."""
    import sqlalchemy as sa

    from scoring_pipeline.cli.in_process import fail_runs_of_killed_commands
    from scoring_pipeline.defs.run_tags import runs_in_flight
    from scoring_pipeline.runtime.run_launcher import WORKER_TAG, worker_gone

    night = conn.execute(
        sa.text(
            "SELECT score_date, market_group FROM overnight_job_runs WHERE job_type = 'scoring' "
            "AND status = 'started' AND score_date < :first ORDER BY score_date LIMIT 1"
        ),
        {"first": first_kept},
    ).first()

    def scoring() -> list[tuple["dg.DagsterRun", dt.date]]:
        found = []
        for run in runs_in_flight(instance, job_name=None):
            if run.job_name == "dashboard_cache_job":
                continue  # writes the cache, none of the months prune drops
            if not dropping and worker_gone(run.tags.get(WORKER_TAG)) is not None:
                continue  # a killed `score`'s run
            day = _date_of_run(run)
            if day is not None and day < first_kept:
                found.append((run, day))
        return found

    in_flight = scoring()
    if in_flight and dropping:
        fail_runs_of_killed_commands(instance)
        in_flight = scoring()
    if not in_flight:
        return None
    run, day = in_flight[0]
    what = (
        f"the night of {night.score_date} ({night.market_group}) is being scored"
        if night is not None and night.score_date == day
        else f"{day} is being scored (a retry or a backfill)"
    )
    return (
        f"{what} (run {run.run_id} of {run.job_name} is {run.status.value.lower()}): prune "
        f"would drop its month under it, and the rest of the night would fail; run it once "
        f"the night has ended (`scoring-pipeline status`)"
    )


def _date_of_run(run: "dg.DagsterRun") -> dt.date | None:
    """The score date a run works on, from its partition tags (`2026-11-15/b0119`, a range of
    them, or a snapshot's `2026-11-15`); None for a run of no date."""
    for tag in ("dagster/partition", "dagster/asset_partition_range_start"):
        value = run.tags.get(tag, "")
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            continue
    return None


def cmd_prune(args: argparse.Namespace) -> int:
    import dagster as dg
    import sqlalchemy as sa

    from scoring_pipeline.definitions import market_groups
    from scoring_pipeline.defs.market_groups.group import former_group
    from scoring_pipeline.defs.partitions import night_partitions_before, remove_night_partitions
    from scoring_pipeline.store.db import lock_saying_whom_it_waits_for
    from scoring_pipeline.store.month_partitions import counted, drop, partitions, prunable

    before = parse_date(args.before, "--before")
    today = dt.datetime.now(dt.UTC).date()
    if before > today:
        raise ConfigurationError(
            f"--before {before} is after today ({today}): give today or an earlier date (prune "
            "drops the whole months before it)"
        )
    engine = app_engine()  # prepares the environment the groups and the instance read
    configured = market_groups()
    with dg.DagsterInstance.get() as instance:
        with engine.begin() as conn:
            if args.yes:
                # Two prunes at once take turns, the second planning from what the first left:
                # both planned the same months, and the second failed on its first DETACH with
                # "UndefinedTable: relation … does not exist".
                lock_saying_whom_it_waits_for(
                    conn, "scoring:prune", "prune lock (another `prune`)", say
                )
            # Groups no longer configured keep their nights' `scores` partitions in Dagster.
            recorded = conn.execute(
                sa.text("SELECT DISTINCT market_group FROM overnight_job_runs")
            ).scalars()
            known = {g.name for g in configured}
            groups = [*configured, *(former_group(n) for n in sorted(set(recorded) - known))]
            doomed, kept = prunable(conn, before)
            history_left = [
                p for p in partitions(conn) if p.table == "score_history" and p not in doomed
            ]
            # Dagster's `scores` partitions of the nights whose history goes (or went before).
            stale = {
                group.name: night_partitions_before(
                    instance,
                    group,
                    before.replace(day=1),
                    lambda day: any(p.start <= day < p.end for p in history_left),
                )
                for group in groups
            }
            doomed = [counted(conn, p) for p in doomed]
            _print_prune_plan(before, doomed, kept, stale)
            if not doomed and not any(stale.values()):
                other = " other" if kept else ""
                print(
                    f"nothing to prune: no{other} month partition holds only days before {before}"
                )
                return 0
            _print_current_scores_losing_history(conn, doomed)
            first_kept = before.replace(day=1)
            busy = _nights_being_scored_before(conn, instance, first_kept, dropping=args.yes)
            if not args.yes:
                if busy is not None:
                    print(f"not now: {busy}")
                print("nothing dropped: run again with --yes to detach and drop them")
                return 0
            if busy is not None:
                raise ConfigurationError(f"nothing dropped: {busy}")
            drop(conn, doomed)
            # Checked again once the months are detached: their tables' locks are held until
            # the commit, so a night of theirs starting now waits, then finds its month made
            # anew; one that started while the drop waited for its locks is seen.
            busy = _nights_being_scored_before(conn, instance, first_kept, dropping=True)
            if busy is not None:
                raise ConfigurationError(f"nothing dropped: {busy}")
        # The drop is committed: the nights' partition keys go after it (a rerun finishes them).
        if doomed:
            # What the disk got back: the dropped tables' files go at the commit.
            with engine.connect() as conn:
                now = conn.execute(
                    sa.text("SELECT pg_database_size(current_database())")
                ).scalar_one()
            print(
                f"dropped {count_of(len(doomed), 'partition', 'partitions')}: "
                f"{_rows_and_size(doomed)} freed (the database is now {now / 1e6:,.1f} MB)"
            )
        for group in groups:
            keys = stale[group.name]
            if not keys:
                continue

            def progress(done: int, name: str = group.name, total: int = len(keys)) -> None:
                print(f"  group {name}: {done:,} of {total:,} `scores` partitions removed")

            remove_night_partitions(instance, group, keys, progress)
            removed = count_of(len(keys), "`scores` partition", "`scores` partitions")
            print(f"removed {removed} of group {group.name}")
    return 0
