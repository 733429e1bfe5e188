"""Exact edit pairs for the paired editor: one patient with and without one finding.

Item `i` of master seed `seed` is a training identity and render seed (`sample_case`, so never an
evaluation or validation identity), a finding drawn class-balanced over the drawable labels with
its side, zone and severity, and possibly a second finding already present (so that the editor
learns to add to, and remove from, an image that shows something else). The request kinds:
add (the input lacks the finding, the truth has it), remove (the reverse) and null (both have it:
asking for what is there must change nothing). Everything is a pure function of (seed, i).
"""

from __future__ import annotations

import numpy as np
import torch

from model.editor import request_vector
from model.refine.condition import condition_text
from model.refine.schema import StructuredFinding
from model.regions import Anatomy, request_prior
from training.phantom.cases import sample_case
from training.phantom.findings import DRAWABLE_LABELS, Finding
from training.phantom.identity import seed_rng
from training.phantom.renderer import render

from .pixels import phantom_tensor

KINDS = {"add": 0.45, "remove": 0.4, "null": 0.15}
SECOND_FINDING = 0.4  # share of pairs whose input already shows another finding
_STREAM = 7717  # the pairs' own random stream (apart from the phantom's streams)


def structured(f: Finding, status: str) -> StructuredFinding:
    """A phantom finding as the refiner states a request for it."""
    return StructuredFinding(
        label=f.label, status=status, side=f.side, zones=(f.zone,) if f.zone else (), severity=f.severity
    )


class EditPairDataset(torch.utils.data.Dataset):
    """Pairs `0..n-1` at `size` px: {"x", "truth", "prior", "request", "mask"} (see the module doc)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        if n < 1:
            raise ValueError("an edit-pair dataset needs at least one pair")
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def pair(self, i: int) -> tuple[str, Finding, list[Finding], int, int]:
        """(kind, the finding asked for, the other findings present, identity seed, render seed)."""
        rng = seed_rng(self.seed, _STREAM, i)
        case = sample_case(self.seed, i)
        labels = list(DRAWABLE_LABELS)
        label = labels[int(rng.integers(len(labels)))]
        finding = Finding(label).resolve(rng)
        others: list[Finding] = []
        if rng.random() < SECOND_FINDING:
            rest = [x for x in labels if x != label]
            others = [Finding(rest[int(rng.integers(len(rest)))]).resolve(rng)]
        kind = list(KINDS)[int(rng.choice(len(KINDS), p=np.asarray(list(KINDS.values()))))]
        return kind, finding, others, case.identity_seed, case.render_seed

    def request(self, i: int) -> list[StructuredFinding]:
        """Pair `i`'s request, as the refiner states it."""
        kind, finding, _, _, _ = self.pair(i)
        return [structured(finding, "absent" if kind == "remove" else "present")]

    def text(self, i: int) -> str:
        """Pair `i`'s request as the canonical condition text the diffusion is conditioned on."""
        return condition_text(self.request(i))

    def __getitem__(self, i: int) -> dict:
        kind, finding, others, identity, render_seed = self.pair(i)
        without = render(identity, others, render_seed, self.size)
        with_it = render(identity, [*others, finding], render_seed, self.size)
        source, truth = {"add": (without, with_it), "remove": (with_it, without), "null": (with_it, with_it)}[kind]
        request = self.request(i)
        a = source.anatomy
        prior = request_prior(Anatomy(a["right_lung"], a["left_lung"], a["heart"]), request)
        return {
            "x": phantom_tensor(source.image, self.size),
            "truth": phantom_tensor(truth.image, self.size),
            "prior": torch.from_numpy(prior.astype(np.float32))[None],
            "request": request_vector(request),
            "mask": torch.from_numpy(with_it.masks[finding.label].astype(np.float32))[None],
        }


def collate_pairs(items: list[dict]) -> dict:
    return {key: torch.stack([it[key] for it in items]) for key in items[0]}
