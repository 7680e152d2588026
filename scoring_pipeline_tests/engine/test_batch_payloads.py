"""Batch scoring's JSON built as text (INPUTS_CAPTURED from shared pieces, SCORES_COMPUTED
reusing each breakdown's text) equals the same payloads built the obvious way, as dicts, for
users with one to three criteria sets, several currencies and missing fundamentals."""

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from scoring_pipeline.engine.batch_inputs import BatchInputs, UserRow
from scoring_pipeline.engine.criteria import CriteriaSet
from scoring_pipeline.engine.json_text import jsonb_key, plain
from scoring_pipeline.engine.payloads import (
    _needed_currencies,
    _used_fields,
    capture_inputs_json,
    results_json,
    results_payload,
    universe_key,
)
from scoring_pipeline.engine.scoring import score_criteria_set
from scoring_pipeline.store.batch_inputs import RunInputs, load_batch_inputs
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import DATE, rules, snapshots

pytestmark = pytest.mark.db


def reference_inputs(
    correlation_id: str, user: UserRow, sets: list[CriteriaSet], inputs: BatchInputs
) -> dict[str, Any]:
    """INPUTS_CAPTURED built the obvious way, as a dict (SPEC §5)."""
    instruments = [i for cs in sets for i in inputs.universes.get(universe_key(cs), [])]
    # Each instrument is in one set's universe: it carries the raw values that set's rules read.
    fields = {
        i.symbol: _used_fields([cs])
        for cs in sets
        for i in inputs.universes.get(universe_key(cs), [])
    }
    prices = []
    for i in instruments:
        row = inputs.prices.get(i.symbol)
        prices.append(
            {
                "symbol": i.symbol,
                "close": plain(i.close),
                "currency": i.currency,
                "priceDate": row.price_date.isoformat() if row and row.price_date else None,
                "source": row.source if row else None,
            }
        )
    rates = [
        {
            "from": "USD",
            "to": r.quote_currency,
            "rate": plain(r.rate),
            "rateDate": r.rate_date.isoformat(),
            "source": r.source,
        }
        for c in sorted(_needed_currencies(sets, inputs, user.base_currency))
        if (r := inputs.rates.get(c)) is not None
    ]
    fundamentals: dict[str, Any] = {}
    for i in instruments:
        if i.symbol in inputs.fundamentals_date:
            entry: dict[str, Any] = {"dataDate": inputs.fundamentals_date[i.symbol].isoformat()}
            for name in fields[i.symbol]:
                value = i.fundamentals.get(name)
                if value is not None:
                    entry[name] = plain(value)
            fundamentals[i.symbol] = entry
    return {
        "correlationId": correlation_id,
        "baseCurrency": user.base_currency,
        "criteria": [
            {
                "criteriaVersionId": cs.criteria_version_id,
                "targetMarket": cs.target_market,
                "assetType": cs.asset_type,
                "version": cs.version,
                "rules": cs.raw_rules,
                "assetIds": [i.symbol for i in inputs.universes.get(universe_key(cs), [])],
            }
            for cs in sets
        ],
        "prices": prices,
        "rates": rates,
        "fundamentals": fundamentals,
        "assetIds": [i.symbol for i in instruments],
    }


def _sets(inputs: BatchInputs, user_id: str) -> list[CriteriaSet]:
    return [c.parse() for c in inputs.criteria[user_id]]


def test_text_payloads_equal_the_obvious_dicts(world, dagster_instance):
    users = [
        f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())]),
        f.user(
            world,
            base_currency="EUR",
            holdings=[("CCC", "EUR")],
            criteria=[
                ("US_TECH", "stock", rules()),
                (
                    "EU_IND",
                    "stock",
                    [f.rule("revenue", "gt", "10", 5), f.rule("pb_ratio", "lt", "3", 2)],
                ),
            ],
        ),
        # A set whose universe is empty beside one that is not: no stray commas in the text.
        f.user(
            world,
            holdings=[("AAA", "USD")],
            criteria=[("US_TECH", "etf", rules()), ("US_TECH", "stock", rules())],
        ),
    ]
    assert snapshots(dagster_instance).success
    day = dt.date.fromisoformat(DATE)
    with world.connect() as conn:
        # Each batch read alone (the reference's inputs), and both batches as one run reads
        # them: one RunInputs, the second batch reusing the first one's universes and text.
        alone = [load_batch_inputs(conn, day, batch) for batch in ("b0000", "b0001")]
        run = RunInputs()
        shared = [load_batch_inputs(conn, day, batch, shared=run) for batch in ("b0000", "b0001")]
    checked = {row.user_id for inputs in alone for row in inputs.users}
    assert checked == set(users)
    assert shared[0].json_pieces is shared[1].json_pieces
    for inputs, in_run, row in (
        (b, r, row) for b, r in zip(alone, shared, strict=True) for row in b.users
    ):
        assert row.user_id in users
        sets = _sets(inputs, row.user_id)
        expected: dict[str, Any] = json.loads(
            json.dumps(reference_inputs("c-1", row, sets, inputs))
        )
        assert json.loads(capture_inputs_json("c-1", row, sets, in_run)) == expected
        captured = json.loads(capture_inputs_json("c-1", row, sets, inputs))
        assert captured == expected
        assert_keys_in_jsonb_order(capture_inputs_json("c-1", row, sets, inputs))
        if row.base_currency == "EUR":
            # CCC (EU_IND) has eps and revenue: only revenue is read by the EU_IND set's rules
            # (eps is read by the user's other set, over other instruments).
            assert set(captured["fundamentals"]["CCC"]) == {"dataDate", "revenue"}
        scores = [
            s
            for cs in sets
            for s in score_criteria_set(
                cs,
                inputs.universes.get(universe_key(cs), []),
                base_currency=row.base_currency,
                usd_rates=inputs.usd_rates,
            ).scores
        ]
        assert json.loads(results_json("c-1", scores)) == json.loads(
            json.dumps(results_payload("c-1", scores))
        )
        assert_keys_in_jsonb_order(results_json("c-1", scores))
        assert Decimal(json.loads(results_json("c-1", scores))["results"][0]["score"])


def assert_keys_in_jsonb_order(text: str) -> None:
    """Every object of the JSON text has its keys in `jsonb`'s order (what makes its input
    cheap), and at least one has several."""
    orders: list[list[str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        orders.append([key for key, _ in items])
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    assert max(len(keys) for keys in orders) > 1
    for keys in orders:
        assert keys == sorted(keys, key=jsonb_key)


def test_jsonb_key_is_the_order_postgresql_keeps(engine):
    """`jsonb_key` sorts keys as the server's `jsonb` stores them: by length in bytes, then by
    bytes (not the collation), whatever the order of the input."""
    keys = ["b", "a", "ab", "B", "é", "zz", "aé", "abc", "dataDate", "earnings", "Z"]
    text = json.dumps({key: n for n, key in enumerate(keys)}, ensure_ascii=False)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT array_agg(k) FROM jsonb_object_keys(CAST(:t AS jsonb)) AS k"),
            {"t": text},
        ).scalar_one()
    assert stored == sorted(keys, key=jsonb_key)
    assert stored != sorted(keys)  # the collation's order would not do
