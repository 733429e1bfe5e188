"""How well the anatomy segmenter finds the lungs and the heart, on held-out phantoms as the product
may receive them.

The edit regions (`model/regions.py`) are built from the segmenter's masks of the input, so a mask
that misses a lung base or spills over the heart moves where a finding may be drawn. On `--n`
phantom identities apart from every other set (identity seeds from 2**31 + 10**7 + 5000, past the
evaluation's and the validation's; render seeds from 2 * 10**6), each with one class-balanced
finding or none (a pleural effusion or a cardiomegaly changes the masks), it scores the Dice of
each structure against the renderer's exact masks, per acquisition:

  R            rendered at the model's side R
  2R, 4R -> R  rendered at twice and four times the side, resized as the pipeline resizes an input
  JPEG q75     through a JPEG at quality 75
  x0.8, x1.2   exposure: [0, 1] intensities times 0.8 or 1.2, clipped
  rotated 5    rotated by 5 degrees, alternately either way (PIL, black corners), the masks with it
  combined     4R, JPEG q75, x0.8 and rotated 5, then resized

Masks of a larger render are area-downsampled to R and thresholded at 0.5. Prints the mean Dice
per structure and the worst image's; `--sheet` draws the masks on a few of them.

    whatif diagnose segmenter --checkpoint model/weights/default --n 64
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.modeling import CheckpointError
from model.pipeline import default_checkpoint_dir
from model.preprocess import to_model_input
from model.segmenter import ANATOMY, AnatomySegmenter
from training.datasets.anatomy import area_downsample, jpeg
from training.datasets.balanced import BalancedPhantomDataset
from training.evaluate import EVAL_IDENTITY_BASE
from training.phantom.renderer import render

from . import common_arguments

QUESTION = "how well the anatomy segmenter finds the lungs and heart, as the product may receive the image"
RUNTIME = "about 25 s for --n 64"

IDENTITY_BASE = EVAL_IDENTITY_BASE + 5000  # past the evaluation's (0..) and the validation's (1000..)
RENDER_SEED_BASE = 2 * 10**6  # past the evaluation's (0..) and the validation's (10**6..)
CONDITIONS = ("R", "2R -> R", "4R -> R", "JPEG q75", "x0.8", "x1.2", "rotated 5", "combined")


def load_segmenter(checkpoint: str | None) -> tuple[AnatomySegmenter, int]:
    """The checkpoint's segmenter and the pipeline's side R (its preprocessing resolution)."""
    directory = Path(checkpoint) if checkpoint else default_checkpoint_dir()
    config = json.loads((directory / "config.json").read_text())
    sub = config.get("components", {}).get("segmenter")
    if sub is None:
        raise CheckpointError(f"{directory} has no segmenter; train one with `whatif train segmenter`")
    return AnatomySegmenter.from_pretrained(directory / sub), int(config["preprocessing"]["resolution"])


def acquire(condition: str, identity: int, findings, render_seed: int, res: int, sign: int):
    """(model input (1, 1, R, R), true masks bool (3, R, R)) of one phantom under `condition`."""
    scale = {"2R -> R": 2, "4R -> R": 4, "combined": 4}.get(condition, 1)
    drawn = render(identity, findings, render_seed, res * scale)
    pixels = drawn.image
    masks = np.stack([drawn.anatomy[name] for name in ANATOMY]).astype(np.float32)
    if condition in ("JPEG q75", "combined"):
        pixels = jpeg(pixels, 75)
    unit = pixels.astype(np.float32) / 255.0
    gain = {"x0.8": 0.8, "x1.2": 1.2, "combined": 0.8}.get(condition)
    if gain is not None:
        unit = np.clip(unit * gain, 0.0, 1.0)
    if condition in ("rotated 5", "combined"):
        angle = 5.0 * sign
        unit = np.asarray(Image.fromarray(unit, mode="F").rotate(angle, Image.BILINEAR))
        masks = np.stack([np.asarray(Image.fromarray(m, mode="F").rotate(angle, Image.BILINEAR)) for m in masks])
    truth = np.stack([area_downsample(m, scale) for m in masks]) >= 0.5
    return to_model_input(unit, res), truth


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per structure of (3, R, R) bool masks; 1 where both are empty."""
    inter = (pred & truth).sum((1, 2))
    total = pred.sum((1, 2)) + truth.sum((1, 2))
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


@torch.no_grad()
def measure(seg: AnatomySegmenter, res: int, n: int, keep: int = 0) -> dict:
    """Dice per condition and structure over `n` held-out phantoms; `keep` of them kept for a sheet."""
    findings = BalancedPhantomDataset(n, res, IDENTITY_BASE)  # one finding or none, each as often
    scores = {c: [] for c in CONDITIONS}
    kept = {c: [] for c in CONDITIONS}
    for k in range(n):
        found = findings.findings(k)[2]
        for c in CONDITIONS:
            x, truth = acquire(c, IDENTITY_BASE + k, found, RENDER_SEED_BASE + k, res, 1 if k % 2 == 0 else -1)
            pred = seg.masks(x)[0].numpy()
            scores[c].append(dice(pred, truth))
            if k < keep:
                kept[c].append((x[0, 0].numpy(), pred, truth))
    table = {
        c: {
            **{name: float(np.mean([s[j] for s in v])) for j, name in enumerate(ANATOMY)},
            "worst": {name: float(np.min([s[j] for s in v])) for j, name in enumerate(ANATOMY)},
        }
        for c, v in scores.items()
    }
    return {"n": n, "resolution": res, "table": table, "kept": kept}


def label(condition: str, res: int) -> str:
    return condition.replace("4R", str(4 * res)).replace("2R", str(2 * res)).replace("R", str(res))


def draw_sheet(result: dict, path: str) -> None:
    """One row per kept phantom, one column per condition: the input with the predicted masks filled
    (right lung red, left lung blue, heart green) and the true outlines in white."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = result["kept"]
    rows = len(kept[CONDITIONS[0]])
    fig, axes = plt.subplots(rows, len(CONDITIONS), figsize=(1.6 * len(CONDITIONS), 1.7 * rows), squeeze=False)
    colours = np.array([[1.0, 0.2, 0.2], [0.2, 0.4, 1.0], [0.2, 1.0, 0.3]])
    for j, c in enumerate(CONDITIONS):
        for i, (x, pred, truth) in enumerate(kept[c]):
            grey = np.repeat(((x + 1) / 2)[..., None], 3, axis=2)
            overlay = grey.copy()
            for m, colour in zip(pred, colours):
                overlay[m] = 0.55 * grey[m] + 0.45 * colour
            ax = axes[i, j]
            ax.imshow(overlay)
            for m in truth:
                ax.contour(m, levels=[0.5], colors="white", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label(c, result["resolution"]), fontsize=7)
    fig.suptitle("anatomy segmenter on held-out phantoms: predicted (filled), true (white)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(ap) -> None:
    common_arguments(ap, n=64)
    ap.add_argument("--sheet", default=None, help="also draw the masks on the first 4 phantoms to this PNG")
    ap.add_argument("--json", default=None, help="also write the numbers here")


def run(args) -> None:
    seg, res = load_segmenter(args.checkpoint)
    result = measure(seg, res, args.n, keep=4 if args.sheet else 0)
    print(f"| acquisition (n={args.n}) | right lung | left lung | heart | worst image: right, left, heart |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for c, v in result["table"].items():
        worst = ", ".join(f"{v['worst'][name]:.3f}" for name in ANATOMY)
        print(f"| {label(c, res)} | {v['right_lung']:.3f} | {v['left_lung']:.3f} | {v['heart']:.3f} | {worst} |")
    if args.sheet:
        draw_sheet(result, args.sheet)
        print(f"sheet: {args.sheet}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "kept"}, indent=2) + "\n")
