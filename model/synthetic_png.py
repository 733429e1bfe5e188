"""A counterfactual as a file: its pixels at the input's size and depth, and a grey PNG that says
it is synthetic.

Torch-free, so that everything that writes results (`whatif generate`, `whatif augment`, the
worker's outputs) marks them alike and keeps the patient's pixels outside the edit region as the
input holds them.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, PngImagePlugin

from .notice import SYNTHETIC_NOTICE


def result_pixels(out, sixteen_bit: bool) -> np.ndarray:
    """`out` (a `CounterfactualOutput`) as uint16 or uint8 (H, W): inside the edit region the result,
    outside it the input's own values, composed in integers so that no rounding of the result can
    touch them."""
    return np.where(out.region, out.to_uint16() if sixteen_bit else out.to_uint8(), input_pixels(out, sixteen_bit))


def input_pixels(out, sixteen_bit: bool) -> np.ndarray:
    """The input of `out` as read, as uint16 or uint8 (H, W)."""
    if sixteen_bit:
        return np.round(out.input_image * 65535.0).astype(np.uint16)
    return np.round(out.input_image * 255.0).astype(np.uint8)


def is_sixteen_bit(data: bytes, source_format: str) -> bool:
    """Whether an input file holds more than 8 bits a pixel (DICOM, or a 16-bit grey PNG)."""
    if source_format == "dicom":
        return True
    with Image.open(io.BytesIO(data)) as img:
        return img.mode in ("I", "I;16", "I;16B", "I;16L")


def synthetic_png(pixels: np.ndarray, condition: str, seed: int, verdict: dict | None = None) -> bytes:
    """`pixels` uint8 or uint16 (H, W) as a grey PNG of the same depth, with the notice, the condition,
    the seed and (when given) the verdict in its text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SYNTHETIC_NOTICE)
    info.add_text("Software", "whatif-cxr")
    info.add_text("whatif:condition", condition)
    info.add_text("whatif:seed", str(seed))
    if verdict is not None:
        info.add_text("whatif:verdict", verdict["status"])
        info.add_text("whatif:verdict_reason", verdict["reason"])
        info.add_text("whatif:verdict_json", json.dumps(verdict))
    buf = io.BytesIO()
    grey_image(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def grey_image(pixels: np.ndarray) -> Image.Image:
    """uint8 -> mode L, uint16 -> mode I;16 (a 16-bit grey PNG); anything else is a bug."""
    if pixels.dtype == np.uint8:
        return Image.fromarray(pixels, mode="L")
    if pixels.dtype == np.uint16:
        return Image.fromarray(pixels)
    raise TypeError(f"result pixels must be uint8 or uint16, got {pixels.dtype}")
