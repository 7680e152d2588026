"""The commands on the application database: `migrate`, `db-url`, `db-stop`, `demo-data`, `prune`.

Each takes the parsed options and returns the exit status; what they need beyond the standard
library is imported when they run, so `--help` stays quick.
"""

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scoring_pipeline.cli.options import app_engine, parse_date
from scoring_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    import dagster as dg
    from sqlalchemy.engine import Connection

    from scoring_pipeline.store.month_partitions import Partition


def cmd_migrate(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.db import current_revision, downgrade, migrate, passed_revision

    engine = app_engine()
    if args.downgrade:
        took = downgrade(engine, args.downgrade, echo=_say)
    elif (current := passed_revision(engine, args.revision)) is not None:
        # Alembic's upgrade to an older revision does nothing: say so instead of a bare
        # "database at revision 0011" that reads as if it had gone there.
        print(
            f"database at revision {current}, already past {args.revision}: nothing to "
            f"upgrade (`scoring-pipeline migrate --downgrade {args.revision}` goes back to it)"
        )
        return 0
    else:
        took = migrate(engine, args.revision, echo=_say)
    print(f"database at revision {current_revision(engine) or 'base'}{took}")
    return 0


def _say(line: str) -> None:
    """A progress line of a long command, out at once (its output may be a pipe or a log)."""
    print(line, flush=True)


def cmd_db_url(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from scoring_pipeline.store.db import dagster_storage_url, prepare_dagster_environment

    url = prepare_dagster_environment()
    shown = sa.make_url(dagster_storage_url(url) if args.dagster else url)
    # A password is printed only when asked for: this output ends up in terminals and logs.
    print(shown.render_as_string(hide_password=not args.show_password))
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.db import embedded_data_dir, stop_embedded_server

    stopped = stop_embedded_server(embedded_data_dir())
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.demo_data.load import generate

    if args.users < 1:
        raise ConfigurationError("--users must be at least 1")
    try:  # before anything is replaced: the provider files go there
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigurationError(f"--out {args.out}: is a file, not a folder") from None
    except OSError as exc:
        raise ConfigurationError(
            f"--out {args.out}: cannot make the folder: {exc.strerror}"
        ) from None
    started = time.perf_counter()
    with app_engine().begin() as conn:
        if not args.replace:
            _refuse_to_replace_under_a_night(conn)
            _refuse_to_wipe_real_users(conn)
        # Tens of thousands of users take a minute or so: say what is under way.
        _say(
            f"demo data: replacing the users, criteria sets, portfolios, instruments and markets "
            f"with {_count(args.users, 'user', 'users')} (one transaction: stopped before the "
            "end, nothing is replaced)…"
        )
        counts = generate(
            conn,
            users=args.users,
            seed=args.seed,
            out_dir=Path(args.out),
            instruments_per_market=args.instruments_per_market,
            echo=_say,
        )
    print(
        f"demo data: {counts['users']:,} users, {counts['criteria_sets']:,} criteria sets, "
        f"{counts['instruments']:,} instruments, {counts['holdings']:,} holdings "
        f"in {time.perf_counter() - started:.1f} s; provider files in {args.out}/"
    )
    return 0


# The e-mail addresses of the users demo-data creates (`demo_data/users`).
DEMO_EMAIL = r"^user[0-9]{6}@example\.com$"


def _refuse_to_wipe_real_users(conn: "Connection") -> None:
    """demo-data replaces every user, criteria set, instrument and market: refuse when the
    database holds users it did not create, unless the operator says --replace."""
    import sqlalchemy as sa

    others = conn.execute(
        sa.text("SELECT count(*) FROM users WHERE email !~ :demo"), {"demo": DEMO_EMAIL}
    ).scalar_one()
    if others:
        raise ConfigurationError(
            f"the database holds {_count(others, 'user', 'users')} that demo-data did not "
            "create; demo-data replaces every user, criteria set, portfolio, instrument and "
            "market: run it again with --replace to wipe them"
        )


def _refuse_to_replace_under_a_night(conn: "Connection") -> None:
    """demo-data replaces the users a night being scored reads batch by batch (its later batches
    would find none of their frozen members): refuse while a night is `started` and a run works
    on it. The lock is the one TRUNCATE takes: a night opening now waits for this transaction,
    one that opened before is seen. A night left `started` by a `score` that was killed is not
    being scored: its runs are failed (as the next `score` does), and `make demo` goes on."""
    import dagster as dg
    import sqlalchemy as sa

    from scoring_pipeline.cli.in_process import fail_runs_of_killed_commands

    conn.execute(sa.text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
    night = conn.execute(
        sa.text(
            "SELECT score_date, market_group, started_at FROM overnight_job_runs "
            "WHERE job_type = 'scoring' AND status = 'started' ORDER BY started_at DESC LIMIT 1"
        )
    ).first()
    if night is None:
        return
    with dg.DagsterInstance.get() as instance:
        fail_runs_of_killed_commands(instance)
        in_flight = [
            run
            for run in instance.get_runs(
                filters=dg.RunsFilter(
                    statuses=[
                        dg.DagsterRunStatus.QUEUED,
                        dg.DagsterRunStatus.STARTING,
                        dg.DagsterRunStatus.STARTED,
                        dg.DagsterRunStatus.CANCELING,
                    ]
                )
            )
            if run.job_name != "dashboard_cache_job"
        ]
    if in_flight:
        raise ConfigurationError(
            f"the night of {night.score_date} ({night.market_group}) is being scored (started "
            f"{night.started_at:%Y-%m-%d %H:%M:%S %Z}; run {in_flight[0].run_id} is "
            f"{in_flight[0].status.value.lower()}): demo-data would replace its users, criteria "
            "and instruments under it; run it once the night has ended (`scoring-pipeline "
            "status`; runs of services that were stopped end when they run again), or with "
            "--replace to replace them anyway"
        )


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _print_prune_plan(
    before: dt.date, doomed: list["Partition"], kept: list["Partition"], stale: dict[str, list[str]]
) -> None:
    """What `prune` would drop: whole months, and Dagster's `scores` partitions of their nights."""
    for p in kept:
        print(f"kept {p.name}: current scores of {p.start:%Y-%m} still show its values")
    if doomed:
        print(f"{len(doomed)} month partitions hold only days before {before}:")
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
            print(f"  group {name}: {_count(len(keys), 'batch', 'batches')} of {nights}")


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
            f"{_count(found.n, 'current score', 'current scores')} of "
            f"{_count(found.u, 'user', 'users')} are dated in those months (not scored since): "
            "they keep showing, but their calculations can no longer be replayed"
        )


def _nights_being_scored_before(
    conn: "Connection", instance: "dg.DagsterInstance", first_kept: dt.date
) -> str | None:
    """Why `prune` must not drop the months before `first_kept` now: a run (a night's batch or
    snapshots, a retry, a backfill) is scoring one of their dates, so the rest of its night
    would find its month and its `scores` partitions gone. None when nothing is. The runs of a
    killed `score` are not scoring anything: they are failed first, as `score` and `demo-data`
    do."""
    import sqlalchemy as sa

    from scoring_pipeline.cli.in_process import fail_runs_of_killed_commands
    from scoring_pipeline.defs.run_tags import runs_in_flight

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
            day = _date_of_run(run)
            if day is not None and day < first_kept:
                found.append((run, day))
        return found

    in_flight = scoring()
    if in_flight:
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
                    conn, "scoring:prune", "prune lock (another `prune`)", _say
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
            busy = _nights_being_scored_before(conn, instance, first_kept)
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
            busy = _nights_being_scored_before(conn, instance, first_kept)
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
                f"dropped {_count(len(doomed), 'partition', 'partitions')}: "
                f"{_rows_and_size(doomed)} freed (the database is now {now / 1e6:,.1f} MB)"
            )
        for group in groups:
            keys = stale[group.name]
            if not keys:
                continue

            def progress(done: int, name: str = group.name, total: int = len(keys)) -> None:
                print(f"  group {name}: {done:,} of {total:,} `scores` partitions removed")

            remove_night_partitions(instance, group, keys, progress)
            removed = _count(len(keys), "`scores` partition", "`scores` partitions")
            print(f"removed {removed} of group {group.name}")
    return 0
