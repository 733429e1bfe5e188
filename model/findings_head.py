"""Findings head on the pathology channel z^n: multi-label logits over the label set.

Paper Eq. 6 is written as one-hot cross-entropy; chest X-ray findings co-occur, so this head is
trained with per-label binary cross-entropy (docs/design.md, "The ambiguous points", 3).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .labels import CHEXPERT_LABELS
from .modeling import PretrainedModule, StrictConfig


@dataclasses.dataclass
class FindingsHeadConfig(StrictConfig):
    label_count: int = len(CHEXPERT_LABELS)
    width: int = 64  # channels of the small CNN
    depth: int = 3  # stride-2 conv stages


class FindingsHead(PretrainedModule):
    """P(y | z^n) (Eq. 6): a small CNN on the pathology channel, one logit per label. Trained in
    stage 1 for L_cls; the pipeline's guard reads it (`SeedOptConfig.guard`).

    Args (`FindingsHeadConfig`):
        label_count: label count (CheXpert's 14, in `model.labels.CHEXPERT_LABELS` order).
        width: the CNN's stage i has width * 2**min(i, 2) / 2 channels.
        depth: stride-2 convolution stages.
    """

    config_class = FindingsHeadConfig

    def __init__(self, config: FindingsHeadConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        cin = 1
        for i in range(config.depth):
            cout = config.width * (2 ** min(i, 2)) // 2
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU()]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, config.label_count)

    def forward(self, z_path: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(z_path))
