"""Uploads at the boundary: size and pixel caps, de-identification, decoding.

A DICOM upload is de-identified with deid (`api/deidentify.py`) before its pixels are decoded,
and even then only the decoded pixels are stored (a 16-bit grey PNG), never the uploaded file:
no DICOM header, PNG/JPEG metadata or EXIF (where PHI lives) is kept or logged. Every rejection
is an `UploadRejected` with an HTTP status and a message for the user.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


class UploadRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _pixel_count(data: bytes) -> int:
    if _is_dicom(data):
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
        except Exception:
            raise UploadRejected(422, "corrupt DICOM file: the header cannot be read") from None
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return img.width * img.height
    except Exception:
        raise UploadRejected(415, "unsupported or corrupt image: send PNG, JPEG or DICOM") from None


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> tuple[bytes, list[str], str]:
    """-> (16-bit PNG of the pixels only, notes, source format)."""
    from model.preprocess import ImageInputError, load_image_file

    if not data:
        raise UploadRejected(422, "the image file is empty")
    if len(data) > max_bytes:
        raise UploadRejected(413, f"the image is larger than {max_bytes / 2**20:.1f} MiB")
    pixels = _pixel_count(data)
    if pixels > max_pixels:
        raise UploadRejected(413, f"the image has {pixels:,} pixels, more than the {max_pixels:,} allowed")
    notes: list[str] = []
    if _is_dicom(data):
        data, removed = _deidentified(data)
        notes.append(f"DICOM de-identified before storage ({removed} header attributes removed; only pixels kept)")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses larger images while decoding too
    try:
        loaded = load_image_file(data)
    except ImageInputError as exc:
        raise UploadRejected(415 if "unsupported" in str(exc) else 422, str(exc)) from None
    except (Image.DecompressionBombError, MemoryError):
        raise UploadRejected(413, "the image is too large to decode") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    buf = io.BytesIO()
    Image.fromarray(np.round(loaded.pixels * 65535).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue(), notes + list(loaded.notes), loaded.source_format


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _deidentified(data: bytes) -> tuple[bytes, int]:
    import pydicom

    from .deidentify import DeidentificationError, deidentify

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception:
        raise UploadRejected(422, "corrupt DICOM file: it cannot be read") from None
    try:
        clean, removed = deidentify(ds)
    except DeidentificationError as exc:
        raise UploadRejected(422, str(exc)) from None
    buf = io.BytesIO()
    clean.save_as(buf)
    return buf.getvalue(), removed
