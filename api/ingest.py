"""Uploads at the boundary: size and pixel caps, de-identification, decoding.

A DICOM upload is read and checked from its header (`api/dicom.py`), de-identified with deid
(`api/deidentify.py`) before its pixels are decoded, and even then only the decoded pixels are
stored (a grey PNG: 8-bit for an 8-bit PNG or JPEG, else 16-bit), never the uploaded file: no
DICOM header, PNG/JPEG metadata or EXIF (where PHI lives) is kept or logged. A PNG or JPEG's size
is checked from its header before its pixels are decoded. A user's edit region (a mask PNG or a
box) is checked against the decoded image here too. Every rejection is an `UploadRejected` with
an HTTP status and a message for the user; an upload that cannot be decoded is never a server
error.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from .rejection import UploadRejected

# Pillow logs every EXIF tag it parses, its value included (a patient's name in ImageDescription or
# Artist), at DEBUG: the API's log must not carry them whatever level the operator sets.
logging.getLogger("PIL").setLevel(logging.INFO)


def decode_upload(
    data: bytes, max_bytes: int, max_pixels: int, max_inflated_bytes: int, inspect=None
) -> tuple[bytes, list[str], str]:
    """-> (grey PNG of the pixels only, 8-bit for an 8-bit PNG or JPEG else 16-bit; notes; source format).

    Runs on a decode thread (`api/decode_pool.py`), never on the event loop. Everything the
    header can refuse is refused before a pixel is decoded. `inspect(ds)`, for a DICOM, sees its
    checked header before de-identification (to refuse it, or to keep linked mode's identifiers).
    """
    from model.preprocess import MAX_SIDE, MIN_SIDE, ImageInputError, dicom_start, load_image_file, to_unit_grey

    if not data:
        raise UploadRejected(422, "the image file is empty")
    if len(data) > max_bytes:
        raise UploadRejected(413, f"the image is larger than {max_bytes / 2**20:.1f} MiB")
    if dicom_start(data) is not None:  # with the preamble and "DICM", or a plausible first element
        from .dicom import check_header, grey_pixels, read_dicom

        ds = read_dicom(data, max_inflated_bytes)
        check_header(ds, max_pixels, MIN_SIDE, MAX_SIDE)
        if inspect is not None:
            inspect(ds)
        clean, removed = _deidentified(ds)
        grey, notes = grey_pixels(clean)
        notes.insert(0, f"DICOM de-identified before storage ({removed} header attributes removed; only pixels kept)")
        fmt = "dicom"
        try:
            grey = to_unit_grey(grey, notes)
        except ImageInputError as exc:
            raise UploadRejected(422, str(exc)) from None
        eight_bit = False  # windowed and rescaled: its values need 16 bits
    else:
        eight_bit = _check_image_header(data, max_pixels) in _EIGHT_BIT_MODES
        try:
            loaded = load_image_file(data)
        except ImageInputError as exc:
            raise UploadRejected(415 if "unsupported" in str(exc) else 422, str(exc)) from None
        except (Image.DecompressionBombError, MemoryError):
            raise UploadRejected(413, "the image is too large to decode") from None
        grey, notes, fmt = loaded.pixels, list(loaded.notes), loaded.source_format
    # Stored no larger than needed: an 8-bit source's grey is v / 255 (colour converted by PIL to
    # 8-bit grey first), so 8 bits keep it exactly, in half the bytes of 16 (the worker reads both).
    depth = (255, np.uint8) if eight_bit else (65535, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(np.round(grey * depth[0]).astype(depth[1])).save(buf, format="PNG")
    return buf.getvalue(), notes, fmt


# PIL modes of PNG and JPEG with 8 bits a sample; 16-bit grey PNGs open as I;16 or I.
_EIGHT_BIT_MODES = frozenset({"L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})


def _check_image_header(data: bytes, max_pixels: int) -> str:
    """A PNG or JPEG's pixel count from its header: PIL reads only the header until `load()`.
    -> its PIL mode.

    Only PNG and JPEG are tried, so no other PIL format's parser sees the upload.
    """
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            pixels, mode = img.width * img.height, img.mode
    except Image.DecompressionBombError:
        raise UploadRejected(413, f"the image has more than the {max_pixels:,} pixels allowed") from None
    except Exception:
        raise UploadRejected(415, "unsupported or corrupt image: send PNG, JPEG or DICOM") from None
    if pixels > max_pixels:
        raise UploadRejected(413, f"the image has {pixels:,} pixels, more than the {max_pixels:,} allowed")
    return mode


def image_shape(png: bytes) -> tuple[int, int]:
    """(H, W) of a PNG that `decode_upload` made (its header only)."""
    with Image.open(io.BytesIO(png)) as img:
        return img.height, img.width


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode_mask(data: bytes, shape: tuple[int, int], max_bytes: int) -> np.ndarray:
    """A mask upload -> its pixels (H, W) or (H, W, 3|4), for `model.regions.check_user_region`.

    PNG only (grey, RGB or palette; nonzero = inside), of exactly the image's size `shape` (H, W):
    the size is read from the header and checked before the pixels are decoded.
    """
    if not data:
        raise UploadRejected(422, "the mask file is empty")
    if len(data) > max_bytes:
        raise UploadRejected(413, f"the mask is larger than {max_bytes / 2**20:.1f} MiB")
    if not data.startswith(_PNG_MAGIC):
        raise UploadRejected(415, "the mask must be a PNG (grey or RGB, nonzero inside the region)")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception:
        raise UploadRejected(415, "corrupt mask PNG: its header cannot be read") from None
    if (img.height, img.width) != tuple(shape):
        raise UploadRejected(
            422,
            f"the mask is {img.width}x{img.height} pixels, the image {shape[1]}x{shape[0]}: they must match",
        )
    try:
        img.load()
        if img.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
        return np.asarray(img)
    except Exception:
        raise UploadRejected(415, "corrupt mask PNG: its pixels cannot be decoded") from None


def box_mask(text: str, shape: tuple[int, int]) -> np.ndarray:
    """A box "x0,y0,x1,y1" in the image's pixels (x0 <= x < x1, y0 <= y < y1, as PIL's crop box)
    -> bool (H, W), True inside. The box must lie within the image and not be empty."""
    h, w = shape
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise UploadRejected(
            422, f"box must be four whole numbers x0,y0,x1,y1 in the image's pixels, got {text[:60]!r}"
        ) from None
    if x1 <= x0 or y1 <= y0:
        raise UploadRejected(422, f"the box {x0},{y0},{x1},{y1} is empty: it needs x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise UploadRejected(
            422,
            f"the box {x0},{y0},{x1},{y1} lies outside the {w}x{h} image (0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h})",
        )
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def mask_png(mask: np.ndarray) -> bytes:
    """A checked region (bool H x W) as the stored 8-bit mask: 255 inside."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _deidentified(ds) -> tuple[object, int]:
    from .deidentify import DeidentificationError, deidentify

    try:
        return deidentify(ds)
    except DeidentificationError as exc:
        raise UploadRejected(422, str(exc)) from None
    except Exception:  # deid on a header it does not expect: nothing of it may reach a log
        raise UploadRejected(422, "the DICOM header cannot be de-identified") from None
