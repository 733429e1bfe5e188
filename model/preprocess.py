"""One preprocessing function from what a user has to what the model takes.

Contract (recorded in every checkpoint's config): one channel, float32 in [-1, 1], square,
`resolution` pixels a side; white = attenuating. Non-square images are padded (never cropped,
so no anatomy is lost) and resized. Files: PNG/JPEG (8 or 16 bit; colour is converted to grey
and said so) and DICOM (VOI LUT or window applied, MONOCHROME1 inverted).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

MIN_SIDE, MAX_SIDE = 32, 8192


class ImageInputError(ValueError):
    """An image the pipeline cannot take, with the reason and what to do."""


@dataclasses.dataclass
class LoadedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], white = attenuating
    notes: list[str]  # what was done to it ("converted RGB to grey", "inverted MONOCHROME1")
    source_format: str  # png | jpeg | dicom | array


def to_unit_grey(image, notes: list[str] | None = None, allow_colour: bool = False) -> np.ndarray:
    """Array or PIL image -> float32 (H, W) in [0, 1]. Colour is an error unless `allow_colour`."""
    notes = notes if notes is not None else []
    if isinstance(image, Image.Image):
        if image.mode in ("RGB", "RGBA", "P", "CMYK", "LA"):
            if not allow_colour:
                raise ImageInputError(f"colour image (mode {image.mode}); chest radiographs are grey: convert it first")
            image = image.convert("L")
            notes.append("converted colour to grey")
        arr = np.asarray(image)
    else:
        arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if not allow_colour:
            raise ImageInputError(f"colour image of shape {arr.shape}; chest radiographs are grey: pass (H, W)")
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        notes.append("converted colour to grey")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ImageInputError(f"expected a 2-D grey image, got shape {arr.shape}")
    h, w = arr.shape
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise ImageInputError(f"image of {w}x{h} pixels: each side must be between {MIN_SIDE} and {MAX_SIDE}")
    if arr.dtype == bool:
        raise ImageInputError("a boolean mask is not a radiograph")
    if np.issubdtype(arr.dtype, np.integer):
        maxval = 255 if arr.dtype == np.uint8 else (65535 if arr.max(initial=0) > 4095 else 4095)
        if arr.dtype != np.uint8:
            notes.append(f"{arr.dtype.itemsize * 8}-bit input scaled to [0, 1] by {maxval}")
        out = arr.astype(np.float32) / maxval
    else:
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageInputError("image contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            if lo >= -1.0 and hi <= 1.0:
                out = (out + 1.0) / 2.0  # already in the model's [-1, 1]
            else:
                out = (out - lo) / max(hi - lo, 1e-8)
                notes.append("float input rescaled to [0, 1]")
    return np.clip(out, 0.0, 1.0)


def to_model_input(image, resolution: int, notes: list[str] | None = None):
    """Array or PIL image -> torch float32 (1, 1, R, R) in [-1, 1]."""
    import torch

    grey = to_unit_grey(image, notes)
    h, w = grey.shape
    if h != w:
        side = max(h, w)
        padded = np.full(
            (side, side), float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))), np.float32
        )
        padded[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = grey
        grey = padded
        if notes is not None:
            notes.append(f"padded {w}x{h} to a square")
    if grey.shape[0] != resolution:
        grey = np.asarray(Image.fromarray(grey, mode="F").resize((resolution, resolution), Image.BICUBIC))
        grey = np.clip(grey, 0.0, 1.0)
    return torch.from_numpy(grey * 2.0 - 1.0).float()[None, None]


def dicom_start(data: bytes) -> int | None:
    """Where a DICOM file's first element begins; None if `data` does not look like DICOM.

    132 after the 128-byte preamble and "DICM" (PS3.10 7.1). Archives also hold files without
    them (ACR-NEMA era, or written by tools that drop the preamble): their first element is at
    byte 0, accepted when it is plausible: group 0002 (the file meta, explicit VR little endian)
    or 0008 (a data set with no file meta), followed by an explicit VR, or for implicit VR
    little endian by a length that fits in the file. No PNG or JPEG signature passes this.
    """
    if len(data) > 132 and data[128:132] == b"DICM":
        return 132
    group = data[:2]
    if len(data) < 8 or group not in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):
        return None
    from pydicom.filereader import ENCODED_VR  # the value representations of PS3.5 6.2

    if data[4:6] in ENCODED_VR:
        return 0
    if group == b"\x08\x00" and int.from_bytes(data[4:8], "little") <= len(data) - 8:
        return 0
    return None


def load_image_file(path_or_bytes: str | Path | bytes) -> LoadedImage:
    """PNG, JPEG or DICOM (with or without its preamble) -> grey pixels in [0, 1] with notes on
    what was converted."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    notes: list[str] = []
    start = dicom_start(data)
    if start is not None:
        return LoadedImage(_dicom_pixels(data, notes, no_preamble=start == 0), notes, "dicom")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises many types for corrupt input
        raise ImageInputError(
            f"corrupt or unsupported image: not a readable PNG, JPEG or DICOM file ({type(exc).__name__})"
        ) from None
    fmt = (img.format or "").lower()
    if fmt not in ("png", "jpeg"):
        raise ImageInputError(f"unsupported image format {img.format!r}; use PNG, JPEG or DICOM")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.uint16)
        return LoadedImage(to_unit_grey(arr, notes), notes, fmt)
    return LoadedImage(to_unit_grey(img, notes, allow_colour=True), notes, fmt)


def _dicom_pixels(data: bytes, notes: list[str], no_preamble: bool = False) -> np.ndarray:
    import pydicom

    from . import dicom_grey

    try:
        # force: pydicom reads a file without the preamble only when told to; `dicom_start` has
        # checked that its first element is plausible.
        ds = pydicom.dcmread(io.BytesIO(data), force=no_preamble)
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageInputError(f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})") from None
    if getattr(ds, "NumberOfFrames", 1) not in (1, None) and arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]
        notes.append("multi-frame DICOM: first frame used")
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageInputError(f"DICOM photometric interpretation {ds.PhotometricInterpretation}: only grey radiographs")
    return to_unit_grey(dicom_grey.grey(arr, ds, notes), notes)
