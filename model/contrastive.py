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
    # "whatif-condition-clip": the custom small config below, trained here (the default);
    # "open_clip:local-dir:/path": a pretrained open_clip model the user has on disk (for example
    # BiomedCLIP exported with open_clip_config.json + open_clip_model.safetensors); its own
    # tokenizer and normalisation are used and the size fields below are ignored.
    backbone: str = "whatif-condition-clip"
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
    # Where the pooled text feature (the contrastive loss's text side) is read: "eos", the
    # condition tokenizer's end-of-text token, which sees the whole text. "argmax" is open_clip's
    # default for its BPE vocabulary, where the end token has the largest id; in the condition
    # vocabulary it does not (ids are alphabetical after the special tokens), so argmax would read
    # the text's alphabetically last word.
    text_pool: str = "eos"
    # How the text tower's tokens attend: "causal" (open_clip's CLIP text tower: a token sees only
    # the words before it) or "bidirectional" (every token sees the whole text, as in PubMedBERT,
    # the text tower of BiomedCLIP, the paper's report encoder, section 4.1). Stage 2 cross-attends
    # to every token (c_t of Eq. 16), and a condition names its finding last ("moderate right lower lung
    # lesion"): under the causal mask the severity and zone tokens would be the same for every
    # finding. Measured in docs/experiments.md.
    text_attention: str = "bidirectional"


class ContrastiveModel(PretrainedModule):
    """The image-report contrastive model: E_CXR and the text encoder of the diffusion model.

    `encode_image` is E_CXR (L_PC in stage 1, L_P in Algorithm 2), `encode_text` the pooled text
    feature of the contrastive loss, `text_tokens` the per-token features the UNet cross-attends to.

    Args (`ContrastiveConfig`):
        backbone: "whatif-condition-clip" (open_clip's `CLIP` built from the fields below, with the
            condition tokenizer) or "open_clip:local-dir:/path" (a pretrained open_clip model read
            from disk, never downloaded; the size fields are then ignored).
        image_size: E_CXR's input side; images are resized to it.
        embed_dim: width of the joint embedding, where E_CXR features and L_P live.
        vision_width, vision_layers, vision_patch_size, vision_head_width: the ViT image tower.
        text_width, text_layers, text_heads: the text tower; text_width is the per-token feature
            width, which the diffusion's cross_attention_dim must equal.
        context_length: tokens per text, start and end tokens included.
        text_pool: where the pooled text feature is read: "eos" (the end token) or "argmax".
        text_attention: "bidirectional" (every token sees the whole text) or "causal".
    """

    config_class = ContrastiveConfig

    def __init__(self, config: ContrastiveConfig):
        super().__init__(config)
        c = config
        self.image_mean = self.image_std = None
        if c.backbone.startswith("open_clip:"):
            self._init_pretrained(c.backbone.removeprefix("open_clip:"))
            return
        if c.backbone != "whatif-condition-clip":
            raise ValueError(f"unknown contrastive backbone {c.backbone!r}")
        if c.text_pool not in ("eos", "argmax"):
            raise ValueError(f"text_pool must be 'eos' or 'argmax', got {c.text_pool!r}")
        if c.text_attention not in ("causal", "bidirectional"):
            raise ValueError(f"text_attention must be 'causal' or 'bidirectional', got {c.text_attention!r}")
        from open_clip.model import CLIP

        self.tokenizer = ConditionTokenizer(c.context_length)
        self.clip = CLIP(
            embed_dim=c.embed_dim,
            vision_cfg=dict(
                image_size=c.image_size,
                layers=c.vision_layers,
                width=c.vision_width,
                patch_size=c.vision_patch_size,
                head_width=c.vision_head_width,
                mlp_ratio=2.0,
            ),
            text_cfg=dict(
                context_length=c.context_length,
                vocab_size=self.tokenizer.vocab_size,
                width=c.text_width,
                heads=c.text_heads,
                layers=c.text_layers,
                pool_type=c.text_pool,
                eos_id=self.tokenizer.eot_id,
                no_causal_mask=c.text_attention == "bidirectional",
            ),
        )

    def _init_pretrained(self, name: str) -> None:
        """A pretrained open_clip model from a local directory (never a download)."""
        import open_clip

        if not name.startswith("local-dir:"):
            raise ValueError("pretrained backbones are read from disk only: open_clip:local-dir:/path")
        from pathlib import Path

        path = Path(name.removeprefix("local-dir:"))
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{path} holds no open_clip_config.json (an open_clip model export)")
        self.clip = open_clip.create_model_from_pretrained(name, return_transform=False)
        self.tokenizer = open_clip.get_tokenizer(name)
        size = self.clip.visual.image_size
        self.config.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.image_mean = torch.tensor(self.clip.visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(
            1, 3, 1, 1
        )
        self.image_std = torch.tensor(self.clip.visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(
            1, 3, 1, 1
        )

    @property
    def text_width(self) -> int:
        return int(self.text_tokens([""]).shape[-1])

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.image_size:
            x = F.interpolate(
                x, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        x = x.expand(-1, 3, -1, -1)  # grey -> the three channels the ViT stem expects
        if self.image_mean is not None:  # a pretrained model wants its own normalisation
            x = ((x + 1) / 2 - self.image_mean.to(x)) / self.image_std.to(x)
        return x

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """E_CXR: images (B, 1, H, W) in [-1, 1] -> (B, embed_dim)."""
        return self.clip.encode_image(self._rgb(x), normalize=normalize)

    def named_text_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The text tower's parameters with their names: all but the image tower (`visual`) and the
        shared temperature, for open_clip's CLIP (token_embedding, transformer, ...) and CustomTextCLIP (text.*)."""
        return [
            (name, p)
            for name, p in self.clip.named_parameters()
            if not name.startswith("visual.") and name != "logit_scale"
        ]

    def text_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_text_parameters()]

    def image_parameters(self) -> list[torch.nn.Parameter]:
        """E_CXR's own parameters: the image tower, without the shared temperature."""
        return [p for name, p in self.clip.named_parameters() if name.startswith("visual.")]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(next(self.clip.parameters()).device)

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        return self.clip.encode_text(self.tokenize(texts), normalize=normalize)

    def text_tokens(self, texts: list[str]) -> torch.Tensor:
        """Per-token text features (B, context_length, text_width) for cross-attention."""
        return self._token_features(self.tokenize(texts))

    def _token_features(self, tokens: torch.Tensor) -> torch.Tensor:
        clip = self.clip
        text = clip if hasattr(clip, "token_embedding") else clip.text  # CLIP or CustomTextCLIP
        if hasattr(text, "token_embedding"):
            x = text.token_embedding(tokens) + text.positional_embedding
            x = text.transformer(x, attn_mask=text.attn_mask)
            return text.ln_final(x)
        # A Hugging Face text tower (BiomedCLIP's PubMedBERT): its last hidden states.
        return text.transformer(
            input_ids=tokens, attention_mask=(tokens != text.config.pad_token_id).long()
        ).last_hidden_state

    def contrastive_loss(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Symmetric InfoNCE of CLIP."""
        img = self.encode_image(images)
        txt = self.encode_text(texts)
        logits = self.clip.logit_scale.exp() * img @ txt.t()
        target = torch.arange(len(texts), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
