"""Class-balanced phantoms for the evaluation classifier.

CheXpert's prevalences (what `PhantomDataset` reproduces) give the generative stages the real
long tail, but a classifier trained on them sees a fracture or a pneumonia in a few percent of
images and measures the tail badly, which is what it is there to measure (paper Table 2). Here
each case has one finding drawn uniformly from the 13 the phantom draws (or none, as often as
any one finding), with probability 0.3 a second one, locations and severities sampled by
`Finding.resolve`. Identities are drawn below 2**31, away from the evaluation identities.
"""

from __future__ import annotations

import torch

from model.labels import CHEXPERT_LABELS
from training.phantom.findings import LABEL_SPECS, Finding, labels_vector, sort_findings
from training.phantom.identity import STREAM_CASE, STREAM_FINDING, seed_rng
from training.phantom.renderer import render

from .pixels import phantom_tensor

DRAWABLE = tuple(LABEL_SPECS)
SECOND_FINDING = 0.3


class BalancedPhantomDataset(torch.utils.data.Dataset):
    """Cases `0..n-1` of master seed `seed`: images and 14 labels (no report text)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        if n < 1:
            raise ValueError("a phantom dataset needs at least one case")
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def findings(self, i: int) -> tuple[int, int, list[Finding]]:
        rng = seed_rng(self.seed, STREAM_CASE, i)
        identity, render_seed = int(rng.integers(2**31)), int(rng.integers(2**31))
        k = int(rng.integers(len(DRAWABLE) + 1))
        labels = [] if k == len(DRAWABLE) else [DRAWABLE[k]]
        if labels and rng.random() < SECOND_FINDING:
            labels.append(DRAWABLE[int(rng.choice([j for j in range(len(DRAWABLE)) if j != k]))])
        found = [Finding(lab).resolve(seed_rng(render_seed, STREAM_FINDING, j, 2)) for j, lab in enumerate(labels)]
        return identity, render_seed, sort_findings(found)

    def __getitem__(self, i: int) -> dict:
        identity, render_seed, found = self.findings(i)
        vec = labels_vector(found)
        return {
            "image": phantom_tensor(render(identity, found, render_seed, self.size).image, self.size),
            "labels": torch.tensor([float(vec[label]) for label in CHEXPERT_LABELS]),
        }
