"""The verdict on a counterfactual: did the edit do what was asked, judged by checks no generation
stage optimised against.

- The evaluation classifier (`model.eval_classifier`: never a training signal of the generator
  nor of seed optimisation) must put each added finding above its operating threshold and above
  the input's probability, and each removed finding below the threshold.
- The change must lie on the requested side (its mass, |result - input|, on that side of the
  input's midline).
- The input must look like the training data (the VAE's reconstruction error, in training SDs:
  `QualityReport.ood_score`); otherwise no other check can be trusted.

The first failing check, in that order of gravity (input, target, removal, side), names the verdict.
"""

from __future__ import annotations

import dataclasses

from .modeling import StrictConfig

VERDICTS = ("passed", "target not reached", "wrong side", "finding not removed", "input unlike the training data")


@dataclasses.dataclass
class VerdictConfig(StrictConfig):
    """The verdict's thresholds (a checkpoint's `config["verdict"]`).

    Args:
        threshold: the evaluation classifier's operating threshold: a finding is present above it.
        ood_limit: inputs whose reconstruction error is more than this many training SDs above the
            training mean are unlike the training data.
        side_share: the share of the change that must lie on the requested side.
    """

    threshold: float = 0.5
    ood_limit: float = 3.0
    side_share: float = 0.8

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"verdict threshold must be in (0, 1), got {self.threshold}")
        if not 0.5 <= self.side_share <= 1.0:
            raise ValueError(f"verdict side_share must be in [0.5, 1], got {self.side_share}")
        if self.ood_limit <= 0:
            raise ValueError(f"verdict ood_limit must be positive, got {self.ood_limit}")


@dataclasses.dataclass
class Verdict:
    status: str  # one of VERDICTS
    reason: str  # one sentence for the person reading the result
    numbers: dict  # what the checks measured

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def score(self) -> float:
        """How well the edit meets its target (ranks candidates): added findings' probabilities up,
        removed findings' down."""
        added = self.numbers.get("added", {})
        removed = self.numbers.get("removed", {})
        parts = [v["output"] for v in added.values()] + [1.0 - v["output"] for v in removed.values()]
        return sum(parts) / len(parts) if parts else 1.0

    def to_dict(self) -> dict:
        return {"status": self.status, "passed": self.passed, "reason": self.reason, "numbers": self.numbers}


def judge(
    p_input: dict[str, float],
    p_output: dict[str, float],
    added: list[str],
    removed: list[str],
    side: str | None,
    share: float | None,
    ood_score: float,
    config: VerdictConfig,
) -> Verdict:
    """The verdict from the evaluation classifier's probabilities per label on the input and the
    output, the labels the request adds and removes, the requested side and the share of the
    change on it, and the input's OOD score."""
    thr = config.threshold
    numbers = {
        "threshold": thr,
        "added": {k: {"input": round(p_input[k], 4), "output": round(p_output[k], 4)} for k in added},
        "removed": {k: {"input": round(p_input[k], 4), "output": round(p_output[k], 4)} for k in removed},
        "side": side,
        "side_share": None if share is None else round(share, 4),
        "ood_score": round(float(ood_score), 3),
    }
    if ood_score > config.ood_limit:
        return Verdict(
            "input unlike the training data",
            f"the input is {ood_score:.1f} SDs from the training data (limit {config.ood_limit:g}): "
            "the model's output and its checks cannot be trusted on it",
            numbers,
        )
    # A finding the input already shows counts as reached when it stays above the threshold.
    missed = [k for k in added if not (p_output[k] >= thr and (p_output[k] > p_input[k] or p_input[k] >= thr))]
    if missed:
        worst = missed[0]
        return Verdict(
            "target not reached",
            f"{worst}: the evaluation classifier gives {p_output[worst]:.2f} on the result "
            f"(input {p_input[worst]:.2f}, threshold {thr:g})",
            numbers,
        )
    kept = [k for k in removed if p_output[k] >= thr]
    if kept:
        worst = kept[0]
        return Verdict(
            "finding not removed",
            f"{worst}: the evaluation classifier still gives {p_output[worst]:.2f} on the result "
            f"(input {p_input[worst]:.2f}, threshold {thr:g})",
            numbers,
        )
    if side is not None and share is not None and share < config.side_share:
        return Verdict(
            "wrong side",
            f"{share:.0%} of the change lies on the patient's {side}, below {config.side_share:.0%}",
            numbers,
        )
    return Verdict("passed", "the result meets every check", numbers)
