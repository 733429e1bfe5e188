"""Requests as clinicians type them, and the radiology phrasing of reports."""

import pytest

from model.refine import NoFindingRecognised, Refiner, refine, refine_request

# (request, {label: (side, severity)} expected present; None = not checked), expected absent labels
REQUESTS = [
    ("add a small right pneumothorax", {"Pneumothorax": ("right", "small")}, []),
    ("moderate bilateral effusions", {"Pleural Effusion": ("bilateral", "moderate")}, []),
    ("what would cardiomegaly look like", {"Cardiomegaly": (None, None)}, []),
    ("no finding", {}, []),
    ("remove the effusion", {}, ["Pleural Effusion"]),
    ("what if she had a small left effusion?", {"Pleural Effusion": ("left", "small")}, []),
    ("large left pleural effusion", {"Pleural Effusion": ("left", "large")}, []),
    ("severe pulmonary edema", {"Edema": (None, "severe")}, []),
    ("mild interstitial edema", {"Edema": (None, "mild")}, []),
    ("right lower lobe consolidation", {"Consolidation": ("right", None)}, []),
    ("dense consolidation in the left lower lobe", {"Consolidation": ("left", "severe")}, []),
    ("pneumonia in the right upper lobe", {"Pneumonia": ("right", None)}, []),
    ("left upper lobe pneumonia, moderate", {"Pneumonia": ("left", "moderate")}, []),
    ("bibasilar atelectasis", {"Atelectasis": ("bilateral", None)}, []),
    ("plate-like atelectasis at the left base", {"Atelectasis": ("left", None)}, []),
    ("a 2 cm nodule in the right upper lobe", {"Lung Lesion": ("right", None)}, []),
    ("large mass in the left lung", {"Lung Lesion": ("left", "large")}, []),
    ("nodular opacity right middle lobe", {"Lung Lesion": ("right", None)}, []),
    ("displaced left rib fracture", {"Fracture": ("left", "severe")}, []),
    ("nondisplaced fracture of the right 6th rib", {"Fracture": ("right", "mild")}, []),
    ("enlarged cardiac silhouette", {"Cardiomegaly": (None, None)}, []),
    ("mild cardiomegaly", {"Cardiomegaly": (None, "mild")}, []),
    ("widened mediastinum", {"Enlarged Cardiomediastinum": (None, None)}, []),
    ("right apical pleural thickening", {"Pleural Other": ("right", None)}, []),
    ("blunting of the left costophrenic angle", {"Pleural Effusion": ("left", None)}, []),
    ("pulmonary vascular congestion", {"Edema": (None, None)}, []),
    ("PICC line on the right", {"Support Devices": ("right", None)}, []),
    ("add an endotracheal tube", {"Support Devices": (None, None)}, []),
    ("pacemaker", {"Support Devices": (None, None)}, []),
    ("left lower lobe airspace disease", {"Lung Opacity": ("left", None)}, []),
    ("hazy opacity in both lower zones", {"Lung Opacity": ("bilateral", None)}, []),
    ("normal chest", {}, []),
    ("healthy lungs, no disease", {}, []),
    ("tension pneumothorax on the left, large", {"Pneumothorax": ("left", "large")}, []),
    (
        "small bilateral pleural effusions and mild cardiomegaly",
        {"Pleural Effusion": ("bilateral", "small"), "Cardiomegaly": (None, "mild")},
        [],
    ),
    ("cardiomegaly without effusion", {"Cardiomegaly": (None, None)}, ["Pleural Effusion"]),
    ("take away the pneumothorax", {}, ["Pneumothorax"]),
    (
        "moderate right pleural effusion with adjacent atelectasis",
        {"Pleural Effusion": ("right", "moderate"), "Atelectasis": ("right", None)},
        [],
    ),
    ("show me a left pneumothorax", {"Pneumothorax": ("left", None)}, []),
    ("trace right effusion", {"Pleural Effusion": ("right", "small")}, []),
    ("patchy infiltrates in the right lung", {"Lung Opacity": ("right", None)}, []),
    ("Moderate Left Pleural Effusion", {"Pleural Effusion": ("left", "moderate")}, []),
    ("add consolidation to the right lower zone", {"Consolidation": ("right", None)}, []),
    ("what would a large right effusion look like?", {"Pleural Effusion": ("right", "large")}, []),
]


def test_at_least_40_phrasings():
    assert len(REQUESTS) >= 40


@pytest.mark.parametrize("text, present, absent", REQUESTS)
def test_requests_give_expected_findings(text, present, absent):
    result = refine_request(text)
    got = {f.label: f for f in result.present() if f.label != "No Finding"}
    assert set(got) == set(present), (text, result.condition)
    for label, (side, severity) in present.items():
        if side is not None:
            assert got[label].side == side, (text, got[label])
        if severity is not None:
            assert got[label].severity == severity, (text, got[label])
    for label in absent:
        assert result.get(label).status == "absent"
    if not present:
        assert result.condition == "no finding"


def test_condition_text_is_canonical_and_order_free():
    a = refine_request("mild cardiomegaly and a small left pleural effusion").condition
    b = refine_request("Small left pleural effusion. Mild cardiomegaly.").condition
    assert a == b == "mild cardiomegaly; small left pleural effusion"
    assert refine_request("right lower lobe consolidation").condition == "right lower consolidation"


@pytest.mark.parametrize("text", ["hello", "make it look different", "   ", ""])
def test_unrecognised_request_is_a_helpful_error(text):
    with pytest.raises(NoFindingRecognised, match="understood findings: .*pleural effusion"):
        refine_request(text)


@pytest.mark.parametrize(
    "text, label, status",
    [
        ("No pleural effusion, pneumothorax or focal consolidation.", "Consolidation", "absent"),
        ("No pleural effusion, pneumothorax or focal consolidation.", "Pneumothorax", "absent"),
        ("No effusion, but there is a small right pneumothorax.", "Pneumothorax", "present"),
        ("No effusion, but there is a small right pneumothorax.", "Pleural Effusion", "absent"),
        ("Cannot exclude early pneumonia.", "Pneumonia", "uncertain"),
        ("Pneumonia cannot be excluded.", "Pneumonia", "uncertain"),
        ("Possible small left effusion.", "Pleural Effusion", "uncertain"),
        ("The previously seen effusion has resolved.", "Pleural Effusion", "absent"),
        ("Heart size normal, small left effusion.", "Pleural Effusion", "present"),
        ("Negative for pneumothorax.", "Pneumothorax", "absent"),
        ("There are no XXXX of a pleural effusion.", "Pleural Effusion", "absent"),
        ("Pulmonary vascularity is within normal limits.", "Edema", None),
        ("Pulmonary vascular congestion is within normal limits.", "Edema", "absent"),
        ("The heart is normal in size. Mild cardiomegaly is not seen.", "Cardiomegaly", "absent"),
        ("Enlarged cardiac silhouette.", "Cardiomegaly", "present"),
        ("Airspace disease in the right lower lobe.", "Lung Opacity", "present"),
        ("Right PICC line with tip in the SVC.", "Support Devices", "present"),
        ("Nodular opacity in the left upper lobe.", "Lung Lesion", "present"),
        ("Calcified granuloma in the right upper lobe.", "Lung Lesion", None),
        ("No pericardial effusion.", "Pleural Effusion", None),
        # "density" is a lung opacity only with a lung place in the sentence.
        ("Radiodensity overlying the heart, a hiatal hernia.", "Lung Opacity", None),
        ("Increasing density in the left lower lobe.", "Lung Opacity", "present"),
        ("Patchy density at the right base.", "Lung Opacity", "present"),
        # NegEx pseudo-triggers: "no change in X" keeps X.
        ("No significant change in right pleural fluid.", "Pleural Effusion", "present"),
        ("Without interval change of mild atelectasis at the left base.", "Atelectasis", "present"),
        # A post-trigger a few words after the mention.
        ("The previously seen right upper lobe mass lesion is not seen.", "Lung Lesion", "absent"),
        ("The nodule in the right lower lung is not well-seen today.", "Lung Lesion", "absent"),
        ("Lungs are expanded and clear airspace disease.", "Lung Opacity", "absent"),
        ("Heart size XXXX mildly enlarged.", "Cardiomegaly", "present"),
        ("The heart size is not enlarged.", "Cardiomegaly", None),
        ("Minimal perihilar opacity which could indicate an atypical pneumonia.", "Pneumonia", "uncertain"),
    ],
)
def test_report_phrasing_and_negation_scope(text, label, status):
    f = refine(text).get(label)
    assert (f.status if f else None) == status, (text, f)


def test_deterministic_and_rules_backend_by_default():
    text = "Small bilateral pleural effusions. Possible right lower lobe pneumonia. No pneumothorax."
    a, b = Refiner()(text), Refiner()(text)
    assert a == b and a.backend == "rules" and a.fallback_reason is None


def test_canonical_condition_text_refines_to_itself():
    # The pipeline and the evaluation write condition texts; reading them back must be lossless.
    from model.labels import CHEXPERT_LABELS

    for label in CHEXPERT_LABELS:
        if label == "No Finding":
            continue
        for words in (label.lower(), f"moderate {label.lower()}", f"severe left lower {label.lower()}"):
            got = {f.label for f in refine_request(words).present()} - {"No Finding"}
            assert got == {label}, (words, got)
