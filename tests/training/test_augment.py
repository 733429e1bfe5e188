"""The evaluation classifier's acquisition augmentation: per-image blur, noise and exposure."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from training.augment import AcquisitionAugment, gaussian_blur


def test_blur_matches_scipy_per_image_and_zero_sigma_is_identity():
    x = torch.rand(3, 1, 48, 48) * 2 - 1
    y = gaussian_blur(x, torch.tensor([0.0, 1.0, 1.5]))
    assert torch.allclose(y[0], x[0], atol=1e-6)
    for i, sigma in ((1, 1.0), (2, 1.5)):
        ref = gaussian_filter(x[i, 0].numpy(), sigma, truncate=3.0)
        # Interior only: the borders pad by reflection with or without the edge pixel.
        assert np.abs(y[i, 0].numpy() - ref)[6:-6, 6:-6].max() < 2e-3
    assert float(y[2].std()) < float(y[1].std()) < float(x[1].std())


def test_augment_is_seeded_bounded_and_varies_per_image():
    x = torch.zeros(16, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 0.8
    aug = AcquisitionAugment(p=1.0)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    assert a.min() >= -1 and a.max() <= 1
    # Each image draws its own blur, noise and exposure: the 16 copies come out different.
    assert len({round(float(v), 5) for v in a.flatten(1).std(1)}) == 16
    assert torch.equal(AcquisitionAugment(p=0.0)(x, torch.Generator().manual_seed(3)), x)


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        AcquisitionAugment(p=1.5)
