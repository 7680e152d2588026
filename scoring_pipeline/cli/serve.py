"""The commands that run Dagster's processes on this machine: `services` (UI, daemon and run
workers, supervised until Ctrl-C or SIGTERM), and for deployments that run them apart, `worker`
(one Celery run worker) and `daemon` (the Dagster daemon with the project's sensor loop).
"""

import argparse
import os
import time
from pathlib import Path

from scoring_pipeline.cli.interrupts import interrupt_on_sigterm
from scoring_pipeline.errors import ConfigurationError, ScoringPipelineError


def cmd_services(args: argparse.Namespace) -> int:
    from scoring_pipeline.runtime.celery_app import check_celery_urls
    from scoring_pipeline.runtime.services import check_connection_room, running_services

    check_celery_urls()
    check_connection_room(args.workers, "--workers", with_dagster_services=True)
    interrupt_on_sigterm()
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


def cmd_worker(args: argparse.Namespace) -> int:
    from scoring_pipeline.runtime.celery_app import check_celery_urls
    from scoring_pipeline.runtime.services import check_connection_room, worker_command
    from scoring_pipeline.store.db import prepare_dagster_environment

    prepare_dagster_environment()
    check_celery_urls()
    check_connection_room(args.concurrency, "--concurrency", with_dagster_services=False)
    command = worker_command(args.concurrency)
    os.execv(command[0], command)


def cmd_daemon(args: argparse.Namespace) -> int:
    from scoring_pipeline.runtime.celery_app import check_celery_urls
    from scoring_pipeline.runtime.services import daemon_command
    from scoring_pipeline.store.db import prepare_dagster_environment

    prepare_dagster_environment()
    check_celery_urls()  # the daemon hands runs to the broker
    workspace = _workspace_file(args.workspace) if args.workspace else None
    command = daemon_command(workspace)
    os.execv(command[0], command)


def _workspace_file(given: str) -> Path:
    """`--workspace FILE` checked before the daemon replaces this process: a missing file or
    one that is no workspace is one line naming the option, not the daemon's usage text for a
    command the operator did not type, or its traceback."""
    import yaml

    path = Path(given)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"--workspace {given}: cannot read it: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigurationError(f"--workspace {given}: not YAML: {reason}") from None
    if not isinstance(loaded, dict) or "load_from" not in loaded:
        raise ConfigurationError(
            f"--workspace {given}: not a Dagster workspace file (it has no load_from list)"
        )
    return path
