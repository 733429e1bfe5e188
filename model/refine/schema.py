"""The structured output of refinement, shared by every backend (validated with pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.labels import CHEXPERT_LABELS, canonical_label

Status = Literal["present", "absent", "uncertain"]
Side = Literal["right", "left", "bilateral"]
Zone = Literal["upper", "middle", "lower", "apical", "basal", "perihilar"]
Severity = Literal["mild", "small", "moderate", "large", "severe"]

# One ordinal scale for the severity words: 1 slight, 2 moderate, 3 marked.
SEVERITY_ORDINAL: dict[str, int] = {"mild": 1, "small": 1, "moderate": 2, "large": 3, "severe": 3}


class StructuredFinding(BaseModel):
    """One label as the text states it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(description="one of the 14 CheXpert labels")
    status: Status
    side: Side | None = None
    zones: tuple[Zone, ...] = ()
    severity: Severity | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return canonical_label(value)


class Refinement(BaseModel):
    """Findings in CheXpert order, the canonical condition text, and which backend made them."""

    model_config = ConfigDict(extra="forbid")

    findings: list[StructuredFinding]
    condition: str
    backend: str
    fallback_reason: str | None = Field(
        default=None, description="why the configured backend was not used, when it fell back"
    )

    def present(self) -> list[StructuredFinding]:
        return [f for f in self.findings if f.status == "present"]

    def get(self, label: str) -> StructuredFinding | None:
        label = canonical_label(label)
        return next((f for f in self.findings if f.label == label), None)


def sort_key(f: StructuredFinding) -> int:
    return CHEXPERT_LABELS.index(f.label)
