"""The commands on the application database: `migrate`, `db-url`, `db-stop`, `demo-data`
(`prune` has its own module).

Each takes the parsed options and returns the exit status; what they need beyond the standard
library is imported when they run, so `--help` stays quick.
"""

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scoring_pipeline.cli.console import count_of, say
from scoring_pipeline.cli.options import app_engine
from scoring_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def cmd_migrate(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.db import current_revision, downgrade, migrate, passed_revision

    engine = app_engine()
    if args.downgrade:
        took = downgrade(engine, args.downgrade, echo=say)
    elif (current := passed_revision(engine, args.revision)) is not None:
        # Alembic's upgrade to an older revision does nothing: say so instead of a bare
        # "database at revision 0011" that reads as if it had gone there.
        print(
            f"database at revision {current}, already past {args.revision}: nothing to "
            f"upgrade (`scoring-pipeline migrate --downgrade {args.revision}` goes back to it)"
        )
        return 0
    else:
        took = migrate(engine, args.revision, echo=say)
    print(f"database at revision {current_revision(engine) or 'base'}{took}")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from scoring_pipeline.providers.redaction import redact
    from scoring_pipeline.store.db import dagster_storage_url, prepare_dagster_environment

    url = prepare_dagster_environment()
    if args.dagster:  # the operator's DAGSTER_PG_URL when set (it was ignored), with its driver
        url = dagster_storage_url(os.environ["DAGSTER_PG_URL"], variable="DAGSTER_PG_URL")
    shown = sa.make_url(url)
    # A password is printed only when asked for: this output ends up in terminals and logs.
    text = shown.render_as_string(hide_password=not args.show_password)
    # libpq's other place for it, the query (`?password=…`), which SQLAlchemy prints as it is.
    print(text if args.show_password else redact(text))
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
        say(
            f"demo data: replacing the users, criteria sets, portfolios, instruments and markets "
            f"with {count_of(args.users, 'user', 'users')} (one transaction: stopped before the "
            "end, nothing is replaced)…"
        )
        counts = generate(
            conn,
            users=args.users,
            seed=args.seed,
            out_dir=Path(args.out),
            instruments_per_market=args.instruments_per_market,
            echo=say,
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
            f"the database holds {count_of(others, 'user', 'users')} that demo-data did not "
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
