"""A DICOM's decoded pixels to grey in [0, 1], white = attenuating, as a viewer would show them.

Shared by the service's upload path (`api.dicom`, after its bounded checks) and the library's
file loader (`model.preprocess`), so both read a window the same way. A degenerate window (a width
below its function's minimum, an unknown VOI LUT function, a LUT that cannot be applied) is ignored
for the full pixel range, as viewers do, and said so in `notes`. Notes name no header value.
"""

from __future__ import annotations

import numpy as np

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # PS3.3 C.11.2.1.3


def grey(arr: np.ndarray, ds, notes: list[str]) -> np.ndarray:
    """`arr` (one frame of `ds`'s pixel data) -> float32 in [0, 1], the VOI applied where usable,
    stretched to its range, MONOCHROME1 inverted."""
    out = voi(arr, ds, notes).astype(np.float64)
    lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / max(hi - lo, 1e-8)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        out = 1.0 - out
        notes.append("inverted MONOCHROME1")
    return out.astype(np.float32)


def voi(arr: np.ndarray, ds, notes: list[str]) -> np.ndarray:
    """The VOI LUT or window applied; the full pixel range where it is degenerate."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowWidth" in ds and not usable_window(ds):
        notes.append("DICOM window unusable (width or VOI LUT function): full pixel range shown")
        return arr
    try:
        return apply_voi_lut(arr, ds)
    except Exception:
        notes.append("DICOM VOI LUT unusable: full pixel range shown")
        return arr


def usable_window(ds) -> bool:
    try:
        width = float(_first(ds.WindowWidth))
        center = float(_first(ds.get("WindowCenter")))
    except Exception:
        return False
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    # PS3.3 C.11.2.1.3: LINEAR needs a width of at least 1, LINEAR_EXACT and SIGMOID more than 0.
    wide_enough = width >= 1 if function == "LINEAR" else width > 0
    return function in VOI_FUNCTIONS and bool(np.isfinite([width, center]).all()) and wide_enough


def _first(value):
    from pydicom.multival import MultiValue

    # A multi-valued window holds alternatives; pydicom applies the first (index 0).
    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value
