"""The phantom renderer: determinism, locality of findings, visibility, cardiothoracic ratio."""

import numpy as np
import pytest

from training.phantom.findings import DRAWABLE_LABELS, LABEL_SPECS, Finding, FindingError
from training.phantom.renderer import cardiothoracic_ratio, render

SIZE = 128
IDENTITIES = (3, 11)


def test_same_arguments_same_bytes():
    findings = [Finding("Pleural Effusion", "left", "moderate"), Finding("Support Devices", "right")]
    a = render(5, findings, 9, SIZE)
    b = render(5, findings, 9, SIZE)
    assert a.png_bytes() == b.png_bytes()
    # Another render seed changes the noise; another identity changes the patient.
    assert not np.array_equal(a.image, render(5, findings, 10, SIZE).image)
    assert not np.array_equal(a.image, render(6, findings, 9, SIZE).image)


def test_order_of_findings_does_not_matter():
    f1, f2 = Finding("Edema", "bilateral", "mild"), Finding("Cardiomegaly", None, "severe")
    assert np.array_equal(render(2, [f1, f2], 1, SIZE).image, render(2, [f2, f1], 1, SIZE).image)


@pytest.mark.parametrize("label", DRAWABLE_LABELS)
def test_finding_changes_only_its_mask_and_changes_it_visibly(label):
    for identity in IDENTITIES:
        for severity in LABEL_SPECS[label].severities or {None: 1}:
            finding = Finding(label, severity=severity)
            base = render(identity, [], 4, SIZE)
            with_f = render(identity, [finding], 4, SIZE)
            mask = with_f.masks[label]
            diff = np.abs(with_f.image.astype(np.int16) - base.image.astype(np.int16))
            # Locality: not one pixel outside the finding's mask differs.
            assert diff[~mask].max(initial=0) == 0, (label, severity, identity)
            # Visibility: the region is not empty and changes by a measurable amount.
            assert mask.sum() >= 12, (label, severity, identity, mask.sum())
            assert diff[mask].mean() >= 6.0, (label, severity, identity, diff[mask].mean())


def test_masks_of_combined_findings_bound_the_change():
    findings = [Finding("Pneumothorax", "right", "moderate"), Finding("Lung Lesion", "left upper", "severe")]
    base = render(7, [], 2, SIZE)
    both = render(7, findings, 2, SIZE)
    union = both.masks["Pneumothorax"] | both.masks["Lung Lesion"]
    assert (base.image != both.image)[~union].sum() == 0


def test_sides_are_the_patients():
    # The patient's right lung is on the viewer's left.
    img = render(4, [Finding("Pleural Effusion", "right", "severe")], 0, SIZE)
    cols = np.nonzero(img.masks["Pleural Effusion"].any(axis=0))[0]
    assert cols.mean() < SIZE / 2
    img = render(4, [Finding("Pneumothorax", "left", "severe")], 0, SIZE)
    assert np.nonzero(img.masks["Pneumothorax"].any(axis=0))[0].mean() > SIZE / 2


def test_cardiothoracic_ratio():
    for identity in range(20):
        assert cardiothoracic_ratio(render(identity, [], 0, SIZE).anatomy) < 0.5, identity
        for severity in ("mild", "moderate", "severe"):
            ctr = cardiothoracic_ratio(render(identity, [Finding("Cardiomegaly", None, severity)], 0, SIZE).anatomy)
            assert ctr > 0.5, (identity, severity, ctr)


def test_missing_location_and_severity_are_resolved_from_the_render_seed():
    a = render(1, [Finding("Consolidation")], 3, 64).findings[0]
    assert a.is_resolved and a.side in ("right", "left", "bilateral") and a.severity in ("mild", "moderate", "severe")
    assert render(1, [Finding("Consolidation")], 3, 64).findings[0] == a


@pytest.mark.parametrize("size", [0, -3, 16, 4096])
def test_bad_size_is_an_error(size):
    with pytest.raises(ValueError, match="size"):
        render(1, [], 0, size)


def test_duplicate_label_is_an_error():
    with pytest.raises(FindingError, match="once"):
        render(1, [Finding("Edema"), Finding("Edema")], 0, 64)


def test_sizes_other_than_256_render():
    for size in (64, 512):
        img = render(1, [Finding("Pleural Effusion", "bilateral", "moderate")], 0, size)
        assert img.image.shape == (size, size) and img.image.dtype == np.uint8
        assert img.masks["Pleural Effusion"].shape == (size, size)
