"""The finding vocabulary shared by the phantom, the report refiner, the networks and the service.

Labels are CheXpert's 14 observations in CheXpert's own column order, so label vectors read
from CheXpert/MIMIC-CXR label files and the ones the project writes line up index for index.
Locations and severities are the words a radiologist uses in a report; the phantom draws a
subset of them (see `training.phantom.findings`), the refiner extracts them from text.
"""

from __future__ import annotations

import difflib

# CheXpert column order (chexpert_train.csv, MIMIC-CXR-JPG chexpert.csv).
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"

# The 11 findings of the paper's Table 2 (counterfactual evaluation), plus "No Finding" there.
PAPER_TABLE2_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
)

# Sides are the patient's: on a frontal (PA/AP) radiograph shown in the standard way the
# patient's right lung is on the viewer's left.
SIDES: tuple[str, ...] = ("right", "left", "bilateral")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")

_LABEL_BY_KEY = {label.lower(): label for label in CHEXPERT_LABELS}


def canonical_label(name: str) -> str:
    """Return the CheXpert spelling of `name` (case-insensitive), or raise `ValueError`."""
    key = " ".join(str(name).replace("_", " ").split()).lower()
    try:
        return _LABEL_BY_KEY[key]
    except KeyError:
        close = difflib.get_close_matches(key, list(_LABEL_BY_KEY), n=1, cutoff=0.75)
        hint = f" (did you mean {_LABEL_BY_KEY[close[0]]!r}?)" if close else ""
        raise ValueError(f"unknown finding label {name!r}{hint}; known labels: {', '.join(CHEXPERT_LABELS)}") from None
