"""Result files, every one marked as synthetic: PNG with text metadata, the edit region, a difference
map, all at the input's own size; the result keeps 16 bits per pixel. The DICOM results are
`worker/dicom_results.py`'s."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from model.synthetic_png import synthetic_png

__all__ = ["difference_png", "region_png", "synthetic_png"]


def region_png(region: np.ndarray, source: str) -> bytes:
    """The edit region as an 8-bit mask: 255 where the result may differ from the input, 0 elsewhere."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"edit region ({source}) of a SYNTHETIC counterfactual: 255 inside, 0 outside")
    buf = io.BytesIO()
    Image.fromarray(np.where(region, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def difference_png(diff: np.ndarray, scale: float = 0.25) -> bytes:
    """Where the image changed: red where the counterfactual is brighter (denser), blue where darker."""
    d = np.clip(diff / scale, -1.0, 1.0)
    rgb = np.full(d.shape + (3,), 255.0)
    rgb[..., 1] -= 255 * np.abs(d)
    rgb[..., 2] -= 255 * np.clip(d, 0, 1)
    rgb[..., 0] -= 255 * np.clip(-d, 0, 1)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "difference map of a SYNTHETIC counterfactual (red: denser, blue: more lucent)")
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
