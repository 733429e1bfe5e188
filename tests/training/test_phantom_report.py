"""Reports assert exactly the structured truth, checked by keywords independent of the generator."""

import re

import pytest

from training.phantom.cases import sample_case

KEYWORDS = {
    "Pleural Effusion": r"effusion",
    "Cardiomegaly": r"cardiomegaly|heart is \w+ enlarged|cardiac silhouette is \w+ enlarged",
    "Pneumothorax": r"pneumothora",
    "Consolidation": r"consolidation",
    "Pneumonia": r"pneumonia|infection",
    "Atelectasis": r"atelectasis",
    "Edema": r"edema",
    "Lung Lesion": r"nodule|\bmass\b",
    "Fracture": r"fracture",
    "Lung Opacity": r"opacity|opacities",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Pleural Other": r"pleural thickening",
    "Support Devices": r"\btube\b|catheter|pacemaker",
}
NEGATION = re.compile(r"\b(no|without|normal|clear|sharp)\b", re.I)
HEDGE = re.compile(r"\b(possible|cannot exclude|cannot be excluded|questionable|may|borderline)\b", re.I)
SECTIONS = ("INDICATION:", "COMPARISON:", "FINDINGS:", "IMPRESSION:")


def _sentences(text: str) -> list[str]:
    body = text.split("FINDINGS:", 1)[1]
    return [
        s.strip() for s in re.split(r"(?<=[a-z\)])\.\s+|\.$|\n|\d+\.\s", body.replace("IMPRESSION:", "")) if s.strip()
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_report_text_asserts_exactly_the_labels(seed):
    for index in range(300):
        case = sample_case(seed, index)
        text = case.report().text
        assert [line.split(":")[0] + ":" for line in text.splitlines()] == list(SECTIONS)
        affirmed = set()
        for sentence in _sentences(text):
            for label, pattern in KEYWORDS.items():
                if not re.search(pattern, sentence, re.I):
                    continue
                if NEGATION.search(sentence):
                    assert case.labels[label] == 0 and label not in case.uncertain, (label, sentence, text)
                elif HEDGE.search(sentence):
                    assert label in case.uncertain, (label, sentence, text)
                else:
                    assert case.labels[label] == 1, (label, sentence, text)
                    affirmed.add(label)
        positives = {f.label for f in case.findings}
        assert positives <= affirmed, (positives - affirmed, text)


def test_statements_agree_with_labels_and_appear_in_text():
    for index in range(300):
        case = sample_case(2, index)
        report = case.report()
        for st in report.statements:
            assert st.sentence in report.text
            if st.status == "present":
                assert case.labels[st.label] == 1
            elif st.status == "absent":
                assert case.labels[st.label] == 0 and st.label not in case.uncertain
            else:
                assert st.label in case.uncertain


def test_reports_carry_location_and_severity_words():
    seen_side = seen_severity = 0
    for index in range(200):
        case = sample_case(3, index)
        text = case.report().text.lower()
        for f in case.findings:
            if f.side in ("right", "left") and f.label != "Support Devices":
                seen_side += f.side in text
        seen_severity += any(w in text for w in ("small", "moderate", "large", "mild", "severe", "markedly"))
    assert seen_side > 50 and seen_severity > 100
