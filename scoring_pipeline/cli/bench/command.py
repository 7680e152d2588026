"""The `bench` command: checks its options, runs the benchmark (or with `--groups` the groups
benchmark), prints its report and saves it as JSON under `--out`.
"""

import argparse
import sys
from pathlib import Path

from scoring_pipeline.cli.interrupts import interrupt_on_sigterm
from scoring_pipeline.errors import ConfigurationError


def cmd_bench(args: argparse.Namespace) -> int:
    from scoring_pipeline.cli.bench.report import save
    from scoring_pipeline.cli.bench.runner import run_bench

    if args.users < 1:
        raise ConfigurationError("--users must be at least 1")
    if args.nights < 1:
        raise ConfigurationError("--nights must be at least 1")
    if args.groups and (args.nights != 1 or args.keep):
        # The groups benchmark runs one night per layout on databases of its own.
        raise ConfigurationError(
            "--groups runs one night of each layout: without --nights or --keep"
        )
    interrupt_on_sigterm()
    try:
        if args.groups:
            return _bench_groups(args)
        report = run_bench(args.users, workers=args.workers, keep=args.keep, nights=args.nights)
    except KeyboardInterrupt:
        print(
            "bench interrupted: its services are stopped"
            + ("" if args.keep else " and its database dropped"),
            file=sys.stderr,
        )
        return 130
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
