"""Reference centroids per label (Algorithm 2, lines 2-3), written into a checkpoint.

For each label, m reference images (default 10, section 4.1) of that finding alone are encoded
by E_CXR and averaged. On phantom data the references are rendered on held-out identities
(identity seeds above 2**31, which phantom training cases never use); with real data, pass images.
"""

from __future__ import annotations

import torch

from model.labels import CHEXPERT_LABELS, NO_FINDING
from model.pipeline import CounterfactualPipeline
from model.preprocess import to_model_input

# Phantom cases draw identity seeds below 2**31; references and evaluation use seeds above it,
# so no training identity is ever a reference or an evaluation identity.
REFERENCE_IDENTITY_BASE = 2**31 + 10**6


def phantom_references(label: str, m: int, size: int, seed: int = 0):
    from training.phantom.findings import Finding
    from training.phantom.renderer import render

    findings = [] if label == NO_FINDING else [Finding(label)]
    return [render(REFERENCE_IDENTITY_BASE + seed * 1000 + i, findings, i, size).image for i in range(m)]


def compute_centroids(pipeline: CounterfactualPipeline, m: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """E_CXR centroid of m phantom references for each of the 14 labels, on the pipeline's device."""
    res = pipeline.resolution
    out = {}
    for label in CHEXPERT_LABELS:
        refs = pipeline.tensor(torch.cat([to_model_input(img, res) for img in phantom_references(label, m, res, seed)]))
        with torch.no_grad():
            out[label] = pipeline.contrastive.encode_image(refs).mean(0)
    return out
