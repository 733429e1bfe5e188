"""The canonical condition text: one fixed form, built from the present findings only.

"moderate left pleural effusion; mild cardiomegaly" is what the diffusion model is trained
on and what every request is turned into, whatever words the report or the clinician used.
Form: findings in CheXpert order, each "[severity] [side] [zones] label", lower case, joined by
"; "; "no finding" when nothing is present.
"""

from __future__ import annotations

from collections.abc import Iterable

from model.labels import CHEXPERT_LABELS, NO_FINDING

from .schema import StructuredFinding

NO_FINDING_TEXT = "no finding"


def condition_text(findings: Iterable[StructuredFinding]) -> str:
    present = sorted(
        (f for f in findings if f.status == "present" and f.label != NO_FINDING),
        key=lambda f: CHEXPERT_LABELS.index(f.label),
    )
    if not present:
        return NO_FINDING_TEXT
    parts = []
    for f in present:
        words = [f.severity, f.side, *f.zones, f.label.lower()]
        parts.append(" ".join(w for w in words if w))
    return "; ".join(parts)
