"""The commands that take long or touch much data, as an operator runs them: stopped half-way,
run twice at once, and what they say while they work."""

import datetime as dt
import select
import signal
import time
from dataclasses import replace

import sqlalchemy as sa

from scoring_pipeline.cli.in_process import NightSummary, earlier_night_line
from scoring_pipeline.runtime.services import private_deployment_env
from scoring_pipeline.store.db import current_revision, head_revision
from scoring_pipeline.store.month_partitions import drop, ensure_partitions, prunable
from scoring_pipeline.store.night.model import NightStatus, find_night
from scoring_pipeline_tests.cli_helpers import reap, run, started

SESSION = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"


def _scalar(engine: sa.Engine, sql: str, **params: object) -> object:
    # A new connection each look: pg_stat_activity keeps one snapshot a transaction.
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def _wait_until(engine: sa.Engine, proc, sql: str, **params: object) -> None:
    deadline = time.monotonic() + 120
    while not _scalar(engine, sql, **params):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got there"
        time.sleep(0.05)


def _line_within(proc, seconds: float) -> str:
    """The command's next line of stdout, or "" when it says nothing for that long."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return proc.stdout.readline() if ready else ""


def test_migrate_stopped_with_sigterm_leaves_no_statement_running_on_the_server(
    fresh_engine, tmp_path
):
    # A supervisor's SIGTERM (`timeout`, systemd, a deploy job cancelled) killed `migrate` at
    # once: its statement went on in the server, holding the migrations' lock and the tables'
    # locks until it ended, so the next `migrate` (and the night's writes) waited on a session
    # nobody owned. Now SIGTERM is Ctrl-C: the statement is cancelled, everything rolled back.
    url = fresh_engine.url.render_as_string(hide_password=False)
    env = private_deployment_env(url, tmp_path / "dagster_home", tmp_path / "demo")
    run(env, "migrate", "--revision", "0010")
    blocker = fresh_engine.connect()
    held = blocker.begin()
    blocker.execute(sa.text("LOCK TABLE score_metric_values IN ACCESS SHARE MODE"))
    proc = started(env, "migrate")
    name = f"scoring-pipeline:{proc.pid}"
    try:
        # Migration 0011 waits on the table the other session holds: a long statement.
        _wait_until(fresh_engine, proc, f"{SESSION} AND wait_event_type = 'Lock'", name=name)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert stderr.strip() == "scoring-pipeline: interrupted", stderr
        # Its session ended with it: nothing of it waits or holds the migrations' lock.
        assert _scalar(fresh_engine, SESSION, name=name) == 0
    finally:
        held.rollback()
        blocker.close()
        reap(proc)
    assert current_revision(fresh_engine) == "0010"  # rolled back whole
    run(env, "migrate")
    assert current_revision(fresh_engine) == head_revision()


def test_migrate_says_whom_it_waits_for_then_each_migration_as_it_runs(fresh_engine, tmp_path):
    # `migrate` said nothing until it had finished: a second one waiting on the first (a deploy
    # script and an operator), or an upgrade of a database holding months of data, looked hung.
    url = fresh_engine.url.render_as_string(hide_password=False)
    env = private_deployment_env(url, tmp_path / "dagster_home", tmp_path / "demo")
    run(env, "migrate", "--revision", "0009")
    other = fresh_engine.connect()
    held = other.begin()
    other.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('scoring:migrations'))"))
    holder = other.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    proc = started(env, "migrate")
    try:
        _wait_until(
            fresh_engine,
            proc,
            f"{SESSION} AND wait_event_type = 'Lock'",
            name=f"scoring-pipeline:{proc.pid}",
        )
        waiting = _line_within(proc, 30)
        assert waiting.startswith(f"waiting for session {holder} (scoring-pipeline:"), waiting
        assert "which holds the migrations' lock (another `migrate`)" in waiting
        held.rollback()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if held.is_active:
            held.rollback()
        other.close()
        reap(proc)
    assert proc.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == (
        "migrating the database from 0009: 2 migrations, in one transaction (stopped before "
        "the end, it stays at 0009)"
    )
    assert lines[1].startswith("  0010 ") and lines[1].endswith("…")
    assert lines[2].startswith("  0010 done in ") and lines[2].endswith(" s")
    assert lines[3].startswith("  0011 ") and lines[4].startswith("  0011 done in ")
    assert lines[5].startswith(f"database at revision {head_revision()} (2 migrations in ")
    assert len(lines) == 6
    # Nothing left to do: one line, as before.
    assert run(env, "migrate").stdout == f"database at revision {head_revision()}\n"


def test_scores_summary_says_how_many_failed_users_it_does_not_list():
    # `score` stopped a third of the way into a 20,000-user night listed 20 failed users and
    # said nothing of the other 13,830 (`status` did: "… and 13830 more").
    failures = [
        {"userId": f"u{i}", "batch": "b0123", "stage": "batch", "error": {"message": "interrupted"}}
        for i in range(20)
    ]
    night = NightSummary(
        score_date=dt.date(2026, 11, 15),
        status="partial",
        users_total=20_000,
        users_success=6_150,
        users_failed=13_850,
        failed_users=failures,
    )
    lines = night.lines()
    assert sum(line.startswith("  failed user ") for line in lines) == 20
    assert lines[-1] == (
        "  … and 13,830 more failed users (`scoring-pipeline status --date 2026-11-15`)"
    )
    grouped = replace(night, market_group="us", users_failed=21, failed_users=failures)
    assert grouped.lines()[-1] == (
        "  … and 1 more failed users (`scoring-pipeline status --date 2026-11-15 --group us`)"
    )
    assert replace(night, users_failed=20).lines()[-1].startswith("  failed user u19 ")


def test_demo_data_says_what_it_is_doing_before_it_is_done(cli_env, tmp_path):
    # demo-data of 20,000 users said nothing for 20 s (50,000: about a minute), then one line.
    run(cli_env, "migrate")
    lines = run(cli_env, "demo-data", "--users", "5", "--out", str(tmp_path / "d")).stdout
    first, writing, done = lines.splitlines()
    assert first == (
        "demo data: replacing the users, criteria sets, portfolios, instruments and markets with "
        "5 users (one transaction: stopped before the end, nothing is replaced)…"
    )
    assert writing.startswith("  writing 5 users, ") and " holdings…" in writing, writing
    assert done.startswith("demo data: 5 users, "), done


def test_a_second_prune_at_once_waits_then_plans_from_what_the_first_left(
    cli_env, clean_db, tmp_path
):
    # Two `prune --before 2026-12-01 --yes` at once on a 20,000-user database: both planned the
    # same months, and the second, once the first had committed, failed with "ProgrammingError:
    # (psycopg.errors.UndefinedTable) relation "score_metric_values_2026_10" does not exist".
    run(cli_env, "migrate")
    with clean_db.begin() as conn:
        ensure_partitions(conn, dt.date(2025, 6, 12))  # June and July 2025
    other = clean_db.connect()
    first = other.begin()  # another prune, between its plan and its commit
    other.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('scoring:prune'))"))
    doomed, _ = prunable(other, dt.date(2025, 8, 1))
    assert len(doomed) == 6
    drop(other, doomed)
    proc = started(cli_env, "prune", "--before", "2025-08-01", "--yes")
    try:
        _wait_until(
            clean_db,
            proc,
            f"{SESSION} AND wait_event_type = 'Lock'",
            name=f"scoring-pipeline:{proc.pid}",
        )
        waiting = _line_within(proc, 30)
        assert waiting.startswith("waiting for session "), waiting
        assert "which holds the prune lock (another `prune`)" in waiting
        first.commit()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if first.is_active:
            first.rollback()
        other.close()
        reap(proc)
    assert proc.returncode == 0, stderr
    assert "nothing to prune: no month partition holds only days before 2025-08-01" in stdout


def test_score_again_says_what_it_found_of_the_dates_night(cli_env, clean_db, tmp_path):
    # `score --date D` after a night stopped a third of the way (20,000 users, 277 of 400
    # batches failed) began "freezing the inputs of D…" and re-scored all 400 batches without a
    # word of the night it found, nor that `retry-failed` re-scores only the failed ones.
    run(cli_env, "migrate")
    run(cli_env, "demo-data", "--users", "30", "--out", str(tmp_path / "demo"))
    env = {**cli_env, "SCORING_BATCH_SIZE": "20"}  # 2 batches
    date = "2026-11-27"
    first = run(env, "score", "--date", date).stdout
    assert first.startswith(f"freezing the inputs of {date} "), first
    again = run(env, "score", "--date", date).stdout.splitlines()
    assert again[0].startswith(f"found the night of {date} (all), started "), again[0]
    assert again[0].endswith(
        ": completed, 30 of 30 users scored, 0 of 2 batches failed; scoring every batch again"
    ), again[0]
    assert again[1].startswith(f"freezing the inputs of {date} ")

    with clean_db.connect() as conn:
        night = find_night(conn, dt.date.fromisoformat(date))
    assert night is not None
    partial = replace(
        night,
        status=NightStatus.PARTIAL,
        market_group="us",
        metrics={**night.metrics, "users_success": 6_150, "users_total": 20_000}
        | {"batches_failed": 277, "batches_total": 400},
    )
    assert earlier_night_line(partial).endswith(
        ": partial, 6,150 of 20,000 users scored, 277 of 400 batches failed; scoring every "
        f"batch again (`scoring-pipeline retry-failed --date {date} --group us` re-scores only "
        "the failed ones, through the services)"
    )
    unclosed = replace(partial, status=NightStatus.STARTED)
    assert earlier_night_line(unclosed).endswith(
        ": not closed, 6,150 of 20,000 users scored so far; scoring it again"
    )


def test_prune_of_one_month_partition_says_it_in_the_singular(cli_env, clean_db):
    # `prune --before 2026-11-20` on the scale review's database: "1 month partitions hold only
    # days before 2026-11-20:".
    run(cli_env, "migrate")
    with clean_db.begin() as conn:
        ensure_partitions(conn, dt.date(2025, 6, 12))  # June and July 2025
        doomed, _ = prunable(conn, dt.date(2025, 8, 1))
        drop(conn, [p for p in doomed if p.name != "score_history_2025_06"])
    listed = run(cli_env, "prune", "--before", "2025-08-01").stdout
    assert "\n1 month partition holds only days before 2025-08-01:\n" in f"\n{listed}", listed
    assert "  in all" not in listed  # one month: its own line is the total
