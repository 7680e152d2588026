"""The `scoring-pipeline` command: migrate, demo data, a night's scoring, replay, prune.

Errors are one line on stderr and a non-zero exit status; `--debug` shows the traceback.
"""

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scoring_pipeline.errors import ConfigurationError, ScoringPipelineError


def _engine() -> Any:
    from scoring_pipeline.store.db import create_engine_for, prepare_dagster_environment

    return create_engine_for(prepare_dagster_environment())


def _cmd_migrate(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.db import current_revision, downgrade, migrate

    engine = _engine()
    if args.downgrade:
        downgrade(engine, args.downgrade)
    else:
        migrate(engine, args.revision)
    print(f"database at revision {current_revision(engine) or 'base'}")
    return 0


def _cmd_db_url(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.db import dagster_storage_url, prepare_dagster_environment

    url = prepare_dagster_environment()
    print(dagster_storage_url(url) if args.dagster else url)
    return 0


def _cmd_db_stop(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.db import embedded_data_dir, stop_embedded_server

    stopped = stop_embedded_server(embedded_data_dir())
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.demo_data import generate

    if args.users < 1:
        raise ConfigurationError("--users must be at least 1")
    started = time.perf_counter()
    with _engine().begin() as conn:
        counts = generate(
            conn,
            users=args.users,
            seed=args.seed,
            out_dir=Path(args.out),
            instruments_per_market=args.instruments_per_market,
        )
    print(
        f"demo data: {counts['users']} users, {counts['criteria_sets']} criteria sets, "
        f"{counts['instruments']} instruments, {counts['holdings']} holdings "
        f"in {time.perf_counter() - started:.1f} s; provider files in {args.out}/"
    )
    return 0


def _parse_date(text: str, option: str = "--date") -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(f"{option} must be YYYY-MM-DD, got {text!r}") from None


def _groups(args: argparse.Namespace) -> "list[Any]":
    """The market groups a command works on: `--group G`, or every configured group."""
    from scoring_pipeline.definitions import market_groups
    from scoring_pipeline.errors import ConfigurationError

    groups = market_groups()
    if args.group is None:
        return groups
    chosen = [g for g in groups if g.name == args.group]
    if not chosen:
        raise ConfigurationError(
            f"--group {args.group}: no such market group (configured: "
            + ", ".join(g.name for g in groups)
            + ")"
        )
    return chosen


def _cmd_score(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.in_process import run_night

    score_date = _parse_date(args.date) if args.date else dt.datetime.now(dt.UTC).date()
    status = 0
    for group in _groups(args):
        summary = run_night(score_date, refresh=args.refresh, echo=print, group=group.name)
        for line in summary.lines():
            print(line)
        status = max(status, 1 if summary.status == "failed" else 0)
    return status


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    from scoring_pipeline.defs.partitions import scores_partition_key, scores_partitions_name
    from scoring_pipeline.runtime.dagster_api import DagsterApi
    from scoring_pipeline.store.night_lifecycle import batches_to_retry

    score_date = _parse_date(args.date)
    api = DagsterApi.from_env(args.url)
    for group in _groups(args):
        with _engine().connect() as conn:
            batches = batches_to_retry(conn, score_date, market_group=group.name)
        if not batches:
            print(f"nothing to retry in group {group.name}: every batch of {score_date} succeeded")
            continue
        partitions = [scores_partition_key(score_date, b) for b in batches]
        # A night scored before the partitions became per-night batches has none registered yet.
        for key in partitions:
            api.add_dynamic_partition(scores_partitions_name(group), key)
        backfill_id = api.launch_scores_backfill(
            partitions,
            title=f"retry failed batches of {score_date} ({group.name})",
            asset_path=group.asset_key("scores"),
        )
        print(
            f"backfill {backfill_id}: re-scoring {len(partitions)} batches of {score_date} "
            f"in group {group.name}: " + ", ".join(batches)
        )
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_services(args: argparse.Namespace) -> int:
    import signal

    from scoring_pipeline.runtime.services import running_services

    # A supervisor (systemd, Kubernetes, `timeout`) stops us with SIGTERM: stop the services
    # we started too, as Ctrl-C does, instead of leaving them running without us.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with running_services(port=args.port, workers=args.workers) as services:
            print(
                f"Dagster UI on {services.url}; daemon and {args.workers} run workers started. "
                "Ctrl-C stops them.",
                flush=True,
            )
            while all(services.alive().values()):
                time.sleep(1)
            dead = [name for name, ok in services.alive().items() if not ok]
    except KeyboardInterrupt:  # also while starting: `running_services` stops what it started
        return 0
    raise ScoringPipelineError(
        f"{', '.join(dead)} stopped; see their logs under DAGSTER_HOME/service-logs"
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    from scoring_pipeline.runtime.services import worker_command
    from scoring_pipeline.store.db import prepare_dagster_environment

    prepare_dagster_environment()
    command = worker_command(args.concurrency)
    os.execv(command[0], command)


def _cmd_bench(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.bench.report import save
    from scoring_pipeline.cli.bench.runner import run_bench

    if args.users < 1:
        raise ConfigurationError("--users must be at least 1")
    if args.nights < 1:
        raise ConfigurationError("--nights must be at least 1")
    if args.groups:
        return _bench_groups(args)
    report = run_bench(args.users, workers=args.workers, keep=args.keep, nights=args.nights)
    for line in report.lines():
        print(line)
    print(f"saved {save(report, Path(args.out))}")
    return 0


def _bench_groups(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.bench.groups import run_groups_bench
    from scoring_pipeline.cli.bench.groups_report import save_groups

    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    try:
        report = run_groups_bench(args.users, groups, workers=args.workers)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    for line in report.lines():
        print(line)
    print(f"saved {save_groups(report, Path(args.out))}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from scoring_pipeline.engine.replay import replay

    with _engine().connect() as conn:
        result = replay(conn, args.correlation_id)
    results = result.recomputed["results"]
    print(f"calculation {result.correlation_id} (user {result.user_id}): {len(results)} results")
    if result.reproduced:
        print("replay reproduces SCORES_COMPUTED exactly")
        return 0
    for difference in result.differences[:20]:
        print(f"  {difference}")
    print("replay does NOT reproduce SCORES_COMPUTED")
    return 1


def _cmd_prune(args: argparse.Namespace) -> int:
    from scoring_pipeline.store.month_partitions import drop, prunable

    before = _parse_date(args.before, "--before")
    today = dt.datetime.now(dt.UTC).date()
    if before > today:
        raise ConfigurationError(
            f"--before {before} is after today ({today}): it would drop this month's partitions"
        )
    with _engine().begin() as conn:
        doomed, kept = prunable(conn, before)
        for p in kept:
            print(f"kept {p.name}: current scores of {p.start:%Y-%m} still show its values")
        if not doomed:
            print(f"nothing to prune: no month partition ends on or before {before}")
            return 0
        print(f"{len(doomed)} month partitions end on or before {before}:")
        for p in doomed:
            rows = "?" if p.rows < 0 else f"~{p.rows:,}"
            print(f"  {p.name:<36} {p.start} .. {p.end}  {rows} rows  {p.bytes / 1e6:,.1f} MB")
        if not args.yes:
            print("nothing dropped: run again with --yes to detach and drop them")
            return 0
        drop(conn, doomed)
    print(f"dropped {len(doomed)} partitions")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoring-pipeline", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply the Alembic migrations")
    p.add_argument("--revision", default="head")
    p.add_argument("--downgrade", metavar="REVISION", help="revert to REVISION (e.g. base)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("db-url", help="print the application database URL")
    p.add_argument("--dagster", action="store_true", help="the Dagster storage URL instead")
    p.set_defaults(func=_cmd_db_url)

    p = sub.add_parser("db-stop", help="stop the embedded PostgreSQL server")
    p.set_defaults(func=_cmd_db_stop)

    p = sub.add_parser("demo-data", help="create a synthetic universe and provider files")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="demo_data", help="folder for rates.json and prices.csv")
    p.add_argument("--instruments-per-market", type=int, default=100)
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser("score", help="run a score date's whole scoring through Dagster")
    p.add_argument("--date", help="score date YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--refresh", action="store_true", help="re-fetch the date's snapshots")
    p.add_argument("--group", help="one market group (default: every configured group)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("services", help="Dagster UI + daemon and run workers, until Ctrl-C")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2, help="concurrent run workers")
    p.set_defaults(func=_cmd_services)

    p = sub.add_parser("worker", help="a Celery run worker (for deployments that scale out)")
    p.add_argument("--concurrency", type=int, default=2)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser(
        "retry-failed", help="backfill a date's failed batches through the running Dagster"
    )
    p.add_argument("--date", required=True, help="score date YYYY-MM-DD")
    p.add_argument("--group", help="one market group (default: every configured group)")
    p.add_argument(
        "--url", help="Dagster webserver (default $DAGSTER_WEBSERVER_URL or http://127.0.0.1:3000)"
    )
    p.set_defaults(func=_cmd_retry_failed)

    p = sub.add_parser("bench", help="a whole night through the daemon on a fresh database")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="concurrent run workers")
    p.add_argument("--out", default="bench_out", help="folder for the JSON report")
    p.add_argument("--keep", action="store_true", help="keep the benchmark database")
    p.add_argument(
        "--nights",
        type=int,
        default=1,
        help="nights in a row on the same database (the later ones measure what a night adds)",
    )
    p.add_argument(
        "--groups",
        help="market groups, e.g. us,br,eu: one night vs the groups' nights on one universe",
    )
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "prune", help="detach and drop whole months of history, events and metric values"
    )
    p.add_argument("--before", required=True, help="drop the months that end on or before it")
    p.add_argument("--yes", action="store_true", help="really drop them (else only list them)")
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("replay", help="recompute a calculation from its INPUTS_CAPTURED event")
    p.add_argument("correlation_id")
    p.set_defaults(func=_cmd_replay)
    return parser


def _quiet_library_warnings() -> None:
    """Operators read the summary: keep libraries' notices about their own APIs out of it."""
    warnings.filterwarnings("ignore", module=r"dagster(\..*)?$")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        _quiet_library_warnings()
    try:
        return int(args.func(args))
    except (ScoringPipelineError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"scoring-pipeline: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database or Dagster failing: still one clear line
        if args.debug or os.environ.get("SCORING_DEBUG"):
            raise
        print(f"scoring-pipeline: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]
