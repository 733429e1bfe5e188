"""Does `whatif augment` help a classifier on rare findings? (`whatif eval --downstream`)

A long-tailed training set (phantoms with CheXpert's prevalence: `training.phantom.prevalence`),
and a classifier trained three ways, each with several training seeds:

- (a) on it alone;
- (b) with the tail oversampled: repeat-factor sampling (Gupta et al., LVIS 2019: an image is
  drawn max(1, sqrt(t / f_c)) times as often for its rarest label c of frequency f_c);
- (c) with `whatif augment` counterfactuals of the tail findings made from head images (images
  with no tail finding), those whose verdict passed; (c') all of them, failed verdicts too.

Each is scored by AUROC per finding on held-out true phantoms (class-balanced, so every tail
finding has positives: `BalancedPhantomDataset`, of a master seed no other part of the project
uses). Every step writes its result under the work directory, so a stopped run continues.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.labels import CHEXPERT_LABELS, NO_FINDING

TAIL = ("Pneumonia", "Fracture", "Lung Lesion", "Pleural Other")  # CheXpert prevalence 2.7, 4.0, 4.1, 1.6%
TRAIN_SEED = 2718281  # phantom master seeds used nowhere else
TEST_SEED = 1414213
ARMS = {
    "a": "long-tailed set alone",
    "b": "tail oversampled (repeat factors)",
    "c": "+ counterfactuals, verdict passed",
    "c_all": "+ counterfactuals, all",
}


@dataclasses.dataclass
class DownstreamConfig:
    """The comparison's sizes. The defaults are the committed table's; `quick()` is the tests'.

    Args:
        train_n: long-tailed phantom training images (CheXpert prevalence).
        test_n: held-out class-balanced true phantoms the AUROCs are measured on.
        head_images: head images the tail counterfactuals are made from (one per tail finding each).
        seeds: classifier training seeds (initialisation, sampling, augmentation).
        steps, batch_size, lr: classifier training.
        size: the classifier's input side (images are rendered at `render_size` and reduced).
        repeat_threshold: t of repeat-factor sampling in arm (b).
        optimize_seed: seed optimisation in the counterfactuals (Algorithm 2).
    """

    train_n: int = 2000
    test_n: int = 700
    head_images: int = 60
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    size: int = 64
    render_size: int = 128
    repeat_threshold: float = 0.1
    optimize_seed: bool = True
    classifier: dict = dataclasses.field(
        default_factory=lambda: {"growth_rate": 12, "block_config": (4, 8, 8), "num_init_features": 24}
    )

    @classmethod
    def quick(cls) -> DownstreamConfig:
        return cls(train_n=80, test_n=60, head_images=2, seeds=(0, 1), steps=4, batch_size=8, size=32, render_size=64)


def run_downstream(
    work: str | Path, checkpoint: str | None = None, cfg: DownstreamConfig | None = None, workers: int = 1
) -> dict:
    """Make (or continue) the comparison in `work`; returns the results (also `work`/results.json)."""
    from .run import AugmentOptions, augment

    cfg = cfg or DownstreamConfig()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    x_train, y_train, head = _training_set(cfg)
    x_test, y_test = _test_set(cfg)
    heads = _write_head_images(work / "head", cfg, head[: cfg.head_images])
    made = augment(
        AugmentOptions(
            data=str(heads),
            targets=",".join(TAIL),
            out=str(work / "augmented"),
            checkpoint=checkpoint,
            optimize_seed=cfg.optimize_seed,
            keep_failed=True,
            size=cfg.render_size,
            workers=workers,
        )
    )
    x_cf, y_cf, passed = _counterfactuals(work / "augmented", cfg)
    sets = {
        "a": (x_train, y_train, None),
        "b": (x_train, y_train, repeat_factors(y_train, cfg.repeat_threshold)),
        "c": (torch.cat([x_train, x_cf[passed]]), torch.cat([y_train, y_cf[passed]]), None),
        "c_all": (torch.cat([x_train, x_cf]), torch.cat([y_train, y_cf]), None),
    }
    scores_path = work / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    runs = [(arm, seed) for arm in sets for seed in cfg.seeds]
    for arm, seed in tqdm(runs, desc="classifiers", unit="run"):
        name = f"{arm}/{seed}"
        if name in scores:
            continue
        if arm == "c" and not bool(passed.any()):  # no verdict passed: (a)'s data and seed, (a)'s classifier
            scores[name] = scores[f"a/{seed}"]
            continue
        x, y, weights = sets[arm]
        clf = train_classifier(x, y, weights, seed, cfg)
        scores[name] = per_finding_auroc(clf, x_test, y_test)
        scores_path.write_text(json.dumps(scores, indent=1) + "\n")
    results = summarise(scores, cfg, y_train, y_cf, passed, made.outcomes)
    header = json.loads((work / "augmented" / "augment.json").read_text())
    results["checkpoint"] = f"{checkpoint or 'the embedded default'} (digest {header['settings']['checkpoint_digest']})"
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _training_set(cfg: DownstreamConfig) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The long-tailed set's images (N, 1, S, S) and labels (N, 14), and its head cases in order."""
    from training.phantom.cases import sample_case

    cases = [sample_case(TRAIN_SEED, i) for i in range(cfg.train_n)]
    x = torch.cat([_pixels([c.render(cfg.render_size).image for c in chunk], cfg.size) for chunk in _chunks(cases)])
    y = torch.tensor([[float(c.labels[label]) for label in CHEXPERT_LABELS] for c in cases])
    head = [c for c in cases if not any(c.labels[label] for label in TAIL)]
    return x, y, head


def _test_set(cfg: DownstreamConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from training.datasets.balanced import BalancedPhantomDataset

    data = BalancedPhantomDataset(cfg.test_n, cfg.render_size, TEST_SEED)
    items = [data[i] for i in range(cfg.test_n)]
    x = F.interpolate(torch.stack([it["image"] for it in items]), size=cfg.size, mode="area")
    return x, torch.stack([it["labels"] for it in items])


def _write_head_images(root: Path, cfg: DownstreamConfig, cases: list) -> Path:
    """The head cases as a phantom directory (`whatif phantom generate`'s layout): augment's --data."""
    manifest = root / "manifest.jsonl"
    if not manifest.exists():
        (root / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for case in cases:
            rel = f"images/{case.id}.png"
            (root / rel).write_bytes(case.render(cfg.render_size).png_bytes())
            rows.append(json.dumps(case.manifest_row(rel), separators=(",", ":")))
        tmp = root / "manifest.jsonl.tmp"
        tmp.write_text("\n".join(rows) + "\n")
        tmp.replace(manifest)
    return root


def _counterfactuals(root: Path, cfg: DownstreamConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every kept counterfactual (N, 1, S, S), its labels and whether its verdict passed."""
    from PIL import Image

    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["path"]]
    if not rows:
        empty = torch.zeros(0, 1, cfg.size, cfg.size)
        return empty, torch.zeros(0, len(CHEXPERT_LABELS)), torch.zeros(0, dtype=torch.bool)
    x = _pixels([np.asarray(Image.open(root / r["path"]).convert("L")) for r in rows], cfg.size)
    y = torch.tensor([[float(r["labels"][label]) for label in CHEXPERT_LABELS] for r in rows])
    return x, y, torch.tensor([bool(r["passed"]) for r in rows])


def _pixels(images: list[np.ndarray], size: int) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1.0)[:, None]
    return F.interpolate(x, size=size, mode="area")


def _chunks(items: list, n: int = 256):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def repeat_factors(y: torch.Tensor, threshold: float) -> torch.Tensor:
    """LVIS repeat factors: r_c = max(1, sqrt(t / f_c)) per label, an image's the max over its labels."""
    freq = y.mean(0).clamp_min(1.0 / len(y))
    r_label = torch.clamp(torch.sqrt(threshold / freq), min=1.0)
    return torch.where(y > 0, r_label, torch.ones_like(y)).amax(1)


def train_classifier(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, seed: int, cfg: DownstreamConfig):
    """A small DenseNet (the judge's architecture, `model.eval_classifier`) from scratch: AdamW, BCE,
    the judge's acquisition augmentation; batches drawn with `weights` (None: uniformly)."""
    from model.eval_classifier import EvalClassifier, EvalClassifierConfig
    from training.augment import AcquisitionAugment

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clf = EvalClassifier(EvalClassifierConfig(image_size=cfg.size, **cfg.classifier))
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.lr)
    augment = AcquisitionAugment()
    p = (weights if weights is not None else torch.ones(len(x))).double()
    clf.train()
    for _ in range(cfg.steps):
        idx = torch.multinomial(p, cfg.batch_size, replacement=True, generator=g)
        loss = F.binary_cross_entropy_with_logits(clf(augment(x[idx], g)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


def per_finding_auroc(clf, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    from training.evaluate import auroc

    with torch.no_grad():
        p = torch.cat([torch.sigmoid(clf(chunk)) for chunk in x.split(128)])
    out = {}
    for k, label in enumerate(CHEXPERT_LABELS):
        pos, neg = p[y[:, k] > 0, k].tolist(), p[y[:, k] == 0, k].tolist()
        if label != NO_FINDING and pos and neg:
            out[label] = auroc(pos, neg)
    return out


def summarise(scores: dict, cfg: DownstreamConfig, y_train, y_cf, passed, outcomes) -> dict:
    """Per arm: AUROC per finding (mean and SD over seeds), the head and tail means and their spread."""
    arms = {}
    for arm in ARMS:
        runs = [scores[f"{arm}/{s}"] for s in cfg.seeds]
        labels = sorted(set.intersection(*(set(r) for r in runs)), key=CHEXPERT_LABELS.index)
        per = {lab: _mean_sd([r[lab] for r in runs]) for lab in labels}
        tail = [np.mean([r[lab] for lab in labels if lab in TAIL]) for r in runs]
        head = [np.mean([r[lab] for lab in labels if lab not in TAIL]) for r in runs]
        arms[arm] = {"label": ARMS[arm], "per_finding": per, "tail": _mean_sd(tail), "head": _mean_sd(head)}
    counts = {
        "train": {lab: int(y_train[:, k].sum()) for k, lab in enumerate(CHEXPERT_LABELS)},
        "counterfactuals_passed": {lab: int(y_cf[passed][:, k].sum()) for k, lab in enumerate(CHEXPERT_LABELS)},
        "counterfactuals_all": {lab: int(y_cf[:, k].sum()) for k, lab in enumerate(CHEXPERT_LABELS)},
        "augment_outcomes": dict(outcomes),
    }
    return {"config": dataclasses.asdict(cfg), "tail": TAIL, "arms": arms, "counts": counts}


def _mean_sd(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "runs": v.tolist()}
