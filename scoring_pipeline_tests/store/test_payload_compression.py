"""A batch's event payloads on disk: INPUTS_CAPTURED with lz4 where the server was built with it
(pglz where not, as the embedded build), SCORES_COMPUTED with pglz, and each calculation's
events still in order although they are written in two statements."""

import pytest
import sqlalchemy as sa

from scoring_pipeline.store.payload_compression import compress_with, inputs_method
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import EVENT_ORDER, batch, rows, snapshots

pytestmark = pytest.mark.db

INSTRUMENTS = [f"S{i:03d}" for i in range(40)]


def _server_accepts_lz4(engine: sa.Engine) -> bool:
    """Asked of the server directly: does it accept lz4 as a compression method?"""
    with engine.connect() as conn:
        try:
            conn.execute(sa.text("SET LOCAL default_toast_compression = lz4"))
        except sa.exc.DBAPIError:
            return False
        finally:
            conn.rollback()
    return True


@pytest.fixture
def wide_world(clean_db, app_env, tmp_path, monkeypatch):
    """One market of 40 instruments, so that a calculation's INPUTS_CAPTURED and
    SCORES_COMPUTED payloads are large enough (over ~2 KB) for PostgreSQL to compress."""
    f.market(clean_db, "US_TECH")
    for i, symbol in enumerate(INSTRUMENTS):
        f.instrument(
            clean_db, symbol, market="US_TECH", currency="USD", eps=f"{i + 1}", roe=f"{i % 20}"
        )
    env = f.provider_files(
        tmp_path,
        rates={"EUR": "0.5"},
        prices={s: (f"{10 + i}.25", "USD") for i, s in enumerate(INSTRUMENTS)},
    )
    for key, value in {**env, "SCORING_BATCH_SIZE": "3"}.items():
        monkeypatch.setenv(key, value)
    rules = [
        f.rule("pe_ratio", "lt", "15", 10),
        f.rule("roe", "gte", "10", 5),
        f.rule("price", "exists", None, 1),
    ]
    for base in ("USD", "EUR", "USD"):
        f.user(
            clean_db,
            base_currency=base,
            holdings=[("S000", "USD")],
            criteria=[("US_TECH", "stock", rules)],
        )
    return clean_db


def test_inputs_are_lz4_where_the_server_has_it_results_pglz_events_in_order(
    wide_world, dagster_instance
):
    assert snapshots(dagster_instance).success
    assert batch(dagster_instance).success  # its asset checks pass: events in order, per user

    expected_inputs = "lz4" if _server_accepts_lz4(wide_world) else "pglz"
    with wide_world.connect() as conn:
        assert inputs_method(conn) == expected_inputs
    stored = rows(
        wide_world,
        "SELECT event_type, pg_column_compression(payload) AS method, count(*) AS n "
        "FROM calculation_events WHERE user_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
    )
    by_type = {r.event_type: (r.method, r.n) for r in stored}
    assert by_type["INPUTS_CAPTURED"] == (expected_inputs, 3)
    assert by_type["SCORES_COMPUTED"] == ("pglz", 3)
    # The small events are stored as they are, whichever the session's method.
    assert by_type["CALC_STARTED"] == (None, 3)
    assert by_type["CALC_COMPLETED"] == (None, 3)
    assert len(stored) == 4

    # Each calculation's events, by id, in the SPEC's order, though the batch's captured events
    # (every calculation's first two) were written before any calculation's last two.
    sequences = rows(
        wide_world,
        "SELECT correlation_id, array_agg(event_type ORDER BY id) AS events "
        "FROM calculation_events WHERE user_id IS NOT NULL GROUP BY 1",
    )
    assert [list(r.events) for r in sequences] == [EVENT_ORDER] * 3

    # The compression was set for the write's own transaction only: a new one has the default.
    with wide_world.connect() as conn:
        default = conn.execute(sa.text("SHOW default_toast_compression")).scalar_one()
        server_default = conn.execute(
            sa.text("SELECT reset_val FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar_one()
    assert default == server_default


def test_compress_with_takes_only_known_methods(clean_db):
    with clean_db.connect() as conn, pytest.raises(ValueError, match="unknown compression"):
        compress_with(conn, "pglz; DROP TABLE users")
