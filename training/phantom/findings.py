"""What the phantom can draw: one `Finding` per label, with the locations and severities it allows.

A finding is `{label, location, severity}` as in the manifest. `location` is a side
("right", "left", "bilateral"), optionally followed by a zone ("upper", "middle", "lower"),
for example "left lower"; it is `None` for findings that have no side (cardiomegaly, edema is
always "bilateral"). `severity` is "mild", "moderate" or "severe", or `None` for support
devices. Validation happens here, once, so the renderer can trust what it is given and the
command line can turn a bad request into a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from model.labels import CHEXPERT_LABELS, NO_FINDING, SEVERITIES, SIDES, SUPPORT_DEVICES, ZONES, canonical_label


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """Which locations and severities a label takes, and how often each occurs when sampled.

    The probabilities are the project's own choices (CheXpert has no locations or
    severities); they follow the usual clinical picture: effusions often bilateral,
    pneumothorax and lesions one-sided, atelectasis and pneumonia mostly basal.
    """

    sides: Mapping[str, float] | None = None  # None: the finding has no side
    zones: Mapping[str, float] | None = None  # None: the finding has no zone
    severities: Mapping[str, float] | None = None  # None: the finding has no severity


_SEV = {"mild": 0.45, "moderate": 0.35, "severe": 0.20}
_BASAL = {"upper": 0.2, "middle": 0.25, "lower": 0.55}

LABEL_SPECS: dict[str, LabelSpec] = {
    "Enlarged Cardiomediastinum": LabelSpec(severities=_SEV),
    "Cardiomegaly": LabelSpec(severities=_SEV),
    "Lung Opacity": LabelSpec({"right": 0.4, "left": 0.3, "bilateral": 0.3}, _BASAL, _SEV),
    "Lung Lesion": LabelSpec({"right": 0.55, "left": 0.45}, {"upper": 0.4, "middle": 0.3, "lower": 0.3}, _SEV),
    "Edema": LabelSpec({"bilateral": 1.0}, None, _SEV),
    "Consolidation": LabelSpec({"right": 0.45, "left": 0.35, "bilateral": 0.2}, _BASAL, _SEV),
    "Pneumonia": LabelSpec({"right": 0.45, "left": 0.35, "bilateral": 0.2}, _BASAL, _SEV),
    "Atelectasis": LabelSpec(
        {"right": 0.35, "left": 0.3, "bilateral": 0.35}, {"upper": 0.1, "middle": 0.2, "lower": 0.7}, _SEV
    ),
    "Pneumothorax": LabelSpec({"right": 0.48, "left": 0.45, "bilateral": 0.07}, None, _SEV),
    "Pleural Effusion": LabelSpec({"right": 0.3, "left": 0.25, "bilateral": 0.45}, None, _SEV),
    "Pleural Other": LabelSpec(
        {"right": 0.4, "left": 0.35, "bilateral": 0.25}, {"upper": 0.45, "middle": 0.3, "lower": 0.25}, _SEV
    ),
    "Fracture": LabelSpec({"right": 0.5, "left": 0.5}, {"upper": 0.3, "middle": 0.45, "lower": 0.25}, _SEV),
    # Devices: which ones (tubes, central line, pacemaker) follow from the render seed; the
    # side says where a central line or pacemaker enters.
    "Support Devices": LabelSpec({"right": 0.6, "left": 0.4}),
}

DRAWABLE_LABELS: tuple[str, ...] = tuple(label for label in CHEXPERT_LABELS if label != NO_FINDING)


class FindingError(ValueError):
    """A finding the phantom cannot draw: unknown label, impossible location or severity."""


@dataclasses.dataclass(frozen=True, order=True)
class Finding:
    """One finding to draw. Use `Finding.parse` to build one from user input."""

    label: str
    location: str | None = None
    severity: str | None = None

    @property
    def side(self) -> str | None:
        return self.location.split()[0] if self.location else None

    @property
    def zone(self) -> str | None:
        parts = self.location.split() if self.location else []
        return parts[1] if len(parts) > 1 else None

    def to_json(self) -> dict:
        return {"label": self.label, "location": self.location, "severity": self.severity}

    @classmethod
    def parse(cls, obj: Mapping | str) -> Finding:
        """Validate `{label, location?, severity?}` (or a bare label) against `LABEL_SPECS`."""
        if isinstance(obj, str):
            obj = {"label": obj}
        if not isinstance(obj, Mapping) or "label" not in obj:
            raise FindingError(f"a finding is an object with a 'label', got {obj!r}")
        unknown = set(obj) - {"label", "location", "severity"}
        if unknown:
            raise FindingError(f"unknown key(s) {sorted(unknown)} in finding {dict(obj)!r}")
        try:
            label = canonical_label(obj["label"])
        except ValueError as exc:
            raise FindingError(str(exc)) from None
        if label == NO_FINDING:
            raise FindingError("'No Finding' is not drawn: pass an empty list (or `none`) for a normal image")
        spec = LABEL_SPECS[label]
        location = _normalise_words(obj.get("location"))
        severity = _normalise_words(obj.get("severity"))

        if location is not None:
            words = location.split()
            if spec.sides is None:
                raise FindingError(f"{label} has no location, got {location!r}")
            if words[0] not in SIDES or len(words) > 2:
                raise FindingError(
                    f"location {location!r} of {label}: expected a side ({', '.join(SIDES)}) "
                    f"optionally followed by a zone ({', '.join(ZONES)})"
                )
            if words[0] not in spec.sides:
                raise FindingError(
                    f"{label} cannot be {words[0]!r} in the phantom; possible sides: {', '.join(spec.sides)}"
                )
            if len(words) == 2:
                if words[1] not in ZONES:
                    raise FindingError(f"zone {words[1]!r} of {label}: expected one of {', '.join(ZONES)}")
                if spec.zones is None:
                    raise FindingError(f"{label} has a side but no zone in the phantom, got {location!r}")
        if severity is not None:
            if spec.severities is None:
                raise FindingError(f"{label} has no severity, got {severity!r}")
            if severity not in SEVERITIES:
                raise FindingError(f"severity {severity!r} of {label}: expected one of {', '.join(SEVERITIES)}")
        return cls(label, location, severity)

    def resolve(self, rng: np.random.Generator) -> Finding:
        """Fill in a missing side, zone or severity by sampling `LABEL_SPECS` with `rng`."""
        spec = LABEL_SPECS[self.label]
        location = self.location
        if spec.sides is not None:
            side = self.side or _choice(rng, spec.sides)
            zone = self.zone
            if spec.zones is not None and zone is None:
                zone = _choice(rng, spec.zones)
            location = f"{side} {zone}" if zone else side
        severity = self.severity
        if spec.severities is not None and severity is None:
            severity = _choice(rng, spec.severities)
        return Finding(self.label, location, severity)

    @property
    def is_resolved(self) -> bool:
        spec = LABEL_SPECS[self.label]
        return (
            (spec.sides is None) == (self.side is None)
            and (spec.zones is None) == (self.zone is None)
            and (spec.severities is None) == (self.severity is None)
        )


def _normalise_words(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FindingError(f"expected a string, got {value!r}")
    text = " ".join(value.lower().split())
    return text or None


def _choice(rng: np.random.Generator, probs: Mapping[str, float]) -> str:
    keys = list(probs)
    p = np.asarray([probs[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def parse_findings(value: str | Sequence | None) -> list[Finding]:
    """Parse the command line's `--findings`: a JSON list as in the manifest, or `none`.

    Each label may appear once; the result is sorted in CheXpert order so that the same set
    of findings always renders the same way whatever order it was written in.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "[]", "no finding"):
            return []
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FindingError(f"--findings is neither `none` nor valid JSON ({exc.msg} at char {exc.pos})") from None
    if isinstance(value, (Mapping, str)):
        value = [value]
    if not isinstance(value, Iterable):
        raise FindingError(f"findings must be a list, got {value!r}")
    findings = [Finding.parse(item) for item in value]
    labels = [f.label for f in findings]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise FindingError(f"each label may appear once; repeated: {', '.join(dupes)}")
    return sort_findings(findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: CHEXPERT_LABELS.index(f.label))


def labels_vector(findings: Iterable[Finding]) -> dict[str, int]:
    """All 14 labels as 1/0. "No Finding" is 1 when nothing but support devices is present."""
    present = {f.label for f in findings}
    out = {label: int(label in present) for label in CHEXPERT_LABELS}
    out[NO_FINDING] = int(not (present - {SUPPORT_DEVICES}))
    return out
