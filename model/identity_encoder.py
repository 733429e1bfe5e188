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
    # "small-cnn": trained here on identity pairs (the default); "vgg16:/path/weights.safetensors":
    # the paper's ImageNet VGG-16 convolutional features, frozen, from a local safetensors file
    # (torchvision key names; only `features.*` is read), 512-d output.
    backbone: str = "small-cnn"
    width: int = 32  # channels of the first stage, doubled each stage
    depth: int = 4  # stride-2 stages
    embed_dim: int = 128


class IdentityEncoder(PretrainedModule):
    """E_ID: images (B, 1, R, R) on [-1, 1] -> L2-normalised embeddings; identity similarity is
    their cosine (L_ID, Eq. 7, and the pipeline's quality report).

    Args (`IdentityEncoderConfig`):
        backbone: "small-cnn" (trained here on identity pairs) or "vgg16:/path/weights.safetensors"
            (the paper's ImageNet VGG-16 features, frozen, read from disk; 512-d output, the size
            fields below then unused).
        width: channels of the first stage, doubled each stage (up to 8x).
        depth: stride-2 stages.
        embed_dim: output width.
    """

    config_class = IdentityEncoderConfig

    def __init__(self, config: IdentityEncoderConfig):
        super().__init__(config)
        if config.backbone.startswith("vgg16:"):
            self._init_vgg(config.backbone.removeprefix("vgg16:"))
            return
        if config.backbone != "small-cnn":
            raise ValueError(f"unknown identity-encoder backbone {config.backbone!r}; use small-cnn or vgg16:/path")
        self.pretrained = False
        layers: list[nn.Module] = []
        cin = 1
        for i in range(config.depth):
            cout = config.width * 2 ** min(i, 3)
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(cin, config.embed_dim)

    def _init_vgg(self, path: str) -> None:
        from pathlib import Path

        from safetensors.torch import load_file
        from torchvision.models import vgg16

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"VGG-16 weights {path} not found (a safetensors file with torchvision's key names)"
            )
        state = {k.removeprefix("features."): v for k, v in load_file(path).items() if k.startswith("features.")}
        features = vgg16(weights=None).features
        features.load_state_dict(state)
        self.features = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Identity()
        self.pretrained = True
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pretrained:  # ImageNet normalisation of a grey image in [-1, 1]
            x = ((x + 1) / 2).expand(-1, 3, -1, -1)
            x = (x - self.mean) / self.std
        return F.normalize(self.proj(self.features(x)), dim=-1)
