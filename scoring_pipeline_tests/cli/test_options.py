"""Options the commands refuse before doing anything: argparse's usage error (exit status 2)
naming the option, never services started with a count or port they cannot have."""

import pytest

from scoring_pipeline.cli.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["services", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["bench", "--workers", "-1"], "argument --workers: must be at least 1, got -1"),
        (["worker", "--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
        (["services", "--workers", "two"], "argument --workers: must be a whole number, got 'two'"),
        (["services", "--port", "0"], "argument --port: must be at least 1, got 0"),
        (
            ["demo-data", "--users", "5", "--instruments-per-market", "0"],
            "argument --instruments-per-market: must be at least 1, got 0",
        ),
        (
            ["migrate", "--revision", "0010", "--downgrade", "0009"],
            "argument --downgrade: not allowed with argument --revision",
        ),
        (
            ["services", "--port", "70000"],
            "argument --port: must be a port number (1 – 65535), got 70000",
        ),
    ],
)
def test_counts_and_ports_out_of_range_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["services", "--workers", "20000"], "argument --workers: must be at most 64, got 20000"),
        (["worker", "--concurrency", "65"], "argument --concurrency: must be at most 64, got 65"),
        (["bench", "--workers", "1000"], "argument --workers: must be at most 64, got 1000"),
    ],
)
def test_run_worker_counts_beyond_a_machine_are_refused(argv, message, capsys):
    # Celery forks every worker at once: `services --workers 20000` forked until the kernel's
    # OOM killer stopped it. Parsed only (a regression must not start the services here).
    from scoring_pipeline.cli.main import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:3000", "ftp://ops@host", "", "http://"])
def test_a_webserver_url_that_is_none_is_refused_before_anything_is_read(url, capsys):
    # It was read only once a failed batch was found to retry: on a night with nothing to
    # retry, `--url notaurl` passed unnoticed (and the next night's retry failed on it).
    from scoring_pipeline.cli.main import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["retry-failed", "--date", "2026-11-27", "--url", url])
    assert exited.value.code == 2
    assert "argument --url: must be the Dagster webserver's http(s) URL" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["notaurl", "localhost:3000"])
def test_a_webserver_variable_that_is_no_url_is_named(url, monkeypatch):
    from scoring_pipeline.runtime.dagster_api import DagsterApi, DagsterApiError

    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", url)
    with pytest.raises(DagsterApiError, match=f"DAGSTER_WEBSERVER_URL '{url}' is not"):
        DagsterApi.from_env(None)
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "")  # empty: unset, the default
    assert DagsterApi.from_env(None).url == "http://127.0.0.1:3000"
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "https://ops:s3cret@dagster.internal/")
    assert DagsterApi.from_env(None).url == "https://ops:s3cret@dagster.internal"


def test_the_defaults_and_a_valid_value_parse():
    from scoring_pipeline.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["services"]).workers == 2
    assert parser.parse_args(["services", "--port", "3001"]).port == 3001
    assert parser.parse_args(["worker", "--concurrency", "3"]).concurrency == 3
    assert parser.parse_args(["bench", "--workers", "1"]).workers == 1
    retry = ["retry-failed", "--date", "2026-11-27", "--url", "http://127.0.0.1:3001/"]
    assert parser.parse_args(retry).url == "http://127.0.0.1:3001/"


def test_debug_goes_before_or_after_the_command():
    from scoring_pipeline.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["--debug", "status"]).debug
    assert parser.parse_args(["status", "--debug"]).debug
    assert parser.parse_args(["prune", "--before", "2026-01-01", "--debug"]).debug
    assert not parser.parse_args(["status"]).debug


def test_the_groups_benchmark_refuses_the_options_it_would_ignore(capsys):
    for extra in (["--nights", "3"], ["--keep"]):
        assert main(["bench", "--groups", "us,br", *extra]) == 2
        assert capsys.readouterr().err.strip() == (
            "scoring-pipeline: error: --groups runs one night of each layout: without --nights "
            "or --keep"
        )


def test_db_url_shows_a_password_only_when_asked(monkeypatch, capsys):
    # What `prepare_dagster_environment` fills in is put back after the test.
    for name in ("DAGSTER_PG_URL", "DAGSTER_HOME", "PGTZ", "DAGSTER_CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DAGSTER_CELERY_BACKEND_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cret@db.internal:5432/scoring")
    assert main(["db-url"]) == 0
    assert capsys.readouterr().out == "postgresql://app:***@db.internal:5432/scoring\n"
    assert main(["db-url", "--dagster"]) == 0
    assert capsys.readouterr().out == "postgresql+psycopg2://app:***@db.internal:5432/scoring\n"
    assert main(["db-url", "--show-password"]) == 0
    assert capsys.readouterr().out == "postgresql://app:s3cret@db.internal:5432/scoring\n"


def test_a_reader_that_stops_reading_is_no_error(tmp_path):
    # `scoring-pipeline status | head`: it printed "error: [Errno 32] Broken pipe".
    import os
    import subprocess

    from scoring_pipeline_tests.cli_helpers import CLI

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    env = {**os.environ, "DATABASE_URL": "postgresql://app@db.internal:5432/scoring"}
    env["DAGSTER_HOME"] = str(tmp_path)
    proc = subprocess.run([*CLI, "db-url"], stdout=write, stderr=subprocess.PIPE, env=env)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr


def test_a_warning_is_printed_once_when_a_library_configured_the_root_logger(capsys):
    # An operator review: two commands creating Dagster's storage at once on a new database
    # printed every later warning twice ("warning: prices for D: …" and "WARNING:scoring_
    # pipeline.snapshots:…"): dagster-postgres logs "Retrying failed database creation" through
    # the root logger, and Python then gives the root logger a stderr handler of its own.
    import logging

    from scoring_pipeline.cli.console import project_warnings_on_stderr

    root = logging.getLogger()
    before = list(root.handlers)
    root.handlers = []  # as in a command (pytest's own capture handlers aside)
    try:
        with project_warnings_on_stderr():
            logging.warning("Retrying failed database creation")  # as dagster-postgres does
            logging.getLogger("scoring_pipeline.snapshots").warning("prices for D: 1 missing")
        err = capsys.readouterr().err.splitlines()
        assert err.count("warning: prices for D: 1 missing") == 1
        assert [line for line in err if "prices for D" in line] == [
            "warning: prices for D: 1 missing"
        ]
    finally:
        root.handlers = before


def test_the_help_names_the_default_of_every_option_that_has_one():
    # `--help` is what an operator reads first: `services --help` showed `--port PORT` with no
    # word and `--workers WORKERS  concurrent run workers`, where the README reads
    # `services [--port 3000] [--workers 2]`; bench's and demo-data's defaults were unsaid too.
    import argparse

    from scoring_pipeline.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    unsaid = [
        f"{name} {action.option_strings[0]} (default {action.default})"
        for name, command in commands.choices.items()
        for action in command._actions
        if action.option_strings
        and action.default not in (None, False, argparse.SUPPRESS)
        and f"default: {action.default}" not in (action.help or "")
    ]
    assert unsaid == []
    services = commands.choices["services"].format_help()
    assert "port of the Dagster UI (default: 3000)" in services
    assert "concurrent run workers (1 – 64, default: 2)" in services


@pytest.mark.parametrize(("value", "traceback"), [("0", False), ("off", False), ("1", True)])
def test_scoring_debug_set_to_0_is_off(value, traceback, monkeypatch, capsys):
    # The README's `SCORING_DEBUG=1` turns tracebacks on; any value did, `SCORING_DEBUG=0` too.
    # A URL that is not PostgreSQL's is refused before any connection.
    monkeypatch.setenv("DATABASE_URL", "mysql://someone@db.example/app")
    monkeypatch.setenv("SCORING_DEBUG", value)
    if traceback:
        with pytest.raises(Exception, match="must point at PostgreSQL"):
            main(["db-url"])
        return
    assert main(["db-url"]) == 2
    assert capsys.readouterr().err == (
        "scoring-pipeline: error: DATABASE_URL must point at PostgreSQL (postgresql://...)\n"
    )
