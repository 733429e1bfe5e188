"""Uploads at the boundary: size and pixel caps, decoding, de-identification by construction.

Only the decoded pixels are stored (a 16-bit grey PNG), never the uploaded file: no DICOM
header, PNG/JPEG metadata or EXIF (where PHI lives) is kept or logged. Every rejection is an
`UploadRejected` with an HTTP status and a message for the user.
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
    if len(data) > 132 and data[128:132] == b"DICM":
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
    return buf.getvalue(), loaded.notes, loaded.source_format
