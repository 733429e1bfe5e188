"""Phantom data for every training stage: from `whatif phantom generate` output or rendered on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.labels import CHEXPERT_LABELS
from model.refine import refine
from training.phantom.cases import sample_case
from training.phantom.findings import Finding, labels_vector
from training.phantom.renderer import render

from .pixels import phantom_tensor

PAIR_SEED_OFFSET = 104729  # the paired findings' master seed: apart from the run's and the classifier's


class PhantomDataset(torch.utils.data.Dataset):
    """Cases `0..n-1` of master seed `seed`, rendered at `size` on the fly (deterministic)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        if n < 1:
            raise ValueError("a phantom dataset needs at least one case")
        self.n, self.size, self.seed = n, size, seed
        self._text: dict[int, str] = {}
        self._pair_findings = None  # the class-balanced findings of `counterfactual_view`, made once

    def __len__(self) -> int:
        return self.n

    def case(self, i: int):
        return sample_case(self.seed, i)

    def __getitem__(self, i: int) -> dict:
        case = self.case(i)
        if i not in self._text:
            self._text[i] = refine(case.report().text).condition
        drawn = case.render(self.size)
        return {
            "image": phantom_tensor(drawn.image, self.size),
            "labels": torch.tensor([float(case.labels[label]) for label in CHEXPERT_LABELS]),
            "text": self._text[i],
            "identity": case.identity_seed,
        }

    def other_view(self, i: int) -> torch.Tensor:
        """The same identity with the findings of another case: a positive pair for E_ID."""
        other = sample_case(self.seed + 1, i)
        return self.render_findings(i, [Finding(f.label, f.location, f.severity) for f in other.findings])

    def counterfactual_view(self, i: int) -> dict:
        """Case `i`'s identity and render seed with class-balanced findings: its true counterfactual.

        Pixel-aligned with `self[i]` outside the findings (same anatomy, positioning, exposure and
        noise), so a model can be taught the counterfactual directly (stage 1's `paired` term).
        The findings are drawn as the evaluation classifier's balanced data draws them, so that
        every finding, tail ones included, appears as often as any other in the pairs.
        """
        if self._pair_findings is None:
            from .balanced import BalancedPhantomDataset

            self._pair_findings = BalancedPhantomDataset(self.n, self.size, self.seed + PAIR_SEED_OFFSET)
        found = self._pair_findings.findings(i)[2]
        vec = labels_vector(found)
        return {
            "image": self.render_findings(i, found),
            "labels": torch.tensor([float(vec[label]) for label in CHEXPERT_LABELS]),
            "findings": found,
        }

    def counterfactual_batch(self, indices) -> dict:
        """`counterfactual_view` of each case in `indices`, image and labels stacked (stage 1's pairs)."""
        views = [self.counterfactual_view(int(i)) for i in indices]
        return {"image": torch.stack([v["image"] for v in views]), "labels": torch.stack([v["labels"] for v in views])}

    def render_findings(self, i: int, findings: list[Finding]) -> torch.Tensor:
        """Case `i`'s identity and render seed with `findings` (another case's, say) instead of its own."""
        case = self.case(i)
        return phantom_tensor(render(case.identity_seed, findings, case.render_seed, self.size).image, self.size)


class PhantomDirDataset(torch.utils.data.Dataset):
    """A directory written by `whatif phantom generate` or `whatif augment` (images/ + manifest.jsonl).

    A `whatif augment` line whose result was not kept (`path` null) has no image and is skipped."""

    def __init__(self, root: str | Path, size: int):
        self.root = Path(root)
        manifest = self.root / "manifest.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.root} has no manifest.jsonl (make one with `whatif phantom generate`)")
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        self.rows = [row for row in rows if row.get("path")]
        if not self.rows:
            raise ValueError(f"{manifest} lists no image")
        self.size = size
        self._text: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        if i not in self._text:
            self._text[i] = refine(row["report"]).condition
        pixels = np.asarray(Image.open(self.root / row["path"]).convert("L"))
        return {
            "image": phantom_tensor(pixels, self.size),
            "labels": torch.tensor([float(row["labels"][label]) for label in CHEXPERT_LABELS]),
            "text": self._text[i],
            "identity": int(row["identity_seed"]),
        }


def collate(items: list[dict]) -> dict:
    out = {"image": torch.stack([it["image"] for it in items])}
    for key in ("labels", "anatomy"):  # the segmenter's data has masks and no labels
        if key in items[0]:
            out[key] = torch.stack([it[key] for it in items])
    if "text" in items[0]:  # the classifier's balanced data has no reports
        out["text"] = [it["text"] for it in items]
        out["identity"] = torch.tensor([it["identity"] for it in items])
    return out
