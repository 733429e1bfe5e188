"""`Refiner`: choose a backend, fall back to the rules, build the canonical condition text."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.labels import CHEXPERT_LABELS, NO_FINDING

from .condition import condition_text
from .openai_backend import BackendError, chat_findings
from .rules import refine_findings
from .schema import Refinement, StructuredFinding, sort_key


class RefinerSettings(BaseSettings):
    """Environment variables `WHATIF_REFINER_*`. The default backend needs none of them."""

    model_config = SettingsConfigDict(env_prefix="WHATIF_REFINER_", extra="ignore")

    backend: str = Field("rules", description="'rules' (offline, default) or 'openai' (an OpenAI-compatible endpoint)")
    base_url: str | None = Field(None, description="e.g. http://localhost:8000/v1 for a local server")
    model: str | None = Field(None, description="model name the endpoint serves")
    api_key: str | None = Field(None, description="bearer token, if the endpoint wants one (no default)")
    timeout_s: float = Field(20.0, gt=0, description="per-request time-out")


class NoFindingRecognised(ValueError):
    """A request in which no finding (and no 'normal') could be recognised."""


UNDERSTOOD_HELP = (
    "understood findings: "
    + ", ".join(label.lower() for label in CHEXPERT_LABELS if label != NO_FINDING)
    + ", or 'no finding'; with sides (right, left, bilateral), zones (upper, middle, lower, apical, basal, "
    "perihilar) and severities (mild, small, moderate, large, severe), e.g. 'small left pleural effusion'"
)


class Refiner:
    """Free text -> `Refinement`. Deterministic with the default (rules) backend."""

    def __init__(self, settings: RefinerSettings | None = None):
        self.settings = settings or RefinerSettings()
        if self.settings.backend not in ("rules", "openai"):
            raise ValueError(f"unknown refiner backend {self.settings.backend!r}; use 'rules' or 'openai'")
        if self.settings.backend == "openai" and not (self.settings.base_url and self.settings.model):
            raise ValueError("the 'openai' refiner backend needs WHATIF_REFINER_BASE_URL and WHATIF_REFINER_MODEL")

    def __call__(self, text: str) -> Refinement:
        return self._refine(text)[0]

    def _refine(self, text: str) -> tuple[Refinement, bool]:
        """The refinement, and whether the rules recognised any finding or a 'normal' statement."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        fallback = None
        if self.settings.backend == "openai":
            s = self.settings
            try:
                findings = chat_findings(text, s.base_url, s.model, s.api_key, s.timeout_s)
                findings = _with_no_finding(sorted(findings, key=sort_key))
                understood = any(f.label != NO_FINDING for f in findings) or refine_findings(text)[1]
                return Refinement(findings=findings, condition=condition_text(findings), backend="openai"), understood
            except BackendError as exc:
                fallback = f"openai backend failed: {exc}; used the rule backend"
        findings, understood = refine_findings(text)
        result = Refinement(
            findings=findings, condition=condition_text(findings), backend="rules", fallback_reason=fallback
        )
        return result, understood

    def request(self, text: str) -> Refinement:
        """Refine a clinician's request; an error if no finding could be recognised in it."""
        if not text or not text.strip():
            raise NoFindingRecognised(f"the target text is empty; {UNDERSTOOD_HELP}")
        result, understood = self._refine(text)
        if not understood:
            raise NoFindingRecognised(f"no finding recognised in {text.strip()[:80]!r}; {UNDERSTOOD_HELP}")
        return result


def _with_no_finding(findings: list[StructuredFinding]) -> list[StructuredFinding]:
    pathologies = [f for f in findings if f.label not in (NO_FINDING, "Support Devices") and f.status != "absent"]
    if not pathologies and not any(f.label == NO_FINDING for f in findings):
        findings = [StructuredFinding(label=NO_FINDING, status="present"), *findings]
    return findings


@lru_cache(maxsize=1)
def _default() -> Refiner:
    return Refiner()


def refine(text: str) -> Refinement:
    """Refine a report or request with the backend from the environment (rules by default)."""
    return _default()(text)


def refine_request(text: str) -> Refinement:
    return _default().request(text)
