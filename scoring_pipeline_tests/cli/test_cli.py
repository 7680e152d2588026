"""The `scoring-pipeline` command end to end, as an operator runs it (subprocesses on the test
database): migrate, demo-data, `score --date` on ~150 users in several batches and currencies,
four ordered events per user, `replay`, and one-line errors with a non-zero exit status."""

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil
import pytest
import sqlalchemy as sa

from scoring_pipeline.cli.in_process import INTERRUPTED
from scoring_pipeline.runtime.dagster_api import LOCATION, REPOSITORY
from scoring_pipeline.runtime.services import free_port, private_deployment_env
from scoring_pipeline.store.db import PROJECT_ROOT, head_revision
from scoring_pipeline.store.night.outcomes import lock_retries
from scoring_pipeline_tests.cli_helpers import CLI, reap, run, started, summary_value

pytestmark = [pytest.mark.db, pytest.mark.slow]

DATE = "2026-11-27"


def test_score_150_users_then_replay(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    out = run(
        cli_env, "demo-data", "--users", "150", "--seed", "7", "--out", str(tmp_path / "demo")
    ).stdout
    assert "150 users" in out
    proc = run(cli_env, "score", "--date", DATE)
    stdout = proc.stdout
    assert summary_value(stdout, "job status") == "completed"
    with clean_db.connect() as conn:
        active = conn.execute(
            sa.text("SELECT count(*) FROM scoring_batches WHERE score_date = :d"), {"d": DATE}
        ).scalar_one()
        batches = conn.execute(
            sa.text("SELECT count(DISTINCT batch_key) FROM scoring_batches WHERE score_date = :d"),
            {"d": DATE},
        ).scalar_one()
        assets = conn.execute(
            sa.text("SELECT count(*) FROM score_history WHERE score_date = :d"), {"d": DATE}
        ).scalar_one()
        currencies = conn.execute(
            sa.text(
                "SELECT count(DISTINCT u.base_currency) FROM users u JOIN scoring_batches b "
                "ON b.user_id = u.id"
            )
        ).scalar_one()
        events = conn.execute(
            sa.text(
                "SELECT user_id::text AS u, correlation_id::text AS c, event_type FROM "
                "calculation_events WHERE user_id IS NOT NULL ORDER BY id"
            )
        ).all()
    assert 140 <= active <= 150 and batches == 3 and currencies >= 3
    assert summary_value(stdout, "users total") == str(active)
    assert summary_value(stdout, "users success") == str(active)
    assert summary_value(stdout, "users failed") == "0"
    assert summary_value(stdout, "assets scored") == str(assets) and assets > 10_000
    by_user: dict[str, list[tuple[str, str]]] = {}
    for e in events:
        by_user.setdefault(e.u, []).append((e.c, e.event_type))
    assert len(by_user) == active
    for sequence in by_user.values():
        assert [t for _, t in sequence] == [
            "CALC_STARTED",
            "INPUTS_CAPTURED",
            "SCORES_COMPUTED",
            "CALC_COMPLETED",
        ]
        assert len({c for c, _ in sequence}) == 1
    correlation_id = events[0].c
    replay = run(cli_env, "replay", correlation_id)
    assert "reproduces SCORES_COMPUTED exactly" in replay.stdout

    # Scoring the date again reuses its frozen inputs and leaves one history row per asset.
    again = run(cli_env, "score", "--date", DATE).stdout
    assert summary_value(again, "job status") == "completed"
    with clean_db.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM score_history WHERE score_date = :d"), {"d": DATE}
            ).scalar_one()
            == assets
        )


def test_errors_are_one_line_with_non_zero_status(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    bad_date = run(cli_env, "score", "--date", "27/11/2026", check=False)
    assert bad_date.returncode != 0
    assert bad_date.stderr.strip().count("\n") == 0 and "YYYY-MM-DD" in bad_date.stderr
    unknown = run(cli_env, "replay", "00000000-0000-4000-8000-000000000000", check=False)
    assert unknown.returncode != 0 and "no calculation" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_dagster_home_without_the_projects_dagster_yaml_is_refused(cli_env, clean_db, tmp_path):
    # A DAGSTER_HOME folder without dagster.yaml: `score` ran on a SQLite instance Dagster made
    # there, apart from the services' PostgreSQL one (its runs in no UI), and exited 0.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "demo"))
    empty = tmp_path / "empty_home"
    empty.mkdir()
    for args in (("score", "--date", DATE), ("retry-failed", "--date", DATE)):
        proc = run({**cli_env, "DAGSTER_HOME": str(empty)}, *args, check=False)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == (
            f"scoring-pipeline: error: DAGSTER_HOME='{empty}' has no dagster.yaml (Dagster "
            "would keep this instance in SQLite files there): copy the project's, "
            f"`cp {PROJECT_ROOT / 'dagster.yaml'} {empty}/`"
        )
    assert list(empty.iterdir()) == []  # no instance of its own was made there
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM overnight_job_runs")).scalar_one() == 0
    relative = subprocess.run(  # `run` works in DAGSTER_HOME, which here is no folder
        [*CLI, "score", "--date", DATE],
        env={**cli_env, "DAGSTER_HOME": "dh"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert relative.returncode == 2
    assert relative.stderr.strip() == (
        "scoring-pipeline: error: DAGSTER_HOME='dh' must be an absolute path to a folder"
    )


def test_ctrl_c_is_one_line_and_leaves_nothing_half_written(cli_env, clean_db, tmp_path):
    # Ctrl-C of demo-data printed Python's traceback of wherever it was.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "3", "--out", str(tmp_path / "small"))
    tables = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM instruments)"
    before = _row(clean_db, tables)
    proc = started(cli_env, "demo-data", "--users", "500000", "--out", str(tmp_path / "demo"))
    try:
        # Its transaction has emptied the tables and written the instruments, and it draws
        # the users: interrupted there.
        assert proc.stdout is not None
        drawing = next((line for line in proc.stdout if line.startswith("  drew ")), None)
        assert drawing is not None, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert (proc.returncode, stderr.strip()) == (130, "scoring-pipeline: interrupted"), stderr
    assert _row(clean_db, tables) == before  # rolled back: the earlier demo data is all there
    # Its session ends with it (the server notices the closed connection in a moment).
    session = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
    deadline = time.monotonic() + 30
    while _scalar(clean_db, session, name=f"scoring-pipeline:{proc.pid}"):
        assert time.monotonic() < deadline, "its session outlived it"
        time.sleep(0.05)


def test_commands_refuse_a_database_not_at_this_codes_migration(databases, tmp_path):
    env = private_deployment_env(databases.create(), tmp_path / "home", tmp_path / "demo")
    nobody = "00000000-0000-4000-8000-000000000000"
    for command in (
        ("score", "--date", DATE),
        ("services", "--port", str(free_port())),
        ("replay", nobody),
        ("demo-data", "--users", "5", "--out", str(tmp_path / "demo")),
    ):
        empty = run(env, *command, check=False)
        assert empty.returncode == 2, (command, empty.stderr)
        assert "none of the pipeline's tables yet: run `scoring-pipeline migrate`" in empty.stderr
        assert "Traceback" not in empty.stderr
    run(env, "migrate", "--revision", "0006")
    older = run(env, "score", "--date", DATE, check=False)
    assert older.returncode == 2
    assert f"at migration 0006 and this code needs {head_revision()}" in older.stderr
    run(env, "migrate")
    # An upgrade to a revision the database has passed does nothing, and says so (it printed
    # "database at revision 0011", as if it had gone back to 0006).
    passed = run(env, "migrate", "--revision", "0006").stdout
    assert passed == (
        f"database at revision {head_revision()}, already past 0006: nothing to upgrade "
        "(`scoring-pipeline migrate --downgrade 0006` goes back to it)\n"
    )
    # At this code's migration the command runs (and finds no such calculation).
    current = run(env, "replay", nobody, check=False)
    assert current.returncode == 2 and "no calculation" in current.stderr


def test_score_exits_non_zero_when_the_night_fails(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "demo"))
    Path(cli_env["RATES_FILE"]).unlink()  # the only rates provider is down, no earlier snapshot
    proc = run(cli_env, "score", "--date", DATE, check=False)
    assert proc.returncode == 1
    assert summary_value(proc.stdout, "job status") == "failed"
    # The provider's own error, as `status` shows it; not Dagster's "Error occurred while
    # executing op" wrapper of it.
    error = summary_value(proc.stdout, "error")
    assert error.startswith(f"stage exchange_rates: every rates provider failed for {DATE}")
    assert "cannot read" in error and "Dagster" not in error
    batches = summary_value(proc.stdout, "batches")
    assert batches.endswith("(none scored: the night failed before its batches)"), batches
    step = summary_value(run(cli_env, "status", "--date", DATE).stdout, "next")
    assert step.startswith(
        "once its inputs can be fetched, start it again with `scoring-pipeline score --date "
        f"{DATE}`"
    ), step
    # Retrying its batches cannot help (they would fail on the missing rates): said, exit 1,
    # nothing launched (no webserver is asked).
    retry = run(cli_env, "retry-failed", "--date", DATE, check=False)
    assert retry.returncode == 1, retry.stderr
    assert retry.stdout.startswith(
        f"nothing to retry in group all: the night of {DATE} failed before scoring (stage "
        f"exchange_rates: every rates provider failed for {DATE}"
    ), retry.stdout
    assert retry.stdout.rstrip().endswith(
        f"once that is fixed, start it again with `scoring-pipeline score --date {DATE}`"
    ), retry.stdout
    # Said once, in the summary: not again as Dagster's step and run failures on stderr.
    assert "Traceback" not in proc.stderr and "STEP_FAILURE" not in proc.stderr, proc.stderr
    with clean_db.connect() as conn:  # nothing was scored from missing inputs
        for sql in (
            "SELECT count(*) FROM asset_scores",
            "SELECT count(*) FROM score_history",
            "SELECT count(*) FROM calculation_events WHERE user_id IS NOT NULL",
        ):
            assert conn.execute(sa.text(sql)).scalar_one() == 0, sql


def test_a_prices_answer_with_no_price_at_all_fails_the_night(cli_env, clean_db, tmp_path):
    # A prices file with only its header: every instrument "not returned" made a `completed`
    # night whose price rules all read missing_fundamental, and no warning.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "demo"))
    prices = Path(cli_env["PRICES_FILE"])
    prices.write_text(prices.read_text().splitlines()[0] + "\n")
    proc = run(cli_env, "score", "--date", DATE, check=False)
    assert proc.returncode == 1
    assert summary_value(proc.stdout, "job status") == "failed"
    error = summary_value(proc.stdout, "error")
    assert error.startswith(f"stage prices: every prices provider failed for {DATE}"), error
    assert "(file: an empty answer: no price for any of the " in error, error


def test_score_prints_the_providers_warnings_one_line_each(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "demo"))
    prices = Path(cli_env["PRICES_FILE"])
    header, first, *rest = prices.read_text().splitlines()
    symbol = first.split(",")[0]
    prices.write_text("\n".join([header, ",".join([symbol, "NaN", *first.split(",")[2:]]), *rest]))
    # A currency the rates provider does not give, and a symbol the prices provider does not.
    rates = Path(cli_env["RATES_FILE"])
    rates.write_text(rates.read_text().replace('"BRL":', '"XXX":'))
    gone = rest[-1].split(",")[0]
    prices.write_text("\n".join(prices.read_text().splitlines()[:-1]) + "\n")
    # A NaN fundamental that every batch of the night reads (batches of 2 users).
    with clean_db.begin() as conn:
        nan = (
            conn.execute(
                sa.text(
                    "UPDATE instrument_fundamentals SET roe = 'NaN' WHERE symbol = "
                    "(SELECT min(symbol) FROM instrument_fundamentals) RETURNING symbol"
                )
            )
            .scalars()
            .first()
        )
    proc = run({**cli_env, "SCORING_BATCH_SIZE": "2"}, "score", "--date", DATE)
    # The users who score BRL instruments fail, naming the pair; the others are scored.
    assert summary_value(proc.stdout, "job status") == "partial"
    assert "no exchange rate for " in proc.stdout and "BRL in the snapshot" in proc.stdout
    step = summary_value(run(cli_env, "status", "--date", DATE).stdout, "next")
    assert step.startswith(
        "the date's frozen rates lack a currency they need: once the rates provider has it, "
        f"`scoring-pipeline score --date {DATE} --refresh`"
    ), step  # not "fix those users' data, then retry-failed": a retry reads the same rates
    lines = proc.stderr.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("warning: ")], proc.stderr
    assert len(set(lines)) == len(lines), lines  # each once, not once per batch
    assert [line for line in lines if "not finite numbers" in line and nan in line], lines
    assert any("1 value(s) rejected" in line and symbol in line for line in lines), lines
    # The demo's provider files hold today's closes, so a past date freezes later ones: said.
    later = f"quotes are dated after it (up to {dt.datetime.now(dt.UTC).date()})"
    assert any(f"prices for {DATE}" in line and later in line for line in lines), lines
    assert (
        f"warning: rates for {DATE}: BRL not returned by file: the users who need it fail at "
        "scoring; once the provider has it, re-materialise exchange_rates with refresh: true"
    ) in lines, lines
    assert any(
        line.startswith(f"warning: prices for {DATE}: ")
        and "symbols not returned by file, stored as missing: " in line
        and gone in line
        for line in lines
    ), lines


def _spawn(cli_env, log: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen[bytes]:
    """The command in the background, in a process group of its own, its output in `log`;
    with `sigint_ignored`, as a shell starts a background command (`services … &`): SIGINT
    ignored from the start."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CLI, *args],
            env=cli_env,
            cwd=cli_env["DAGSTER_HOME"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if sigint_ignored
            else None,
        )


def _wait_while_running(proc, log: Path, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"not ready in {timeout:.0f} s: {log.read_text()}"
        time.sleep(0.5)


class _Services(NamedTuple):
    proc: subprocess.Popen[bytes]
    log: Path
    started: list[psutil.Process]  # the webserver, daemon, code servers and run workers
    answers: Callable[[], bool]  # the webserver answers on its port
    port: int


@contextlib.contextmanager
def _services_answering(cli_env, tmp_path, *, sigint_ignored: bool = False) -> Iterator[_Services]:
    """`scoring-pipeline services` with one run worker, once its webserver answers; whatever
    it started is killed on the way out."""
    port = free_port()
    log = tmp_path / "services.out"
    proc = _spawn(
        cli_env,
        log,
        "services",
        "--port",
        str(port),
        "--workers",
        "1",
        sigint_ignored=sigint_ignored,
    )

    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).is_success
        return False

    started: list[psutil.Process] = []
    try:
        _wait_while_running(proc, log, answers)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 5  # worker main + pool, webserver, daemon, their code servers
        yield _Services(proc, log, started, answers, port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in started:  # each service runs in a process group of its own
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.mark.parametrize(
    "stop",
    [signal.SIGTERM, signal.SIGINT],
    ids=["sigterm", "sigint-to-a-background-command"],
)
def test_services_stop_with_everything_they_started_on_sigterm(cli_env, tmp_path, stop):
    # As a supervisor stops it (systemd, Kubernetes, `timeout`): no webserver, daemon, code
    # server or run worker may outlive the command. And `kill -INT` of `services … &` (an
    # operator review: a shell starts a background command with SIGINT ignored, so it went on
    # running, its night with it, until SIGTERM).
    with _services_answering(cli_env, tmp_path, sigint_ignored=stop == signal.SIGINT) as services:
        services.proc.send_signal(stop)
        assert services.proc.wait(timeout=60) == 0, services.log.read_text()
        _, alive = psutil.wait_procs(services.started, timeout=30)
        assert alive == [], [p.cmdline()[:4] for p in alive]
        # Each stopped its own way, not killed at the deadline: the code server through its API
        # (it ignores signals), the worker's main process stopping its own pool.
        logs = Path(cli_env["DAGSTER_HOME"]) / "service-logs"
        assert "Shutting down Dagster code proxy server" in (logs / "code-server.log").read_text()
        worker = (logs / "worker.log").read_text()
        assert "Warm shutdown" in worker and "exited with 'signal 15" not in worker, worker


def test_services_killed_with_sigkill_leave_nothing_running(cli_env, tmp_path):
    # An operator review: `kill -9` of `services` (an OOM kill, a supervisor's forced stop) left
    # the webserver, daemon, code server and run workers running without it, holding its port
    # ("port P is already in use … choose another with --port") and, with another port, ticking
    # beside the next services' daemon on the same instance. Each now stops when it is gone.
    with _services_answering(cli_env, tmp_path) as services:
        services.proc.kill()
        services.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(services.started, timeout=60)
        assert alive == [], [p.cmdline()[:4] for p in alive]
        # The port and the DAGSTER_HOME are free for the next services.
        again = _spawn(cli_env, tmp_path / "again.out", "services", "--port", str(services.port))
        try:
            _wait_while_running(again, tmp_path / "again.out", services.answers)
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=60) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(again.pid, signal.SIGKILL)


def test_score_one_market_group_and_refuse_an_unknown_one(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "12", "--out", str(tmp_path / "demo"))
    cli_env["MARKET_GROUPS_FILE"] = str(PROJECT_ROOT / "market_groups.example.toml")
    proc = run(cli_env, "score", "--date", DATE, "--group", "br")
    assert summary_value(proc.stdout, "market group") == "br"
    assert summary_value(proc.stdout, "job status") == "completed"
    with clean_db.connect() as conn:
        markets = conn.execute(
            sa.text(
                "SELECT DISTINCT i.market FROM asset_scores a JOIN instruments i USING (symbol)"
            )
        ).scalars()
        assert set(markets) == {"BR_BANKS"}
        groups = conn.execute(
            sa.text("SELECT DISTINCT market_group FROM overnight_job_runs")
        ).scalars()
        assert set(groups) == {"br"}
    # A day its exchange is closed: the schedule skips it; asked for, it is scored, with a word.
    closed = run(cli_env, "score", "--date", "2026-11-20", "--group", "br")
    assert summary_value(closed.stdout, "job status") == "completed"
    assert (
        "warning: 2026-11-20 (Friday) is not a trading session of BVMF: no night for group br; "
        "scoring it anyway, as asked"
    ) in closed.stderr.splitlines(), closed.stderr
    assert "not a trading session" not in proc.stderr
    unknown = run(cli_env, "score", "--date", DATE, "--group", "zz", check=False)
    assert unknown.returncode != 0 and unknown.stderr.strip().count("\n") == 0
    assert "no such market group" in unknown.stderr and "us, br, eu" in unknown.stderr


def test_a_market_in_no_group_is_warned_of_once_a_command(cli_env, clean_db, tmp_path):
    # The groups are loaded more than once by `score` (the command, then the night's
    # definitions): the warning printed bare (Python's last-resort handler), then again.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "4", "--out", str(tmp_path / "demo"))
    groups = tmp_path / "groups.toml"
    groups.write_text('[groups.br]\nmarkets = ["BR_BANKS"]\ncalendar = "BVMF"\n')
    cli_env["MARKET_GROUPS_FILE"] = str(groups)
    expected = (
        "warning: market groups: markets EU_INDUSTRIALS, US_TECH are in no group of "
        "MARKET_GROUPS_FILE: no night scores the criteria sets targeting them"
    )
    for args in (("score", "--date", DATE, "--group", "br"), ("status", "--date", DATE)):
        proc = run(cli_env, *args)
        mentions = [line for line in proc.stderr.splitlines() if "in no group" in line]
        assert mentions == [expected], proc.stderr


def test_the_daemon_command_runs_the_sensor_daemon_until_sigterm(cli_env, clean_db, tmp_path):
    # For deployments that run the daemon apart from the webserver: it heartbeats into the
    # instance's storage (the deployment's database), sensors included, and stops on SIGTERM.
    run(cli_env, "migrate")
    # Heartbeats of earlier tests' daemons (same database) must not count as this one's.
    with contextlib.suppress(sa.exc.ProgrammingError), clean_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM daemon_heartbeats"))
    log = tmp_path / "daemon.out"
    proc = _spawn(cli_env, log, "daemon")

    def senses() -> bool:
        with contextlib.suppress(sa.exc.ProgrammingError), clean_db.connect() as conn:
            beats = conn.execute(sa.text("SELECT daemon_type FROM daemon_heartbeats")).scalars()
            return "SENSOR" in set(beats)
        return False

    try:
        _wait_while_running(proc, log, senses)
        assert "scoring_pipeline.runtime.daemon" in " ".join(psutil.Process(proc.pid).cmdline())
        started = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], [p.cmdline()[:4] for p in alive]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_bench_stopped_by_sigterm_stops_its_services_and_drops_its_database(
    cli_env, clean_db, tmp_path
):
    log = tmp_path / "bench.out"
    proc = _spawn(cli_env, log, "bench", "--users", "60", "--nights", "1", "--out", str(tmp_path))

    def benches() -> bool:
        return "services up" in log.read_text()

    def bench_databases() -> set[str]:
        with clean_db.connect() as conn:
            names = conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'scoring_bench_%'")
            ).scalars()
            return set(names)

    before = bench_databases()
    try:
        _wait_while_running(proc, log, benches)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 5  # worker main + pool, code server, webserver, daemon
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 130, log.read_text()
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], [p.cmdline()[:4] for p in alive]
        assert "bench interrupted: its services are stopped and its database dropped" in (
            log.read_text()
        )
        assert bench_databases() == before
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_score_refuses_a_date_whose_batches_are_being_scored(
    cli_env, clean_db, dagster_instance, tmp_path
):
    # `score --date D` while the services score D (a run of D's batch, in the same Dagster
    # storage): one line, a non-zero status, and the night as it was.
    import dagster as dg

    from scoring_pipeline.definitions import defs

    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "demo"))
    assert summary_value(run(cli_env, "score", "--date", DATE).stdout, "job status") == "completed"
    night = (
        "SELECT status, started_at, (SELECT count(*) FROM calculation_events "
        "WHERE event_type = 'JOB_STARTED') AS n FROM overnight_job_runs WHERE job_type = 'scoring'"
    )
    with clean_db.connect() as conn:
        before = conn.execute(sa.text(night)).one()
    scoring = dagster_instance.create_run_for_job(
        defs().resolve_job_def("scoring_batch_job"),
        tags={"dagster/partition": f"{DATE}/b0000"},
        status=dg.DagsterRunStatus.STARTED,
    )
    try:
        proc = run(cli_env, "score", "--date", DATE, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        last = proc.stderr.strip()
        assert last.startswith(
            f"scoring-pipeline: error: {DATE} was not scored: scoring night {DATE} (all) is "
            "completed and was not restarted:"
        ), last
        assert f"its batches are being scored (run {scoring.run_id} scores b0000)" in last
        with clean_db.connect() as conn:
            assert conn.execute(sa.text(night)).one() == before
    finally:
        dagster_instance.delete_run(scoring.run_id)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_score_stopped_mid_night_stops_and_closes_the_night_with_the_rest_failed(
    cli_env, clean_db, tmp_path, signum
):
    # Ctrl-C of `score` went into Dagster's run in flight: one batch failed "interrupted" (or
    # none, when the signal came outside its step), then the command scored every later batch
    # and exited 0. SIGTERM (a supervisor's stop) killed it, leaving the night `started`.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "600", "--out", str(tmp_path / "demo"))
    env = {**cli_env, "SCORING_BATCH_SIZE": "20"}  # 30 batches
    proc = started(env, "score", "--date", DATE)
    landed = "SELECT count(*) FROM scoring_batch_results WHERE status = 'success'"
    try:
        deadline = time.monotonic() + 120
        while _scalar(clean_db, landed) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no batch landed"
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"scoring-pipeline: interrupted: the night of {DATE} (all) is partial, its unscored "
        "batches counted failed; re-score them with `scoring-pipeline retry-failed --date "
        f"{DATE}`"
    ), stderr
    assert summary_value(stdout, "job status") == "partial"
    scored = _scalar(clean_db, landed)
    assert 2 <= scored < 30
    # Every batch has its outcome (none left without one), and the night is closed.
    assert _scalar(clean_db, "SELECT count(*) FROM scoring_batch_results") == 30
    night = "SELECT status FROM overnight_job_runs WHERE job_type = 'scoring'"
    assert _scalar(clean_db, night) == "partial"
    # The command stopped right after the signal: the unscored batches say why, the one being
    # scored or written too (it read the step's failure, "the run was terminated…").
    failed = _scalar(
        clean_db,
        "SELECT count(*) FROM scoring_batch_results WHERE status = 'failed' "
        "AND failed_users::text LIKE '%scoring-pipeline score was stopped%'",
    )
    assert failed == 30 - scored


@contextlib.contextmanager
def _score_with_its_first_write_waiting(cli_env, clean_db, tmp_path):
    """`score --date DATE` of 60 demo users in 3 batches whose first write waits on the history
    keys' locks, which a connection holds (taken by user id: it holds no lock on `users`).
    Yields the command's environment and process; on the way out the locks are let go and the
    process is killed if it still runs."""
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "60", "--out", str(tmp_path / "demo"))
    env = {**cli_env, "SCORING_BATCH_SIZE": "20"}  # 3 batches
    ids = [str(i) for i in _scalar(clean_db, "SELECT array_agg(id) FROM users")]
    blocker = clean_db.connect()
    blocker.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(hashtextextended(u, "
            "CAST(:d AS date) - DATE '2000-01-01')) FROM unnest(CAST(:ids AS text[])) u"
        ),
        {"d": DATE, "ids": ids},
    )
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND wait_event = 'advisory' AND datname = current_database()"
    )
    proc = started(env, "score", "--date", DATE)
    try:
        deadline = time.monotonic() + 120
        while not _scalar(clean_db, waiting):
            assert proc.poll() is None and time.monotonic() < deadline, "no write waited"
            time.sleep(0.05)
        yield env, proc
    finally:
        blocker.rollback()
        blocker.close()
        reap(proc)


def test_score_stopped_while_a_batch_is_written_says_its_users_were_stopped(
    cli_env, clean_db, tmp_path
):
    # Ctrl-C while the first batch's write waits (here on the history keys' locks, which a
    # connection holds): the write is rolled back, and that batch's users read the step's
    # failure, "the run was terminated while its batches were being scored", where the later
    # batches' said `score` was stopped.
    with _score_with_its_first_write_waiting(cli_env, clean_db, tmp_path) as (_, proc):
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert summary_value(stdout, "job status") == "failed", stdout
    with clean_db.connect() as conn:
        outcomes = conn.execute(
            sa.text("SELECT batch_key, status, failed_users FROM scoring_batch_results ORDER BY 1")
        ).all()
    rows = [
        (r.batch_key, r.status, {u["error"]["message"] for u in r.failed_users}) for r in outcomes
    ]
    assert [(key, status) for key, status, _ in rows] == [
        ("b0000", "failed"),
        ("b0001", "failed"),
        ("b0002", "failed"),
    ]
    assert rows[0][2] == {INTERRUPTED}, rows[0]
    assert rows[1][2] == rows[2][2] == {f"not scored: {INTERRUPTED} before this batch"}


def test_score_after_a_score_killed_mid_batch_scores_the_night_again(
    cli_env, clean_db, tmp_path, dagster_instance
):
    # An operator review: `score` killed with SIGKILL (an OOM kill, a closed SSH session's
    # kill) while a batch ran left that run STARTED and the night `started`; without the
    # services' run monitoring nothing ever failed the run, and every later `score --date D`
    # was refused ("its batches are being scored (run R scores b0000)… Wait until that ends").
    before = {r.run_id for r in dagster_instance.get_runs()}
    with _score_with_its_first_write_waiting(cli_env, clean_db, tmp_path) as (env, proc):
        running = run(env, "status", "--date", DATE).stdout
        proc.kill()  # in the middle of the first batch's write
        proc.communicate(timeout=60)
    night = "SELECT status FROM overnight_job_runs WHERE job_type = 'scoring'"
    assert _scalar(clean_db, night) == "started"
    # `status` says the night's command is gone, and how to score it again (it read `started`
    # as if the night were being scored); not while that command runs.
    assert "job status      started" in running and "next" not in running, running
    killed = run(env, "status", "--date", DATE).stdout
    assert (
        f"next            the `scoring-pipeline score` that started it stopped without closing "
        f"it (its run worker process {proc.pid} on "
    ) in killed and f"`scoring-pipeline score --date {DATE}` scores the night again" in killed, (
        killed
    )
    # Dagster's storage kept apart and unreachable: the night's figures, without the hint.
    closed = sa.make_url(env["DATABASE_URL"]).set(host="127.0.0.1", port=1, query={})
    apart = {**env, "DAGSTER_PG_URL": closed.render_as_string(hide_password=False)}
    unhinted = run(apart, "status", "--date", DATE)
    assert "job status      started" in unhinted.stdout and "next" not in unhinted.stdout, (
        unhinted.stdout + unhinted.stderr
    )
    assert unhinted.stderr == ""  # nor dagster-postgres's warnings as it retried, for ~14 s
    overview = run(env, "status").stdout.splitlines()
    assert overview[1].startswith(DATE) and overview[1].endswith(
        "  (its `score` is gone: see `status --date`)"
    ), overview
    again = run(env, "score", "--date", DATE, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert summary_value(again.stdout, "job status") == "completed"
    assert summary_value(again.stdout, "users success") == "60"
    assert "failed the run" in again.stderr and "whose `scoring-pipeline score` is gone" in (
        again.stderr
    ), again.stderr
    history = "SELECT count(*) - count(DISTINCT (user_id, symbol)) FROM score_history"
    assert _scalar(clean_db, history) == 0
    # Every run of both commands, the killed one's included, names the code location: the UI
    # can re-execute them (`execute_in_process` records no origin).
    ran = [r for r in dagster_instance.get_runs() if r.run_id not in before]
    assert len(ran) >= 4 and all(r.is_finished for r in ran)
    assert {
        (o.location_name, o.repository_origin.repository_name) if o else None
        for o in (r.remote_job_origin for r in ran)
    } == {(LOCATION, REPOSITORY)}


def test_score_whose_reader_goes_away_still_scores_the_whole_night(cli_env, clean_db, tmp_path):
    # `score --date D | head -3`: the first progress line after head had gone raised
    # BrokenPipeError out of the night, which stayed `started` with its later batches unscored.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "400", "--out", str(tmp_path / "demo"))
    env = {**cli_env, "SCORING_BATCH_SIZE": "10"}  # 40 batches: progress lines at 10, 20, …
    proc = started(env, "score", "--date", DATE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"freezing the inputs of {DATE}"), first
        proc.stdout.close()  # the reader goes, as `head -1` does
        proc.wait(timeout=300)
        assert proc.stderr is not None
        stderr = proc.stderr.read()  # a few warning lines: the pipe does not fill
    finally:
        reap(proc)
    assert "Traceback" not in stderr, stderr
    night = "SELECT status FROM overnight_job_runs WHERE job_type = 'scoring'"
    assert _scalar(clean_db, night) == "completed"
    landed = "SELECT count(*) FROM scoring_batch_results WHERE status = 'success'"
    assert _scalar(clean_db, landed) == 40
    assert proc.returncode == 0, stderr


def _scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def _row(engine, sql):
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(sql)).one())


def test_status_lists_the_nights_and_details_one_with_its_failed_users(
    cli_env, clean_db, dagster_instance, tmp_path
):
    # The command's runs share the session's Dagster storage: its failed batch run is deleted
    # after, so that no later test counts it.
    before = {r.run_id for r in dagster_instance.get_runs()}
    try:
        _status_of_a_partial_night(cli_env, clean_db, tmp_path)
    finally:
        for r in dagster_instance.get_runs():
            if r.run_id not in before:
                dagster_instance.delete_run(r.run_id)


def _status_of_a_partial_night(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    assert run(cli_env, "status").stdout.strip() == "no night has been started yet"
    run(cli_env, "demo-data", "--users", "6", "--out", str(tmp_path / "demo"))
    with clean_db.begin() as conn:  # one user's criteria become invalid
        bad = conn.execute(
            sa.text(
                'UPDATE criteria_versions SET rules = \'{"not": "a list"}\' WHERE id = '
                "(SELECT id FROM criteria_versions WHERE is_active ORDER BY id LIMIT 1) "
                "RETURNING user_id::text"
            )
        ).scalar_one()
    assert summary_value(run(cli_env, "score", "--date", DATE).stdout, "job status") == "partial"
    overview = run(cli_env, "status").stdout.splitlines()
    assert overview[0].split()[:3] == ["score", "date", "group"]
    row = overview[1].split()
    assert row[:3] == [DATE, "all", "partial"] and row[4] == "1"
    detail = run(cli_env, "status", "--date", DATE).stdout
    assert summary_value(detail, "job status") == "partial"
    assert f"failed user {bad} (batch b0000, stage criteria_validation)" in detail
    with clean_db.connect() as conn:
        total, unpriced = conn.execute(
            sa.text(
                "SELECT count(*), array_remove(array_agg(symbol ORDER BY symbol) "
                "FILTER (WHERE close IS NULL), NULL) FROM price_snapshots"
            )
        ).one()
    assert 0 < len(unpriced) <= 5, unpriced  # the demo's file leaves ~1 % unquoted
    assert summary_value(detail, "prices") == (
        f"{len(unpriced)} of {total} needed symbols without a price ({', '.join(unpriced)}): "
        f"{len(unpriced)} not returned by the provider, 0 refused as invalid"
    )
    step = summary_value(detail, "next")
    assert f"`scoring-pipeline retry-failed --date {DATE}`" in step
    assert "with `--url URL` when the webserver is not at http://127.0.0.1:3000" in step
    # Once the deployment moves to market groups, the night of `all` cannot be retried (its
    # assets are gone): the next step says what can be done instead.
    grouped = {**cli_env, "MARKET_GROUPS_FILE": str(PROJECT_ROOT / "market_groups.example.toml")}
    assert summary_value(detail, "market group") == "all"
    grouped_detail = run(grouped, "status", "--date", DATE).stdout
    assert summary_value(grouped_detail, "market group") == (
        "all (no longer configured; now: us, br, eu)"
    )
    step = summary_value(grouped_detail, "next")
    assert step == (
        "group all is no longer configured (now: us, br, eu), so its batches cannot be retried: "
        "fix those users' data, then score the date with the configured groups: "
        f"`scoring-pipeline score --date {DATE}`"
    )
    retry = run(grouped, "retry-failed", "--date", DATE, check=False)
    assert retry.returncode == 1, retry.stderr
    assert retry.stdout.splitlines()[-1] == (
        "cannot retry group all: it is no longer configured (now: us, br, eu), and its night of "
        f"{DATE} is partial with 1 failed users; fix their data, then score the date with the "
        f"configured groups: `scoring-pipeline score --date {DATE}`"
    )
    # A completed night of that group: nothing to retry, said so (it said the date "has no
    # night", exit 1, though `status` lists it).
    with clean_db.begin() as conn:
        conn.execute(
            sa.text("UPDATE criteria_versions SET is_active = false WHERE user_id = :u"), {"u": bad}
        )
    earlier = "2026-11-26"
    assert (
        summary_value(run(cli_env, "score", "--date", earlier).stdout, "job status") == "completed"
    )
    retry = run(grouped, "retry-failed", "--date", earlier, check=False)
    assert retry.returncode == 0, retry.stdout
    assert retry.stdout.splitlines()[-1] == (
        "nothing to retry in group all: it is no longer configured (now: us, br, eu), and its "
        f"night of {earlier} completed"
    )
    none = run(grouped, "status", "--date", "2026-01-01", "--group", "us", check=False)
    assert none.returncode == 1 and none.stdout.strip() == (
        "no night of 2026-01-01 in group us: start it with `scoring-pipeline score --date "
        "2026-01-01 --group us` or its snapshots job"
    )
    none = run(cli_env, "status", "--date", "2026-01-01", check=False)
    assert none.returncode == 1 and "no night of 2026-01-01" in none.stdout
    # A date `score` refuses is not offered to it.
    for never in ("1999-12-31", "2099-01-01"):
        none = run(cli_env, "status", "--date", never, check=False)
        assert none.returncode == 1 and none.stdout.strip() == (
            f"no night of {never}: score dates run from 2025-01-01 to today "
            f"({dt.datetime.now(dt.UTC).date()}, UTC)"
        )
        refused = run(cli_env, "score", "--date", never, check=False)
        assert refused.returncode == 2 and "not a score date" in refused.stderr
    # retry-failed says so too, rather than "every batch succeeded" (no webserver is asked).
    retry = run(cli_env, "retry-failed", "--date", "2026-01-01", check=False)
    assert retry.returncode == 1, retry.stderr
    assert retry.stdout.splitlines() == [
        "2026-01-01 has no night in group all: `scoring-pipeline status` lists the nights",
    ]
    unknown = run(cli_env, "status", "--group", "nope", check=False)
    assert unknown.returncode == 2 and unknown.stderr.strip() == (
        "scoring-pipeline: error: --group nope: no such market group (configured: all)"
    )
    with clean_db.connect() as conn:
        night_id = conn.execute(
            sa.text("SELECT correlation_id::text FROM overnight_job_runs WHERE score_date = :d"),
            {"d": DATE},
        ).scalar_one()
    replayed = run(cli_env, "replay", night_id, check=False)
    assert replayed.returncode != 0
    assert f"{night_id} is a night's correlation id" in replayed.stderr, replayed.stderr
    # An empty date (a script's unset variable) is not today's night; only YYYY-MM-DD is a date
    # (Python's fromisoformat also reads 20261127 and 2026-W48-5).
    for command, day in (("score", ""), ("status", "20261127"), ("status", "2026-W48-5")):
        refused = run(cli_env, command, "--date", day, check=False)
        assert refused.returncode == 2 and refused.stderr.strip() == (
            f"scoring-pipeline: error: --date must be YYYY-MM-DD, got {day!r}"
        ), refused.stderr
    # A date that is no partition (after tomorrow, before the start) is named in one line.
    for day in ("2030-01-01", "2019-01-01"):
        future = run(cli_env, "score", "--date", day, check=False)
        assert future.returncode == 2 and future.stdout == "", future.stdout
        assert future.stderr.strip() == (
            f"scoring-pipeline: error: --date {day}: not a score date (they run from 2025-01-01 "
            f"to {dt.datetime.now(dt.UTC).date()})"
        )


def test_demo_data_refuses_to_wipe_users_it_did_not_create(cli_env, clean_db, tmp_path):
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "3", "--out", str(tmp_path / "demo"))
    run(cli_env, "demo-data", "--users", "4", "--out", str(tmp_path / "demo"))  # its own: fine
    with clean_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, email, base_currency) "
                "VALUES (gen_random_uuid(), 'someone@bank.test', 'USD')"
            )
        )
    refused = run(cli_env, "demo-data", "--users", "3", "--out", str(tmp_path / "d"), check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "holds 1 user that demo-data did not create" in refused.stderr
    assert "--replace" in refused.stderr
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 5
    run(cli_env, "demo-data", "--users", "3", "--replace", "--out", str(tmp_path / "d"))
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 3


def test_demo_data_refuses_while_a_night_is_being_scored(cli_env, clean_db, tmp_path):
    # An operator review ran demo-data while the services scored a night: it replaced the
    # users under it, and the night's later batches scored none of their frozen members.
    users = "SELECT array_agg(id ORDER BY id) FROM users"
    with _score_with_its_first_write_waiting(cli_env, clean_db, tmp_path) as (env, proc):
        before = _scalar(clean_db, users)
        refused = run(env, "demo-data", "--users", "4", "--out", str(tmp_path / "d"), check=False)
        assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused
        assert f"the night of {DATE} (all) is being scored" in refused.stderr
        assert "--replace" in refused.stderr
        assert _scalar(clean_db, users) == before  # nothing replaced
        proc.kill()  # a night left `started` by a killed `score` is no night being scored
        proc.communicate(timeout=60)
    night = "SELECT status FROM overnight_job_runs WHERE job_type = 'scoring'"
    assert _scalar(clean_db, night) == "started"
    replaced = run(env, "demo-data", "--users", "5", "--out", str(tmp_path / "d"))
    assert "whose `scoring-pipeline score` is gone" in replaced.stderr, replaced.stderr
    assert _scalar(clean_db, "SELECT count(*) FROM users") == 5


def test_prune_refuses_the_month_of_a_night_being_scored(cli_env, clean_db, tmp_path):
    # A scale review ran `prune --before 2026-12-01 --yes` while `score --date 2026-11-15`
    # re-scored a 20,000-user night: November's history and events were dropped under it with
    # the night's `scores` partitions, and `score` died at its next batch with
    # "DagsterUnknownPartitionError: Could not find a partition with key `2026-11-15/b0119`",
    # the night left `started`. Now prune refuses while a run scores a date of those months.
    months = (
        "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname IN "
        "('score_history_2026_11', 'calculation_events_2026_11')"
    )
    with _score_with_its_first_write_waiting(cli_env, clean_db, tmp_path) as (env, proc):
        assert _scalar(clean_db, months) == 2
        listed = run(env, "prune", "--before", "2026-12-01")
        assert f"not now: the night of {DATE} (all) is being scored (run " in listed.stdout
        pruning = started(env, "prune", "--before", "2026-12-01", "--yes")
        try:
            _, stderr = pruning.communicate(timeout=120)
        finally:
            reap(pruning)
        assert pruning.returncode == 2, stderr
        assert stderr.startswith(
            f"scoring-pipeline: error: nothing dropped: the night of {DATE} (all) is being "
            "scored (run "
        ), stderr
        assert "run it once the night has ended" in stderr
        assert _scalar(clean_db, months) == 2
        proc.kill()  # a `score` killed: its runs are no night being scored
        proc.communicate(timeout=60)
    # A listing leaves the killed command's run out, and leaves it as it is (`--yes` or the
    # next `score` fails it).
    listed = run(env, "prune", "--before", "2026-12-01")
    assert "not now" not in listed.stdout and "warning" not in listed.stderr, listed
    scored = run(env, "score", "--date", DATE)
    assert summary_value(scored.stdout, "job status") == "completed", scored.stdout
    dropped = run(env, "prune", "--before", "2026-12-01", "--yes")
    assert "not now" not in dropped.stdout and _scalar(clean_db, months) == 0


def test_migrate_run_three_times_at_once_on_a_fresh_database_takes_turns(fresh_engine, tmp_path):
    # `migrate` in two terminals at once (a deploy script and an operator): the second failed
    # with "IntegrityError: … UniqueViolation … scoring_alembic_version" (both created the
    # tables); now each waits for the one migrating and finds the database at its revision.
    url = fresh_engine.url.render_as_string(hide_password=False)
    env = private_deployment_env(url, tmp_path / "dagster_home", tmp_path / "demo")
    procs = [started(env, "migrate") for _ in range(3)]
    outcomes = [(proc.wait(timeout=300), *proc.communicate()) for proc in procs]
    for status, stdout, stderr in outcomes:
        assert status == 0, stderr
        assert stdout.splitlines()[-1].startswith(f"database at revision {head_revision()}")
    # One migrated (each migration named), the others found it done.
    migrated = [stdout for _, stdout, _ in outcomes if "migrating the database" in stdout]
    assert len(migrated) == 1, outcomes


def test_a_bad_dagster_storage_url_is_one_line_naming_it(cli_env, clean_db):
    # dagster-postgres retried ~14 s, printing a warning for each try, then said "too many
    # retries for DB connection" without naming the variable.
    run(cli_env, "migrate")
    missing = (
        sa.make_url(cli_env["DATABASE_URL"])
        .set(drivername="postgresql+psycopg2", database="no_such_db_here", password="s3cretpw")
        .render_as_string(hide_password=False)
    )
    for url, said in (
        (missing, "DAGSTER_PG_URL: cannot connect to Dagster's storage: "),
        ("not a url", "DAGSTER_PG_URL is not a valid database URL"),
    ):
        for command in (["prune", "--before", "2026-01-01"], ["score", "--date", "2026-01-01"]):
            proc = run({**cli_env, "DAGSTER_PG_URL": url}, *command, check=False)
            assert proc.returncode == 2 and proc.stdout == "", proc.stdout
            assert proc.stderr.startswith(f"scoring-pipeline: error: {said}"), proc.stderr
            assert proc.stderr.count("\n") == 1 and "s3cretpw" not in proc.stderr


def test_a_database_url_that_cannot_connect_is_one_line_naming_it(cli_env, clean_db):
    # A wrong password, database or port printed SQLAlchemy's wrapper, "OperationalError:
    # (psycopg.OperationalError) connection failed: … (Background on this error at:
    # https://sqlalche.me/…)", naming no variable; DAGSTER_PG_URL's said which one.
    given = sa.make_url(cli_env["DATABASE_URL"]).set(password="s3cretpw")
    # A closed TCP port (the embedded server's URL names its socket folder in `?host=`).
    closed = given.difference_update_query(["host"]).set(host="127.0.0.1", port=free_port())
    for url, reason in (
        (given.set(database="no_such_db_here"), 'database "no_such_db_here" does not exist'),
        (closed, "Connection refused"),
    ):
        env = {**cli_env, "DATABASE_URL": url.render_as_string(hide_password=False)}
        for command in (["migrate"], ["status"], ["score", "--date", DATE]):
            proc = run(env, *command, check=False)
            assert proc.returncode == 2 and proc.stdout == "", proc.stdout
            assert proc.stderr.startswith(
                "scoring-pipeline: error: DATABASE_URL: cannot connect to the application "
                "database: connection failed: "
            ), proc.stderr
            assert reason in proc.stderr and "sqlalche.me" not in proc.stderr
            assert proc.stderr.count("\n") == 1 and "s3cretpw" not in proc.stderr


def test_demo_data_refuses_an_out_that_is_no_folder_before_replacing_anything(
    cli_env, clean_db, tmp_path
):
    # It said "[Errno 17] File exists: '…'" (the database's transaction rolled back).
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "2", "--out", str(tmp_path / "demo"))
    taken = tmp_path / "a_file"
    taken.write_text("")
    proc = run(cli_env, "demo-data", "--users", "3", "--out", str(taken), check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"scoring-pipeline: error: --out {taken}: is a file, not a folder\n"
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == 2


def test_daemon_refuses_a_workspace_file_that_is_none_in_one_line(cli_env, clean_db, tmp_path):
    # The README's `scoring-pipeline daemon --workspace FILE`: a missing file printed the
    # daemon's click usage for "python -m scoring_pipeline.runtime.daemon run", a command the
    # operator never typed, and a file that is no YAML an 88-line traceback.
    run(cli_env, "migrate")
    broken = tmp_path / "broken.yaml"
    broken.write_text("load_from: [\n")
    other = tmp_path / "other.yaml"
    other.write_text("storage: {}\n")
    for path, said in (
        (tmp_path / "missing.yaml", "cannot read it: No such file or directory"),
        (broken, "not YAML: "),
        (other, "not a Dagster workspace file (it has no load_from list)"),
    ):
        proc = run(cli_env, "daemon", "--workspace", str(path), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"scoring-pipeline: error: --workspace {path}: {said}")
        assert proc.stderr.count("\n") == 1, proc.stderr


def test_a_celery_url_it_cannot_load_is_one_line_naming_it(cli_env, clean_db):
    # The README's "set DAGSTER_CELERY_BROKER_URL (e.g. redis://…)": a transport Celery cannot
    # load (a typo; Redis without its client, which is not installed) was each service's
    # traceback ("KeyError: 'No such transport: reddis'", "'NoneType' object has no attribute
    # 'Redis'"), `worker` exiting 1.
    run(cli_env, "migrate")
    typo = "reddis://someone:s3cretpw@127.0.0.1:6379/0"
    for variable in ("DAGSTER_CELERY_BROKER_URL", "DAGSTER_CELERY_BACKEND_URL"):
        for command in (["worker"], ["services", "--port", str(free_port())]):
            proc = run({**cli_env, variable: typo}, *command, check=False)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.startswith(
                f"scoring-pipeline: error: {variable}='reddis://someone:***@127.0.0.1:6379/0': "
                "Celery cannot use it ("
            ), proc.stderr
            assert proc.stderr.count("\n") == 1 and "s3cretpw" not in proc.stderr


def test_a_postgres_scheme_url_works_like_postgresql(cli_env, clean_db, tmp_path):
    # `postgres://` is PostgreSQL's own other scheme (libpq, Heroku, Render and many hosts
    # hand it out): every command refused it, "DATABASE_URL must point at PostgreSQL".
    url = sa.make_url(cli_env["DATABASE_URL"]).set(drivername="postgres", password="s3cretpw")
    env = {**cli_env, "DATABASE_URL": url.render_as_string(hide_password=False)}
    assert env["DATABASE_URL"].startswith("postgres://")

    assert run(env, "migrate").stdout == f"database at revision {head_revision()}\n"
    shown = run(env, "db-url").stdout
    assert shown.startswith("postgres") and "s3cretpw" not in shown
    run(env, "demo-data", "--users", "3", "--out", str(tmp_path / "demo"))
    proc = run(env, "score", "--date", DATE)
    assert summary_value(proc.stdout, "job status") == "completed"
    assert DATE in run(env, "status").stdout
    # Dagster's own storage URL of that scheme is taken too (the Celery broker's default with it).
    own = {**env, "DAGSTER_PG_URL": env["DATABASE_URL"]}
    assert run(own, "status", "--date", DATE).returncode == 0
    assert run(own, "score", "--date", DATE).returncode == 0


def test_retry_failed_waits_while_another_retry_of_the_night_checks_and_launches(cli_env, clean_db):
    """Two `retry-failed` of one night take turns from the check of what is being scored to the
    backfill's launch: with the night's retry lock held (another retry between its check and
    its launch), the command waits on it, then goes on."""
    run(cli_env, "migrate")
    held = clean_db.connect()
    transaction = held.begin()
    lock_retries(held, dt.date(2026, 1, 2), "all")
    proc = started(cli_env, "retry-failed", "--date", "2026-01-02")
    try:
        deadline = time.monotonic() + 120
        waiting = 0
        while not waiting:
            assert proc.poll() is None, proc.communicate()  # it went on without the lock
            assert time.monotonic() < deadline, "retry-failed never asked for the lock"
            time.sleep(0.2)
            with clean_db.connect() as conn:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                ).scalar_one()
    finally:
        transaction.rollback()
        held.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert out.splitlines()[-1].startswith("2026-01-02 has no night in group all"), out


def test_score_refresh_fetches_the_shared_inputs_again_once_a_command():
    """`score --refresh` over every group: the first group's run fetches the rates and
    recomputes the membership (every group's night is re-scored after it), the later ones only
    their prices; `--group G --refresh` fetches all three, the membership kept if another
    group's night uses it (`active_users`)."""
    from scoring_pipeline.cli.in_process import refresh_plan, snapshot_run_config

    first, later = refresh_plan(True, 2, every_group=True)
    assert snapshot_run_config(first, "us")["ops"] == {
        "active_users": {"config": {"refresh": True, "replace_membership": True}},
        "exchange_rates": {"config": {"refresh": True}},
        "us__prices": {"config": {"refresh": True}},
    }
    assert snapshot_run_config(later, "eu")["ops"] == {"eu__prices": {"config": {"refresh": True}}}
    (one,) = refresh_plan(True, 1, every_group=False)
    assert snapshot_run_config(one, "us")["ops"]["active_users"] == {"config": {"refresh": True}}
    assert refresh_plan(False, 2, every_group=True) == [None, None]
    assert "ops" not in snapshot_run_config(None, "us")


@pytest.fixture
def role_of_15_sessions(clean_db, database_url) -> Iterator[str]:
    """`database_url` for a role that may open 15 sessions (`CONNECTION LIMIT 15`), as on a
    shared server whose operator gave the pipeline a share of `max_connections`."""
    from sqlalchemy.engine import make_url

    role = f"{make_url(database_url).database}_limited"
    with clean_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            sa.text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 15 IN ROLE pg_read_all_data")
        )
    try:
        yield (
            make_url(database_url)
            .set(username=role, password=None)
            .render_as_string(hide_password=False)
        )
    finally:
        with clean_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                ),
                {"r": role},
            )
            conn.execute(sa.text(f"DROP ROLE {role}"))


@pytest.mark.parametrize(
    "command",
    [("services", "--workers", "3", "--port", "{port}"), ("worker", "--concurrency", "3")],
    ids=["services", "worker"],
)
def test_run_workers_the_servers_connections_cannot_serve_are_refused(
    command, role_of_15_sessions, tmp_path
):
    # An operator review at the limits: `services --workers 32` on a role with CONNECTION
    # LIMIT 40 (or 64 on the stock server's max_connections 100) started; each run worker
    # process holds ~5 sessions, so the runs past the limit failed their batches with
    # "FATAL: too many connections for role" and the night crawled for minutes, runs stuck
    # starting. Now refused before anything starts, naming the limit and what fits.
    env = private_deployment_env(role_of_15_sessions, tmp_path / "home", tmp_path / "demo")
    args = [a.format(port=free_port()) for a in command]
    proc = started(env, *args)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # it started: stop what it started
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"{args[0]} started with 3 run workers on 15 sessions: {stdout}")
    finally:
        reap(proc)
    option = args[1]
    fixed = 8 if args[0] == "services" else 1
    assert proc.returncode == 2, (stdout, stderr)
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith(
        f"scoring-pipeline: error: {option} 3 needs up to {15 + fixed} PostgreSQL sessions "
    ), stderr
    assert "CONNECTION LIMIT 15, 0 in use" in stderr, stderr
    if args[0] == "services":
        assert stderr.rstrip().endswith(f"run at most {option} 1, or raise that limit"), stderr
    else:
        assert stderr.rstrip().endswith(f"run at most {option} 2, or raise that limit"), stderr
    assert "Dagster UI" not in stdout


def test_a_write_the_database_refuses_on_every_try_names_its_cause(cli_env, clean_db, tmp_path):
    # An operator review at the limits: with `statement_timeout` (or `lock_timeout`) set on the
    # pipeline's role shorter than a batch's write, every user of the batch read "stage scores:
    # Exceeded max_retries of 3", Dagster's retry policy's words, in `score`'s summary, `status`
    # and the failure sensor's record; the database's error was only on the run's page. Here
    # the database's `lock_timeout` ends the write's wait for the history keys' locks, which
    # another session holds, on each of the step's 4 tries.
    from sqlalchemy.engine import make_url

    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "20", "--out", str(tmp_path / "demo"))
    database = make_url(cli_env["DATABASE_URL"]).database
    ids = [str(i) for i in _scalar(clean_db, "SELECT array_agg(id) FROM users")]
    with clean_db.connect() as blocker:
        blocker.execute(
            sa.text(
                "SELECT pg_advisory_xact_lock(hashtextextended(u, "
                "CAST(:d AS date) - DATE '2000-01-01')) FROM unnest(CAST(:ids AS text[])) u"
            ),
            {"d": DATE, "ids": ids},
        )
        blocker.execute(sa.text(f"ALTER DATABASE {database} SET lock_timeout = '200ms'"))
        blocker.commit()  # ALTER DATABASE is transactional: the locks go with it, taken again
        blocker.execute(
            sa.text(
                "SELECT pg_advisory_xact_lock(hashtextextended(u, "
                "CAST(:d AS date) - DATE '2000-01-01')) FROM unnest(CAST(:ids AS text[])) u"
            ),
            {"d": DATE, "ids": ids},
        )
        try:
            proc = run(cli_env, "score", "--date", DATE, check=False)
        finally:
            blocker.rollback()
            blocker.execute(sa.text(f"ALTER DATABASE {database} RESET lock_timeout"))
            blocker.commit()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert summary_value(proc.stdout, "users failed") == "20"
    expected = re.compile(
        r"stage scores: OperationalError: \(psycopg\.errors\.LockNotAvailable\) canceling "
        r"statement due to lock timeout \(tried 4 times\); the server's lock_timeout for this "
        r"role or database ended the write's wait for another session's lock: see who holds it "
        r"\(pg_locks\), or raise lock_timeout"
    )
    with clean_db.connect() as conn:
        recorded = conn.execute(
            sa.text("SELECT failed_users FROM scoring_batch_results WHERE score_date = :d"),
            {"d": DATE},
        ).scalar_one()
    messages = {u["error"]["message"] for u in recorded}
    assert len(messages) == 1 and expected.fullmatch(messages.pop()), recorded[0]
    assert expected.search(proc.stdout), proc.stdout[-2000:]
    assert "max_retries" not in proc.stdout


def test_a_read_only_database_is_refused_in_one_line_by_the_commands_that_write(
    cli_env, clean_db, tmp_path
):
    # An operator review at the limits: with `default_transaction_read_only` on for the
    # database (a maintenance window, or a URL left on a standby), `score` stopped on its
    # first write with "InternalError: (psycopg2.errors.ReadOnlySqlTransaction) cannot execute
    # INSERT in a read-only transaction [SQL: INSERT INTO snapshots …] [parameters: …]", cut
    # at 500 characters, and `services` printed "Dagster UI on …; daemon and 2 run workers
    # started", then "worker stopped; see their logs under DAGSTER_HOME/service-logs".
    from sqlalchemy.engine import make_url

    run(cli_env, "migrate")
    database = make_url(cli_env["DATABASE_URL"]).database
    with clean_db.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        admin.execute(sa.text(f"ALTER DATABASE {database} SET default_transaction_read_only = on"))
        try:
            refused = {
                command[0]: run(cli_env, *command, check=False)
                for command in (
                    ("score", "--date", DATE),
                    ("services", "--port", str(free_port())),
                    ("demo-data", "--users", "5", "--out", str(tmp_path / "demo")),
                )
            }
            status = run(cli_env, "status", check=False)
            migrate = run(cli_env, "migrate", check=False)  # at its revision: nothing to write
        finally:
            admin.execute(sa.text(f"ALTER DATABASE {database} RESET default_transaction_read_only"))
    for command, proc in refused.items():
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert proc.stderr == (
            f"scoring-pipeline: error: DATABASE_URL: database {database} takes read-only "
            "transactions only (default_transaction_read_only is on for it or for this role): "
            f"reset it (ALTER DATABASE {database} RESET default_transaction_read_only, or ALTER "
            "ROLE)\n"
        ), (command, proc.stderr[-2000:])
    assert status.returncode == 0, status.stderr  # reading still works
    assert migrate.returncode == 0, migrate.stderr
    run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "demo"))  # writable again


def test_a_night_with_no_active_user_has_no_dashboards_to_warm(cli_env, clean_db, tmp_path):
    # An operator review at the limits: a night of 0 active users (the only user's holdings
    # gone) closes `completed` with no batch, and no warm run ever follows it, through the
    # services too; `status` said its dashboards were "not warmed yet", for good.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "1", "--out", str(tmp_path / "demo"))
    with clean_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM portfolio_assets"))
    score = run(cli_env, "score", "--date", DATE)
    assert summary_value(score.stdout, "users total") == "0"
    assert summary_value(score.stdout, "job status") == "completed"
    overview = run(cli_env, "status").stdout.splitlines()
    assert overview[1].startswith(DATE) and overview[1].endswith(
        "  none to warm (no user scored)"
    ), overview
    detail = run(cli_env, "status", "--date", DATE).stdout
    assert summary_value(detail, "dashboards") == "none to warm (no user scored)"
