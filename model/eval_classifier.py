"""The evaluation classifier: a DenseNet-121-style multi-label classifier (torchxrayvision's layout:
torchvision's DenseNet with a one-channel stem). It grades counterfactuals and is never used in
training the generator or in seed optimisation, so nothing is graded by what it optimised against.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .labels import CHEXPERT_LABELS
from .modeling import PretrainedModule, StrictConfig


@dataclasses.dataclass
class EvalClassifierConfig(StrictConfig):
    label_count: int = len(CHEXPERT_LABELS)
    growth_rate: int = 32  # DenseNet-121: 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)  # DenseNet-121: (6, 12, 24, 16)
    num_init_features: int = 64  # DenseNet-121: 64
    bn_size: int = 4
    image_size: int = 224  # inputs are resized to this


class EvalClassifier(PretrainedModule):
    """The judge: images (B, 1, R, R) on [-1, 1] -> one logit per label. Grades counterfactuals
    (Table 2's classifier); never used in training the generator or in seed optimisation.

    Args (`EvalClassifierConfig`):
        label_count: label count (CheXpert's 14, in `model.labels.CHEXPERT_LABELS` order).
        growth_rate, block_config, num_init_features, bn_size: torchvision's DenseNet arguments
            (DenseNet-121: 32, (6, 12, 24, 16), 64, 4).
        image_size: inputs are resized to this side.
    """

    config_class = EvalClassifierConfig

    def __init__(self, config: EvalClassifierConfig):
        super().__init__(config)
        from torchvision.models import DenseNet

        net = DenseNet(
            growth_rate=config.growth_rate,
            block_config=tuple(config.block_config),
            num_init_features=config.num_init_features,
            bn_size=config.bn_size,
            num_classes=config.label_count,
        )
        # One grey channel, as torchxrayvision's DenseNet.
        net.features.conv0 = nn.Conv2d(1, config.num_init_features, 7, stride=2, padding=3, bias=False)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.image_size:
            x = nn.functional.interpolate(x, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False)
        return self.net(x)
