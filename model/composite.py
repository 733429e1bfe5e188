"""Carry the model's change onto the patient's own pixels, at the input's own size.

The model works on a square grid of R pixels (`model.preprocess.to_model_input`: a centred pad
to a square, then a bicubic resize). Its output is never shown as such: its change (the
counterfactual minus the input, on the grid) is weighted by the edit region
(`model.regions.edit_weight`), taken back through the inverse of that mapping (resize to the
padded square, crop the pad) and added to the input's pixels. Outside the region the result is
the input itself, value for value; inside, the patient's fine detail is kept and only the
finding's change is added.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Inputs above this many pixels a side are reduced before compositing: a 4096 x 4096 float32
# result is 64 MiB and the service holds a few such arrays per job. Larger films (up to
# `preprocess.MAX_SIDE`) are accepted and their result is 4096 pixels on the long side.
MAX_OUTPUT_SIDE = 4096


def cap_size(grey: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """`grey` (H, W), reduced (area average) so that its long side is at most `MAX_OUTPUT_SIDE`."""
    h, w = grey.shape
    if max(h, w) <= MAX_OUTPUT_SIDE:
        return grey
    scale = MAX_OUTPUT_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize(size, Image.BOX), np.float32)
    if notes is not None:
        notes.append(
            f"input of {w}x{h} reduced to {size[0]}x{size[1]} (the largest result is {MAX_OUTPUT_SIDE} a side)"
        )
    return np.clip(out, 0.0, 1.0)


def grid_to_native(grid: np.ndarray, shape: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """The inverse of `to_model_input`'s geometry: (R, R) on the grid -> (H, W) on the input's pixels."""
    h, w = shape
    side = max(h, w)
    up = grid.astype(np.float32)
    if up.shape[0] != side:
        up = np.asarray(Image.fromarray(up, mode="F").resize((side, side), resample), np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    return up[y0 : y0 + h, x0 : x0 + w]


def native_to_grid(native: np.ndarray, resolution: int) -> np.ndarray:
    """A (H, W) mask or weight -> (R, R) on the model grid: padded with zeros, area-averaged."""
    h, w = native.shape
    side = max(h, w)
    padded = np.zeros((side, side), np.float32)
    padded[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = native
    if side == resolution:
        return padded
    return np.asarray(Image.fromarray(padded, mode="F").resize((resolution, resolution), Image.BOX), np.float32)


def composite(
    grey: np.ndarray, delta: np.ndarray, weight: np.ndarray, limit: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(result, region) at `grey`'s size: `grey` + the grid change `delta` weighted by `weight`.

    Args:
        grey: float32 (H, W) in [0, 1], the input as read.
        delta: float32 (R, R), the model's change on the grid (counterfactual - input, [0, 1] units).
        weight: float32 (R, R) in [0, 1], the edit region's weight (0 outside it).
        limit: optional bool (H, W), a user's region: the result never changes outside it.

    Returns the result, float32 (H, W) in [0, 1] and equal to `grey` wherever `region` is False,
    and the region, bool (H, W).
    """
    w = np.clip(grid_to_native(weight, grey.shape, Image.BILINEAR), 0.0, 1.0)
    w[w < 1e-3] = 0.0  # the bilinear ramp past the region's edge: below a 1/1000 share, nothing
    if limit is not None:
        w = w * limit
    region = w > 0
    result = grey.copy()
    if region.any():
        d = grid_to_native(delta, grey.shape, Image.BICUBIC)
        result[region] = np.clip(grey[region] + d[region] * w[region], 0.0, 1.0)
    return result, region
