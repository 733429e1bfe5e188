"""The project's image-report contrastive model (open_clip, custom small config).

Its image tower is the pathology encoder E_CXR (CXR-CLIP in the paper) used by L_PC in
training and by L_P in seed optimisation; its text tower, per-token, is the text encoder that
conditions the pathology diffusion model. Built with open_clip's `CLIP` class from a config
recorded in the checkpoint; BiomedCLIP or another open_clip model can take its place when the
user has the weights locally (the choice is the `backbone` field).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .modeling import PretrainedModule, StrictConfig
from .tokenizer import ConditionTokenizer


@dataclasses.dataclass
class ContrastiveConfig(StrictConfig):
    backbone: str = "whatif-condition-clip"  # custom small config (the default, trained here)
    image_size: int = 128  # E_CXR input side (images are resized to it)
    embed_dim: int = 128  # joint embedding width: E_CXR features and L_P live here
    vision_width: int = 128
    vision_layers: int = 4
    vision_patch_size: int = 16
    vision_head_width: int = 32
    text_width: int = 128  # width of the per-token text features the UNet attends to
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 32


class ContrastiveModel(PretrainedModule):
    """`encode_image` (E_CXR), `encode_text` (pooled), `text_tokens` (per-token, for cross-attention)."""

    config_class = ContrastiveConfig

    def __init__(self, config: ContrastiveConfig):
        super().__init__(config)
        from open_clip.model import CLIP

        c = config
        self.tokenizer = ConditionTokenizer(c.context_length)
        self.clip = CLIP(
            embed_dim=c.embed_dim,
            vision_cfg=dict(
                image_size=c.image_size, layers=c.vision_layers, width=c.vision_width,
                patch_size=c.vision_patch_size, head_width=c.vision_head_width, mlp_ratio=2.0,
            ),
            text_cfg=dict(
                context_length=c.context_length, vocab_size=self.tokenizer.vocab_size, width=c.text_width,
                heads=c.text_heads, layers=c.text_layers, pool_type="argmax",
            ),
        )

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.image_size:
            x = F.interpolate(x, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return x.expand(-1, 3, -1, -1)  # grey -> the three channels the ViT stem expects

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """E_CXR: images (B, 1, H, W) in [-1, 1] -> (B, embed_dim)."""
        return self.clip.encode_image(self._rgb(x), normalize=normalize)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.clip.positional_embedding.device)

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        return self.clip.encode_text(self.tokenize(texts), normalize=normalize)

    def text_tokens(self, texts: list[str]) -> torch.Tensor:
        """Per-token text features (B, context_length, text_width) for cross-attention."""
        clip = self.clip
        tokens = self.tokenize(texts)
        x = clip.token_embedding(tokens) + clip.positional_embedding
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        return clip.ln_final(x)

    def contrastive_loss(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Symmetric InfoNCE of CLIP."""
        img = self.encode_image(images)
        txt = self.encode_text(texts)
        logits = self.clip.logit_scale.exp() * img @ txt.t()
        target = torch.arange(len(texts), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
