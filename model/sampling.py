"""Sampling settings of a counterfactual: DDIM steps, guidance, where sampling starts, detail.

`SamplingConfig()` is the recommended setting (the phantom-128 default's); a preset or a
checkpoint's `config.json` spells out its own, and a call of the pipeline may override each.
"""

from __future__ import annotations

import dataclasses

from .detail import MAX_DETAIL
from .modeling import StrictConfig

# Where a counterfactual's DDIM sampling starts: the inversion of the input's z^n, or noise.
SAMPLING_STARTS = ("inversion", "noise")


@dataclasses.dataclass
class SamplingConfig(StrictConfig):
    """How the pathology channel z^n of a counterfactual is sampled and composed.

    Args:
        steps: DDIM steps (1 to 1000).
        guidance: classifier-free guidance weight w of eps_u + w (eps_c - eps_u) (0 to 30).
        start: "inversion", the DDIM inversion of the input's own z^n, which keeps what z^n holds
            of the patient (not in the paper); "noise", a Gaussian seed, as in Algorithm 2 line 1.
            With several seeds optimised at once the first is the inversion, the others noise.
        detail: restore the input's fine detail that the autoencoder loses, faded out where the
            counterfactual changes the image by more than about this much on [-1, 1]
            (`model.detail`, not in the paper); 0 gives the paper's decoded image.
    """

    steps: int = 20
    guidance: float = 8.0
    start: str = "inversion"  # inversion | noise
    detail: float = 0.3  # 0 to MAX_DETAIL; 0: the paper's image

    def __post_init__(self):
        self.steps, self.guidance, self.start, self.detail = (
            int(self.steps),
            float(self.guidance),
            str(self.start),
            float(self.detail),
        )
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if not 0.0 <= self.guidance <= 30.0:
            raise ValueError(f"guidance must be between 0 and 30, got {self.guidance}")
        if self.start not in SAMPLING_STARTS:
            raise ValueError(f"start must be one of {', '.join(SAMPLING_STARTS)}, got {self.start!r}")
        if not 0.0 <= self.detail <= MAX_DETAIL:
            raise ValueError(f"detail must be between 0 and {MAX_DETAIL}, got {self.detail}")
