"""training/faithfulness.py: edit metrics on arrays, the protocol's cases, and a run through a pipeline."""

import json
import types

import numpy as np
import pytest
import torch

from model.labels import NO_FINDING, PAPER_TABLE2_LABELS
from training import faithfulness as fa
from training.evaluate import identity_seed, render_seed
from training.phantom.renderer import render


def blob(shape=(32, 32), rows=slice(10, 15), cols=slice(10, 15), value=0.5):
    a = np.zeros(shape, np.float32)
    a[rows, cols] = value
    return a


def test_inside_share_and_halfway_on_arrays():
    inp = np.zeros((32, 32), np.float32)
    truth = blob()
    region = fa.true_region(truth > 0)
    assert region.sum() > (truth > 0).sum()  # dilated
    assert fa.inside_share(inp, truth, region) == 1.0 and fa.halfway(inp, truth, truth, region) == 1.0
    assert fa.inside_share(inp, inp, region) == 0.0 and fa.halfway(inp, inp, truth, region) == 0.0  # nothing done
    assert fa.halfway(inp, inp + 0.5 * (truth - inp), truth, region) == pytest.approx(0.5)
    # The right blob in the wrong place: no change inside, further from the truth than the input was.
    elsewhere = blob(rows=slice(22, 27), cols=slice(22, 27))
    assert fa.inside_share(inp, elsewhere, region) == 0.0
    assert fa.halfway(inp, 2 * truth, truth, region) == 0.0  # overshot by as much as the finding
    faint = blob(value=0.2)
    assert fa.halfway(inp, faint * 5, faint, region) == fa.HALFWAY_FLOOR  # four times off: -3, clipped
    # Mass-weighted: a faint change outside weighs less than a strong one inside.
    mixed = truth + blob(rows=slice(22, 27), cols=slice(22, 27), value=0.1)
    assert fa.inside_share(inp, mixed, region) == pytest.approx(0.5 / 0.6)
    # Below the tolerance is no change; the truth equal to the input leaves halfway undefined.
    assert fa.inside_share(inp, inp + 1 / 255, region) == 0.0
    assert fa.changed_area(inp, inp + 1 / 255) == 0 and fa.changed_area(inp, truth) == 25
    assert fa.halfway(inp, truth, inp, region) is None


def test_outside_is_bit_identical_or_not():
    inp = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    region = np.zeros((16, 16), bool)
    region[4:8, 4:8] = True
    out = inp.copy()
    out[region] = 0.0
    assert fa.outside_identical(inp, out, region)
    out[0, 0] = np.nextafter(out[0, 0], np.float32(2))  # one ulp outside the region
    assert not fa.outside_identical(inp, out, region)


def test_judge_crosses_the_threshold_the_right_way():
    assert fa.judge_crosses(0.2, 0.6, "add") and not fa.judge_crosses(0.6, 0.9, "add")  # already positive
    assert not fa.judge_crosses(0.2, 0.4, "add")
    assert fa.judge_crosses(0.7, 0.3, "remove") and not fa.judge_crosses(0.4, 0.1, "remove")
    assert not fa.judge_crosses(0.8, 0.95, "null")  # a sham on an input that shows it: not an edit
    with pytest.raises(ValueError, match="direction"):
        fa.judge_crosses(0.1, 0.9, "swap")


def lungs(shape=(40, 40), tilt=0.0):
    """Two lung blocks, the patient's right on the viewer's left, shifted by `tilt` columns per row."""
    rows, cols = np.indices(shape)
    shift = (tilt * (rows - shape[0] / 2)).round()
    return {
        "right_lung": (rows >= 5) & (rows < 35) & (cols - shift >= 4) & (cols - shift < 16),
        "left_lung": (rows >= 5) & (rows < 35) & (cols - shift >= 24) & (cols - shift < 36),
        "heart": np.zeros(shape, bool),
    }


def test_side_follows_the_anatomy_midline():
    anatomy = lungs()
    a, b = fa.midline(anatomy)
    assert a == pytest.approx(0.0) and b == pytest.approx(19.5)
    inp = np.zeros((40, 40), np.float32)
    viewer_left = blob((40, 40), slice(10, 20), slice(5, 12))
    assert fa.side_share(inp, viewer_left, anatomy, "right") == 1.0  # the patient's right
    assert fa.side_share(inp, viewer_left, anatomy, "left") == 0.0
    assert fa.side_share(inp, inp, anatomy, "left") is None
    # A rotated patient: the midline tilts with the lungs.
    a, _ = fa.midline(lungs(tilt=0.1))
    assert a == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match="side"):
        fa.side_mask(anatomy, "bilateral")


def test_severity_triple():
    assert fa.severity_triple([10, 20, 40], [12, 25, 30]) == {"ordered": True, "within_2": True}
    assert fa.severity_triple([10, 20, 90], [12, 25, 30]) == {"ordered": True, "within_2": False}
    assert fa.severity_triple([20, 20, 40], [12, 25, 30])["ordered"] is False
    assert fa.severity_triple([10, 20, 40], [0, 25, 30])["within_2"] is False  # a truth that changed nothing


def test_score_edit_needs_judge_region_and_an_untouched_outside():
    normal = render(identity_seed(0), [], render_seed(0), 64)
    case = fa.case_for(fa.Request("addition", 0, "Pleural Effusion"), 64)
    inp, truth = case.image / 255.0, case.truth / 255.0
    region = fa.true_region(case.mask)
    ok = fa.score_edit(inp, truth, region, 0.1, 0.9, "add", truth, case.mask, case.anatomy, case.finding)
    assert ok["valid"] and ok["inside_share"] == 1.0 and ok["halfway"] == 1.0 and ok["zone_share"] == 1.0
    assert ok["valid_zone"] and ok["true_changed_area"] == ok["changed_area"] > 0
    assert np.array_equal(case.image, normal.image)  # the input is the identity without findings
    assert (ok["side_share"] == 1.0) == (case.finding.side in ("right", "left"))
    assert not fa.score_edit(inp, truth, region, 0.1, 0.4, "add", truth, case.mask)["valid"]  # judge not crossed
    spilled = truth.copy()
    spilled[~region] += 0.1
    assert not fa.score_edit(inp, spilled, region, 0.1, 0.9, "add", truth, case.mask)["valid"]  # outside changed
    assert not fa.score_edit(inp, spilled, np.ones_like(region), 0.1, 0.9, "add", truth, case.mask)["valid"]  # spread
    sham = fa.score_edit(inp, inp, np.zeros_like(region), 0.9, 0.9, "null")
    assert not sham["valid"] and sham["mean_abs_change"] == 0.0 and "inside_share" not in sham


def test_plan_is_deterministic_and_counts_its_calls():
    requests = fa.plan(32)
    assert requests == fa.plan(32) and fa.count_calls(32) == len(requests) == 34 * 32
    kinds = [r.kind for r in requests if r.index == 0]
    assert kinds.count("addition") == kinds.count("removal") == len(PAPER_TABLE2_LABELS)
    for k in range(fa.VALIDATION_OFFSET):
        for first, second in fa._rotating(k)["second"]:
            assert first != second
    # Over 32 identities every finding gets its turn at the rotating kinds.
    for kind in ("second", "null", "severity", "robust"):
        assert {r.finding for r in requests if r.kind == kind} >= set(PAPER_TABLE2_LABELS)
    assert {r.transform for r in requests if r.kind == "robust"} == set(fa.TRANSFORMS)
    side = [(r.finding, r.side) for r in requests if r.kind == "side"]
    assert {f for f, _ in side} == set(fa.LATERAL) and all((f, "left") in side for f, s in side if s == "right")
    # A kind that reuses an addition keeps it; the others none.
    only = fa.plan(2, ["severity", "add_then_remove", "null"])
    assert [r.kind for r in only if r.index == 0] == ["addition", "addition", "null", "null", "add_then_remove"] + [
        "severity"
    ] * 2
    with pytest.raises(ValueError, match="unknown request kind"):
        fa.plan(1, ["additions"])
    with pytest.raises(ValueError, match="between 1 and"):
        fa.plan(0)


def test_cases_share_the_evaluation_identities_and_their_truths():
    res = 64
    add = fa.case_for(fa.Request("addition", 3, "Pneumonia"), res)
    mild = fa.case_for(fa.Request("severity", 3, "Pneumonia", severity="mild"), res)
    assert add.finding.location == mild.finding.location and mild.finding.severity == "mild"
    assert np.array_equal(add.image, render(identity_seed(3), [], render_seed(3), res).image)
    assert np.array_equal(add.truth[~add.mask], add.image[~add.mask])  # the truth differs only where the finding is
    assert add.text == f"moderate {add.finding.location} pneumonia"
    rem = fa.case_for(fa.Request("removal", 3, "Pneumonia"), res)
    assert np.array_equal(rem.truth, add.image) and np.array_equal(rem.image, add.truth) and rem.text == "no finding"
    second = fa.case_for(fa.Request("second", 3, "Cardiomegaly", first="Pneumonia"), res)
    assert np.array_equal(second.image, add.truth) and second.text.endswith("pneumonia") and ";" in second.text
    null = fa.case_for(fa.Request("null", 3, NO_FINDING), res)
    assert np.array_equal(null.truth, null.image) and null.text == "no finding" and null.mask is None
    right = fa.case_for(fa.Request("side", 3, "Pneumothorax", side="right"), res)
    assert right.finding.side == "right" and right.text == "moderate right pneumothorax"
    big = fa.case_for(fa.Request("robust", 3, "Pneumonia", transform="512 px"), res)
    assert big.image.shape == big.mask.shape == (512, 512) and big.dilate == 24
    turned = fa.case_for(fa.Request("robust", 3, "Pneumonia", transform="rotation 5 deg"), res)
    assert turned.image.shape == (res, res) and not np.array_equal(turned.image, add.image)
    assert turned.mask.dtype == bool and turned.mask.any() and not np.array_equal(turned.mask, add.mask)
    darker = fa.case_for(fa.Request("robust", 3, "Pneumonia", transform="exposure -20%"), res)
    assert np.array_equal(darker.image, np.round(add.image * np.float32(0.8)).astype(np.uint8))
    jpeg = fa.case_for(fa.Request("robust", 3, "Pneumonia", transform="jpeg 75"), res)
    assert 0 < np.abs(jpeg.image.astype(int) - add.image).mean() < 5
    with pytest.raises(ValueError, match="unknown transform"):
        fa.transform_image(add.image, "flip")


class ZeroJudge(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 14)  # every label at 0.5


class OraclePipe:
    """The pipeline contract answered with the phantom's true counterfactual (looked up by input
    and request), the edit region being exactly the changed pixels."""

    resolution = 64

    def __init__(self, n, res, kinds=None):
        from model.preprocess import to_unit_grey

        self.to_unit_grey, self.eval_classifier, self.table, self.calls = to_unit_grey, ZeroJudge(), {}, 0
        for req in fa.plan(n, kinds):
            case = fa.case_for(req, res)
            if req.kind == "add_then_remove":  # its input is the addition's result
                case.image = fa.case_for(fa.Request("addition", req.index, req.finding), res).truth
            self.table[(case.image.tobytes(), case.text)] = case.truth

    def __call__(self, image, text, seed=0, optimize_seed=True):
        self.calls += 1
        inp = self.to_unit_grey(image)
        truth = self.table[(np.round(inp * 255).astype(np.uint8).tobytes(), text)] / np.float32(255)
        region = truth != inp
        verdict = types.SimpleNamespace(passed=False, status="target not reached")
        return types.SimpleNamespace(
            image=np.where(region, truth, inp).astype(np.float32), input_image=inp, region=region, verdict=verdict
        )


def test_run_scores_the_true_counterfactuals_as_faithful():
    pipe = OraclePipe(1, 64)
    result = fa.run_faithfulness(pipe, 1, res=64, progress=False)
    assert result["calls"] == pipe.calls == fa.count_calls(1) == len(result["edits"])
    json.dumps(result, allow_nan=False)  # JSON-able, no NaN
    s = result["summary"]
    assert s["inside_share"] == pytest.approx(1.0, abs=0.02) and s["halfway"] == pytest.approx(1.0, abs=0.02)
    assert s["side"] == 1.0 and s["severity"] == 1.0 and s["outside_identical"] == 1.0
    assert s["null"]["mean_abs_change"] == 0.0 and s["null"]["judged_valid"] == 0.0
    assert s["add_then_remove"]["returned_mae"] == 0.0 and s["add_then_remove"]["added_mae"] > 0
    assert s["valid"] == 0.0  # the judge (0.5 everywhere) never crosses
    assert s["truth_judged_addition"] == s["truth_judged_removal"] == 0.0  # not even on the truth: the ceiling
    assert s["verdict_agrees"] == 1.0 and set(s["per_finding"]) == set(PAPER_TABLE2_LABELS)
    lines = fa.faithfulness_lines(result)
    assert lines[0].startswith("**Valid edits: 0.000** of 32 edits (34 pipeline calls")
    assert any(line.startswith("| valid additions | 0.000 (target >= 0.9: missed)") for line in lines)
    assert any("| Lung Lesion (tail) * |" in line for line in lines)
    assert "passes the true counterfactuals of 0.00 of the additions" in lines[0]


@pytest.mark.slow
def test_run_through_the_tiny_pipeline(tiny_checkpoint):
    """The runner against the real pipeline contract (an untrained tiny checkpoint): every field it
    reads is there, the pixels outside the edit region are the input's, the result is JSON-able."""
    from model.pipeline import CounterfactualPipeline
    from model.verdict import VERDICTS

    pipe = CounterfactualPipeline.from_pretrained(tiny_checkpoint)
    result = fa.run_faithfulness(pipe, 1, res=64, progress=False, subset=["null", "add_then_remove"])
    assert result["calls"] == fa.count_calls(1, ["null", "add_then_remove"]) == 4
    assert [e["request"]["kind"] for e in result["edits"]] == ["addition", "null", "null", "add_then_remove"]
    json.dumps(result, allow_nan=False)
    assert result["summary"]["outside_identical"] == 1.0
    assert all(e["verdict_status"] in VERDICTS for e in result["edits"])
    assert fa.faithfulness_lines(result)[0].startswith("**Valid edits: ")
