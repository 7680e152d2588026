"""A batch's write of the night's metric values: rows already stored with the same values are
neither rewritten nor locked (every batch of a night shows mostly the same ones), a differing
value (a refreshed snapshot) is updated, a new one inserted."""

import datetime as dt

import pytest
import sqlalchemy as sa

from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.store.metric_values import write_metric_values
from scoring_pipeline.store.month_partitions import ensure_partitions

pytestmark = pytest.mark.db

DAY = dt.date(2026, 11, 27)


def _output(values: dict[tuple[str, str], str]) -> BatchOutput:
    return BatchOutput(
        score_date=DAY,
        batch_key="b0000",
        job_correlation_id="j",
        calculated_at=dt.datetime(2026, 11, 27, 4, tzinfo=dt.UTC),
        users=[],
        users_skipped=[],
        metric_values=values,
    )


def _stored(engine: sa.Engine) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(symbol, base) -> (values as text, xmin, xmax) of each stored row."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT symbol, base_currency, metric_values::text AS v, xmin::text AS xmin, "
                "xmax::text AS xmax FROM score_metric_values WHERE score_date = :d"
            ),
            {"d": DAY},
        ).all()
    return {(r.symbol, r.base_currency): (r.v, r.xmin, r.xmax) for r in rows}


def test_metric_values_written_once_and_updated_only_when_they_differ(clean_db):
    with clean_db.begin() as conn:
        ensure_partitions(conn, DAY)
    first = {
        ("AAA", "USD"): '{"price":"10.50","pe_ratio":"7"}',
        ("AAA", "EUR"): '{"price":"10.50","pe_ratio":"7"}',
    }
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(first)) == 2
    stored = _stored(clean_db)

    # The next batch shows the same values, in another key order of the JSON: nothing is
    # written, and the stored rows are not even locked (no new xmax).
    same = {k: '{"pe_ratio":"7","price":"10.50"}' for k in first}
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(same)) == 0
    assert _stored(clean_db) == stored
    assert all(xmax == "0" for _, _, xmax in stored.values())

    # A refreshed snapshot: the differing row is updated, a new pair inserted, the rest kept.
    changed = {
        ("AAA", "USD"): '{"price":"11.00","pe_ratio":"7"}',
        ("AAA", "EUR"): first[("AAA", "EUR")],
        ("BBB", "USD"): '{"price":"3"}',
    }
    with clean_db.begin() as conn:
        assert write_metric_values(conn, _output(changed)) == 2
    after = _stored(clean_db)
    assert after[("AAA", "EUR")] == stored[("AAA", "EUR")]
    assert after[("AAA", "USD")][0] == '{"price": "11.00", "pe_ratio": "7"}'
    assert after[("BBB", "USD")][0] == '{"price": "3"}'
