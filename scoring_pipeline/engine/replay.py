"""Replay: recompute a calculation from its INPUTS_CAPTURED event alone (SPEC §5).

SCORES_COMPUTED holds each result's `breakdown` in its compact form (one outcome character per
rule); the recomputation gives the outcomes and the canonical breakdown they stand for
(`AssetScore.breakdown`). Events recorded before the compact form carry the canonical breakdown
itself (a list), and are compared with it; events recorded between the compact form and
2026-12-04 carry the compact form under `outcomes` instead of `breakdown`, and are compared
under that key.
"""

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from scoring_pipeline.engine.criteria import parse_criteria
from scoring_pipeline.engine.metrics import InstrumentData
from scoring_pipeline.engine.payloads import results_payload
from scoring_pipeline.engine.scoring import AssetScore, score_criteria_set
from scoring_pipeline.errors import ReplayError


@dataclass(frozen=True)
class ReplayResult:
    correlation_id: str
    user_id: str | None
    reproduced: bool
    recorded: dict[str, Any] | None
    recomputed: dict[str, Any]
    differences: list[str]
    # Each asset's canonical breakdown as recomputed (SPEC §4), to compare with stored ones.
    breakdowns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stored_breakdowns: int = 0  # the stored breakdowns compared (`store.replay`)


def recompute(inputs: dict[str, Any]) -> list[AssetScore]:
    """Score again from an INPUTS_CAPTURED payload."""
    usd_rates = {r["to"]: Decimal(str(r["rate"])) for r in inputs.get("rates", [])}
    usd_rates.setdefault("USD", Decimal(1))
    fundamentals = inputs.get("fundamentals", {})
    instruments: dict[str, InstrumentData] = {}
    for p in inputs.get("prices", []):
        values = {
            k: Decimal(str(v))
            for k, v in fundamentals.get(p["symbol"], {}).items()
            if k != "dataDate" and v is not None
        }
        close = Decimal(str(p["close"])) if p.get("close") is not None else None
        instruments[p["symbol"]] = InstrumentData(p["symbol"], p["currency"], close, values)
    scores: list[AssetScore] = []
    for c in inputs.get("criteria", []):
        criteria = parse_criteria(
            criteria_version_id=c["criteriaVersionId"],
            target_market=c["targetMarket"],
            asset_type=c["assetType"],
            version=int(c["version"]),
            rules=c["rules"],
        )
        universe = [instruments[s] for s in c.get("assetIds", [])]
        scores.extend(
            score_criteria_set(
                criteria,
                universe,
                base_currency=inputs["baseCurrency"],
                usd_rates=usd_rates,
            ).scores
        )
    return scores


def _said(error: Any) -> str:
    """A recorded `error` {type, message}, as one phrase."""
    if not isinstance(error, dict):
        return "no error was recorded"
    return f"{error.get('type')}: {error.get('message')}"


def _recorded_form(recorded: dict[str, Any] | None) -> str:
    """How a recorded SCORES_COMPUTED holds its breakdowns (one form for all its results):
    "compact" (`breakdown`, a string of outcomes), "canonical" (`breakdown`, a list: recorded
    before the compact form) or "outcomes" (the compact form under `outcomes`)."""
    results = (recorded or {}).get("results") or []
    if any("outcomes" in r for r in results):
        return "outcomes"
    if any(isinstance(r.get("breakdown"), list) for r in results):
        return "canonical"
    return "compact"


def replay_events(correlation_id: str, events: dict[str, dict[str, Any]]) -> ReplayResult:
    """Compare the recorded SCORES_COMPUTED with one recomputed from INPUTS_CAPTURED; `events`
    are the calculation's payloads by event type (`_userId` added), as the store reads them."""
    if not events:
        raise ReplayError(f"no calculation with correlation id {correlation_id}")
    inputs = events.get("INPUTS_CAPTURED")
    night = events.get("JOB_STARTED") or events.get("JOB_COMPLETED")
    if inputs is None and night is not None and "CALC_STARTED" not in events:
        raise ReplayError(
            f"{correlation_id} is a night's correlation id (its JOB_* events), not a "
            "calculation's: replay takes the correlation id of a user's CALC_STARTED"
        )
    completed = events.get("CALC_COMPLETED") or {}
    failure = completed.get("error") if completed.get("status") == "failed" else None
    if inputs is None:
        if failure is not None or "CALC_COMPLETED" not in events:
            raise ReplayError(
                f"calculation {correlation_id} has no INPUTS_CAPTURED event: it failed before "
                f"its inputs were captured ({_said(failure)})"
            )
        raise ReplayError(
            f"calculation {correlation_id} completed, but its INPUTS_CAPTURED event is missing "
            "from calculation_events (deleted?): it cannot be replayed"
        )
    try:
        scores = recompute(inputs)
    except Exception as exc:
        if failure is None:
            raise
        # A calculation that failed after capturing its inputs (a missing rate, say): its
        # inputs fail the same way, which is all a replay can show.
        raise ReplayError(
            f"calculation {correlation_id} failed ({_said(failure)}); its captured inputs fail "
            f"again when replayed: {exc}"
        ) from exc
    recomputed = results_payload(correlation_id, scores)
    recorded = events.get("SCORES_COMPUTED")
    form = _recorded_form(recorded)
    for result, score in zip(recomputed["results"], scores, strict=True):
        if form == "canonical":  # recorded before the compact form: the breakdowns themselves
            result["breakdown"] = score.breakdown
        elif form == "outcomes":  # the compact form as first recorded, under `outcomes`
            result["outcomes"] = result.pop("breakdown")
    differences: list[str] = []
    if recorded is None:
        differences.append("no SCORES_COMPUTED event was recorded (the calculation failed)")
    else:
        recorded_results = json.loads(json.dumps(recorded["results"], default=str))
        recomputed_results = json.loads(json.dumps(recomputed["results"], default=str))
        if len(recorded_results) != len(recomputed_results):
            differences.append(
                f"{len(recorded_results)} results recorded, {len(recomputed_results)} recomputed"
            )
        for old, new in zip(recorded_results, recomputed_results, strict=False):
            if old != new:
                differences.append(f"{old.get('assetId')}: recorded {old} != recomputed {new}")
    return ReplayResult(
        correlation_id=correlation_id,
        user_id=inputs.get("_userId"),
        reproduced=not differences,
        recorded=recorded,
        recomputed=recomputed,
        differences=differences,
        breakdowns={score.symbol: score.breakdown for score in scores},
    )
