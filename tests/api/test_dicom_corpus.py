"""Every file that pydicom and pydicom-data ship for their own tests, through the upload path
(`api.ingest.decode_upload` with the service's default limits): a single-frame grey image with
pixel data decodes, to the pixels pydicom itself decodes; any other file is refused, and the
reason given is true of it, as pydicom reads the file (colour, frames, no pixel data, size,
cut short, corrupt, not DICOM). No file may be refused for a transfer syntax.

`pytest -s tests/api/test_dicom_corpus.py` prints the counts.
"""

import collections
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_files

from api.core.config import Settings
from api.ingest import decode_upload
from api.rejection import UploadRejected
from model import dicom_grey
from model.preprocess import MAX_SIDE, MIN_SIDE, to_unit_grey

# The service's defaults, in decode_upload's order.
LIMITS = {key: Settings.model_fields[key].default for key in ("max_upload_bytes", "max_pixels", "max_inflated_bytes")}

# A phrase of each refusal -> the reason it gives. A refusal that matches none fails the test.
REASONS = {
    "holds no (integer) pixel data": "no pixel data",
    "frames: send one radiograph": "multi-frame",
    "is a colour image": "colour",
    "each side must be between": "size",
    "pixels, more than the": "size",
    "cut short": "cut short",
    "lacks readable": "unreadable header",
    "names no transfer syntax": "unreadable header",
    "the compressed frame is": "corrupt",
    "pixel data cannot be decoded": "corrupt",
    "send PNG, JPEG or DICOM": "not DICOM",
    "unsupported DICOM transfer syntax": "transfer syntax",  # never true: each one pydicom reads is decoded
}


def _corpus() -> list[Path]:
    return sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())


def _reason(message: str) -> str:
    found = [reason for phrase, reason in REASONS.items() if phrase in message]
    assert len(found) == 1, f"a refusal with no known reason: {message!r}"
    return found[0]


def _value_cut(ds) -> bool:
    # pydicom keeps an element whose value the file ends inside, with the value cut short.
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length = getattr(raw, "length", 0xFFFFFFFF)
        if length != 0xFFFFFFFF and isinstance(raw.value, bytes) and len(raw.value) < length:
            return True
    return False


def _truths(path: Path) -> tuple[set[str], object]:
    """What is true of the file as pydicom reads it (`force`: with or without preamble):
    (the refusal reasons that would be true, the data set). Empty: an image to decode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            return {"not DICOM"}, None
    truths = set()
    if any("End of file" in str(w.message) for w in caught) or _value_cut(ds):
        truths.add("cut short")
    if "PixelData" not in ds:
        truths.add("no pixel data")
        try:
            pydicom.dcmread(path)  # without force: does anything mark it as DICOM?
        except Exception:
            truths.add("not DICOM")
        return truths, ds
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
        photometric = str(ds.PhotometricInterpretation).strip()
    except Exception:
        truths.add("unreadable header")
        return truths, ds
    if frames > 1:
        truths.add("multi-frame")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        truths.add("colour")
    if min(rows, columns) < MIN_SIDE or max(rows, columns) > MAX_SIDE or rows * columns > LIMITS["max_pixels"]:
        truths.add("size")
    if not truths:
        try:
            ds.pixel_array  # pydicom's own decoders: a file that an installed one cannot decode is corrupt
        except Exception:
            if _decoder_installed(ds):
                truths.add("corrupt")
    return truths, ds


def _decoder_installed(ds) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(ds.file_meta.TransferSyntaxUID).is_available
    except Exception:  # no file meta, or a syntax pydicom has no decoder for
        return False


def _expected_pixels(ds) -> np.ndarray:
    return to_unit_grey(dicom_grey.grey(ds.pixel_array, ds, []))


@pytest.mark.slow
def test_every_corpus_file_decodes_or_is_refused_for_a_true_reason():
    files = _corpus()
    sources = collections.Counter("pydicom-data" if "data_store" in p.parts else "pydicom" for p in files)
    assert sources["pydicom"] > 150 and sources["pydicom-data"] > 50, sources  # both installed, nothing lost
    counts, wrong = collections.Counter(), []
    for path in files:
        truths, ds = _truths(path)
        try:
            png, notes, fmt = decode_upload(path.read_bytes(), *LIMITS.values())
        except UploadRejected as exc:
            reason = _reason(exc.message)
            counts[f"refused: {reason}"] += 1
            if reason not in truths:
                kind = "an image refused" if not truths else "an untrue reason"
                wrong.append(f"{kind}: {path.name} refused as {reason!r}; true: {sorted(truths) or 'an image'}")
            continue
        counts["decoded"] += 1
        if truths:
            wrong.append(f"{path.name}: decoded, but it is {sorted(truths)}")
            continue
        stored = np.asarray(Image.open(io.BytesIO(png)))
        assert fmt == "dicom" and stored.dtype == np.uint16, (path.name, fmt, stored.dtype)
        assert stored.shape == (int(ds.Rows), int(ds.Columns)), (path.name, stored.shape)
        # The pixels pydicom decodes itself (for RLE its own decoder, not the one the upload uses).
        error = np.abs(stored / 65535.0 - _expected_pixels(ds)).max()
        assert error <= 1.0 / 65535, (path.name, error)
    print(f"\n{len(files)} files ({dict(sources)}):", dict(sorted(counts.items())), f"{len(wrong)} wrong")
    assert not wrong, "\n".join(wrong)
    assert counts["decoded"] >= 40, counts
