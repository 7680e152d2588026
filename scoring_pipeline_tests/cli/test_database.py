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
