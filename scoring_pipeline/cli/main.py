"""The `scoring-pipeline` command: migrate, demo data, a night's scoring, replay, prune.

Errors are one line on stderr and a non-zero exit status; `--debug` shows the traceback.
"""

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from scoring_pipeline.cli.bench.command import cmd_bench
from scoring_pipeline.cli.console import project_warnings_on_stderr
from scoring_pipeline.cli.database import (
    cmd_db_stop,
    cmd_db_url,
    cmd_demo_data,
    cmd_migrate,
)
from scoring_pipeline.cli.interrupts import interrupt_on_sigterm
from scoring_pipeline.cli.nights import cmd_replay, cmd_retry_failed, cmd_score
from scoring_pipeline.cli.options import (
    at_least_one,
    port_number,
    require_dagster_home,
    run_workers,
    webserver_url,
)
from scoring_pipeline.cli.prune import cmd_prune
from scoring_pipeline.cli.serve import cmd_daemon, cmd_services, cmd_worker
from scoring_pipeline.cli.status import cmd_status
from scoring_pipeline.errors import ScoringPipelineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoring-pipeline", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    # In this order in `--help`: setting up, running nights, then measuring and upkeep.
    _add_setup_commands(sub)
    _add_night_commands(sub)
    _add_upkeep_commands(sub)
    for command in sub.choices.values():  # `scoring-pipeline status --debug` works too
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
    return parser


# argparse keeps the type of its subparsers' action private.
def _add_setup_commands(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply the Alembic migrations")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--revision", default="head", help="upgrade to REVISION (default: head)")
    direction.add_argument("--downgrade", metavar="REVISION", help="revert to REVISION (e.g. base)")
    p.set_defaults(func=cmd_migrate, needs_database=True)

    p = sub.add_parser(
        "db-url",
        help="print the application database URL (starting the embedded server when "
        "DATABASE_URL is unset)",
    )
    p.add_argument("--dagster", action="store_true", help="the Dagster storage URL instead")
    p.add_argument(
        "--show-password",
        action="store_true",
        help="print the URL's password (shown as *** otherwise)",
    )
    p.set_defaults(func=cmd_db_url)

    p = sub.add_parser("db-stop", help="stop the embedded PostgreSQL server")
    p.set_defaults(func=cmd_db_stop)

    p = sub.add_parser(
        "demo-data",
        help="replace the users, criteria, portfolios, instruments and markets with a "
        "synthetic universe, and write its provider files",
    )
    p.add_argument("--users", type=int, required=True, help="how many users to create")
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="random seed (the same seed, the same data; default: 42)",
    )
    p.add_argument(
        "--out",
        default="demo_data",
        help="folder for rates.json and prices.csv (default: demo_data)",
    )
    p.add_argument(
        "--instruments-per-market",
        type=at_least_one,
        default=100,
        help="instruments in each of 3 markets (default: 100)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="also when the database holds users demo-data did not create (they are deleted), "
        "or while a night is being scored",
    )
    p.set_defaults(func=cmd_demo_data, needs_schema=True, needs_dagster=True)


def _add_night_commands(sub: Any) -> None:
    p = sub.add_parser("score", help="run a score date's whole scoring through Dagster")
    p.add_argument("--date", help="score date YYYY-MM-DD (default: today, UTC)")
    p.add_argument(
        "--refresh",
        action="store_true",
        help=(
            "re-fetch the date's snapshots (the rates and membership once, then each group's "
            "prices; with --group, the membership is kept if another group's night uses it)"
        ),
    )
    p.add_argument("--group", help="one market group (default: every configured group)")
    p.set_defaults(func=cmd_score, needs_schema=True, needs_dagster=True)

    p = sub.add_parser("services", help="Dagster UI + daemon and run workers, until Ctrl-C")
    p.add_argument(
        "--port", type=port_number, default=3000, help="port of the Dagster UI (default: 3000)"
    )
    p.add_argument(
        "--workers", type=run_workers, default=2, help="concurrent run workers (1 – 64, default: 2)"
    )
    p.set_defaults(func=cmd_services, needs_schema=True, needs_dagster=True)

    p = sub.add_parser("worker", help="a Celery run worker (for deployments that scale out)")
    p.add_argument(
        "--concurrency",
        type=run_workers,
        default=2,
        help="run worker processes (1 – 64, default: 2)",
    )
    p.set_defaults(func=cmd_worker, needs_schema=True, needs_dagster=True)

    p = sub.add_parser(
        "daemon", help="the Dagster daemon, sensors every second (for separate deployments)"
    )
    p.add_argument(
        "--workspace",
        help="workspace file (default: the project's, which loads the code in a code server "
        "of the daemon's own; name a grpc_server there to share a running code server)",
    )
    p.set_defaults(func=cmd_daemon, needs_schema=True, needs_dagster=True)

    p = sub.add_parser(
        "status", help="the latest nights, or one date's night with its failed users"
    )
    p.add_argument("--date", help="score date YYYY-MM-DD (default: the latest nights)")
    p.add_argument("--group", help="one market group's nights only")
    p.set_defaults(func=cmd_status, needs_schema=True)

    p = sub.add_parser(
        "retry-failed", help="backfill a date's failed batches through the running Dagster"
    )
    p.add_argument("--date", required=True, help="score date YYYY-MM-DD")
    p.add_argument("--group", help="one market group (default: every configured group)")
    p.add_argument(
        "--url",
        type=webserver_url,
        help="Dagster webserver (default $DAGSTER_WEBSERVER_URL or http://127.0.0.1:3000)",
    )
    p.set_defaults(func=cmd_retry_failed, needs_schema=True, needs_dagster=True)


def _add_upkeep_commands(sub: Any) -> None:
    p = sub.add_parser("bench", help="a whole night through the daemon on a fresh database")
    p.add_argument("--users", type=int, default=1000, help="users to score (default: 1000)")
    p.add_argument(
        "--workers", type=run_workers, default=2, help="concurrent run workers (1 – 64, default: 2)"
    )
    p.add_argument(
        "--out", default="bench_out", help="folder for the JSON report (default: bench_out)"
    )
    p.add_argument("--keep", action="store_true", help="keep the benchmark database")
    p.add_argument(
        "--nights",
        type=int,
        default=1,
        help="nights in a row on the same database (the later ones measure what a night adds; "
        "default: 1)",
    )
    p.add_argument(
        "--groups",
        help="market groups, e.g. us,br,eu: one night vs the groups' nights on one universe",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "prune",
        help="detach and drop whole months of history, events and metric values, and remove "
        "their nights' scores partitions from Dagster",
    )
    p.add_argument(
        "--before",
        required=True,
        help="drop the months whose every day is before it (2026-12-01: November and earlier)",
    )
    p.add_argument("--yes", action="store_true", help="really drop them (else only list them)")
    p.set_defaults(func=cmd_prune, needs_schema=True, needs_dagster=True)

    p = sub.add_parser("replay", help="recompute a calculation from its INPUTS_CAPTURED event")
    p.add_argument(
        "correlation_id", help="a calculation's correlation id (calculation_events.correlation_id)"
    )
    p.set_defaults(func=cmd_replay, needs_schema=True)


def _quiet_library_warnings() -> None:
    """Operators read the summary: keep libraries' notices about their own APIs out of it."""
    warnings.filterwarnings("ignore", module=r"dagster(\..*)?$")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


# The commands whose work is statements on the database in this process: SIGTERM (a supervisor,
# `timeout`, a deploy job cancelled) stops them as Ctrl-C does. The driver then cancels the
# statement in flight and the transaction is rolled back; killed outright, the statement went
# on in the server, holding its locks (the migrations' lock and the tables'), with nobody to
# commit it. `score` and `services` handle both signals their own way; `worker` and `daemon`
# are Celery's and Dagster's.
_STOPPED_AS_BY_CTRL_C = frozenset(
    {"migrate", "demo-data", "prune", "status", "replay", "retry-failed"}
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in _STOPPED_AS_BY_CTRL_C:
        interrupt_on_sigterm()
    debug = args.debug or _switched_on(os.environ.get("SCORING_DEBUG", ""))
    own_dagster_url = os.environ.get("DAGSTER_PG_URL")  # else derived from DATABASE_URL
    own_database = bool(os.environ.get("DATABASE_URL", "").strip())  # else the embedded server
    if not debug:
        _quiet_library_warnings()
    try:
        with project_warnings_on_stderr():
            return _run(args, debug, own_dagster_url, own_database)
    except KeyboardInterrupt:
        # Ctrl-C (services and score stop their own way first): one line, not a traceback;
        # what the command was writing is rolled back with its transaction.
        if debug:
            raise
        print("scoring-pipeline: interrupted", file=sys.stderr)
        return 130  # a shell's status for a command stopped by Ctrl-C
    except BrokenPipeError:
        # `status | head`: the reader has what it wanted. Python would also complain when it
        # flushes stdout at exit, so stdout goes to /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # a shell's status for a command stopped by SIGPIPE


def _run(
    args: argparse.Namespace, debug: bool, own_dagster_url: str | None, own_database: bool
) -> int:
    try:
        if getattr(args, "needs_schema", False) or getattr(args, "needs_database", False):
            from scoring_pipeline.store.db import check_app_database, prepare_dagster_environment

            check_app_database(
                prepare_dagster_environment(),
                given=own_database,
                writes=getattr(args, "needs_dagster", False),  # it writes Dagster's instance
            )
        if getattr(args, "needs_schema", False):
            _require_current_schema()
        if getattr(args, "needs_dagster", False):
            from scoring_pipeline.store.db import prepare_dagster_environment

            prepare_dagster_environment()  # DAGSTER_HOME defaults to the project folder
            require_dagster_home()
        if own_dagster_url and getattr(args, "needs_dagster", False):
            from scoring_pipeline.store.db import check_dagster_storage

            check_dagster_storage(own_dagster_url)
        status = int(args.func(args))
        sys.stdout.flush()  # a reader gone shows here, not as Python's complaint at exit
        return status
    except BrokenPipeError:
        raise  # not an error: see `main`
    except (ScoringPipelineError, OSError, ValueError) as exc:
        if debug:
            raise
        print(f"scoring-pipeline: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database or Dagster failing: still one clear line
        if debug:
            raise
        print(f"scoring-pipeline: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2


def _require_current_schema() -> None:
    """A command that reads or writes the pipeline's tables starts only on a database at this
    code's migration: else a clear error, not a missing table's SQL error (or, for `services`,
    sensors failing every second in the UI)."""
    from scoring_pipeline.cli.options import app_engine
    from scoring_pipeline.store.db import require_current_schema

    engine = app_engine()
    try:
        require_current_schema(engine)
    finally:
        engine.dispose()


def _switched_on(value: str) -> bool:
    """A yes/no variable (`SCORING_DEBUG`): `0`, `false`, `no`, `off` and empty are off (any
    value turned tracebacks on, `SCORING_DEBUG=0` too)."""
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]
