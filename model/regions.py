"""Edit regions: where on this input a requested finding may change the image.

The generator redraws the whole image (the decoder sees every channel), so the pipeline keeps
only the part of its change that lies where the request's anatomy is: the side and zone of the
lung for parenchymal findings, the cardiac silhouette for cardiomegaly, the superior
mediastinum for an enlarged cardiomediastinum, the hemithorax for pneumothorax, the
costophrenic region (deeper with severity) for effusion, the ribs over the lung zone for a
fracture. The anatomy is located on the input itself (`Anatomy`, from the checkpoint's
segmenter). Inside that anatomical prior only the pixels the model actually changed are kept
(DiffEdit's automatic mask, Couairon et al. 2023, read as "prior AND change"), feathered inward so
that the region's border shows no seam and everything outside stays bit-identical.

All masks here are on the model grid (R x R); `model.composite` carries them to the input's size.
Sides are the patient's: the patient's right lung is on the viewer's left (low column indices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .labels import NO_FINDING, SUPPORT_DEVICES

# Zone words of the refiner -> the thirds of a lung's height (apical ~ upper, basal ~ lower).
ZONE_THIRD = {"upper": 0, "apical": 0, "middle": 1, "perihilar": 1, "lower": 2, "basal": 2}
# Effusion: the share of the lung's height, from its base, that fluid of each severity may reach
# (the phantom's fluid rises to about 0.12, 0.33 and 0.55 of the height laterally; real effusions
# are graded by the same costophrenic-to-hilum scale), with a margin for the meniscus.
EFFUSION_REACH = {"mild": 0.3, "small": 0.3, "moderate": 0.5, "severe": 0.72, "large": 0.72, None: 0.5}
# Cardiomegaly: how far (share of the grid) the silhouette may grow past its border by severity.
HEART_GROWTH = {"mild": 0.07, "small": 0.07, "moderate": 0.1, "severe": 0.13, "large": 0.13, None: 0.1}
PARENCHYMA = ("Lung Opacity", "Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis", "Pleural Other", "Fracture")


class RegionError(ValueError):
    """A user region the pipeline cannot use (wrong size, empty, not on the requested side)."""


@dataclasses.dataclass
class Anatomy:
    """Bool (R, R) masks of the input's lungs and heart on the model grid, and where they came from."""

    right_lung: np.ndarray
    left_lung: np.ndarray
    heart: np.ndarray
    source: str = "segmenter"  # or "default frame" when the segmenter found no plausible lungs

    @property
    def size(self) -> int:
        return int(self.right_lung.shape[0])

    def lung(self, side: str) -> np.ndarray:
        return self.right_lung if side == "right" else self.left_lung

    @property
    def midline(self) -> float:
        """The column between the two lungs (the spine), where left and right meet."""
        r = np.nonzero(self.right_lung.any(axis=0))[0]
        left = np.nonzero(self.left_lung.any(axis=0))[0]
        if len(r) == 0 or len(left) == 0:
            return self.size / 2
        return float(r[-1] + left[0]) / 2

    @classmethod
    def default_frame(cls, size: int) -> Anatomy:
        """A standard PA chest on the grid, for inputs where the segmenter finds no lungs."""
        yy, xx = np.mgrid[0:size, 0:size] / size
        right = ((xx - 0.3) / 0.17) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1
        left = ((xx - 0.7) / 0.17) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1
        heart = ((xx - 0.55) / 0.15) ** 2 + ((yy - 0.68) / 0.12) ** 2 <= 1
        return cls(right, left & ~heart, heart, "default frame")

    @classmethod
    def from_masks(cls, masks: np.ndarray, min_lung_share: float = 0.02) -> Anatomy:
        """(3, R, R) bool masks in `model.segmenter.ANATOMY` order; the default frame when either
        lung covers less than `min_lung_share` of the grid (not a chest the segmenter knows)."""
        masks = np.asarray(masks, bool)
        size = masks.shape[-1]
        if min(masks[0].mean(), masks[1].mean()) < min_lung_share:
            return cls.default_frame(size)
        # Keep each mask's largest component: a stray blob must not stretch a zone's rows.
        return cls(*(_largest(m) for m in masks))


def _largest(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, n + 1))
    return labelled == (int(np.argmax(sizes)) + 1)


def _dilate(mask: np.ndarray, px: float) -> np.ndarray:
    r = max(int(round(px)), 0)
    if r == 0:
        return mask
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ndimage.binary_dilation(mask, structure=xx**2 + yy**2 <= r * r)


def _rows(mask: np.ndarray) -> tuple[int, int]:
    rows = np.nonzero(mask.any(axis=1))[0]
    return (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, mask.shape[0])


def _band(mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Rows from share `lo` to share `hi` of `mask`'s height (0 = its top)."""
    top, bottom = _rows(mask)
    h = bottom - top
    out = np.zeros_like(mask)
    out[int(np.floor(top + lo * h)) : int(np.ceil(top + hi * h))] = True
    return out


def _sides(side: str | None) -> tuple[str, ...]:
    return ("right", "left") if side in (None, "bilateral") else (side,)


def finding_prior(anatomy: Anatomy, label: str, side: str | None, zones: Sequence[str], severity: str | None):
    """Bool (R, R): where `label` (at `side`, `zones`, `severity`) may change this input."""
    a, px = anatomy, anatomy.size / 128  # sizes below are set on a 128 grid
    out = np.zeros_like(a.heart)
    if label == "Cardiomegaly":
        # The silhouette's border moves out (mostly left and down); well inside it nothing changes.
        return _dilate(a.heart, HEART_GROWTH[severity] * a.size) & ~ndimage.binary_erosion(a.heart, iterations=6)
    if label == "Enlarged Cardiomediastinum":
        lungs = a.right_lung | a.left_lung
        top = _rows(lungs)[0]
        heart_top, heart_bottom = _rows(a.heart)
        mid, half = a.midline, 0.13 * a.size
        band = np.zeros_like(out)
        band[top : (heart_top + heart_bottom) // 2, int(mid - half) : int(np.ceil(mid + half))] = True
        return band
    if label in ("Edema", NO_FINDING):
        lungs = a.right_lung | a.left_lung
        return _dilate(lungs | (a.heart if label == NO_FINDING else False), 3 * px)
    if label == SUPPORT_DEVICES:
        return np.ones_like(out)  # tubes and lines run from the neck to the abdomen
    for s in _sides(side):
        lung = a.lung(s)
        if label == "Pneumothorax":
            part = _dilate(lung, 3 * px)
        elif label == "Pleural Effusion":
            part = _dilate(lung & _band(lung, 1.0 - EFFUSION_REACH[severity], 1.0), 3 * px)
        elif label in PARENCHYMA:
            thirds = sorted({ZONE_THIRD[z] for z in zones if z in ZONE_THIRD})
            band = np.zeros_like(lung)
            for t in thirds or (0, 1, 2):
                band |= _band(lung, t / 3 - 0.08, (t + 1) / 3 + 0.08)
            grow = 5 if label in ("Fracture", "Pleural Other") else 3  # ribs and pleura lie at the lung's edge
            part = _dilate(lung, grow * px) & band
        else:
            part = _dilate(lung, 3 * px)
        out |= part
    return out


def request_prior(anatomy: Anatomy, findings: Sequence) -> np.ndarray:
    """Union of the priors of the request's findings (`model.refine.StructuredFinding`), present
    (added) or absent (removed); a normal-image request ("no finding") may change the chest."""
    out = np.zeros_like(anatomy.heart)
    for f in findings:
        if f.status == "uncertain":
            continue
        severity = f.severity if f.status == "present" else "severe"  # a removal takes what is there
        out |= finding_prior(anatomy, f.label, f.side, f.zones, severity)
    if not out.any():
        out = finding_prior(anatomy, NO_FINDING, None, (), None)
    return out


def edit_weight(
    prior: np.ndarray, change: np.ndarray, tau: float = 0.03, grow: int = 2, feather: float = 1.0
) -> np.ndarray:
    """Float (R, R) in [0, 1]: the share of the model's change kept at each pixel.

    `change` is |x_cf - x| on [0, 1]; pixels of the prior where it exceeds `tau` after a light
    smoothing (grown by `grow` px, so that a finding's soft edge is kept whole) form the region.
    The weight is feathered inward (Gaussian, `feather` px) and is exactly 0 outside the region.
    """
    smooth = ndimage.gaussian_filter(change.astype(np.float32), 1.0)
    region = prior & _dilate(smooth > tau, grow)
    if not region.any():
        return np.zeros(prior.shape, np.float32)
    w = ndimage.gaussian_filter(region.astype(np.float32), feather) if feather > 0 else region.astype(np.float32)
    # Inside the region the weight rises to 1 within about `feather` px of its border.
    w = np.clip(w * 2.0, 0.0, 1.0) * region
    return w.astype(np.float32)


def side_share(change: np.ndarray, side: str, midline: float) -> float:
    """Share of the change's mass on the patient's `side` of `midline` (patient's right = low columns)."""
    total = float(change.sum())
    if total <= 0:
        return 1.0
    cols = np.arange(change.shape[-1]) + 0.5
    on = cols < midline if side == "right" else cols >= midline
    return float(change[..., on].sum()) / total


def requested_side(findings: Sequence) -> str | None:
    """The one side the request names ("right" or "left"), or None (bilateral, mixed or none)."""
    sides = {f.side for f in findings if f.status != "uncertain" and f.label != NO_FINDING and f.side}
    return next(iter(sides)) if len(sides) == 1 and sides <= {"right", "left"} else None


def check_user_region(region, shape: tuple[int, int], side: str | None) -> np.ndarray:
    """A user's region (mask upload or box): bool (H, W) of the input's size, not empty, and with
    pixels on the requested side's half of the image when the request names one side."""
    mask = np.asarray(region)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., :3].max(axis=-1)
    if mask.ndim != 2:
        raise RegionError(f"the region must be a 2-D mask, got shape {mask.shape}")
    if mask.shape != tuple(shape):
        raise RegionError(
            f"the region is {mask.shape[1]}x{mask.shape[0]} pixels, the image {shape[1]}x{shape[0]}: they must match"
        )
    if not np.issubdtype(mask.dtype, np.number) and mask.dtype != bool:
        raise RegionError(f"the region must be numeric or boolean, got {mask.dtype}")
    mask = mask != 0
    if not mask.any():
        raise RegionError("the region is empty: mark the pixels that may change")
    if side is not None:
        half = mask[:, : shape[1] // 2] if side == "right" else mask[:, shape[1] // 2 :]
        if not half.any():
            raise RegionError(
                f"the region has no pixels on the patient's {side} (the viewer's "
                f"{'left' if side == 'right' else 'right'} half of the image), where the request puts the finding"
            )
    return mask
