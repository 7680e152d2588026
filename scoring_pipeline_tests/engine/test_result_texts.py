"""The texts a plan keeps per distinct total (`ResultTexts`), which SCORES_COMPUTED and the COPY
rows use instead of formatting each asset's Decimals, are exactly those Decimals' plain text:
for positive, zero and negative totals, a percentage that rounds, and a set whose maximum is 0
(percentage null)."""

import json
import uuid
from decimal import Decimal

import pytest

from scoring_pipeline.engine.criteria import CriteriaSet, parse_criteria
from scoring_pipeline.engine.json_text import plain
from scoring_pipeline.engine.metrics import InstrumentData
from scoring_pipeline.engine.payloads import results_json, results_payload
from scoring_pipeline.engine.scoring import score_criteria_set
from scoring_pipeline_tests import factories as f

USD = {"USD": Decimal(1)}


def _universe() -> list[InstrumentData]:
    # P/E 20, 10, 6.67, 5, 4, 3.33 (eps 0.5 .. 3.0 at a close of 10), one without eps: every
    # combination of the rules below.
    out = [
        InstrumentData(f"S{n}", "USD", Decimal("10"), {"eps": Decimal(n) / 2}) for n in range(1, 7)
    ]
    out.append(InstrumentData("NOEPS", "USD", Decimal("10"), {}))
    return out


def _criteria(rules: list[dict[str, object]]) -> CriteriaSet:
    return parse_criteria(
        criteria_version_id=str(uuid.uuid4()),
        target_market="US_TECH",
        asset_type="stock",
        version=1,
        rules=json.dumps(rules),
    )


@pytest.mark.parametrize(
    "rules",
    [
        # 7 points at most: percentages such as 3/7 = 42.857142… rounded to 42.8571.
        [
            f.rule("pe_ratio", "lt", "8", 3),
            f.rule("pe_ratio", "lt", "4.5", 4),
            f.rule("pe_ratio", "gt", "15", -2),
        ],
        # No positive points: the maximum is 0 and the percentage null.
        [f.rule("pe_ratio", "gt", "8", -3), f.rule("price", "gt", "5", 0)],
    ],
    ids=["sevenths", "no-maximum"],
)
def test_result_texts_are_the_decimals_plain_text(rules):
    criteria = _criteria(rules)
    scores = score_criteria_set(criteria, _universe(), base_currency="USD", usd_rates=USD).scores
    assert len({s.score for s in scores}) >= 2  # several totals, each with its own texts
    for s in scores:
        assert s.texts.score == format(s.score, "f")
        assert s.texts.maximum == format(s.max_possible_score, "f")
        assert s.texts.percentage == plain(s.percentage)
        assert json.loads(f'{s.texts.json_head}"X","breakdown":"m"{s.texts.json_tail}') == {
            "score": plain(s.score),
            "assetId": "X",
            "breakdown": "m",
            "maxPossibleScore": plain(s.max_possible_score),
            "percentage": plain(s.percentage),
            "criteriaVersionId": s.criteria_version_id,
        }
    assert json.loads(results_json("c-1", scores)) == results_payload("c-1", scores)
    if criteria.rules[0].points < 0:
        assert {s.percentage for s in scores} == {None}
    else:
        assert "42.8571" in {s.texts.percentage for s in scores}


def test_sets_sharing_totals_keep_their_own_version_and_maximum():
    """A result's numbers are shared by every set of the process with the same total and
    maximum (`rule_plan._numbers`): each set's texts still name its own criteria version, and a
    set with another maximum has its own percentage for the same total."""
    rules = [f.rule("pe_ratio", "lt", "8", 3), f.rule("pe_ratio", "lt", "4.5", 4)]
    wider = [*rules, f.rule("price", "gt", "1000", 3)]  # never matched: maximum 10, not 7
    scored = {}
    for name, set_rules in (("first", rules), ("second", rules), ("wider", wider)):
        criteria = _criteria(set_rules)
        result = score_criteria_set(criteria, _universe(), base_currency="USD", usd_rates=USD)
        scored[name] = (criteria.criteria_version_id, result.scores)
    for version_id, scores in scored.values():
        for s in scores:
            assert s.criteria_version_id == version_id
            assert json.loads(f'{s.texts.json_head}"X"{s.texts.json_tail}') == {
                "score": plain(s.score),
                "assetId": "X",
                "maxPossibleScore": plain(s.max_possible_score),
                "percentage": plain(s.percentage),
                "criteriaVersionId": version_id,
            }
    first, wider_scores = scored["first"][1], scored["wider"][1]
    assert [s.score for s in first] == [s.score for s in wider_scores]
    assert {s.texts.percentage for s in first if s.score == 3} == {"42.8571"}
    assert {s.texts.percentage for s in wider_scores if s.score == 3} == {"30.0000"}
