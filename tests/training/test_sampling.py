"""Repeat-factor sampling: rare labels are repeated by sqrt(t / share), common ones are not."""

import numpy as np
import pytest

from training.loop import batches
from training.sampling import epoch_indices, repeat_factors


def _labels():
    # 100 images: label 0 on all, label 1 on 25 (share 0.25), label 2 on 4 (share 0.04).
    m = np.zeros((100, 3))
    m[:, 0] = 1
    m[:25, 1] = 1
    m[:4, 2] = 1
    return m


def test_factors_follow_the_rarest_label():
    r = repeat_factors(_labels(), 0.16)
    assert r[0] == pytest.approx(2.0)  # sqrt(0.16 / 0.04): its rarest label decides
    assert r[10] == pytest.approx(1.0)  # share 0.25 >= t: not repeated
    assert r[50] == 1.0
    assert np.all(repeat_factors(_labels(), 0.0) == 1.0)
    r = repeat_factors(_labels(), 1.0)
    assert r[0] == pytest.approx(5.0) and r[10] == pytest.approx(2.0) and r[50] == 1.0
    with pytest.raises(ValueError):
        repeat_factors(_labels(), -0.1)
    with pytest.raises(ValueError):
        repeat_factors(np.zeros((0, 3)), 0.1)


def test_epoch_repeats_whole_parts_and_rounds_fractions_stochastically():
    factors = np.array([1.0, 2.0, 3.5])
    counts = np.zeros(3)
    rng = np.random.default_rng(0)
    for _ in range(400):
        order = epoch_indices(factors, rng)
        c = np.bincount(order, minlength=3)
        assert c[0] == 1 and c[1] == 2 and c[2] in (3, 4)
        counts += c
    assert counts[2] / 400 == pytest.approx(3.5, abs=0.1)


class _Toy:
    """Ten items, the first a rare label."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        import torch

        return {"image": torch.zeros(1, 2, 2), "labels": torch.tensor([float(i == 0), 1.0])}


def test_batches_draw_rare_images_more_often_and_deterministically():
    labels = np.array([[float(i == 0), 1.0] for i in range(10)])
    repeat = repeat_factors(labels, 0.9)  # item 0: sqrt(0.9 / 0.1) = 3
    it = batches(_Toy(), 2, seed=7, repeat=repeat)
    seen = [j for _ in range(60) for j in next(it)["index"]]
    again = batches(_Toy(), 2, seed=7, repeat=repeat)
    assert [j for _ in range(60) for j in next(again)["index"]] == seen
    share = seen.count(0) / len(seen)
    assert share == pytest.approx(3 / 12, abs=0.03)  # 3 of each epoch's 12 draws, against 1 of 10 without
