"""Which counterfactuals a `whatif augment` run makes: for every source image and every target,
`per_image` of them, each with a seed of its own that depends only on the run's seed and the item,
so a rerun, a resumed run and a run on the workers make the same ones."""

from __future__ import annotations

import dataclasses
import hashlib
import re

from model.labels import NO_FINDING

from .sources import SourceImage


class PlanError(ValueError):
    """Targets or counts that make no run: reported before any work."""


@dataclasses.dataclass(frozen=True)
class Target:
    text: str  # as the user gave it
    condition: str  # the refiner's canonical condition text
    adds: tuple[str, ...]  # labels the request wants present
    removes: tuple[str, ...]  # labels the request wants absent

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-")[:60] or "target"


@dataclasses.dataclass(frozen=True)
class Item:
    key: str  # SOURCE/TARGET/K: unique in the run, names its image
    source: SourceImage
    target: Target
    k: int  # 0..per_image-1
    seed: int

    def labels(self) -> dict[str, int]:
        """The source's labels with the target's findings added and removed ("No Finding" follows)."""
        labels = dict(self.source.labels)
        labels.update({label: 1 for label in self.target.adds})
        labels.update({label: 0 for label in self.target.removes})
        findings = [v for label, v in labels.items() if label != NO_FINDING]
        labels[NO_FINDING] = int(not any(findings))
        return labels


def parse_targets(text: str) -> list[Target]:
    """ "Pneumonia,Fracture,Lung Lesion" -> the refined targets; an empty or unknown one is an error."""
    from model.refine import NoFindingRecognised, refine_request

    names = [t.strip() for t in text.split(",")]
    if not any(names):
        raise PlanError("--targets names no finding (e.g. --targets 'Pneumonia,Fracture,Lung Lesion')")
    if "" in names:
        raise PlanError(f"--targets {text!r} has an empty entry")
    targets = []
    for name in names:
        try:
            refined = refine_request(name)
        except NoFindingRecognised as exc:
            raise PlanError(f"--targets: unknown target {name!r} ({exc})") from None
        adds = tuple(f.label for f in refined.findings if f.status == "present" and f.label != NO_FINDING)
        removes = tuple(f.label for f in refined.findings if f.status == "absent")
        if not adds and not removes:
            raise PlanError(f"--targets: {name!r} asks for no finding to be added or removed")
        targets.append(Target(name, refined.condition, adds, removes))
    if len({t.slug for t in targets}) < len(targets):
        raise PlanError(f"--targets {text!r} names a target twice")
    return targets


def plan(sources: list[SourceImage], targets: list[Target], per_image: int, seed: int) -> tuple[list[Item], int]:
    """The run's items in their order (source, then target, then k), and how many (source, target)
    pairs were left out because the source already is what the target asks for (has every finding
    it adds, none it removes): a counterfactual of it would change nothing."""
    if per_image < 1:
        raise PlanError(f"--per-image must be at least 1, got {per_image}")
    ids = [s.id for s in sources]
    if len(set(ids)) < len(ids):
        raise PlanError("the dataset names two images alike; their counterfactuals would overwrite each other")
    items, already = [], 0
    for source in sources:
        for target in targets:
            if all(source.labels.get(a) == 1 for a in target.adds) and not any(
                source.labels.get(r) == 1 for r in target.removes
            ):
                already += 1
                continue
            for k in range(per_image):
                key = f"{source.id}/{target.slug}/{k}"
                items.append(Item(key, source, target, k, item_seed(seed, key)))
    return items, already


def item_seed(seed: int, key: str) -> int:
    """A seed in [0, 2^31) from the run's seed and the item's key."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
