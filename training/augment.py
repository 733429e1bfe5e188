"""Acquisition augmentation for the evaluation classifier and the anatomy segmenter: blur, noise
and exposure per image; for the segmenter also positioning (rotation, zoom, shift), masks with it.

Not in the paper, whose classifier trains on real radiographs from many scanners, resamplings
and exposures. A phantom renders every image at one sharpness and one noise level, and a
classifier trained on that learns the render's texture along with the finding: blur, less than
the VAE's reconstructions lose, takes its score of the true counterfactuals down (measured:
docs/experiments.md), so it would judge sharpness rather than the finding. These transformations
are generic (no model of ours in the loop), so the classifier stays independent of the generator
it judges. The segmenter sees the same, and positioning besides: a phantom is always centred and
upright, and the product must find the lungs of one rotated by a few degrees.
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
        """`x`: (B, 1, H, W) in [-1, 1]; the same `generator` state gives the same output. The draws
        are made on the generator's device (the CPU) and moved to x's device and dtype."""
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
        sigma, noise, log_gamma, eps = (t.to(x) for t in (sigma, noise, log_gamma, eps))
        x = gaussian_blur(x, sigma)
        x = ((x.clamp(-1, 1) + 1) / 2) ** log_gamma.exp().view(b, 1, 1, 1) * 2 - 1
        return (x + noise.view(b, 1, 1, 1) * eps).clamp(-1, 1)


@dataclasses.dataclass
class PositioningAugment:
    """Each image and its masks together: with probability `p` a rotation, zoom and shift, and
    independently with probability `p` an exposure gain (the image alone)."""

    p: float = 0.8
    # Rotation in degrees, uniform in [-max_rotation, max_rotation]: past the 5 the product must take.
    max_rotation: float = 8.0
    # Zoom, log-uniform in [1/max_zoom, max_zoom]; shift, uniform in +-max_shift of the side per axis.
    max_zoom: float = 1.08
    max_shift: float = 0.05
    # Exposure: [0, 1] intensities times a gain log-uniform in [1/max_gain, max_gain], clipped (the
    # product must take x0.8 to x1.2). Unlike `AcquisitionAugment`'s gamma, it saturates the brightest.
    max_gain: float = 1.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"positioning augmentation probability must be in [0, 1], got {self.p}")

    def __call__(
        self, x: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`x`: (B, 1, H, W) in [-1, 1], `masks`: (B, C, H, W) in [0, 1]; the same `generator` state
        gives the same output. Outside the moved image is black (as an image rotated by PIL) and
        outside every mask. The draws are made on the generator's device (the CPU) and moved."""
        if self.p == 0:
            return x, masks
        b = x.shape[0]

        def uniform(scale: float) -> torch.Tensor:
            return (torch.rand(b, generator=generator) * 2 - 1) * scale

        moved = torch.rand(b, generator=generator) < self.p
        angle = uniform(math.radians(self.max_rotation)) * moved
        zoom = (uniform(math.log(self.max_zoom)) * moved).exp()
        shift = torch.stack([uniform(2 * self.max_shift), uniform(2 * self.max_shift)], 1) * moved[:, None]
        exposed = torch.rand(b, generator=generator) < self.p
        gain = (uniform(math.log(self.max_gain)) * exposed).exp()
        angle, zoom, shift, gain = (t.to(x) for t in (angle, zoom, shift, gain))
        # affine_grid maps output coordinates to input ones: the inverse of the motion.
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        theta = torch.cat([theta, -theta @ shift[:, :, None]], 2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        unit = F.grid_sample((x + 1) / 2, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = (unit * gain.view(b, 1, 1, 1)).clamp(0, 1) * 2 - 1
        return x, masks


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each image of (B, 1, H, W) with its own sigma (0: unchanged), on
    x's device (`sigma` with it)."""
    b = x.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x).clamp_min(1e-3).view(b, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # sigma ~ 0: a delta, the image unchanged
    # One group per image: (1, B, H, W) convolved with B kernels.
    y = F.pad(x.transpose(0, 1), (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, 1, -1), groups=b)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, -1, 1), groups=b)
    return y.transpose(0, 1)
