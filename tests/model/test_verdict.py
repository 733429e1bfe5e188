"""The verdict: target reached, removed, on its side, input like the training data."""

import pytest

from model.labels import CHEXPERT_LABELS
from model.verdict import VERDICTS, VerdictConfig, judge

CFG = VerdictConfig()


def _p(**over):
    p = dict.fromkeys(CHEXPERT_LABELS, 0.1)
    p.update({k.replace("_", " "): v for k, v in over.items()})
    return p


def test_an_added_finding_must_cross_the_threshold_and_rise():
    v = judge(_p(Edema=0.1), _p(Edema=0.8), ["Edema"], [], None, None, 0.0, CFG)
    assert v.status == "passed" and v.passed and v.numbers["added"]["Edema"] == {"input": 0.1, "output": 0.8}
    assert judge(_p(Edema=0.1), _p(Edema=0.4), ["Edema"], [], None, None, 0.0, CFG).status == "target not reached"


def test_a_finding_already_there_counts_as_reached_while_it_stays():
    assert judge(_p(Edema=0.9), _p(Edema=0.85), ["Edema"], [], None, None, 0.0, CFG).passed
    assert not judge(_p(Edema=0.9), _p(Edema=0.3), ["Edema"], [], None, None, 0.0, CFG).passed


def test_a_removed_finding_must_fall_below_the_threshold():
    v = judge(_p(Fracture=0.9), _p(Fracture=0.6), [], ["Fracture"], None, None, 0.0, CFG)
    assert v.status == "finding not removed" and "Fracture" in v.reason
    assert judge(_p(Fracture=0.9), _p(Fracture=0.2), [], ["Fracture"], None, None, 0.0, CFG).passed


def test_the_side_and_the_input_are_checked_in_order():
    p_in, p_out = _p(), _p(Pneumothorax=0.9)
    assert judge(p_in, p_out, ["Pneumothorax"], [], "left", 0.3, 0.0, CFG).status == "wrong side"
    assert judge(p_in, p_out, ["Pneumothorax"], [], "left", 0.95, 0.0, CFG).passed
    ood = judge(p_in, p_out, ["Pneumothorax"], [], "left", 0.3, 7.5, CFG)
    assert ood.status == "input unlike the training data" and "7.5" in ood.reason
    assert {v.status for v in [ood]} <= set(VERDICTS)


def test_score_ranks_candidates():
    good = judge(_p(), _p(Edema=0.9), ["Edema"], [], None, None, 0.0, CFG)
    weak = judge(_p(), _p(Edema=0.6), ["Edema"], [], None, None, 0.0, CFG)
    assert good.score > weak.score
    assert good.to_dict()["passed"] is True and good.to_dict()["status"] == "passed"


@pytest.mark.parametrize("bad", [{"threshold": 1.0}, {"side_share": 0.2}, {"ood_limit": 0}])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        VerdictConfig(**bad)
