"""Identity encoder E_ID (VGG-16 on ImageNet in the paper): same person, other findings, close.

Trained here with a contrastive loss on phantom identity seeds (or MIMIC subject ids), so that
identity similarity is measured by something that knows chest anatomy and ignores findings.
Output: L2-normalised embeddings; identity similarity is their cosine.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import PretrainedModule, StrictConfig


@dataclasses.dataclass
class IdentityEncoderConfig(StrictConfig):
    width: int = 32  # channels of the first stage, doubled each stage
    depth: int = 4  # stride-2 stages
    embed_dim: int = 128


class IdentityEncoder(PretrainedModule):
    config_class = IdentityEncoderConfig

    def __init__(self, config: IdentityEncoderConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        cin = 1
        for i in range(config.depth):
            cout = config.width * 2 ** min(i, 3)
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(cin, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(x)), dim=-1)
