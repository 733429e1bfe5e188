"""Layers shared by the project's own small U-Nets (the segmenter and the editor)."""

from __future__ import annotations

from torch import nn


def double_conv(cin: int, cout: int, groups: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with GroupNorm (batch-size independent) and SiLU: a U-Net level."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )
