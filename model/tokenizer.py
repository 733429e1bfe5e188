"""Word-level tokenizer over the canonical condition vocabulary.

The text the diffusion model is conditioned on is always the refiner's canonical condition
("moderate left pleural effusion; mild cardiomegaly"), so a closed vocabulary of those words
covers it exactly and keeps the text tower's embedding table a few kilobytes instead of the
25 MB of CLIP's 49,408-token BPE table (the embedded model must stay under 50 MB). A model
that uses BiomedCLIP's own tokenizer records that choice in its config instead.
"""

from __future__ import annotations

import re

import torch

from .labels import CHEXPERT_LABELS, SEVERITIES, SIDES

PAD, SOT, EOT, UNK, SEP = "<pad>", "<sot>", "<eot>", "<unk>", ";"
_WORDS = sorted(
    {w for label in CHEXPERT_LABELS for w in label.lower().split()}
    | set(SIDES)
    | set(SEVERITIES)
    | {"small", "large", "upper", "middle", "lower", "apical", "basal", "perihilar", "no", "finding", "other"}
)
VOCAB: tuple[str, ...] = (PAD, SOT, EOT, UNK, SEP, *_WORDS)
_INDEX = {w: i for i, w in enumerate(VOCAB)}


class ConditionTokenizer:
    """`tokenizer(["mild cardiomegaly"])` -> LongTensor (batch, context_length): SOT, the words,
    EOT, then padding. EOT is not the largest id, so the text tower pools at it by open_clip's
    'eos' pooling (`ContrastiveConfig.text_pool`), not by 'argmax'."""

    def __init__(self, context_length: int = 32):
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z]+|;", text.lower())
            ids = [_INDEX[SOT], *(_INDEX.get(w, _INDEX[UNK]) for w in words)][: self.context_length - 1]
            ids.append(_INDEX[EOT])
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    @property
    def eot_id(self) -> int:
        return _INDEX[EOT]
