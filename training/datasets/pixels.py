"""A rendered phantom's uint8 pixels -> the model's input tensor, for every phantom dataset."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def phantom_tensor(pixels: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float32 on [-1, 1] (the preprocessing contract), resized bilinearly if needed."""
    if pixels.shape[0] != size:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))
    return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)[None]
