"""A phantom case: who (identity seed), what (findings, from a real CheXpert row), how (render seed).

`sample_case(seed, index)` is a pure function of its arguments, so a dataset of N cases is
the same whatever the number of worker processes and whichever subset is regenerated.
"""

from __future__ import annotations

import dataclasses

from model.labels import CHEXPERT_LABELS, NO_FINDING

from .findings import Finding, labels_vector, sort_findings
from .identity import STREAM_CASE, STREAM_FINDING, seed_rng
from .prevalence import POSITIVE, UNCERTAIN, sample_label_row
from .renderer import PhantomImage, cached_identity, render
from .report import Report, write_report


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    identity_seed: int
    render_seed: int
    findings: tuple[Finding, ...]
    uncertain: tuple[str, ...]
    labels: dict[str, int]

    def render(self, size: int) -> PhantomImage:
        return render(self.identity_seed, self.findings, self.render_seed, size)

    def report(self) -> Report:
        return write_report(
            cached_identity(self.identity_seed),
            list(self.findings),
            list(self.uncertain),
            self.labels,
            self.render_seed,
        )

    def manifest_row(self, path: str) -> dict:
        return {
            "id": self.id,
            "path": path,
            "identity_seed": self.identity_seed,
            "render_seed": self.render_seed,
            "findings": [f.to_json() for f in self.findings],
            "uncertain": list(self.uncertain),
            "labels": self.labels,
            "report": self.report().text,
            "synthetic": True,
        }


def sample_case(seed: int, index: int) -> Case:
    """Case `index` of the dataset with master seed `seed`."""
    rng = seed_rng(seed, STREAM_CASE, index)
    identity_seed = int(rng.integers(2**31))
    render_seed = int(rng.integers(2**31))
    row = sample_label_row(rng)
    findings, uncertain = [], []
    for k, label in enumerate(CHEXPERT_LABELS):
        if label == NO_FINDING:
            continue
        if row[k] == POSITIVE:
            f = Finding(label).resolve(seed_rng(render_seed, STREAM_FINDING, k, 1))
            findings.append(f)
        elif row[k] == UNCERTAIN:
            uncertain.append(label)
    findings = sort_findings(findings)
    labels = labels_vector(findings)
    # Keep CheXpert's own "No Finding" (its labeller leaves it 0 for some studies with no
    # positive finding), so that the phantom's prevalences are CheXpert's.
    labels[NO_FINDING] = int(row[CHEXPERT_LABELS.index(NO_FINDING)] == POSITIVE)
    return Case(f"phantom-{seed}-{index:07d}", identity_seed, render_seed, tuple(findings), tuple(uncertain), labels)
