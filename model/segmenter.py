"""The anatomy segmenter: a small U-Net that finds the right lung, the left lung and the heart.

Not in the paper. The product builds its edit regions from the input's anatomy (which lung, which
zone of it, the heart: `model/regions.py` reads these masks), so it must locate that anatomy on
the radiograph it is given. Trained on phantoms only (`whatif train segmenter`), against the
renderer's exact masks: on a phantom it is measured (docs/experiments.md); on a real radiograph
it has never seen real anatomy, real devices or real positioning, and its masks are a guess whose
quality nothing here measures.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .layers import double_conv
from .modeling import PretrainedModule, StrictConfig

# The output channels, in order. The patient's right lung is on the viewer's left of the image.
ANATOMY = ("right_lung", "left_lung", "heart")


@dataclasses.dataclass
class SegmenterConfig(StrictConfig):
    base_channels: int = 16  # channels of the first level, doubled at each level down
    depth: int = 4  # levels of the U-Net (depth - 1 halvings): 4 sees 16x16 at 128 px
    norm_groups: int = 4  # GroupNorm groups (batch-size independent, unlike BatchNorm)
    image_size: int = 128  # inputs are resized to this side, the logits back to the input's


class AnatomySegmenter(PretrainedModule):
    """Images (B, 1, R, R) on [-1, 1] -> logits (B, 3, R, R) of `ANATOMY` (right lung, left lung,
    heart), one independent sigmoid each (the heart overlaps the lungs' projections at their
    borders, so the channels are not a softmax). Trained on phantoms only: see the module's note.

    Args (`SegmenterConfig`):
        base_channels: channels of the first level, doubled at each level down (16: 16-32-64-128).
        depth: U-Net levels; the input side must divide by 2 ** (depth - 1).
        norm_groups: GroupNorm groups; divides `base_channels`.
        image_size: the side it was trained at. Other inputs are resized to it (bilinear) and the
            logits back to the input's side, so masks are on the input's grid.
    """

    config_class = SegmenterConfig

    def __init__(self, config: SegmenterConfig):
        super().__init__(config)
        c, d = config.base_channels, config.depth
        if d < 2 or config.image_size % 2 ** (d - 1):
            raise ValueError(f"segmenter depth {d}: need 2 or more levels, and image_size divisible by {2 ** (d - 1)}")
        if c % config.norm_groups:
            raise ValueError(f"segmenter base_channels {c} must divide by norm_groups {config.norm_groups}")
        widths = [c * 2**i for i in range(d)]
        self.down = nn.ModuleList([double_conv(1, widths[0], config.norm_groups)])
        self.down.extend(double_conv(widths[i - 1], widths[i], config.norm_groups) for i in range(1, d))
        # Up path: upsample, concatenate the skip of the same level, then a block to its width.
        self.up = nn.ModuleList(
            double_conv(widths[i + 1] + widths[i], widths[i], config.norm_groups) for i in reversed(range(d - 1))
        )
        self.head = nn.Conv2d(widths[0], len(ANATOMY), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1]
        size = self.config.image_size
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], dim=1))
        logits = self.head(h)
        if side != size:
            logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        return logits

    @torch.no_grad()
    def masks(self, x: torch.Tensor) -> torch.BoolTensor:
        """(B, 1, R, R) on [-1, 1] -> bool (B, 3, R, R) in `ANATOMY` order (sigmoid >= 0.5)."""
        return self(x) >= 0.0  # sigmoid(l) >= 0.5 exactly where l >= 0
