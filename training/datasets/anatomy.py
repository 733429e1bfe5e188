"""Phantoms with their exact anatomy masks, for the anatomy segmenter (`whatif train segmenter`).

The run's own phantom cases (`sample_case(seed, i)`, identities below 2**31, so never the
evaluation's), each with the renderer's right lung, left lung and heart after its findings are
drawn. The product receives phantoms at other sizes and as JPEGs, so each case is also acquired
as one might be uploaded: rendered at 1, 2 or 4 times the side and resized down as the pipeline
resizes an input (`model.preprocess.to_model_input`), and JPEG-compressed half the time. Which,
is drawn from the case's index, so an item is the same in every epoch, process and sitting.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from model.preprocess import to_model_input
from model.segmenter import ANATOMY
from training.phantom.cases import sample_case
from training.phantom.identity import seed_rng

STREAM_ACQUISITION = 0xA9A7  # the stream of each case's acquisition draws: apart from the phantom's own
SCALES = (1, 2, 4)  # the render's side over the dataset's: as the product receives 128, 256, 512
SCALE_P = (0.5, 0.35, 0.15)  # a 4x render costs 10x a 1x one, so it is the rarest
JPEG_P = 0.5
JPEG_QUALITY = (60, 95)  # uniform, inclusive


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """uint8 pixels through a JPEG encode and decode at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def area_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """(S, S) -> (S/factor, S/factor) float32: each pixel the share of its block inside the mask."""
    s = mask.shape[0] // factor
    return mask.reshape(s, factor, s, factor).mean(axis=(1, 3), dtype=np.float32)


class AnatomyDataset(torch.utils.data.Dataset):
    """Cases `0..n-1` of master seed `seed`: {"image": (1, R, R) on [-1, 1], "anatomy": (3, R, R)
    float in [0, 1]} in `model.segmenter.ANATOMY` order, R = `size`.

    With `acquisition`, the render's side and JPEG compression are drawn per case (module note);
    a mask downsampled from a larger render holds the share of each pixel inside it (soft at the
    borders). Without, every case is rendered at `size` and its masks are exact 0/1.
    """

    def __init__(self, n: int, size: int, seed: int = 0, acquisition: bool = True):
        if n < 1:
            raise ValueError("a phantom dataset needs at least one case")
        self.n, self.size, self.seed, self.acquisition = n, size, seed, acquisition

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        case = sample_case(self.seed, i)
        scale, quality = 1, None
        if self.acquisition:
            rng = seed_rng(self.seed, STREAM_ACQUISITION, i)
            scale = int(rng.choice(SCALES, p=SCALE_P))
            if rng.random() < JPEG_P:
                quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        drawn = case.render(self.size * scale)
        pixels = drawn.image if quality is None else jpeg(drawn.image, quality)
        masks = np.stack([area_downsample(drawn.anatomy[name], scale) for name in ANATOMY])
        return {"image": to_model_input(pixels, self.size)[0], "anatomy": torch.from_numpy(masks)}
