"""Which findings a phantom case has: rows of the real CheXpert label table, drawn at random.

Sampling whole rows of `chexpert_train.csv.gz` (223,414 studies, shipped in torchxrayvision)
reproduces CheXpert's prevalences and its co-occurrence (effusion with atelectasis and
devices, the rare tail of pleural other, pneumonia, fracture, lung lesion) without a model of
either. Uncertain labels (-1) are not drawn; the report hedges them ("cannot exclude ...") and
the label vector counts them as 0 (CheXpert's U-Zeros policy, made explicit here).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from model.labels import CHEXPERT_LABELS

from .cache import cache_dir, save_npz_atomic
from .lung_masks import data_path

POSITIVE, NEGATIVE, UNCERTAIN, BLANK = 1, 0, -1, -2
_CACHE_VERSION = 1


@functools.lru_cache(maxsize=1)
def chexpert_label_table() -> np.ndarray:
    """int8 (N, 14) in CHEXPERT_LABELS order: 1 positive, 0 negative, -1 uncertain, -2 blank."""
    path = data_path("chexpert_train.csv.gz")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cpath = cache_dir() / f"chexpert_labels_v{_CACHE_VERSION}_{digest}.npz"
    if cpath.exists():
        with np.load(cpath, allow_pickle=False) as z:
            return z["labels"]
    import pandas as pd

    frame = pd.read_csv(path, usecols=list(CHEXPERT_LABELS))
    table = frame[list(CHEXPERT_LABELS)].fillna(BLANK).to_numpy().astype(np.int8)
    save_npz_atomic(cpath, labels=table)
    return table


def chexpert_rates() -> dict[str, float]:
    """Share of all CheXpert studies positive for each label."""
    table = chexpert_label_table()
    return {label: float((table[:, k] == POSITIVE).mean()) for k, label in enumerate(CHEXPERT_LABELS)}


def sample_label_row(rng: np.random.Generator) -> np.ndarray:
    """One CheXpert row (int8, 14), uniformly among all studies."""
    table = chexpert_label_table()
    return table[int(rng.integers(table.shape[0]))]
