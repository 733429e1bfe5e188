"""Free-text reports in the style of IU-Xray (Open-i) reports, with their structured truth.

Each report has INDICATION, COMPARISON, FINDINGS and IMPRESSION sections, says every drawn
finding with its side, zone and severity in the words radiologists use, negates some absent
findings ("No pneumothorax."), hedges the uncertain ones ("Cannot exclude pneumonia."), and
adds sentences that matter for no label. Every sentence that concerns a label is recorded as
a `Statement`, so the structured truth is exactly what the text asserts, by construction, and
the tests check the text against the labels independently of these records.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model.labels import CHEXPERT_LABELS, NO_FINDING, SUPPORT_DEVICES

from .findings import Finding
from .identity import STREAM_FINDING, STREAM_REPORT, Identity, seed_rng
from .lesions import device_kinds

PRESENT, ABSENT, UNCERTAIN = "present", "absent", "uncertain"
PATHOLOGIES = tuple(label for label in CHEXPERT_LABELS if label not in (NO_FINDING, SUPPORT_DEVICES))


@dataclasses.dataclass(frozen=True)
class Statement:
    label: str
    status: str  # present | absent | uncertain
    sentence: str


@dataclasses.dataclass(frozen=True)
class Report:
    text: str
    statements: tuple[Statement, ...]

    def truth(self) -> dict[str, str]:
        """label -> status, for every label the report speaks about."""
        return {s.label: s.status for s in self.statements}


_SIZE = {"mild": "small", "moderate": "moderate", "severe": "large"}
_ADV = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}
_ADJ = {"mild": "mild", "moderate": "moderate", "severe": "severe"}


def _where(f: Finding, pick) -> str:
    """'the right lower zone', 'the left lung', 'both lungs', 'both lower zones'."""
    side, zone = f.side, f.zone
    if side == "bilateral":
        return pick([f"both {zone} zones", f"the {zone} zones bilaterally"]) if zone else "both lungs"
    if zone:
        return pick([f"the {side} {zone} zone", f"the {side} {zone} lung zone"])
    return f"the {side} lung"


def _present(f: Finding, pick, render_seed: int) -> tuple[str, str]:
    """(findings sentence, impression phrase) for a drawn finding."""
    sev, side, where = f.severity, f.side, (_where(f, pick) if f.location else "")
    plural = side == "bilateral"
    label = f.label
    if label == "Pleural Effusion":
        noun = "pleural effusions" if plural else "pleural effusion"
        size = _SIZE[sev]
        s = pick(
            [
                f"There {'are' if plural else 'is a'} {size} {side} {noun}.",
                f"{size.capitalize()} {side} {noun}{' are' if plural else ' is'} present.",
                f"Blunting of the {side} costophrenic angle{'s' if plural else ''} "
                f"consistent with {'' if plural else 'a '}{size} {noun}.",
            ]
        )
        return s, f"{size.capitalize()} {side} {noun}."
    if label == "Cardiomegaly":
        s = pick(
            [
                f"The heart is {_ADV[sev]} enlarged.",
                f"{_ADJ[sev].capitalize()} cardiomegaly.",
                f"The cardiac silhouette is {_ADV[sev]} enlarged.",
            ]
        )
        return s, f"{_ADJ[sev].capitalize()} cardiomegaly."
    if label == "Pneumothorax":
        noun = "pneumothoraces" if plural else "pneumothorax"
        s = pick(
            [
                f"There {'are' if plural else 'is a'} {_SIZE[sev]} {side} {noun}.",
                f"A {side} pleural line is seen with absent lung markings "
                f"peripherally, consistent with a {_SIZE[sev]} {noun}.",
            ]
        )
        return s, f"{_SIZE[sev].capitalize()} {side} {noun}."
    if label == "Consolidation":
        adj = {"mild": "focal", "moderate": "", "severe": "dense"}[sev]
        s = pick(
            [
                f"There is {adj + ' ' if adj else ''}consolidation in {where}.",
                f"{(adj + ' consolidation').strip().capitalize()} in {where} with air bronchograms.",
            ]
        )
        return s, f"{_ADJ[sev].capitalize()} consolidation in {where}."
    if label == "Pneumonia":
        s = pick(
            [
                f"Findings in {where} consistent with {_ADJ[sev]} pneumonia.",
                f"There is {_ADJ[sev]} pneumonia in {where}.",
            ]
        )
        return s, f"{_ADJ[sev].capitalize()} pneumonia in {where}."
    if label == "Atelectasis":
        kind = {"mild": "mild subsegmental", "moderate": "moderate", "severe": "severe"}[sev]
        s = pick(
            [
                f"Plate-like {kind} atelectasis in {where}.",
                f"There is {kind} atelectasis in {where}.",
            ]
        )
        return s, f"{kind.capitalize()} atelectasis in {where}."
    if label == "Edema":
        s = pick(
            [
                f"{_ADJ[sev].capitalize()} pulmonary edema with Kerley B lines.",
                f"Bilateral interstitial thickening and Kerley B lines consistent with {_ADJ[sev]} interstitial edema.",
                f"There is {_ADJ[sev]} bilateral pulmonary edema.",
            ]
        )
        return s, f"{_ADJ[sev].capitalize()} pulmonary edema."
    if label == "Lung Lesion":
        noun = {"mild": "small nodule", "moderate": "moderate-sized nodule", "severe": "large mass"}[sev]
        s = pick([f"There is a {noun} in {where}.", f"A {noun} projects over {where}."])
        return s, f"{noun.capitalize()} in {where}."
    if label == "Fracture":
        kind = {"mild": "nondisplaced", "moderate": "moderately displaced", "severe": "displaced"}[sev]
        s = pick(
            [
                f"There is a {kind} fracture of a {side} rib in the {f.zone} zone.",
                f"{kind.capitalize()} {side} rib fracture projecting over the {f.zone} zone.",
            ]
        )
        return s, f"{kind.capitalize()} {side} rib fracture."
    if label == "Lung Opacity":
        adj = {"mild": "faint", "moderate": "moderate", "severe": "extensive"}[sev]
        s = pick([f"There is {adj} hazy opacity in {where}.", f"{adj.capitalize()} ill-defined opacity in {where}."])
        return s, f"{adj.capitalize()} opacity in {where}."
    if label == "Enlarged Cardiomediastinum":
        s = pick(
            [
                f"The mediastinum is {_ADV[sev]} widened.",
                f"The cardiomediastinal silhouette is {_ADV[sev]} enlarged.",
            ]
        )
        return s, f"{_ADJ[sev].capitalize()} widening of the mediastinum."
    if label == "Pleural Other":
        if f.zone == "upper":
            s = f"{_ADJ[sev].capitalize()} {side} apical pleural thickening."
        else:
            s = pick(
                [
                    f"{_ADJ[sev].capitalize()} pleural thickening along {where}.",
                    f"There is {_ADJ[sev]} pleural thickening in {where}.",
                ]
            )
        return s, f"{_ADJ[sev].capitalize()} {side} pleural thickening."
    if label == SUPPORT_DEVICES:
        kinds = device_kinds(seed_rng(render_seed, STREAM_FINDING, CHEXPERT_LABELS.index(SUPPORT_DEVICES)))
        names = {
            "ett": "an endotracheal tube with its tip above the carina",
            "ngt": "a nasogastric tube coursing into the stomach",
            "line": f"a {side} central venous catheter with its tip in the superior vena cava",
            "pacer": f"a {side} chest wall pacemaker with a lead in the right ventricle",
        }
        parts = [names[k] for k in kinds]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"There is {listed}.", "Support devices as described."
    raise AssertionError(label)


# Sentences that negate one label each, and one that negates several.
_NEGATIONS = {
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."],
    "Pleural Effusion": ["No pleural effusion.", "The costophrenic angles are sharp, without effusion."],
    "Cardiomegaly": ["The heart is normal in size.", "Heart size is within normal limits.", "No cardiomegaly."],
    "Edema": ["No pulmonary edema.", "There is no edema."],
    "Enlarged Cardiomediastinum": ["The mediastinal contours are normal.", "Normal mediastinal silhouette."],
    "Fracture": ["No acute bony abnormality.", "No displaced rib fracture."],
    "Lung Lesion": ["No suspicious pulmonary nodules or masses.", "No pulmonary nodule."],
    "Consolidation": ["No focal consolidation.", "There is no consolidation."],
    "Pleural Other": ["No pleural thickening."],
    "Atelectasis": ["No atelectasis."],
}
_AIRSPACE = ("Consolidation", "Pneumonia", "Lung Opacity")
_HEDGES = {
    "Pneumonia": ["Cannot exclude early pneumonia.", "Possible pneumonia.", "Infection cannot be excluded."],
    "Atelectasis": ["Possible atelectasis at the bases.", "Questionable subsegmental atelectasis."],
    "Consolidation": ["Possible consolidation at the lung bases.", "Cannot exclude consolidation."],
    "Pleural Effusion": ["Possible trace pleural effusion.", "Cannot exclude a small pleural effusion."],
    "Edema": ["Possible mild edema.", "Cannot exclude mild pulmonary edema."],
    "Cardiomegaly": ["Cannot exclude mild cardiomegaly.", "Possible mild cardiomegaly."],
    "Enlarged Cardiomediastinum": ["The mediastinum may be slightly widened.", "Possible mediastinal widening."],
    "Lung Opacity": ["Questionable opacity at the lung bases.", "Possible subtle opacity."],
    "Lung Lesion": [
        "Possible small nodule, which may represent a nipple shadow.",
        "Cannot exclude a pulmonary nodule.",
    ],
    "Pneumothorax": ["Cannot exclude a tiny pneumothorax.", "Possible small apical pneumothorax."],
    "Pleural Other": ["Possible pleural thickening.", "Questionable pleural thickening."],
    "Fracture": ["Possible old rib fracture.", "Cannot exclude a rib fracture."],
    SUPPORT_DEVICES: ["Possible overlying external lead."],
}
_INDICATIONS = [
    "Shortness of breath.",
    "Chest pain.",
    "Cough and fever.",
    "Pre-operative evaluation.",
    "Follow-up.",
    "Dyspnea on exertion.",
    "Hypoxia.",
    "Fall.",
]
_IRRELEVANT = [
    "Degenerative changes of the thoracic spine.",
    "The visualized upper abdomen is unremarkable.",
    "Limited examination due to patient body habitus.",
    "Calcified atherosclerotic plaque in the aortic arch.",
    "Mild thoracic dextroscoliosis.",
    "Stable appearance of the chest.",
]


def write_report(
    identity: Identity,
    findings: list[Finding],
    uncertain: list[str],
    labels: dict[str, int],
    render_seed: int,
) -> Report:
    """The report of one case. `labels` are the case's 1/0 labels (No Finding included)."""
    rng = seed_rng(render_seed, STREAM_REPORT)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    statements: list[Statement] = []
    body: list[str] = []
    impression: list[str] = []
    present = {f.label for f in findings}
    absent = [label for label in PATHOLOGIES if label not in present and label not in uncertain and not labels[label]]

    for f in findings:
        sentence, short = _present(f, pick, render_seed)
        statements.append(Statement(f.label, PRESENT, sentence))
        body.append(sentence)
        impression.append(short)

    # Negations: a random subset of absent findings, as a reader of a normal region writes them.
    if all(a in absent for a in _AIRSPACE) and rng.random() < 0.7:
        sentence = pick(["No focal airspace disease.", "The lungs are clear.", "No focal airspace consolidation."])
        statements += [Statement(a, ABSENT, sentence) for a in _AIRSPACE]
        body.append(sentence)
    for label in absent:
        if label in _NEGATIONS and rng.random() < 0.6:
            sentence = pick(_NEGATIONS[label])
            statements.append(Statement(label, ABSENT, sentence))
            body.append(sentence)

    for label in uncertain:
        sentence = pick(_HEDGES[label])
        statements.append(Statement(label, UNCERTAIN, sentence))
        body.append(sentence)
        impression.append(sentence)

    if rng.random() < 0.5:
        body.append(pick(_IRRELEVANT))
    if abs(identity.rotation) > np.radians(2.0) and rng.random() < 0.5:
        body.append("The patient is slightly rotated.")

    # Keep the order of a real report: findings first, negations, then the rest, shuffled a little.
    order = np.argsort(np.arange(len(body)) + rng.uniform(0, 1.5, len(body)))
    body = [body[i] for i in order]

    if labels[NO_FINDING] and not uncertain:
        normal = pick(["No acute cardiopulmonary abnormality.", "No active disease.", "Normal chest."])
        statements += [Statement(p, ABSENT, normal) for p in PATHOLOGIES]
        impression = [normal] + [s for s in impression if s.startswith("Support")]
    elif not impression:
        impression = ["No significant interval change."]

    sex = "female" if identity.female else "male"
    indication = pick(_INDICATIONS)
    if SUPPORT_DEVICES in present and rng.random() < 0.5:
        indication = "Line placement."
    comparison = pick(["None.", "XXXX.", "Chest radiograph from XXXX."])
    if len(impression) > 1:
        impression_text = " ".join(f"{i + 1}. {s}" for i, s in enumerate(impression))
    else:
        impression_text = impression[0]
    text = (
        f"INDICATION: XXXX-year-old {sex} with {indication[0].lower()}{indication[1:]}\n"
        f"COMPARISON: {comparison}\n"
        f"FINDINGS: {' '.join(body) if body else 'The lungs are clear.'}\n"
        f"IMPRESSION: {impression_text}"
    )
    if not body:
        statements += [Statement(a, ABSENT, "The lungs are clear.") for a in _AIRSPACE if a in absent]
    return Report(text, tuple(statements))
