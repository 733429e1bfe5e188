"""Report refinement: free text (a report or a request) -> structured findings -> condition text.

The paper conditions its diffusion model on reports that GPT-4o reduced to lesion-related
findings with location and severity (section 3.3; Table 4, row "GPT"). Here the default
backend is offline and deterministic (`RuleRefiner`: a lexicon plus NegEx-style scopes), an
OpenAI-compatible endpoint is optional, and both return the same validated schema.
"""

from .condition import condition_text
from .refiner import NoFindingRecognised, Refiner, refine, refine_request
from .schema import Refinement, StructuredFinding

__all__ = [
    "NoFindingRecognised",
    "Refinement",
    "Refiner",
    "StructuredFinding",
    "condition_text",
    "refine",
    "refine_request",
]
