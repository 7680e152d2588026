"""Stored scores equal an independent implementation of SPEC §4, on a generated universe.

The benchmark's data generator builds 100 users over 3 markets (100 instruments each) in 3
currencies with 12-rule criteria sets. The night is materialised through the real assets and
IO manager, onto PostgreSQL, as one run of all its batches (the night sensor's runs: the batches
of a run share the universes, metrics and INPUTS_CAPTURED text they read). Every stored
`asset_scores` row is then recomputed from the batch's frozen inputs, read for that batch alone,
by the test suite's literal reference implementation (`test_scoring.ref_score_set`), and
compared field by field:
- the score, the max and the percentage, as text, so 10 and 10.0000 differ;
- the whole breakdown read back from JSONB.
"""

import datetime as dt
from collections import defaultdict

import pytest

from scoring_pipeline.cli.demo_data.load import generate
from scoring_pipeline.engine.payloads import universe_key
from scoring_pipeline.store.batch_inputs import load_batch_inputs
from scoring_pipeline_tests.reference import ref_score_set
from scoring_pipeline_tests.scenario import DATE, batches, forget_night_keys, rows, snapshots

pytestmark = pytest.mark.db


def test_every_stored_score_equals_the_reference(
    clean_db, app_env, dagster_instance, tmp_path, monkeypatch
):
    day = dt.date.fromisoformat(DATE)
    with clean_db.begin() as conn:
        generate(
            conn,
            users=100,
            seed=11,
            out_dir=tmp_path,
            instruments_per_market=100,
            rules_per_set=12,
            today=day,
        )
    for key, value in {
        "RATES_PROVIDER": "file",
        "RATES_FILE": str(tmp_path / "rates.json"),
        "PRICES_PROVIDER": "file",
        "PRICES_FILE": str(tmp_path / "prices.csv"),
        "SCORING_BATCH_SIZE": "50",
    }.items():
        monkeypatch.setenv(key, value)
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    keys = [
        r.batch_key
        for r in rows(clean_db, "SELECT DISTINCT batch_key FROM scoring_batches ORDER BY batch_key")
    ]
    assert len(keys) >= 2
    result = batches(dagster_instance, keys[0], keys[-1])
    assert result.success
    assert len(result.get_asset_materialization_events()) == len(keys)

    stored: dict[tuple[str, str, str], tuple[str, str, str, list[dict]]] = {}
    for r in rows(
        clean_db,
        "SELECT user_id::text AS u, symbol, criteria_version_id::text AS cv, score::text AS s, "
        "max_possible_score::text AS m, percentage::text AS p, breakdown "
        "FROM asset_scores "
        "JOIN asset_score_breakdowns USING (user_id, symbol, criteria_version_id)",
    ):
        stored[(r.u, r.cv, r.symbol)] = (r.s, r.m, str(r.p), r.breakdown)
    # The date's history rebuilds the very same breakdowns (SPEC §4: any past date).
    history = {
        (r.u, r.cv, r.symbol): r.breakdown
        for r in rows(
            clean_db,
            "SELECT user_id::text AS u, symbol, criteria_version_id::text AS cv, breakdown "
            "FROM score_history_breakdowns",
        )
    }
    assert history == {k: v[3] for k, v in stored.items()}
    expected = {}
    per_user: dict[str, int] = defaultdict(int)
    with clean_db.connect() as conn:
        for key in keys:
            inputs = load_batch_inputs(conn, day, key)
            usd_rates = inputs.usd_rates
            for user in inputs.users:
                for c in inputs.criteria.get(user.user_id, []):
                    criteria_set = c.parse()
                    universe = inputs.universes.get(universe_key(criteria_set), [])
                    for s in ref_score_set(
                        criteria_set, universe, user.base_currency, usd_rates
                    ).scores:
                        expected[(user.user_id, s.criteria_version_id, s.symbol)] = (
                            str(s.score),
                            str(s.max_possible_score),
                            str(s.percentage),
                            s.breakdown,
                        )
                        per_user[user.user_id] += 1
    assert len(per_user) >= 90 and len(expected) > 5_000
    assert stored.keys() == expected.keys()
    mismatched = [k for k in expected if stored[k] != expected[k]]
    assert mismatched == [], [(k, stored[k], expected[k]) for k in mismatched[:3]]
