"""The commands that take long or touch much data, as an operator runs them: stopped half-way,
run twice at once, and what they say while they work."""

import signal
import time

import sqlalchemy as sa

from scoring_pipeline.runtime.services import private_deployment_env
from scoring_pipeline.store.db import current_revision, head_revision
from scoring_pipeline_tests.cli_helpers import run, started

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
        if proc.poll() is None:
            proc.kill()
    assert current_revision(fresh_engine) == "0010"  # rolled back whole
    run(env, "migrate")
    assert current_revision(fresh_engine) == head_revision()
