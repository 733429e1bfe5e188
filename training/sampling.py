"""Repeat-factor sampling for long-tailed multi-label data (Gupta et al., LVIS, CVPR 2019).

Not in the paper, which leaves the long tail to inference-time seed optimisation. Chest X-ray
labels are long-tailed (CheXpert: pneumonia in 2.7% of studies, pleural effusion in 38%), so a
generative stage trained on the raw distribution sees a tail report in a few percent of its
batches (pneumonia: about 860 of the 32,000 images of the default's stage 2) and learns to draw
the head's look for it. Repeat-factor sampling repeats each image, per
epoch, by

    r_i = max over the labels c of image i of  max(1, sqrt(t / f_c))

with f_c the share of images positive for c and t the threshold: labels at least as common as t
are not repeated; rarer ones are, by the square root of their rarity. The fractional part of
r_i is rounded stochastically each epoch, so every image is still seen and the epoch's
composition varies. t = 0 turns it off.
"""

from __future__ import annotations

import numpy as np


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """r_i for a (N, C) 0/1 label matrix; all ones when `threshold` is 0."""
    labels = np.asarray(labels) > 0.5
    if labels.ndim != 2 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty (N, C) matrix, got shape {labels.shape}")
    if threshold < 0:
        raise ValueError(f"the repeat threshold must be at least 0, got {threshold}")
    if threshold == 0:
        return np.ones(len(labels))
    share = labels.mean(axis=0)  # f_c; a label no image has never reaches the max below
    per_label = np.maximum(np.sqrt(threshold / np.maximum(share, 1e-12)), 1.0)
    # An image with no positive label (possible when "No Finding" is not a label) repeats once.
    return np.where(labels.any(axis=1), (labels * per_label).max(axis=1), 1.0)


def epoch_indices(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's shuffled image indices: image i floor(r_i) times, once more with probability frac(r_i)."""
    whole = np.floor(factors).astype(np.int64)
    extra = rng.random(len(factors)) < (factors - whole)
    order = np.repeat(np.arange(len(factors)), whole + extra)
    rng.shuffle(order)
    return order
