"""A night's metric texts (the `actualValue`s of the compact storage form) computed once per run
worker process and reused by its later batches are exactly what each batch would compute: equal
Decimals that print differently (15.0 and 15.00, a rate of 0.9 and 0.90) never share a text."""

import json
from decimal import Decimal
from types import SimpleNamespace

from scoring_pipeline.engine import batch
from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.engine.metrics import InstrumentData, metric_texts


def _batch(instrument: InstrumentData, usd_rates: dict[str, Decimal]) -> dict[tuple[str, str], str]:
    inputs = SimpleNamespace(universes={("US", "stock"): [instrument]}, usd_rates=usd_rates)
    users = [
        SimpleNamespace(base_currency=base, universes=[("US", "stock")]) for base in ("USD", "EUR")
    ]
    return batch.batch_metric_values(inputs, users)  # type: ignore[arg-type]


def _computed(instrument: InstrumentData, base: str, usd_rates: dict[str, Decimal]) -> str:
    texts = metric_texts(instrument, base_currency=base, usd_rates=usd_rates)
    return dumps(dict(sorted(texts.items())))


def test_later_batches_get_exactly_their_own_metric_texts() -> None:
    batch._METRIC_TEXTS.clear()
    nights = [  # (roe as stored, the snapshot's USD->EUR rate), batch after batch
        ("15.0", "0.9"),
        ("15.00", "0.9"),
        ("15.0", "0.90"),
        ("15.0", "0.9"),
    ]
    for roe, eur in nights:
        instrument = InstrumentData(
            "AAA",
            "USD",
            Decimal("20.0"),
            {"roe": Decimal(roe), "eps": Decimal("2"), "shares_outstanding": Decimal("1000")},
        )
        usd_rates = {"EUR": Decimal(eur)}
        values = _batch(instrument, usd_rates)
        for base in ("USD", "EUR"):
            assert values[("AAA", base)] == _computed(instrument, base, usd_rates)
        assert json.loads(values[("AAA", "USD")])["roe"] == roe
        assert json.loads(values[("AAA", "EUR")])["market_cap"] == str(
            Decimal("20.0") * Decimal("1000") * Decimal(eur)
        )
    # Kept: roe 15.0 and 15.00 for USD users (the EUR rate is not theirs), and for EUR users
    # roe 15.0 at 0.9, 15.00 at 0.9, 15.0 at 0.90; the fourth batch reused the first's.
    assert len(batch._METRIC_TEXTS) == 5


def test_the_kept_texts_are_bounded(monkeypatch) -> None:
    batch._METRIC_TEXTS.clear()
    monkeypatch.setattr(batch, "METRIC_TEXTS_KEPT", 3)
    for n in range(10):
        instrument = InstrumentData("AAA", "USD", Decimal(n + 1), {})
        _batch(instrument, {"EUR": Decimal("0.9")})
        assert len(batch._METRIC_TEXTS) <= 3 + 2
