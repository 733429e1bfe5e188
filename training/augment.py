"""Acquisition augmentation for the evaluation classifier: blur, noise and exposure per image.

Not in the paper, whose classifier trains on real radiographs from many scanners, resamplings
and exposures. A phantom renders every image at one sharpness and one noise level, and a
classifier trained on that learns the render's texture along with the finding: blur, less than
the VAE's reconstructions lose, takes its score of the true counterfactuals down (measured:
docs/experiments.md), so it would judge sharpness rather than the finding. These transformations
are generic (no model of ours in the loop), so the classifier stays independent of the generator
it judges.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class AcquisitionAugment:
    """Each image, independently: with probability `p` each of blur, noise and exposure."""

    p: float = 0.8
    # Gaussian blur sigma, uniform in [0, max_blur] pixels at 128x128 (scaled with resolution):
    # 1.5 spans the VAE reconstructions' loss of detail with room beyond it.
    max_blur: float = 1.5
    # Additive Gaussian noise, std uniform in [0, max_noise] on the [-1, 1] scale (0.04 = 5 grey levels).
    max_noise: float = 0.04
    # Exposure: a gamma on [0, 1] intensities, log-uniform in [1/max_gamma, max_gamma].
    max_gamma: float = 1.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"acquisition augmentation probability must be in [0, 1], got {self.p}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`x`: (B, 1, H, W) in [-1, 1]; the same `generator` state gives the same output."""
        if self.p == 0:
            return x
        b, res = x.shape[0], x.shape[-1]

        def draw(scale: float) -> torch.Tensor:
            on = torch.rand(b, generator=generator) < self.p
            return torch.rand(b, generator=generator) * scale * on

        sigma = draw(self.max_blur * res / 128)
        noise = draw(self.max_noise)
        log_gamma = (torch.rand(b, generator=generator) * 2 - 1) * math.log(self.max_gamma)
        log_gamma = log_gamma * (torch.rand(b, generator=generator) < self.p)
        eps = torch.randn(x.shape, generator=generator)
        x = gaussian_blur(x, sigma)
        x = ((x.clamp(-1, 1) + 1) / 2) ** log_gamma.exp().view(b, 1, 1, 1) * 2 - 1
        return (x + noise.view(b, 1, 1, 1) * eps).clamp(-1, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each image of (B, 1, H, W) with its own sigma (0: unchanged)."""
    b = x.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp_min(1e-3).view(b, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # sigma ~ 0: a delta, the image unchanged
    # One group per image: (1, B, H, W) convolved with B kernels.
    y = F.pad(x.transpose(0, 1), (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, 1, -1), groups=b)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, -1, 1), groups=b)
    return y.transpose(0, 1)
