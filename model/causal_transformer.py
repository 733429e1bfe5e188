"""The causal transformer T (paper Eq. 2): z -> f of the same shape, mixing identity and pathology.

The latent is cut into patches whose tokens carry all n channels, so self-attention sees how the
pathology channel and the identity channels interact at every place. The output projection
starts at zero and is added to z, so an untrained T is the identity map (f = z).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .modeling import PretrainedModule, StrictConfig


@dataclasses.dataclass
class TransformerConfig(StrictConfig):
    latent_channels: int = 4  # n
    latent_size: int = 64  # side of z (paper: 64)
    patch_size: int = 4  # tokens are patch_size x patch_size x n
    dim: int = 256  # token width
    depth: int = 4  # k layers (paper: 4)
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0


class CausalTransformer(PretrainedModule):
    """T (Eq. 2): f = z + a pre-norm transformer over patches of z (all n channels per token).

    Args (`TransformerConfig`):
        latent_channels: n, as the VAE's.
        latent_size: side of z (the VAE latent's side); a multiple of patch_size.
        patch_size: tokens are patch_size x patch_size x n.
        dim: token width.
        depth: k, the number of layers (paper: 4).
        heads: attention heads.
        mlp_ratio: the feed-forward width over dim.
        dropout: dropout in the layers (0 at inference).
    """

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = config
        if c.latent_size % c.patch_size:
            raise ValueError(f"latent_size {c.latent_size} is not a multiple of patch_size {c.patch_size}")
        self.grid = c.latent_size // c.patch_size
        patch_dim = c.latent_channels * c.patch_size**2
        self.embed = nn.Linear(patch_dim, c.dim)
        self.pos = nn.Parameter(torch.zeros(1, self.grid**2, c.dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            c.dim, c.heads, int(c.dim * c.mlp_ratio), c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, patch_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _patchify(self, z):
        b, n, h, w = z.shape
        p = self.config.patch_size
        return (
            z.reshape(b, n, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), n * p * p)
        )

    def _unpatchify(self, t, shape):
        b, n, h, w = shape
        p = self.config.patch_size
        return t.reshape(b, h // p, w // p, n, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, n, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self._patchify(z)) + self.pos
        tokens = self.norm(self.blocks(tokens))
        return z + self._unpatchify(self.out(tokens), z.shape)
