"""Real data behind the phantom: lung masks and CheXpert prevalence."""

import numpy as np

from model.labels import CHEXPERT_LABELS
from training.phantom.cases import sample_case
from training.phantom.lung_masks import load_lung_masks
from training.phantom.prevalence import chexpert_rates


def test_lung_masks_are_real_pairs_right_lung_on_viewer_left():
    bank = load_lung_masks()
    assert bank.n_source == 517
    assert len(bank) >= 400
    assert bank.masks.shape[1:] == (2, 128, 128)
    cols = np.arange(128)
    for i in range(0, len(bank), 37):
        right, left = bank.masks[i, 0] >= 128, bank.masks[i, 1] >= 128
        assert right.sum() > 500 and left.sum() > 500
        assert (right.any(axis=0) * cols).sum() / right.any(axis=0).sum() < (left.any(axis=0) * cols).sum() / left.any(
            axis=0
        ).sum()


def test_prevalence_of_5000_cases_matches_chexpert_within_2_points():
    rates = chexpert_rates()
    # The table in DATA.md, to one decimal: the source is the real file, not our code.
    assert round(rates["Pleural Other"] * 100, 1) == 1.6 and round(rates["Support Devices"] * 100, 1) == 51.9
    counts = np.zeros(len(CHEXPERT_LABELS))
    n = 5000
    for i in range(n):
        labels = sample_case(123, i).labels
        counts += [labels[label] for label in CHEXPERT_LABELS]
    for k, label in enumerate(CHEXPERT_LABELS):
        assert abs(counts[k] / n - rates[label]) <= 0.02, (label, counts[k] / n, rates[label])
    # The long tail is there: the rarest label is much rarer than the most common.
    assert counts.min() / n < 0.03 and counts.max() / n > 0.45


def test_cases_are_pure_functions_of_seed_and_index():
    assert sample_case(1, 5) == sample_case(1, 5)
    assert sample_case(1, 5) != sample_case(1, 6)
