"""What the commands' options and environment resolve to: the application database's engine, a
date, the market groups. Shared by the command modules; nothing here prints.
"""

import argparse
import datetime as dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from scoring_pipeline.errors import ConfigurationError

if TYPE_CHECKING:  # imported when a command runs, not to print --help
    from sqlalchemy.engine import Engine

    from scoring_pipeline.defs.market_groups.group import MarketGroup


def app_engine() -> "Engine":
    """The application database's engine, once Dagster's environment is prepared."""
    from scoring_pipeline.store.db import create_engine_for, prepare_dagster_environment

    return create_engine_for(prepare_dagster_environment())


def require_dagster_home() -> None:
    """`DAGSTER_HOME` must hold the project's `dagster.yaml`: in a folder without one, Dagster
    silently keeps its runs, schedules and event log in SQLite files there, apart from the
    services' PostgreSQL instance (a `score` the UI never shows, whose check for a night being
    scored looks at the wrong instance). Call once the environment is prepared."""
    from scoring_pipeline.store.db import PROJECT_ROOT

    home = os.environ.get("DAGSTER_HOME", "")
    where = f"DAGSTER_HOME={home!r}"
    if not Path(home).is_absolute():
        raise ConfigurationError(f"{where} must be an absolute path to a folder")
    if not Path(home).is_dir():
        raise ConfigurationError(f"{where} is not an existing folder")
    if not (Path(home) / "dagster.yaml").is_file():
        raise ConfigurationError(
            f"{where} has no dagster.yaml (Dagster would keep this instance in SQLite files "
            f"there): copy the project's, `cp {PROJECT_ROOT / 'dagster.yaml'} {home}/`"
        )


def at_least_one(text: str) -> int:
    """An option's whole number of at least 1 (run workers, worker processes); argparse names
    the option in its error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Each run worker is a process of ~250 MB: a count beyond this is a typo, not a machine.
MAX_RUN_WORKERS = 64


def run_workers(text: str) -> int:
    """A number of run worker processes, 1 – MAX_RUN_WORKERS (Celery forks every one at once:
    `--workers 20000` would fork twenty thousand processes)."""
    value = at_least_one(text)
    if value > MAX_RUN_WORKERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_RUN_WORKERS}, got {value}")
    return value


def port_number(text: str) -> int:
    """A TCP port to listen on, 1 – 65535."""
    value = at_least_one(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1 – 65535), got {value}")
    return value


def webserver_url(text: str) -> str:
    """The Dagster webserver's http(s) URL (`retry-failed --url`); an empty one (a script's
    unset variable) or one with no scheme or host is refused before anything is read."""
    from scoring_pipeline.providers.redaction import redact
    from scoring_pipeline.runtime.dagster_api import DEFAULT_URL, is_webserver_url

    if not is_webserver_url(text.rstrip("/")):
        raise argparse.ArgumentTypeError(
            f"must be the Dagster webserver's http(s) URL (e.g. {DEFAULT_URL}), "
            f"got {redact(text)!r}"
        )
    return text


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_date(text: str, option: str = "--date") -> dt.date:
    """A calendar date written YYYY-MM-DD (`fromisoformat` alone also takes 20261204 and
    2026-W49-5, which an operator most likely did not mean)."""
    if not _DATE.fullmatch(text):
        raise ConfigurationError(f"{option} must be YYYY-MM-DD, got {text!r}")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:  # 2026-11-31: the form is right, the day does not exist
        raise ConfigurationError(f"{option} {text} is not a date ({exc})") from None


def chosen_groups(args: argparse.Namespace) -> "list[MarketGroup]":
    """The market groups a command works on: `--group G`, or every configured group."""
    from scoring_pipeline.definitions import market_groups

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
