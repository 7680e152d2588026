"""The embedded PostgreSQL server: started fresh, it runs with the settings a night needs."""

import sqlalchemy as sa

from scoring_pipeline.store import db


def test_a_fresh_embedded_server_runs_with_the_night_settings(private_server):
    data_dir, url = private_server
    engine = db.create_engine_for(url)
    try:
        with engine.connect() as conn:
            shown = {n: conn.execute(sa.text(f"SHOW {n}")).scalar() for n in db.EMBEDDED_SETTINGS}
        assert shown == db.EMBEDDED_SETTINGS  # the restart-only ones too: it was restarted
        # Attaching again (another process of the night) changes nothing and keeps it running.
        assert db.start_embedded_server(data_dir, keep_running=False) == url
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
