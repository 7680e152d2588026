"""The calculation events' payloads as JSON text (SPEC §5): INPUTS_CAPTURED, built from pieces
shared by a batch's users, and SCORES_COMPUTED with each breakdown in its compact form."""

from collections.abc import Iterable
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

from scoring_pipeline.engine.batch_inputs import BatchInputs, UserRow
from scoring_pipeline.engine.criteria import CONVERTED_METRICS, FUNDAMENTAL_FIELDS, CriteriaSet
from scoring_pipeline.engine.json_text import dumps, jsonb_key, plain
from scoring_pipeline.engine.metrics import InstrumentData
from scoring_pipeline.engine.scoring import AssetScore

# Which raw fundamentals each metric reads: INPUTS_CAPTURED keeps exactly those.
METRIC_FIELDS: dict[str, tuple[str, ...]] = {
    "price": (),
    "pe_ratio": ("eps",),
    "pb_ratio": ("book_value_per_share",),
    "dividend_yield": ("dividends_per_share",),
    "market_cap": ("shares_outstanding",),
    **{name: (name,) for name in FUNDAMENTAL_FIELDS},
}


def _used_fields(sets: list[CriteriaSet]) -> list[str]:
    names: set[str] = set()
    for cs in sets:
        for rule in cs.rules:
            for metric in (rule.metric, *rule.required):
                names.update(METRIC_FIELDS.get(metric, ()))
    return sorted(names)


def _needed_currencies(sets: list[CriteriaSet], inputs: BatchInputs, base: str) -> set[str]:
    needed = {base}
    for cs in sets:
        if any(m in CONVERTED_METRICS for rule in cs.rules for m in (rule.metric, *rule.required)):
            needed.update(_currencies(inputs, universe_key(cs)))
    return needed


def _currencies(inputs: BatchInputs, key: tuple[str, str]) -> frozenset[str]:
    """The currencies of a universe's instruments, once per run."""
    cache_key = ("currencies", key)
    found: frozenset[str] | None = inputs.json_pieces.get(cache_key)
    if found is None:
        universe = inputs.universes.get(key, [])
        found = inputs.json_pieces[cache_key] = frozenset(i.currency for i in universe)
    return found


def universe_key(cs: CriteriaSet) -> tuple[str, str]:
    return (cs.target_market, cs.asset_type)


def _price_piece(inputs: BatchInputs, i: InstrumentData) -> str:
    key = ("price", i.symbol)
    piece: str | None = inputs.json_pieces.get(key)
    if piece is None:
        row = inputs.prices.get(i.symbol)
        piece = inputs.json_pieces[key] = dumps(
            {  # keys in `jsonb`'s order, as in every calculation event (`jsonb_key`)
                "close": plain(i.close),
                "source": row.source if row else None,
                "symbol": i.symbol,
                "currency": i.currency,
                "priceDate": row.price_date.isoformat() if row and row.price_date else None,
            }
        )
    return piece


# An instrument's captured fundamentals: its data date and the raw values (SPEC §5).
_CAPTURED_FIELDS = (*FUNDAMENTAL_FIELDS, "dataDate")
_FIELD_POSITION = {name: n for n, name in enumerate(_CAPTURED_FIELDS)}


class _Fundamentals(NamedTuple):
    """A universe's instruments that have fundamentals, in `jsonb`'s order of their symbols:
    each one's sort key and `"SYMBOL":{` head, and per name of _CAPTURED_FIELDS a column of
    `,"name":"value"` texts (JSON), "" where the instrument has no value for it."""

    keys: tuple[tuple[int, bytes], ...]
    heads: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]


def _fundamentals(inputs: BatchInputs, universe: list[InstrumentData]) -> _Fundamentals:
    rows = []
    dates = inputs.fundamentals_date
    for i in universe:
        if i.symbol not in dates:
            continue
        values = i.fundamentals
        pieces = tuple(
            "" if (value := values.get(name)) is None else f',"{name}":"{plain(value)}"'
            for name in FUNDAMENTAL_FIELDS
        )
        date = f',"dataDate":"{dates[i.symbol]}"'
        rows.append((jsonb_key(i.symbol), f"{dumps(i.symbol)}:{{", (*pieces, date)))
    rows.sort(key=itemgetter(0))  # symbols are unique
    return _Fundamentals(
        keys=tuple(key for key, _, _ in rows),
        heads=tuple(head for _, head, _ in rows),
        columns=tuple(zip(*(pieces for _, _, pieces in rows), strict=True))
        if rows
        else tuple(() for _ in _CAPTURED_FIELDS),
    )


def _members(found: _Fundamentals, fields: tuple[str, ...]) -> list[str]:
    """Each instrument's `"SYMBOL":{…}` member with `fields` and its data date, keys in
    `jsonb`'s order (the data date is never missing, so every object has a member)."""
    positions = [_FIELD_POSITION[name] for name in sorted({*fields, "dataDate"}, key=jsonb_key)]
    bodies = map("".join, zip(*(found.columns[p] for p in positions), strict=True))
    return [f"{head}{body[1:]}}}" for head, body in zip(found.heads, bodies, strict=True)]


class _UniverseText(NamedTuple):
    """One universe's part of INPUTS_CAPTURED, as JSON text without the enclosing brackets."""

    prices: str  # price entries, comma-separated
    symbols: str  # the symbols as JSON strings, comma-separated
    # `"SYMBOL":{…}` members with the given fields, in `jsonb`'s key order: comma-separated, and
    # each with its symbol's sort key (to merge the universes of a user's sets).
    fundamentals: str
    members: tuple[tuple[tuple[int, bytes], str], ...]


def _universe_text(
    inputs: BatchInputs, key: tuple[str, str], fields: tuple[str, ...]
) -> _UniverseText:
    """Built once per run for each universe and set of captured fields: the batches' users
    share universes, so a user's INPUTS_CAPTURED is a join of a few of these. The prices,
    symbols and each instrument's fundamentals text depend on the universe alone and are built
    once per universe."""
    cache_key = ("universe", key, fields)
    found: _UniverseText | None = inputs.json_pieces.get(cache_key)
    if found is None:
        shared_key = ("universe", key)
        shared: tuple[str, str, _Fundamentals] | None = inputs.json_pieces.get(shared_key)
        if shared is None:
            universe = inputs.universes.get(key, [])
            shared = inputs.json_pieces[shared_key] = (
                ",".join(_price_piece(inputs, i) for i in universe),
                ",".join(dumps(i.symbol) for i in universe),
                _fundamentals(inputs, universe),
            )
        members = _members(shared[2], fields)
        found = inputs.json_pieces[cache_key] = _UniverseText(
            prices=shared[0],
            symbols=shared[1],
            fundamentals=",".join(members),
            members=tuple(zip(shared[2].keys, members, strict=True)),
        )
    return found


def _joined(parts: Iterable[str]) -> str:
    return ",".join(p for p in parts if p)


def capture_inputs_json(
    correlation_id: str, user: UserRow, sets: list[CriteriaSet], inputs: BatchInputs
) -> str:
    """INPUTS_CAPTURED as JSON text: enough to recompute SCORES_COMPUTED exactly.

    Built from text shared by the batch's users (a universe's prices and fundamentals are the
    same text whoever's calculation captures them); equal once parsed to the straightforward
    dict in the tests' reference.
    """
    # A criteria set's universe is its own (one market and asset type): its instruments carry
    # the raw values that set's rules read, not those of the user's other sets.
    texts = [_universe_text(inputs, universe_key(cs), tuple(_used_fields([cs]))) for cs in sets]
    rates = [
        {
            "to": r.quote_currency,
            "from": "USD",
            "rate": plain(r.rate),
            "source": r.source,
            "rateDate": r.rate_date.isoformat(),
        }
        for c in sorted(_needed_currencies(sets, inputs, user.base_currency))
        if (r := inputs.rates.get(c)) is not None
    ]
    # Every object's keys in `jsonb`'s order (see `jsonb_key`).
    criteria = ",".join(
        f'{{"rules":{dumps(cs.raw_rules)},"version":{dumps(cs.version)},'
        f'"assetIds":[{text.symbols}],"assetType":{dumps(cs.asset_type)},'
        f'"targetMarket":{dumps(cs.target_market)},'
        f'"criteriaVersionId":{dumps(cs.criteria_version_id)}}}'
        for cs, text in zip(sets, texts, strict=True)
    )
    if len(texts) == 1:
        fundamentals = texts[0].fundamentals
    else:  # the sets' universes merged (sorted runs: a merge, for Python's sort)
        fundamentals = ",".join(text for _, text in sorted(chain(*(t.members for t in texts))))
    return (
        f'{{"rates":{dumps(rates)},"prices":[{_joined(t.prices for t in texts)}],'
        f'"assetIds":[{_joined(t.symbols for t in texts)}],"criteria":[{criteria}],'
        f'"baseCurrency":{dumps(user.base_currency)},"fundamentals":{{{fundamentals}}},'
        f'"correlationId":"{correlation_id}"}}'
    )


@lru_cache(maxsize=65536)
def _symbol_json(symbol: str) -> str:
    return dumps(symbol)


def results_json(correlation_id: str, scores: list[AssetScore]) -> str:
    """SCORES_COMPUTED as JSON text, each result's `breakdown` in its compact form (the rules'
    outcomes, SPEC §5; equal to `results_payload`): the canonical one is rebuilt from it and
    INPUTS_CAPTURED (replay)."""
    # `{"score":…,"assetId":…,"breakdown":…,"percentage":…,"maxPossibleScore":…,
    # "criteriaVersionId":…}`: keys in `jsonb`'s order, the score's and the criteria set's
    # parts made once per total (`ResultTexts`).
    parts = [
        f'{s.texts.json_head}{_symbol_json(s.symbol)},"breakdown":"{s.outcomes}"{s.texts.json_tail}'
        for s in scores
    ]
    return f'{{"results":[{",".join(parts)}],"correlationId":"{correlation_id}"}}'


def results_payload(correlation_id: str, scores: list[AssetScore]) -> dict[str, Any]:
    return {
        "correlationId": correlation_id,
        "results": [
            {
                "assetId": s.symbol,
                "criteriaVersionId": s.criteria_version_id,
                "score": plain(s.score),
                "maxPossibleScore": plain(s.max_possible_score),
                "percentage": plain(s.percentage),
                "breakdown": s.outcomes,
            }
            for s in scores
        ],
    }
