"""Edit regions: the request's anatomy on the input, where the model changed it."""

import numpy as np
import pytest
from scipy import ndimage

from model.refine.schema import StructuredFinding
from model.regions import (
    Anatomy,
    RegionError,
    check_user_region,
    edit_weight,
    finding_prior,
    request_prior,
    requested_side,
    side_share,
)
from training.phantom.findings import Finding
from training.phantom.renderer import render


@pytest.fixture(scope="module")
def anatomy():
    a = render(2**31 + 10**7 + 7777, [], 3_000_001, 128).anatomy
    return Anatomy(a["right_lung"], a["left_lung"], a["heart"])


def _f(label, status="present", side=None, zones=(), severity=None):
    return StructuredFinding(label=label, status=status, side=side, zones=zones, severity=severity)


def test_a_sided_finding_stays_on_its_side(anatomy):
    for label in ("Lung Lesion", "Pneumothorax", "Pleural Effusion", "Consolidation", "Fracture"):
        left = finding_prior(anatomy, label, "left", (), "moderate")
        right = finding_prior(anatomy, label, "right", (), "moderate")
        assert left.any() and right.any()
        # the patient's left is the viewer's right: columns past the midline
        assert side_share(left.astype(float), "left", anatomy.midline) > 0.95
        assert side_share(right.astype(float), "right", anatomy.midline) > 0.95


def test_zones_split_the_lung_top_to_bottom(anatomy):
    rows = {z: np.nonzero(finding_prior(anatomy, "Lung Lesion", "right", (z,), None).any(1))[0] for z in ZONES}
    assert rows["upper"].mean() < rows["middle"].mean() < rows["lower"].mean()
    assert not (set(rows["upper"]) & set(rows["lower"]))


ZONES = ("upper", "middle", "lower")


def test_effusion_reaches_higher_with_severity(anatomy):
    areas = [finding_prior(anatomy, "Pleural Effusion", "left", (), s).sum() for s in ("mild", "moderate", "severe")]
    assert areas[0] < areas[1] < areas[2]


def test_cardiomegaly_is_a_ring_around_the_heart(anatomy):
    ring = finding_prior(anatomy, "Cardiomegaly", None, (), "moderate")
    inner = np.argwhere(anatomy.heart).mean(0).round().astype(int)
    assert not ring[tuple(inner)]  # the heart's middle does not change
    assert (ring & ~anatomy.heart).any()


def test_the_true_finding_lies_inside_its_prior():
    """The phantom's own finding masks fall (mostly) inside the region built for its request."""
    ident, seed = 2**31 + 10**7 + 7778, 3_000_002
    base = render(ident, [], seed, 128)
    a = Anatomy(base.anatomy["right_lung"], base.anatomy["left_lung"], base.anatomy["heart"])
    for finding in (
        Finding("Pleural Effusion", "left", "severe"),
        Finding("Lung Lesion", "right upper", "moderate"),
        Finding("Cardiomegaly", None, "moderate"),
        Finding("Pneumothorax", "left", "moderate"),
        Finding("Pneumonia", "right lower", "moderate"),
    ):
        truth = render(ident, [finding], seed, 128).masks[finding.label]
        zones = (finding.zone,) if finding.zone else ()
        prior = finding_prior(a, finding.label, finding.side, zones, finding.severity)
        assert (truth & prior).sum() / truth.sum() > 0.85, finding


def test_request_prior_unions_added_and_removed(anatomy):
    both = request_prior(anatomy, [_f("Lung Lesion", side="right"), _f("Pleural Effusion", "absent", side="left")])
    assert side_share(both.astype(float), "right", anatomy.midline) < 0.9
    assert request_prior(anatomy, [_f("No Finding")]).sum() > both.sum() * 0.5


def test_edit_weight_is_zero_where_the_model_did_not_change(anatomy):
    prior = finding_prior(anatomy, "Pleural Effusion", "left", (), "severe")
    change = np.zeros((128, 128), np.float32)
    assert not edit_weight(prior, change).any()
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(prior)), prior.shape)
    change[y - 4 : y + 5, x - 4 : x + 5] = 0.2  # a change deep inside the prior ...
    change[0:10, 0:10] = 0.2  # ... and one far outside it
    w = edit_weight(prior, change)
    assert w[y, x] == pytest.approx(1.0)
    assert not w[0:10, 0:10].any() and not w[~prior].any()
    assert 0.0 <= w.min() and w.max() <= 1.0


def test_requested_side():
    assert requested_side([_f("Lung Lesion", side="left")]) == "left"
    assert requested_side([_f("Lung Lesion", side="bilateral")]) is None
    assert requested_side([_f("Lung Lesion", side="left"), _f("Pneumothorax", side="right")]) is None
    assert requested_side([_f("Cardiomegaly")]) is None


def test_user_regions_are_checked():
    ok = np.zeros((50, 60), np.uint8)
    ok[10:20, 40:50] = 255  # the viewer's right half: the patient's left
    assert check_user_region(ok, (50, 60), "left").sum() == 100
    with pytest.raises(RegionError, match="must match"):
        check_user_region(ok, (60, 50), None)
    with pytest.raises(RegionError, match="empty"):
        check_user_region(np.zeros((50, 60)), (50, 60), None)
    with pytest.raises(RegionError, match="patient's right"):
        check_user_region(ok, (50, 60), "right")
    with pytest.raises(RegionError, match="2-D"):
        check_user_region(np.zeros((2, 50, 60)), (50, 60), None)


def test_default_frame_when_no_lungs_are_found():
    a = Anatomy.from_masks(np.zeros((3, 128, 128), bool))
    assert a.source == "default frame" and a.right_lung.any() and a.left_lung.any()
    assert a.midline == pytest.approx(64, abs=3)
