"""The commands on the application database, on the side of its password: `db-url` prints it
only when asked for, wherever the URL holds it."""

import pytest
import sqlalchemy as sa

from scoring_pipeline_tests.cli_helpers import run

pytestmark = pytest.mark.db

PASSWORD = "queryPW-3f9c21"


def test_db_url_hides_a_password_given_in_the_query_too(cli_env, clean_db):
    # libpq's other place for the password, `?password=…`, which SQLAlchemy passes on to the
    # driver: the URL works (`status` connects with it), and `db-url` (and `--dagster`) printed
    # it as it was, where `postgresql://user:***@…` promises it hidden.
    url = sa.make_url(cli_env["DATABASE_URL"]).update_query_dict({"password": PASSWORD})
    env = {**cli_env, "DATABASE_URL": url.render_as_string(hide_password=False)}
    assert run(env, "status").returncode == 0

    for args in (["db-url"], ["db-url", "--dagster"]):
        shown = run(env, *args).stdout
        assert shown.count("\n") == 1 and "password=***" in shown, shown
        assert PASSWORD not in shown, shown
        # Asked for, it is printed as given (the README's `export DAGSTER_PG_URL=$(…)`).
        assert f"password={PASSWORD}" in run(env, *args, "--show-password").stdout


def test_a_password_with_an_unencoded_at_sign_is_refused_without_showing_it(cli_env, clean_db):
    # `postgresql://postgres:ab@cd-…@127.0.0.1/db`: SQLAlchemy ends the password at the first
    # '@' and took "cd-…@127.0.0.1" for the host, so `db-url` printed the password's tail
    # ("postgres:***@cd-…@127.0.0.1") and so did every command that connects, in "failed to
    # resolve host 'cd-…@127.0.0.1'" (DAGSTER_PG_URL's check as well).
    tail = "atPW-91d0e4"
    # A placeholder password swapped for the bad one: the embedded server's URL has one of its
    # own (`URL.set(password=None)` keeps it) and no host before its path (`?host=` a socket).
    given = sa.make_url(cli_env["DATABASE_URL"]).set(password="placeholder")
    user = given.username
    bad = given.render_as_string(hide_password=False).replace(":placeholder@", f":ab@{tail}@", 1)
    assert f"://{user}:ab@{tail}@" in bad
    for variable, commands in (
        ("DATABASE_URL", (["db-url"], ["db-url", "--dagster"], ["status"], ["migrate"])),
        ("DAGSTER_PG_URL", (["prune", "--before", "2026-01-01"],)),
    ):
        for command in commands:
            proc = run({**cli_env, variable: bad}, *command, check=False)
            assert proc.returncode == 2 and proc.stdout == "", proc.stdout
            assert proc.stderr == (
                f"scoring-pipeline: error: {variable} has an '@' in its password or user name: "
                "percent-encode it as %40 (the value is not shown)\n"
            ), proc.stderr
    # Percent-encoded, it is a password like any other.
    encoded = given.set(password=f"ab@{tail}").render_as_string(hide_password=False)
    assert f":ab%40{tail}@" in encoded
    assert run({**cli_env, "DATABASE_URL": encoded}, "status").returncode == 0
    shown = run({**cli_env, "DATABASE_URL": encoded}, "db-url").stdout
    assert tail not in shown and f"{user}:***@" in shown


def test_db_url_dagster_prints_the_dagster_pg_url_the_operator_set(cli_env, clean_db):
    # `db-url --dagster` printed the storage URL derived from DATABASE_URL even when the
    # operator had set DAGSTER_PG_URL elsewhere (the README exports what it prints for the
    # `dagster` CLI, which would then use the wrong database).
    storage = sa.make_url(cli_env["DATABASE_URL"]).set(database="elsewhere_db")
    given = storage.set(drivername="postgresql").render_as_string(hide_password=False)
    env = {**cli_env, "DAGSTER_PG_URL": given}
    shown = sa.make_url(run(env, "db-url", "--dagster", "--show-password").stdout.strip())
    assert shown.database == "elsewhere_db" and shown.drivername == "postgresql+psycopg2", shown
    # Unset, it is DATABASE_URL's database, as before.
    default = sa.make_url(run(cli_env, "db-url", "--dagster", "--show-password").stdout.strip())
    assert default.database == sa.make_url(cli_env["DATABASE_URL"]).database
