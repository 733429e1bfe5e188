"""Parsing and validating the findings a user asks the phantom to draw."""

import pytest

from training.phantom.findings import Finding, FindingError, labels_vector, parse_findings


def test_parse_manifest_form_and_none():
    assert parse_findings("none") == []
    assert parse_findings("[]") == []
    got = parse_findings('[{"label": "pleural effusion", "location": "Left", "severity": "moderate"}, "cardiomegaly"]')
    assert got == [Finding("Cardiomegaly"), Finding("Pleural Effusion", "left", "moderate")]  # CheXpert order


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"label": "Pneumothorx"}]', "did you mean 'Pneumothorax'"),
        ('[{"label": "Cardiomegaly", "location": "left"}]', "has no location"),
        ('[{"label": "Edema", "location": "right"}]', "cannot be 'right'"),
        ('[{"label": "Pleural Effusion", "location": "left upper"}]', "no zone"),
        ('[{"label": "Consolidation", "location": "anterior"}]', "expected a side"),
        ('[{"label": "Consolidation", "location": "left apex"}]', "zone 'apex'"),
        ('[{"label": "Consolidation", "severity": "huge"}]', "severity 'huge'"),
        ('[{"label": "Support Devices", "severity": "mild"}]', "no severity"),
        ('[{"label": "No Finding"}]', "not drawn"),
        ('["Edema", "edema"]', "repeated: Edema"),
        ('[{"label": "Edema", "size": 3}]', "unknown key"),
        ("{not json", "neither `none` nor valid JSON"),
    ],
)
def test_bad_findings_are_clear_errors(text, message):
    with pytest.raises(FindingError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_findings(text)


def test_labels_vector_no_finding_allows_devices():
    assert labels_vector([])["No Finding"] == 1
    assert labels_vector([Finding("Support Devices", "left")])["No Finding"] == 1
    v = labels_vector([Finding("Edema", "bilateral", "mild")])
    assert v["No Finding"] == 0 and v["Edema"] == 1 and len(v) == 14
